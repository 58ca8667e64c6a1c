"""orgmesh_testlib — what the Python interop tests need to drive the suite.

Starts service binaries on free ports against the test stack, waits until they
are SERVING, stops them with SIGTERM and checks that they exit cleanly; mints
tokens; decodes google.rpc.Status error details; stops and starts Redis and
PostgreSQL through tests/harness/stack.sh. Run with /usr/bin/python3 (Debian's
grpcio) and PYTHONPATH=<build>/python:tests/interop (ctest sets both).

Environment: ORGMESH_BUILD_DIR (default <repo>/build), OM_STACK_DIR (the
stack, whose `env` file is read when ORGMESH_PG_URL is not already set).
Also a small command line for scripts: `python3 orgmesh_testlib.py health
ADDR...` and `wait-serving [--timeout S] ADDR...`.
"""

import base64
import contextlib
import ctypes
import fcntl
import hashlib
import hmac
import importlib
import json
import os
import signal
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc

SERVICES = ("accounts", "organizations", "connections", "assets", "partners", "notifier")
DEFAULT_PORTS = {s: 50051 + i for i, s in enumerate(SERVICES)}
DEFAULT_METRICS_PORTS = {s: 9101 + i for i, s in enumerate(SERVICES)}

# HS256 is for local development and tests only (SPEC 8).
ISSUER = "orgmesh-local"
AUDIENCE = "orgmesh"
KID = "dev"
SECRET = "orgmesh-test-secret"
# SPEC 8: each key signs only for the identities it is bound to. The issuer's
# key KID signs users; every service identity the tests use has a key of its
# own (service_key), so the harness proves binding rather than bypassing it.
PLATFORM_TEST_IDENTITIES = ("tests", "provisioning", "crm", "identity")
TEST_SERVICE_IDENTITIES = SERVICES + PLATFORM_TEST_IDENTITIES
# Local development (ORGMESH_DEV_MODE) still needs shared token keys across
# replicas; the tests set them rather than rely on per-process random keys.
PAGE_TOKEN_KEY = "orgmesh-test-page-token-key-0123456789abcdef"
PARTNERS_TOKEN_KEY = "orgmesh-test-partners-token-key-0123456789abcdef"


def service_key(name, secret=SECRET):
    """(kid, secret) of the HS256 key bound to service:<name> in the tests."""
    return f"svc-{name}", f"{secret}-svc-{name}"

START_TIMEOUT_S = float(os.environ.get("OM_TEST_START_TIMEOUT", "30"))
STOP_TIMEOUT_S = 5.0  # SPEC 9: SIGTERM drains and exits within 5 s
LOOP_CLOSED = "loop closed: every handle closed"  # common/app.c, docs/common/loop.md

# Fast reconnects, so a service that starts listening is seen at once.
# Reconnect quickly while a service starts. Not "grpc.min_reconnect_backoff_ms":
# gRPC core also takes it as the minimum *connect timeout*, and a 50 ms
# handshake budget fails on a loaded 2-core machine.
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 300),
]

SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                   "ThreadSanitizer", "SUMMARY: UndefinedBehaviorSanitizer")


class HarnessError(Exception):
    """The harness could not do its job (missing binary, service not ready...)."""


# ---- where things are -------------------------------------------------------

def source_dir():
    env = os.environ.get("ORGMESH_SOURCE_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2]


def build_dir():
    env = os.environ.get("ORGMESH_BUILD_DIR")
    return Path(env).resolve() if env else source_dir() / "build"


def binary(name):
    return build_dir() / "services" / name / f"orgmesh-{name}"


def built_services():
    """The services whose binary exists in the build dir."""
    return [s for s in SERVICES if binary(s).is_file()]


def stack_dir():
    env = os.environ.get("OM_STACK_DIR")
    return Path(env) if env else build_dir() / "stack"


def stack_env():
    """ORGMESH_PG_URL and Redis address: from the environment (with-stack.sh
    sets them) or from the stack's env file."""
    keys = ("ORGMESH_PG_URL", "ORGMESH_REDIS_HOST", "ORGMESH_REDIS_PORT")
    if all(os.environ.get(k) for k in keys):
        return {k: os.environ[k] for k in keys}
    env_file = stack_dir() / "env"
    if not env_file.is_file():
        raise HarnessError(
            f"no stack: ORGMESH_PG_URL is not set and {env_file} does not exist "
            f"(run tests/harness/stack.sh start {stack_dir()} and "
            f"tests/harness/with-stack.sh {stack_dir()} <cmd>, or use ctest)")
    out = {}
    for line in env_file.read_text().splitlines():
        if line.startswith("export ") and "=" in line:
            k, v = line[len("export "):].split("=", 1)
            out[k] = v
    return {k: os.environ.get(k) or out[k] for k in keys}


_PORT_LOCK_DIR = Path(os.environ.get("OM_PORT_LOCK_DIR", "/tmp/orgmesh-test-ports"))
_reserved_ports = {}  # port -> the open lock file, held while this process lives


def _reserve_port(port):
    """Claims `port` for this process: a flock on a file per port, held until
    the process exits, so that suites running side by side (ctest -j) never
    hand out the same port between one's check and its server's bind (CI saw
    "cannot listen on 127.0.0.1:N" once), and one process never twice."""
    if port in _reserved_ports:
        return False
    try:
        _PORT_LOCK_DIR.mkdir(parents=True, exist_ok=True)
        fd = os.open(_PORT_LOCK_DIR / str(port), os.O_CREAT | os.O_RDWR, 0o666)
    except OSError:
        return True  # no lock directory: the bind check alone, as before
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return False
    _reserved_ports[port] = fd
    return True


def free_port():
    """A free loopback port *below* the kernel's ephemeral range. A port the
    kernel hands out (bind to 0) can be taken by any outgoing connection
    between this check and the server's own bind ("Address already in use");
    ports outside the ephemeral range are never given to outgoing sockets."""
    lo, hi = 20000, 32000
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            hi = min(hi, int(f.read().split()[0]) - 1)
    except (OSError, ValueError):
        pass
    rng = random.SystemRandom()
    for _ in range(500):
        port = rng.randint(lo, hi)
        if not _reserve_port(port):
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    with socket.socket() as s:  # a crowded machine: take what the kernel gives
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def jwt_env(secret=SECRET, kid=KID, service=None):
    """The token environment of one service process: every test key, each
    bound to its identity, and `service`'s own signing key (SPEC 8)."""
    keys = [f"{kid}:HS256:{secret}"]
    bindings = [f"{kid}=users"]
    for name in TEST_SERVICE_IDENTITIES:
        skid, ssecret = service_key(name, secret)
        keys.append(f"{skid}:HS256:{ssecret}")
        bindings.append(f"{skid}=service:{name}")
    env = {
        "ORGMESH_JWT_ISSUER": ISSUER,
        "ORGMESH_JWT_AUDIENCE": AUDIENCE,
        "ORGMESH_JWT_KEYS": ";".join(keys),
        "ORGMESH_JWT_KEY_SUBJECTS": ";".join(bindings),
        "ORGMESH_DEV_MODE": "1",  # HS256 keys (SPEC 8: local development and tests only)
        "ORGMESH_PAGE_TOKEN_KEY": PAGE_TOKEN_KEY,
        "ORGMESH_PARTNERS_TOKEN_KEY": PARTNERS_TOKEN_KEY,
        # the identities the tests provision and check with (issue 13: they stand
        # for the platform's identity system and tools; orgmesh's own services
        # get only what their calls need)
        "ORGMESH_PLATFORM_SERVICES": ",".join(PLATFORM_TEST_IDENTITIES),
    }
    if service is not None:
        skid, ssecret = service_key(service, secret)
        env["ORGMESH_JWT_SIGNING_KEY"] = f"{skid}:HS256:{ssecret}"
    return env


def peer_var(name):
    return f"ORGMESH_{name.upper()}_ADDR"


# ---- health and reflection --------------------------------------------------

def _health_modules():
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    return health_pb2, health_pb2_grpc


def health(channel, service="", timeout=1.0):
    """The status name ("SERVING", "NOT_SERVING", ...) of `service`."""
    pb, pb_grpc = _health_modules()
    resp = pb_grpc.HealthStub(channel).Check(pb.HealthCheckRequest(service=service),
                                             timeout=timeout)
    return pb.HealthCheckResponse.ServingStatus.Name(resp.status)


def reflection_list_services(channel, timeout=5.0):
    from grpc_reflection.v1alpha import reflection_pb2 as rpb, reflection_pb2_grpc as rgrpc
    req = rpb.ServerReflectionRequest(list_services="")
    for resp in rgrpc.ServerReflectionStub(channel).ServerReflectionInfo(iter([req]),
                                                                         timeout=timeout):
        if resp.HasField("error_response"):
            raise HarnessError(f"reflection error: {resp.error_response}")
        return [s.name for s in resp.list_services_response.service]
    raise HarnessError("reflection returned no response")


def reflection_file_containing_symbol(channel, symbol, timeout=5.0):
    """The FileDescriptorProtos (parsed) the server returns for `symbol`."""
    from google.protobuf import descriptor_pb2
    from grpc_reflection.v1alpha import reflection_pb2 as rpb, reflection_pb2_grpc as rgrpc
    req = rpb.ServerReflectionRequest(file_containing_symbol=symbol)
    for resp in rgrpc.ServerReflectionStub(channel).ServerReflectionInfo(iter([req]),
                                                                         timeout=timeout):
        if resp.HasField("error_response"):
            raise HarnessError(f"reflection error for {symbol}: {resp.error_response}")
        return [descriptor_pb2.FileDescriptorProto.FromString(b)
                for b in resp.file_descriptor_response.file_descriptor_proto]
    raise HarnessError("reflection returned no response")


def declared_services(name):
    """Full names of the gRPC services the contract declares in
    orgmesh.<name>.v1 (read from the generated Python modules)."""
    root = build_dir() / "python"
    out = []
    for f in sorted((root / "orgmesh" / name / "v1").glob("*_pb2.py")):
        mod = importlib.import_module(f"orgmesh.{name}.v1.{f.stem}")
        out += [s.full_name for s in mod.DESCRIPTOR.services_by_name.values()]
    return out


def wait_serving(addr, timeout=START_TIMEOUT_S, proc=None):
    """Waits until the server at `addr` answers health "" SERVING. Returns
    None, or a string saying what went wrong."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    with grpc.insecure_channel(addr, options=CHANNEL_OPTIONS) as ch:
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                return f"exited with status {proc.returncode} before serving"
            try:
                # Long enough for a handshake on a loaded machine (a deadline
                # that cuts the handshake short would never let it finish).
                left = deadline - time.monotonic()
                st = health(ch, "", timeout=max(0.1, min(2.0, left)))
                if st == "SERVING":
                    return None
                last = f"health is {st}"
            except grpc.RpcError as e:
                last = f"health check failed: {e.code().name} {e.details()}"
            time.sleep(0.05)
    return f"not SERVING after {timeout:g} s ({last})"


def wait_all_serving(services, timeout=START_TIMEOUT_S):
    """Waits for several Service objects at once (one thread each, so a slow
    one does not hold up the others); returns [(service, error)] for those
    that did not become SERVING within `timeout`."""
    import threading
    services = list(services)
    errors = {}

    def one(s):
        err = wait_serving(s.addr, timeout, s.proc)
        if err:
            errors[s.name] = err

    threads = [threading.Thread(target=one, args=(s,), daemon=True) for s in services]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 5)
    return [(s, errors[s.name]) for s in services if s.name in errors]


# ---- services ------------------------------------------------------------------

def _die_with_parent():
    # If pytest itself is killed (ctest timeout), its services go too.
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class Service:
    """One service process. Its log is appended to `log_path`."""

    def __init__(self, name, port, metrics_port, env, log_path):
        self.name = name
        self.port = port
        self.metrics_port = metrics_port
        self.env = env
        self.log_path = Path(log_path)
        self.proc = None
        self._channel = None
        self.expected_exit = False  # killed on purpose by a test

    @property
    def addr(self):
        return f"127.0.0.1:{self.port}"

    @property
    def binary(self):
        return binary(self.name)

    def start(self):
        if not self.binary.is_file():
            raise HarnessError(f"{self.name}: binary {self.binary} is missing (build it first)")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"=== start {self.binary} on {self.addr} ===\n".encode())
            log.flush()
            self.proc = subprocess.Popen([str(self.binary)], env=self.env, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT,
                                         preexec_fn=_die_with_parent)
        self.expected_exit = False

    def wait_serving(self, timeout=START_TIMEOUT_S):
        err = wait_serving(self.addr, timeout, self.proc)
        if err:
            raise HarnessError(f"service {self.name} ({self.addr}) {err}; "
                               f"log {self.log_path}:\n{self.log_tail()}")

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def channel(self):
        if self._channel is None:
            self._channel = grpc.insecure_channel(self.addr, options=CHANNEL_OPTIONS)
        return self._channel

    def stub(self, stub_class):
        return stub_class(self.channel())

    def health(self, service="", timeout=1.0):
        return health(self.channel(), service, timeout)

    def kill(self, sig=signal.SIGKILL):
        """Kills the process on purpose (a crash test); stop() will not
        count its exit as a failure."""
        if self.running():
            self.expected_exit = True
            self.proc.send_signal(sig)
            self.proc.wait(timeout=STOP_TIMEOUT_S * 2)

    def restart(self, timeout=START_TIMEOUT_S):
        """Starts the service again on the same port (after kill or stop)."""
        if self.running():
            problems = self.stop()
            if problems:
                raise HarnessError("; ".join(problems))
        self.start()
        self.wait_serving(timeout)

    def replica(self, log_name, env=None, start=True):
        """Another process of this service on the same database and Redis,
        with the same settings (plus `env`), on ports of its own, its log in
        `log_name` beside this one's. Started and SERVING unless start is
        False; the caller stops it."""
        port, mport = free_port(), free_port()
        e = dict(self.env, ORGMESH_LISTEN=f"127.0.0.1:{port}", ORGMESH_METRICS_LISTEN=f"127.0.0.1:{mport}")
        e.update(env or {})
        other = Service(self.name, port, mport, e, self.log_path.with_name(log_name))
        if start:
            other.start()
            try:
                other.wait_serving()
            except BaseException:
                other.stop()
                raise
        return other

    def terminate(self):
        if self.running():
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout=STOP_TIMEOUT_S):
        """SIGTERM, then checks the process exits cleanly within `timeout`.
        Returns a list of problems (empty when all is well)."""
        problems = []
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if self.proc is None:
            return problems
        self.terminate()
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
            problems.append(f"{self.name} did not exit within {timeout:g} s of SIGTERM (killed)")
        else:
            if rc != 0 and not self.expected_exit:
                how = f"signal {signal.Signals(-rc).name}" if rc < 0 else f"status {rc}"
                problems.append(f"{self.name} exited with {how} after SIGTERM")
            elif rc == 0 and not self.expected_exit and LOOP_CLOSED not in self.log_tail(200):
                # issue 15: every handle closed, uv_loop_close returned 0
                problems.append(f"{self.name} exited 0 without closing its loop cleanly ('{LOOP_CLOSED}')")
        if self.sanitizer_report():
            problems.append(f"{self.name}: sanitizer report in its log")
        if problems:
            problems[-1] += f"; log {self.log_path}:\n{self.log_tail()}"
        self.proc = None
        return problems

    def sanitizer_report(self):
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return False
        return any(m in text for m in SANITIZER_MARKS)

    def log_size(self):
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def log_since(self, offset, lines=40):
        """The last `lines` lines written to the log after byte `offset`."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                end = f.tell()
                f.seek(max(offset, end - 64 * 1024))
                text = f.read().decode(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def log_tail(self, lines=40):
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 64 * 1024))
                text = f.read().decode(errors="replace")
        except OSError as e:
            return f"(no log: {e})"
        return "\n".join(text.splitlines()[-lines:])


_active_suites = []


def active_suites():
    """Suites started and not yet stopped (conftest prints their logs when a
    test fails)."""
    return list(_active_suites)


class Suite:
    """A set of services started together on free ports, wired to each other
    (ORGMESH_<PEER>_ADDR) and to the stack.

        suite = Suite(["accounts", "partners"]).start()
        stub = suite.stub("accounts", accounts_pb2_grpc.AccountsServiceStub)
        ...
        problems = suite.stop()
    """

    def __init__(self, names, env=None, service_env=None, log_dir=None, jwt_secret=SECRET):
        unknown = [n for n in names if n not in SERVICES]
        if unknown:
            raise HarnessError(f"unknown services {unknown}; known: {', '.join(SERVICES)}")
        self.names = list(dict.fromkeys(names))
        self.extra_env = dict(env or {})
        self.service_env = {k: dict(v) for k, v in (service_env or {}).items()}
        self.jwt_secret = jwt_secret
        test_name = os.environ.get("OM_TEST_NAME") or f"pytest-{os.getpid()}"
        self.log_dir = Path(log_dir) if log_dir else build_dir() / "test-logs" / test_name
        self.services = {}

    def __getitem__(self, name):
        try:
            return self.services[name]
        except KeyError:
            raise HarnessError(f"service {name} is not part of this suite "
                               f"({', '.join(self.names)})") from None

    def addr(self, name):
        return self[name].addr

    def channel(self, name):
        return self[name].channel()

    def stub(self, name, stub_class):
        return self[name].stub(stub_class)

    def start(self):
        missing = [f"{n} ({binary(n)})" for n in self.names if not binary(n).is_file()]
        if missing:
            raise HarnessError("service binaries missing: " + ", ".join(missing) +
                               f" — build them (cmake --build {build_dir()})")
        if not self.names:
            raise HarnessError("no service to start")
        base = dict(os.environ)
        base.update(stack_env())
        base.update(jwt_env(self.jwt_secret))
        base.setdefault("ORGMESH_LOG_LEVEL", os.environ.get("OM_TEST_LOG_LEVEL", "info"))
        base.update(self.extra_env)
        ports = {n: free_port() for n in self.names}
        for n in self.names:
            base[peer_var(n)] = f"127.0.0.1:{ports[n]}"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for n in self.names:
            (self.log_dir / f"{n}.log").unlink(missing_ok=True)
            env = dict(base)
            env["ORGMESH_LISTEN"] = f"127.0.0.1:{ports[n]}"
            mport = free_port()
            env["ORGMESH_METRICS_LISTEN"] = f"127.0.0.1:{mport}"
            env["ORGMESH_JWT_SIGNING_KEY"] = jwt_env(self.jwt_secret, service=n)["ORGMESH_JWT_SIGNING_KEY"]
            env.update(self.service_env.get(n, {}))
            self.services[n] = Service(n, ports[n], mport, env, self.log_dir / f"{n}.log")
        _active_suites.append(self)
        try:
            for s in self.services.values():
                s.start()
            # They start side by side and are waited for together.
            errors = wait_all_serving(self.services.values(), START_TIMEOUT_S)
            if errors:
                raise HarnessError("\n".join(
                    f"service {s.name} ({s.addr}) {err}; log {s.log_path}:\n{s.log_tail()}"
                    for s, err in errors))
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self):
        """Stops every service (SIGTERM, all at once); returns the problems."""
        problems = []
        for s in self.services.values():
            if s.running():
                s.terminate()
        for s in self.services.values():
            problems += s.stop()
        if self in _active_suites:
            _active_suites.remove(self)
        return problems

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        problems = self.stop()
        if problems and exc[0] is None:
            raise HarnessError("\n".join(problems))


# ---- tokens (SPEC 8 Identity) ---------------------------------------------------

def _b64url(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def mint_token(sub, *, mfa_at=None, ttl=3600, iat=None, exp=None, iss=ISSUER, aud=AUDIENCE,
               kid=KID, secret=SECRET, alg="HS256", extra_claims=None, header=None):
    """A compact HS256 JWT. `sub` is a user id (int) or "service:<name>"."""
    now = int(time.time())
    iat = now if iat is None else int(iat)
    claims = {"sub": str(sub), "iss": iss, "aud": aud, "iat": iat,
              "exp": iat + ttl if exp is None else int(exp)}
    if mfa_at is not None:
        claims["mfa_at"] = int(mfa_at)
    claims.update(extra_claims or {})
    hdr = {"alg": alg, "typ": "JWT", "kid": kid}
    hdr.update(header or {})
    signing_input = _b64url(json.dumps(hdr, separators=(",", ":")).encode()) + "." + \
        _b64url(json.dumps(claims, separators=(",", ":")).encode())
    sig = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + _b64url(sig)


def user_token(user_id, *, mfa_ago=None, **kw):
    """A user's token; with mfa_ago=N the second factor was verified N s ago."""
    mfa_at = None if mfa_ago is None else int(time.time()) - int(mfa_ago)
    return mint_token(user_id, mfa_at=mfa_at, **kw)


def mfa_token(user_id, ago=0, **kw):
    return user_token(user_id, mfa_ago=ago, **kw)


def expired_token(user_id, **kw):
    # Well past the 30 s leeway.
    now = int(time.time())
    return mint_token(user_id, iat=now - 7200, exp=now - 3600, **kw)


def wrong_audience_token(user_id, **kw):
    return mint_token(user_id, aud="not-orgmesh", **kw)


def forged_token(user_id, **kw):
    """Signed with a key the services do not know."""
    return mint_token(user_id, secret="not-the-" + SECRET, **kw)


def service_token(name, **kw):
    """service:<name>, signed with that service's own key unless kid/secret
    say otherwise (e.g. another service's key, to prove binding)."""
    kid, secret = service_key(name)
    kw.setdefault("kid", kid)
    kw.setdefault("secret", secret)
    return mint_token(f"service:{name}", **kw)


def bearer(token):
    """Call metadata carrying `token`."""
    return (("authorization", f"Bearer {token}"),)


def as_user(user_id, **kw):
    """Call metadata for user `user_id` (keyword args as user_token)."""
    return bearer(user_token(user_id, **kw))


# ---- errors (SPEC 8: google.rpc.Status in grpc-status-details-bin) --------------

class ErrorDetails:
    """What a failed call said: code, message, and the decoded details."""

    def __init__(self, err):
        from google.rpc import error_details_pb2, status_pb2
        self.error = err
        self.code = err.code()
        self.message = err.details()
        self.status = None
        self.error_info = None
        self.bad_request = None
        self.details = []  # every detail, unpacked when its type is known
        for key, value in (err.trailing_metadata() or ()):
            if key == "grpc-status-details-bin":
                self.status = status_pb2.Status.FromString(value)
        if self.status is None:
            return
        # Every message of google/rpc/error_details.proto (our copy holds a
        # subset of the public schema).
        known = {d.full_name: getattr(error_details_pb2, name)
                 for name, d in error_details_pb2.DESCRIPTOR.message_types_by_name.items()}
        for anym in self.status.details:
            cls = known.get(anym.TypeName())
            if cls is None:
                self.details.append(anym)
                continue
            msg = cls()
            anym.Unpack(msg)
            self.details.append(msg)
            if isinstance(msg, error_details_pb2.ErrorInfo) and self.error_info is None:
                self.error_info = msg
            elif isinstance(msg, error_details_pb2.BadRequest) and self.bad_request is None:
                self.bad_request = msg

    @property
    def reason(self):
        return self.error_info.reason if self.error_info else None

    @property
    def domain(self):
        return self.error_info.domain if self.error_info else None

    @property
    def violations(self):
        """{field: description} of the BadRequest detail."""
        if not self.bad_request:
            return {}
        return {v.field: v.description for v in self.bad_request.field_violations}

    def detail(self, cls):
        """The first detail of type `cls`, or None."""
        return next((d for d in self.details if isinstance(d, cls)), None)

    def __repr__(self):
        return (f"ErrorDetails({self.code.name}, reason={self.reason!r}, "
                f"message={self.message!r}, violations={self.violations!r})")


def error_details(err):
    return ErrorDetails(err)


class _Raised:
    details = None


@contextlib.contextmanager
def raises_rpc(code, reason=None):
    """with raises_rpc(grpc.StatusCode.NOT_FOUND, "ACCOUNT_NOT_FOUND") as r:
           stub.GetAccount(...)
       r.details.violations ..."""
    if isinstance(code, str):
        code = grpc.StatusCode[code]
    box = _Raised()
    try:
        yield box
    except grpc.RpcError as e:
        d = ErrorDetails(e)
        box.details = d
        assert d.code == code, f"expected {code.name}, got {d!r}"
        if reason is not None:
            assert d.status is not None, f"no grpc-status-details-bin in {d!r}"
            assert d.reason == reason, f"expected reason {reason}, got {d!r}"
    else:
        raise AssertionError(f"expected the call to fail with {code.name}"
                             + (f" {reason}" if reason else "") + ", it succeeded")


# ---- stack control (failure tests) ------------------------------------------------

def _stack(cmd):
    if os.environ.get("OM_UNDER_CTEST") and not os.environ.get("OM_STACK_EXCLUSIVE"):
        raise HarnessError(
            f"stack {cmd}: the stack is shared by the tests ctest runs side by side; mark the "
            "file with `pytestmark = pytest.mark.exclusive_stack` so that it runs alone")
    script = source_dir() / "tests" / "harness" / "stack.sh"
    r = subprocess.run([str(script), cmd, str(stack_dir())], stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        raise HarnessError(f"stack.sh {cmd} failed ({r.returncode}):\n{r.stdout}")
    return r.stdout


def redis_stop():
    _stack("redis-stop")


def redis_start():
    _stack("redis-start")


def redis_kill():
    """kill -9: Redis dies without saving; redis_start() brings it back empty."""
    _stack("redis-kill")


def pg_restart():
    _stack("pg-restart")


def pg_stop():
    _stack("pg-stop")


def pg_start():
    _stack("pg-start")


@contextlib.contextmanager
def redis_down():
    """Redis is stopped inside the block and started again after it."""
    redis_stop()
    try:
        yield
    finally:
        redis_start()


# ---- waiting ------------------------------------------------------------------------

def eventually(fn, timeout=5.0, interval=0.05, message=None):
    """Calls fn until it returns a true value without raising AssertionError
    (or an RpcError); returns that value. The last error is re-raised."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            v = fn()
            if v:
                return v
            last = AssertionError(message or f"{getattr(fn, '__name__', fn)} stayed false")
        except (AssertionError, grpc.RpcError) as e:
            last = e
        if time.monotonic() >= deadline:
            raise last
        time.sleep(interval)


# ---- command line (deploy/local scripts) ---------------------------------------------

def _main(argv):
    import argparse
    p = argparse.ArgumentParser(prog="orgmesh_testlib.py")
    sub = p.add_subparsers(dest="cmd", required=True)
    h = sub.add_parser("health", help="print the health of each ADDR")
    h.add_argument("addrs", nargs="+")
    w = sub.add_parser("wait-serving", help="wait until each ADDR is SERVING")
    w.add_argument("--timeout", type=float, default=30)
    w.add_argument("addrs", nargs="+")
    a = p.parse_args(argv)
    rc = 0
    for addr in a.addrs:
        label, _, target = addr.rpartition("=")
        label = label or target
        if a.cmd == "health":
            try:
                with grpc.insecure_channel(target) as ch:
                    print(f"{label}: {health(ch, '', timeout=2)}")
            except grpc.RpcError as e:
                print(f"{label}: {e.code().name}")
                rc = 1
        else:
            err = wait_serving(target, a.timeout)
            print(f"{label}: {'SERVING' if err is None else err}")
            rc = rc or (1 if err else 0)
    return rc


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))

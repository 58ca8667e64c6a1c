#!/usr/bin/python3
"""make_seeds.py — writes the seed corpus of the fuzz targets
(tests/fuzz/corpus/<target>/seed-*) from real messages and tokens: small
valid inputs and near-valid ones (one field broken). Regression inputs
(regress-*, added by hand when a fuzzer found something) are left alone.

    tests/fuzz/make_seeds.py [--build-dir build-fuzz]

Needs the fuzz targets built (tests/fuzz/run --build-only): the method order
of fuzz_rpc and fuzz_idem comes from the binaries (FUZZ_LIST=1) and the
messages from the descriptor set <build dir>/orgmesh.desc. Run it again
after a change to proto/ (the method indices move). Uses Debian's python3
(protobuf, cryptography) and the openssl binary.
"""
import argparse
import base64
import hashlib
import hmac
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import FieldDescriptor as FD

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
NOW = 1900000000  # fuzz_auth's fixed clock


def load_pool(desc_path):
    fds = descriptor_pb2.FileDescriptorSet.FromString(desc_path.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for f in fds.file:
        pool.Add(f)
    return pool


def msg_class(pool, name):
    return message_factory.MessageFactory(pool).GetPrototype(pool.FindMessageTypeByName(name))


def fill(msg, depth=0):
    """Every field set to a plausible value (nested messages to depth 2)."""
    for f in msg.DESCRIPTOR.fields:
        if f.containing_oneof is not None and msg.WhichOneof(f.containing_oneof.name):
            continue
        rep = f.label == FD.LABEL_REPEATED
        if f.type == FD.TYPE_MESSAGE:
            if depth >= 2 or f.message_type.GetOptions().map_entry:
                continue
            sub = getattr(msg, f.name).add() if rep else getattr(msg, f.name)
            if f.message_type.full_name == "google.protobuf.Timestamp":
                sub.seconds, sub.nanos = NOW, 500
            elif f.message_type.full_name == "google.protobuf.Duration":
                sub.seconds = 3600
            elif f.message_type.full_name == "google.protobuf.FieldMask":
                sub.paths.append("name")
            else:
                fill(sub, depth + 1)
                if not rep and sub.ByteSize() == 0:
                    msg.ClearField(f.name)
            continue
        if f.type == FD.TYPE_STRING:
            v = "req-0001" if f.name == "request_id" else ("a@example.com" if "email" in f.name else "Zoë 名前")
        elif f.type == FD.TYPE_BYTES:
            v = b"\x01\x02"
        elif f.type == FD.TYPE_BOOL:
            v = True
        elif f.type == FD.TYPE_ENUM:
            vals = f.enum_type.values
            v = vals[1].number if len(vals) > 1 else vals[0].number
        elif f.type in (FD.TYPE_DOUBLE, FD.TYPE_FLOAT):
            v = 1.5
        else:
            v = 42
        if rep:
            getattr(msg, f.name).append(v)
        else:
            setattr(msg, f.name, v)
    return msg


def varint(n):
    out = b""
    n &= (1 << 64) - 1
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def ld(field, data):
    """A length-delimited field: what protobuf-c reads for string/bytes/message."""
    return varint(field << 3 | 2) + varint(len(data)) + data


def broken_string(desc):
    """The packed bytes of one string field of `desc` (the first one) holding
    invalid UTF-8 (issue 14: ff fe c0 af), appended after a valid message
    (the last occurrence wins)."""
    for f in desc.fields:
        if f.type == FD.TYPE_STRING and f.label != FD.LABEL_REPEATED:
            return ld(f.number, b"\xff\xfe\xc0\xaf")
    return None


def timestamp_overflow(desc, depth=0):
    """Bytes setting a Timestamp (directly or one message down) to 2^63-1 s."""
    for f in desc.fields:
        if f.type != FD.TYPE_MESSAGE:
            continue
        if f.message_type.full_name in ("google.protobuf.Timestamp", "google.protobuf.Duration"):
            return ld(f.number, varint(1 << 3 | 0) + varint((1 << 63) - 1))
        if depth == 0 and not f.message_type.GetOptions().map_entry:
            inner = timestamp_overflow(f.message_type, 1)
            if inner:
                return ld(f.number, inner)
    return None


def listing(binary):
    out = subprocess.run([str(binary)], env={**os.environ, "FUZZ_LIST": "1"},
                         capture_output=True, text=True, check=True).stdout
    rows = []
    for line in out.splitlines():
        i, path = line.split(" ", 1)
        svc, meth = path.strip("/").split("/")
        rows.append((int(i), svc, meth))
    return rows


def method_input(pool, svc, meth):
    return pool.FindServiceByName(svc).FindMethodByName(meth).input_type


class Corpus:
    def __init__(self, target):
        self.dir = HERE / "corpus" / target
        self.dir.mkdir(parents=True, exist_ok=True)
        for old in self.dir.glob("seed-*"):
            old.unlink()
        self.n = 0

    def add(self, name, data):
        (self.dir / f"seed-{name}").write_bytes(data)
        self.n += 1


def seeds_rpc(pool, build):
    c = Corpus("fuzz_rpc")
    for i, svc, meth in listing(build / "tests/fuzz/fuzz_rpc"):
        d = method_input(pool, svc, meth)
        sel = struct.pack(">H", i)
        full = fill(msg_class(pool, d.full_name)()).SerializeToString()
        c.add(f"{meth}-empty", sel)
        c.add(f"{meth}-valid", sel + full)
        bad = broken_string(d)
        if bad:
            c.add(f"{meth}-bad-utf8", sel + full + bad)
        ts = timestamp_overflow(d)
        if ts:
            c.add(f"{meth}-time-overflow", sel + full + ts)
    return c.n


def seeds_idem(pool, build):
    c = Corpus("fuzz_idem")
    for i, svc, meth in listing(build / "tests/fuzz/fuzz_idem"):
        d = method_input(pool, svc, meth)
        m = fill(msg_class(pool, d.full_name)())
        m.request_id = ""
        full = m.SerializeToString()
        ids = [("ok", b"req-0001"), ("bad", b"\xff\xfe\xc0\xaf")]
        if i < 2:
            ids += [("utf8", "réq-✓".encode()), ("long", b"r" * 129), ("empty", b"")]
        for tag, rid in ids:
            for actor in ((0, 0x80) if i < 2 else (0,)):
                c.add(f"{meth}-{tag}-{'svc' if actor else 'user'}", bytes([i | actor]) + rid + b"\0" + full)
    return c.n


def b64u(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def es256_sign(msg):
    """Raw r||s of ES256 over msg with the fuzz key (openssl gives DER)."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
    key = serialization.load_pem_private_key((HERE / "keys/es256-fuzz.pem").read_bytes(), None)
    r, s = decode_dss_signature(key.sign(msg, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def seeds_auth():
    c = Corpus("fuzz_auth")
    secret = b"fuzz-hs256-secret"
    claims_user = {"iss": "fuzz-iss", "aud": "fuzz-aud", "sub": "42", "iat": NOW - 10, "exp": NOW + 600}
    claims_svc = dict(claims_user, sub="service:partners")
    claims_mfa = dict(claims_user, mfa_at=NOW - 5)
    expired = dict(claims_user, exp=NOW - 3600)
    wrong_aud = dict(claims_user, aud=["other", "fuzz-aud"])

    def hs(header, claims):
        si = f"{b64u(json.dumps(header).encode())}.{b64u(json.dumps(claims).encode())}"
        return f"{si}.{b64u(hmac.new(secret, si.encode(), hashlib.sha256).digest())}".encode()

    def es(header, claims):
        si = f"{b64u(json.dumps(header).encode())}.{b64u(json.dumps(claims).encode())}"
        return f"{si}.{b64u(es256_sign(si.encode()))}".encode()

    h_hs = {"alg": "HS256", "typ": "JWT", "kid": "hs1"}
    h_es = {"alg": "ES256", "typ": "JWT", "kid": "es1"}
    raw = {
        "hs-user": hs(h_hs, claims_user), "hs-service": hs(h_hs, claims_svc), "hs-mfa": hs(h_hs, claims_mfa),
        "hs-expired": hs(h_hs, expired), "hs-aud-list": hs(h_hs, wrong_aud),
        "es-user": es(h_es, claims_user), "es-service": es(h_es, claims_svc),
        "es-wrong-kid": es(dict(h_es, kid="hs1"), claims_user),
        "alg-none": (b64u(b'{"alg":"none"}') + "." + b64u(json.dumps(claims_user).encode()) + ".").encode(),
        "two-parts": b"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiI0MiJ9",
    }
    for k, v in raw.items():
        c.add(f"token-{k}", b"\x00" + v)
    signed = {
        "user": (h_hs, claims_user), "service": (h_hs, claims_svc), "mfa": (h_hs, claims_mfa),
        "expired": (h_hs, expired), "aud-list": (h_hs, wrong_aud),
        "sub-negative": (h_hs, dict(claims_user, sub="-1")),
        "sub-huge": (h_hs, dict(claims_user, sub="18446744073709551616")),
        "exp-float": (h_hs, dict(claims_user, exp=1.9e9)),
        "service-bad-name": (h_hs, dict(claims_user, sub="service:" + "X" * 40)),
        "crit": (dict(h_hs, crit=["x"]), claims_user),
    }
    for k, (h, cl) in signed.items():
        c.add(f"json-{k}", b"\x01" + json.dumps(h).encode() + b"\n" + json.dumps(cl).encode())
    return c.n


def page_token(key, scope, cursor):
    s, cur = scope.encode(), cursor.encode()
    raw = b"\x01" + hashlib.sha256(s).digest()[:8] + cur
    tag = hmac.new(key, b"\x01" + struct.pack(">I", len(s)) + s + cur, hashlib.sha256).digest()[:16]
    return b64u(raw + tag).encode()


def seeds_page():
    c = Corpus("fuzz_page")
    key = b"fuzz-page-token-key"
    scope = "accounts.ListMemberships|hub=123|role=SUPER_ADMIN"
    for k, cur in (("id", "123"), ("pair", "2026-01-01T00:00:00Z|77"), ("empty", ""), ("long", "9" * 1024)):
        c.add(f"token-{k}", b"\x00" + page_token(key, scope, cur))
    c.add("token-other-scope", b"\x00" + page_token(key, "assets.ListAssets", "5"))
    c.add("token-padded", b"\x00" + page_token(key, scope, "1") + b"==")
    c.add("roundtrip-id", b"\x01" + scope.encode() + b"\x00" + b"123")
    c.add("roundtrip-long", b"\x01" + b"s" + b"\x00" + b"x" * 1025)
    return c.n


def seeds_evt(pool):
    c = Corpus("fuzz_evt")
    env_cls = msg_class(pool, "orgmesh.events.v1.Envelope")
    events = []
    # every message of an events.proto of the contract is an event type
    fds = descriptor_pb2.FileDescriptorSet.FromString((BUILD / "orgmesh.desc").read_bytes())
    for f in fds.file:
        if f.name.startswith("orgmesh/") and f.name.endswith("events.proto") and "/events/" not in f.name:
            events += [f"{f.package}.{m.name}" for m in f.message_type]
    for i, name in enumerate(events):
        payload = fill(msg_class(pool, name)()).SerializeToString()
        env = env_cls(id="0b7c4f3e-1d2a-4b5c-8e9f-0a1b2c3d4e5f", type=name, source=name.split(".")[1],
                      subject=f"{name.split('.')[1]}/42", actor="user:42", aggregate_version=3,
                      trace_id="t-1")
        env.time.seconds = NOW
        env.payload.type_url = f"type.googleapis.com/{name}"
        env.payload.value = payload
        data = env.SerializeToString()
        c.add(f"{name}", data)
        if i < 3:
            c.add(f"{name}-bad-id", data + ld(1, b"not-a-uuid"))
            c.add(f"{name}-payload-bad-utf8", data + ld(4, b"\xff\xfe"))
    return c.n


def seeds_render():
    c = Corpus("fuzz_render")
    names = sorted(p.stem for p in (REPO / "services/notifier/templates/en").glob("*.txt"))
    keys = ["account_a", "account_b", "account_name", "client_name", "detail", "employee_email",
            "employee_name", "expire_time", "link", "organization_id", "partner_name", "reason",
            "recipient_name", "sensitive_hub_id"]
    date = struct.pack("<q", NOW)
    for i, name in enumerate(names):
        vars_ok = b"".join(k.encode() + b"\0" + f"Zoë {k}".encode() + b"\0" for k in keys)
        c.add(f"{name}-en", bytes([i, 0]) + date + vars_ok)
        c.add(f"{name}-ja", bytes([i, 3]) + date + vars_ok)
        c.add(f"{name}-locale-text", bytes([i, 0xff]) + date + b"it-IT\0" + vars_ok)
    inject = b"client_name\0Evil\r\nBcc: x@y\0recipient_name\0" + "名前".encode() * 30 + b"\0"
    c.add("header-injection", bytes([0, 1]) + date + inject)
    c.add("from-brackets", bytes([1, 2]) + date + b"x\0Name <a@b\0")
    return c.n


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build-dir", default=str(REPO / "build-fuzz"))
    args = ap.parse_args()
    global BUILD
    BUILD = Path(args.build_dir)
    pool = load_pool(BUILD / "orgmesh.desc")
    counts = {
        "fuzz_rpc": seeds_rpc(pool, BUILD), "fuzz_idem": seeds_idem(pool, BUILD), "fuzz_auth": seeds_auth(),
        "fuzz_page": seeds_page(), "fuzz_evt": seeds_evt(pool), "fuzz_render": seeds_render(),
    }
    for t, n in counts.items():
        print(f"{t}: {n} seeds")


if __name__ == "__main__":
    sys.exit(main())

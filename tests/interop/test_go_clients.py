"""A Go client drives the running suite (tests/interop/go/).

tests/interop/go/build.sh generates Go stubs from proto/ with Debian's protoc,
protoc-gen-go and protoc-gen-go-grpc and builds the scenario offline against
Debian's Go packages (GOPATH mode, GO111MODULE=off, GOPROXY=off) into
<build>/go-clients; its Go build cache is kept there, so a second run only
links. The scenario (go/scenario/main.go) makes accounts, users and
memberships through the accounts API, then: an organization (refused first
without MFA: MFA_REQUIRED read from the ErrorInfo), connections and the hot
checks (SAME_ACCOUNT), the partner access flow (tag, assign, token, approve;
NOT_PARTNER_ACCOUNT), and a copy job when the assets service implements it.
This file only starts the services and mints the tokens a real identity
provider would hand out."""

import json
import os
import random
import shutil
import subprocess
import time

import pytest

import orgmesh_testlib as om

OM_SERVICES = ["accounts", "organizations", "connections", "partners"] + \
    (["assets"] if om.binary("assets").is_file() else [])
# Alone on the stack: the services consume each other's events through the
# shared Redis.
pytestmark = pytest.mark.exclusive_stack
OM_SERVICE_ENV = {"organizations": {"ORGMESH_EVT_CLAIM_IDLE_MS": "1000"},
                  "connections": {"ORGMESH_EVT_CLAIM_IDLE_MS": "1000"}}

DEBIAN_PKGS = ["golang-go", "golang-google-grpc-dev", "golang-goprotobuf-dev", "protoc-gen-go-grpc",
               "golang-google-genproto-dev", "protobuf-compiler"]
HERE = os.path.dirname(os.path.abspath(__file__))


def _ensure_go_toolchain():
    """Installs the Debian packages the Go client needs when one is missing
    (as deploy/local/install-deps would)."""
    def installed(p):
        r = subprocess.run(["dpkg-query", "-W", "-f=${Status}", p], capture_output=True, text=True)
        return r.stdout == "install ok installed"
    missing = [p for p in DEBIAN_PKGS if not installed(p)]
    if not missing:
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.fail(f"Debian packages missing: {' '.join(missing)} (run deploy/local/install-deps)",
                    pytrace=False)
    subprocess.run(["apt-get", "install", "-y", "-q", "-o", "DPkg::Lock::Timeout=600", *missing],
                   check=True, stdin=subprocess.DEVNULL,
                   env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))


@pytest.fixture(scope="module")
def go_scenario():
    _ensure_go_toolchain()
    out = om.build_dir() / "go-clients"
    t0 = time.monotonic()
    r = subprocess.run([os.path.join(HERE, "go", "build.sh"), str(out)], capture_output=True, text=True,
                       timeout=900)
    print(f"go build: {time.monotonic() - t0:.1f} s")
    assert r.returncode == 0, f"go/build.sh failed:\n{r.stdout}\n{r.stderr}"
    return out / "bin" / "orgmesh-go-scenario"


def scenario_input(suite):
    def uid():
        return random.randrange(10**12, 9 * 10**15)
    users = {}
    for name in ("owner", "seated", "manager", "employee", "client_admin"):
        i = uid()
        users[name] = {"id": i, "token": om.mfa_token(i), "token_no_mfa": om.user_token(i)}
    return {
        "addr": {n: suite.addr(n) for n in OM_SERVICES},
        "tokens": {"admin": om.service_token("provisioning"), "checker": om.service_token("crm"),
                   "notifier": om.service_token("notifier")},
        "users": users,
    }


def test_go_client_scenario(suite, go_scenario):
    env = dict(os.environ, OM_SCENARIO=json.dumps(scenario_input(suite)))
    t0 = time.monotonic()
    r = subprocess.run([str(go_scenario)], env=env, capture_output=True, text=True, timeout=300)
    print(r.stdout)
    print(f"go scenario: {time.monotonic() - t0:.1f} s")
    assert r.returncode == 0, f"Go scenario failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
    out = r.stdout
    assert "SCENARIO OK" in out
    for line in ("ok organizations:", "ok connections:", "ok partners:"):
        assert line in out
    assert "ok assets:" in out or "skip assets:" in out
    if "ok assets:" in out:
        assert "error-details assets.CopyAssets same account: code=" in out and "reason=SAME_ACCOUNT domain=assets" in out
    # The ErrorInfo of each refused call, as Go decoded it.
    for what, reason in (("organizations.CreateOrganization without MFA", "MFA_REQUIRED"),
                         ("connections.CheckMirrorAccess same account", "SAME_ACCOUNT"),
                         ("partners.TagEmployees on a client account", "NOT_PARTNER_ACCOUNT")):
        assert f"error-details {what}: " in out and f"reason={reason} " in out, out

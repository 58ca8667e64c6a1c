"""A Node.js client drives the running suite (tests/interop/node/), twice:
with stubs made at run time by @grpc/proto-loader (`dynamic`) and with code
generated ahead of time by protoc and @bufbuild/protoc-gen-es (`static`), both
over @grpc/grpc-js.

tests/interop/node/build.sh installs the npm packages into <repo>/.tools once
(skipped when present) and generates the static code into <build>/node-clients.
The scenario (node/scenario.mjs, the same as the Go client's) makes accounts,
users and memberships through the accounts API, then: an organization (refused
first without MFA: MFA_REQUIRED read from the google.rpc.ErrorInfo in the
grpc-status-details-bin trailer), connections and the hot checks
(SAME_ACCOUNT), the partner access flow (tag, assign, token, approve;
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

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = om.build_dir() / "node-clients"


@pytest.fixture(scope="module")
def node_ready():
    if not shutil.which("node"):
        pytest.fail("node is missing (deploy/local/install-deps installs nodejs and npm)", pytrace=False)
    t0 = time.monotonic()
    r = subprocess.run([os.path.join(HERE, "node", "build.sh"), str(OUT)], capture_output=True, text=True,
                       timeout=600)
    print(f"node build: {time.monotonic() - t0:.1f} s")
    assert r.returncode == 0, f"node/build.sh failed:\n{r.stdout}\n{r.stderr}"


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


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_node_client_scenario(suite, node_ready, mode):
    env = dict(os.environ, OM_SCENARIO=json.dumps(scenario_input(suite)), OM_NODE_GEN=str(OUT / "gen"))
    t0 = time.monotonic()
    r = subprocess.run(["node", os.path.join(HERE, "node", "scenario.mjs"), mode], env=env,
                       capture_output=True, text=True, timeout=300)
    print(r.stdout)
    print(f"node scenario ({mode}): {time.monotonic() - t0:.1f} s")
    assert r.returncode == 0, f"Node scenario ({mode}) failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
    out = r.stdout
    assert f"mode {mode}" in out and "SCENARIO OK" in out
    for line in ("ok organizations:", "ok connections:", "ok partners:"):
        assert line in out
    assert "ok assets:" in out or "skip assets:" in out
    if "ok assets:" in out:
        assert "error-details assets.CopyAssets same account: code=" in out and "reason=SAME_ACCOUNT domain=assets" in out
    # The ErrorInfo of each refused call, as Node decoded it.
    for what, reason in (("organizations.CreateOrganization without MFA", "MFA_REQUIRED"),
                         ("connections.CheckMirrorAccess same account", "SAME_ACCOUNT"),
                         ("partners.TagEmployees on a client account", "NOT_PARTNER_ACCOUNT")):
        assert f"error-details {what}: code=" in out and f"reason={reason} " in out, out

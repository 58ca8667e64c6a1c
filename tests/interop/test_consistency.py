"""Issue 18: consistency tokens (CONN-13), batch checks (CONN-14) and the
WORKFLOWS feature (CONN-10..CONN-12) of the connections service, next to real
accounts and organizations services.

The test that matters: a revocation (a seat taken in accounts, a connection
turned off in connections, an account removed from its organization, sensitive
data turned on) followed by a check carrying the revocation's token is denied
every time — 10,000 token-carrying checks from 8 threads in the release build
(half after revocations, which must be denied, half after the restores, which
must be allowed; 2,000 under the sanitizers; OM_CONSISTENCY_ITERATIONS
overrides), zero wrong answers.
With at_least_as_fresh answering from the cache as minimize_latency does, it
fails within the first few hundred (checked by hand when it was written)."""

import base64
import hashlib
import hmac
import os
import struct
import threading
import time
import uuid

import grpc
import pytest
from google.protobuf import field_mask_pb2

import orgmesh_testlib as om
from orgmesh.accounts.v1 import accounts_pb2 as apb
from orgmesh.connections.v1 import connections_pb2 as cpb
from orgmesh.connections.v1 import events_pb2 as cev
from orgmesh.organizations.v1 import organizations_pb2 as opb
from test_connections import SVC, World, conn_events, fs, pair, psql, random_id

OM_SERVICES = ["accounts", "organizations", "connections", "partners"]
# Run alone: the stack's Redis streams are shared (see test_connections.py).
pytestmark = pytest.mark.exclusive_stack
OM_SERVICE_ENV = {"organizations": {"ORGMESH_EVT_CLAIM_IDLE_MS": "1000"},
                  "connections": {"ORGMESH_EVT_CLAIM_IDLE_MS": "1000", "ORGMESH_CONN_FRESH_WAIT_MS": "5000"}}

D = cpb.Direction
R = cpb.DenialReason
OP = cpb.ConnectionChange.Operation
SANITIZED = "asan" in str(om.build_dir())
ITERATIONS = int(os.environ.get("OM_CONSISTENCY_ITERATIONS", "2000" if SANITIZED else "10000"))
THREADS = int(os.environ.get("OM_CONSISTENCY_THREADS", "8"))
READERS = 4


@pytest.fixture
def w(suite):
    return World(suite)


def fresh(token):
    return cpb.Consistency(at_least_as_fresh=token)


RETRIES = [0]


def mirror(w, user, s, t, consistency=None, timeout=None, retry=False):
    """CheckMirrorAccess; with retry, a CONSISTENCY_NOT_REACHED answer (the
    service would rather not answer than answer from an older state) is
    retried as its message says, at most 5 times, and counted."""
    req = cpb.CheckMirrorAccessRequest(user_id=user, source_hub_id=s, target_hub_id=t, consistency=consistency)
    for attempt in range(6):
        try:
            r = w.conn.CheckMirrorAccess(req, metadata=om.bearer(SVC), timeout=timeout)
            return r.allowed, r.reason
        except grpc.RpcError as e:
            if not retry or attempt == 5 or om.error_details(e).reason != "CONSISTENCY_NOT_REACHED":
                raise
            RETRIES[0] += 1
            time.sleep(0.01 * 2 ** attempt)  # the client's backoff before a retry


def workflow(w, s, t, consistency=None):
    r = w.conn.CheckWorkflowWrite(cpb.CheckWorkflowWriteRequest(source_hub_id=s, target_hub_id=t,
                                                                consistency=consistency), metadata=om.bearer(SVC))
    return r.allowed, r.reason


def member(w, hub, user, seats):
    """A membership with seats, and waits (through its token) until the
    connections service has it: later tokens of other services then name
    a state that includes it (an applied event stays applied)."""
    m = apb.Membership(hub_id=hub, user_id=user, seats=list(seats))
    tok = w.acc.CreateMembership(apb.CreateMembershipRequest(membership=m), metadata=om.bearer(
        om.service_token("provisioning"))).consistency_token
    assert tok
    mirror(w, user, hub + 1, hub, fresh(tok), retry=True)


def set_seats(w, hub, user, seats):
    m = apb.Membership(hub_id=hub, user_id=user, seats=list(seats))
    return w.acc.UpdateMembership(apb.UpdateMembershipRequest(
        membership=m, update_mask=field_mask_pb2.FieldMask(paths=["seats"])), metadata=om.bearer(
        om.service_token("provisioning"))).consistency_token


def set_mirroring(w, user, org, a, b, setting):
    return w.batch(user, org, a, [cpb.ConnectionChange(operation=OP.OPERATION_UPDATE, account_a=a, account_b=b,
                                                       mirroring=setting)]).consistency_token


def mint(events, key=om.PAGE_TOKEN_KEY, version=1, issued_ms=None):
    """A consistency token as common/ctoken.c builds it (docs/common/ctoken.md),
    for tokens the services never issued: an event not applied yet, another
    cluster's key, a newer format."""
    k = hmac.new(key.encode(), b"orgmesh consistency token v1", hashlib.sha256).digest()
    raw = bytes([version, len(events)]) + struct.pack(">q", issued_ms or int(time.time() * 1000))
    for service, ev in events:
        raw += bytes([service]) + uuid.UUID(ev).bytes
    raw += hmac.new(k, raw, hashlib.sha256).digest()[:16]
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


# ---- CONN-13: the revocation test ------------------------------------------------------

def test_conn_13_revocation_then_check_with_its_token_is_denied_every_time(w, record_property):
    """ITERATIONS token-carrying checks from THREADS threads, each thread on
    its own organization with READERS readers (SALES seats in T). Turns
    alternate: (1) take one reader's seat in T (accounts -> event ->
    connections' copy), check that reader with the token: denied; give it
    back, check: allowed. (2) turn mirroring S->T off (connections' own
    write), check every reader with the token in one BatchCheckMirrorAccess
    (one check per item): all denied; turn it on, check: all allowed."""
    per_cycle = 2 + 2 * READERS
    cycles = max(1, ITERATIONS // (per_cycle * THREADS))
    worlds = [None] * THREADS
    ready = threading.Barrier(THREADS + 1)
    wrong, errors, checks = [], [], [0] * THREADS
    allowed = (True, R.DENIAL_REASON_UNSPECIFIED)

    def batch(a, b, readers, tok):
        for attempt in range(6):
            try:
                r = w.conn.BatchCheckMirrorAccess(cpb.BatchCheckMirrorAccessRequest(
                    items=[cpb.MirrorAccessItem(user_id=x, source_hub_id=a, target_hub_id=b) for x in readers],
                    consistency=fresh(tok)), metadata=om.bearer(SVC))
                return [(x.allowed, x.reason) for x in r.results]
            except grpc.RpcError as e:
                if attempt == 5 or om.error_details(e).reason != "CONSISTENCY_NOT_REACHED":
                    raise
                RETRIES[0] += 1
                time.sleep(0.01 * 2 ** attempt)

    def setup(k):
        """Each thread builds its own organization (in parallel: the setup
        is most of the time on a busy machine)."""
        u = w.user()
        org, (a, b, c) = w.organization(u)
        readers = [w.user() for _ in range(READERS)]
        for r in readers:
            member(w, b, r, [apb.SEAT_SALES])
        tok = w.quick(u, org, a).consistency_token
        assert mirror(w, readers[0], a, b, fresh(tok), retry=True) == allowed
        worlds[k] = (u, org, a, b, readers)

    def run(k):
        try:
            setup(k)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append((k, "setup", repr(e)))
        ready.wait()
        if worlds[k] is None:
            return
        u, org, a, b, readers = worlds[k]
        try:
            for i in range(cycles):
                reader = readers[i % READERS]
                tok = set_seats(w, b, reader, [])
                assert tok, "a revocation returned no consistency token"
                if (got := mirror(w, reader, a, b, fresh(tok), retry=True)) != (False, R.DENIAL_REASON_NO_SEAT):
                    wrong.append((k, i, "seat taken", got))
                tok = set_seats(w, b, reader, [apb.SEAT_SALES])
                if (got := mirror(w, reader, a, b, fresh(tok), retry=True)) != allowed:
                    wrong.append((k, i, "seat given back", got))
                tok = set_mirroring(w, u, org, a, b, fs(D.DIRECTION_OFF))
                assert tok, "a revocation returned no consistency token"
                for got in batch(a, b, readers, tok):
                    if got != (False, R.DENIAL_REASON_DIRECTION_NOT_ALLOWED):
                        wrong.append((k, i, "mirroring off", got))
                tok = set_mirroring(w, u, org, a, b, fs(D.DIRECTION_BOTH))
                for got in batch(a, b, readers, tok):
                    if got != allowed:
                        wrong.append((k, i, "mirroring on", got))
                checks[k] += per_cycle
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append((k, repr(e)))

    threads = [threading.Thread(target=run, args=(k,)) for k in range(THREADS)]
    t_setup = time.monotonic()
    for t in threads:
        t.start()
    ready.wait()
    t0 = time.monotonic()
    for t in threads:
        t.join()
    took = time.monotonic() - t0
    summary = (f"{sum(checks)} token-carrying checks ({sum(checks) // 2} after revocations) from {THREADS} threads"
               f" in {took:.1f} s (setup {t0 - t_setup:.1f} s); wrong answers: {len(wrong)}; retried (CONSISTENCY_NOT_REACHED): {RETRIES[0]}")
    print(summary)
    record_property("consistency_summary", summary)
    assert not errors, errors[:5]
    assert sum(checks) == cycles * per_cycle * THREADS
    assert not wrong, f"{len(wrong)} wrong answers, e.g. {wrong[:5]}"


def test_conn_13_org_member_removed_then_check_with_its_token_is_denied(w):
    """The organizations service's revocation: an account leaves, and a check
    carrying the RemoveOrgMember token never sees the old membership (the
    connection ends through the event, CONN-09)."""
    for _ in range(4 if SANITIZED else 8):
        u = w.user()
        org, (a, b, c) = w.organization(u)
        reader = w.user()
        member(w, c, reader, [apb.SEAT_SERVICE])
        tok = w.quick(u, org, a).consistency_token
        assert mirror(w, reader, b, c, fresh(tok)) == (True, R.DENIAL_REASON_UNSPECIFIED)
        r = w.org.RemoveOrgMember(opb.RemoveOrgMemberRequest(organization_id=org, acting_hub_id=a, hub_id=b),
                                  metadata=om.as_user(u))
        assert r.consistency_token
        assert mirror(w, reader, b, c, fresh(r.consistency_token)) == (
            False, R.DENIAL_REASON_NOT_SAME_ORGANIZATION)


def test_conn_13_sensitive_data_on_then_check_with_its_token_is_denied(w):
    """The accounts service's revocation through CONN-05/CONN-11: S turns
    sensitive data on; checks carrying UpdateAccount's token refuse S as a
    mirroring and as a workflow source."""
    for _ in range(4 if SANITIZED else 8):
        u = w.user()
        org, (a, b, c) = w.organization(u)
        reader = w.user()
        member(w, b, reader, [apb.SEAT_SALES])
        tok = w.quick(u, org, a).consistency_token
        assert mirror(w, reader, a, b, fresh(tok)) == (True, R.DENIAL_REASON_UNSPECIFIED)
        assert workflow(w, a, b, fresh(tok)) == (True, R.DENIAL_REASON_UNSPECIFIED)
        acct = apb.Account(hub_id=a, sensitive_data_enabled=True)
        tok = w.acc.UpdateAccount(apb.UpdateAccountRequest(
            account=acct, update_mask=field_mask_pb2.FieldMask(paths=["sensitive_data_enabled"])),
            metadata=om.bearer(om.service_token("provisioning"))).consistency_token
        assert tok
        assert mirror(w, reader, a, b, fresh(tok))[0] is False
        assert workflow(w, a, b, fresh(tok))[0] is False


def test_conn_13_fully_consistent_reads_the_committed_state(w):
    """A change written behind the service's back (no NOTIFY): the cache keeps
    answering the old state (minimize_latency, within the TTL), fully_consistent
    answers the committed one at once."""
    u = w.user()
    org, (a, b, c) = w.organization(u)
    reader = w.user()
    member(w, b, reader, [apb.SEAT_SALES])
    tok = w.quick(u, org, a).consistency_token
    assert mirror(w, reader, a, b, fresh(tok)) == (True, 0)
    x, y = pair(a, b)
    psql(f"UPDATE connections.connections SET mirroring = 1 WHERE account_a = {x} AND account_b = {y}")
    full = cpb.Consistency(fully_consistent=True)
    assert mirror(w, reader, a, b, full) == (False, R.DENIAL_REASON_DIRECTION_NOT_ALLOWED)
    r = w.conn.CheckAssetCopy(cpb.CheckAssetCopyRequest(source_hub_id=a, target_hub_id=b, consistency=full),
                              metadata=om.bearer(SVC))
    assert r.allowed


def test_conn_13_mutations_return_tokens_validate_only_does_not(w):
    u = w.user()
    org, (a, b, c) = w.organization(u)
    assert w.quick(u, org, a, validate_only=True).consistency_token == ""
    t1 = w.quick(u, org, a).consistency_token
    assert t1 and set(t1) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert w.quick(u, org, a).consistency_token == ""        # nothing changed: no event, no token
    reader = w.user()
    member(w, b, reader, [apb.SEAT_SALES])
    assert set_seats(w, b, reader, [apb.SEAT_SERVICE])


def test_conn_13_foreign_or_edited_token_is_invalid_argument(w):
    u = w.user()
    org, (a, b, c) = w.organization(u)
    reader = w.user()
    tok = w.quick(u, org, a).consistency_token
    edited = tok[:-2] + ("AA" if tok[-2:] != "AA" else "BB")
    other_cluster = mint([(3, str(uuid.uuid4()))], key="another-cluster-key")
    newer = mint([(3, str(uuid.uuid4()))], version=2)
    for bad in ["", "not a token", edited, other_cluster, newer]:
        with om.raises_rpc(grpc.StatusCode.INVALID_ARGUMENT, "INVALID_CONSISTENCY_TOKEN"):
            mirror(w, reader, a, b, fresh(bad))
        with om.raises_rpc(grpc.StatusCode.INVALID_ARGUMENT, "INVALID_CONSISTENCY_TOKEN"):
            w.conn.BatchCheckAssetCopy(cpb.BatchCheckAssetCopyRequest(
                items=[cpb.FlowItem(source_hub_id=a, target_hub_id=b)], consistency=fresh(bad)),
                metadata=om.bearer(SVC))
    # the same layout with this cluster's key is accepted (mint is faithful)
    assert mirror(w, reader, a, b, fresh(mint([(3, str(uuid.uuid4()))])))[0] is False


def test_conn_13_token_not_reached_in_time_is_unavailable_not_an_answer(w):
    """A token naming an accounts event this service has not applied: it waits
    (bounded by the deadline) and then refuses to answer rather than answer
    from an older state."""
    u = w.user()
    org, (a, b, c) = w.organization(u)
    never = mint([(1, str(uuid.uuid4()))])
    t0 = time.monotonic()
    with om.raises_rpc(grpc.StatusCode.UNAVAILABLE, "CONSISTENCY_NOT_REACHED"):
        mirror(w, u, a, b, fresh(never), timeout=0.6)
    assert time.monotonic() - t0 < 0.6
    # an old token (issued before applied_events' retention) asks for nothing
    old = mint([(1, str(uuid.uuid4()))], issued_ms=int(time.time() * 1000) - 200 * 3600 * 1000)
    assert mirror(w, u, a, b, fresh(old))[0] is False


# ---- CONN-14: batch checks -------------------------------------------------------------

def test_conn_14_batch_checks_answer_each_item_in_order_as_the_single_check(w):
    u = w.user()
    org, (a, b, c) = w.organization(u)
    reader = w.user()
    member(w, b, reader, [apb.SEAT_SALES])
    tok = w.quick(u, org, a).consistency_token
    set_mirroring(w, u, org, a, c, fs(D.DIRECTION_ONE_WAY, c))
    outsider = 10**15 + 7
    pairs = [(s, t) for s in (a, b, c, outsider) for t in (a, b, c) if s != t]
    items = [cpb.MirrorAccessItem(user_id=reader, source_hub_id=s, target_hub_id=t) for s, t in pairs]
    items.append(cpb.MirrorAccessItem(user_id=reader, source_hub_id=a, target_hub_id=a))  # its own error
    full = cpb.Consistency(fully_consistent=True)
    r = w.conn.BatchCheckMirrorAccess(cpb.BatchCheckMirrorAccessRequest(items=items, consistency=full),
                                      metadata=om.bearer(SVC))
    assert len(r.results) == len(items)
    for (s, t), res in zip(pairs, r.results):
        assert res.status.code == 0
        assert (res.allowed, res.reason) == mirror(w, reader, s, t, full), (s, t)
    last = r.results[-1]
    assert last.status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert last.status.error_reason == "SAME_ACCOUNT" and not last.allowed
    # asset copying and workflows, with the token
    flow = [cpb.FlowItem(source_hub_id=s, target_hub_id=t) for s, t in pairs]
    ra = w.conn.BatchCheckAssetCopy(cpb.BatchCheckAssetCopyRequest(items=flow, consistency=fresh(tok)),
                                    metadata=om.bearer(SVC))
    rw = w.conn.BatchCheckWorkflowWrite(cpb.BatchCheckWorkflowWriteRequest(items=flow, consistency=fresh(tok)),
                                        metadata=om.bearer(SVC))
    for (s, t), x, y in zip(pairs, ra.results, rw.results):
        single = w.conn.CheckAssetCopy(cpb.CheckAssetCopyRequest(source_hub_id=s, target_hub_id=t, consistency=full),
                                       metadata=om.bearer(SVC))
        assert (x.allowed, x.reason) == (single.allowed, single.reason)
        assert (y.allowed, y.reason) == workflow(w, s, t, full)
    # cached (minimize_latency) batch: same answers
    again = w.conn.BatchCheckMirrorAccess(cpb.BatchCheckMirrorAccessRequest(items=items), metadata=om.bearer(SVC))
    assert [(x.allowed, x.reason) for x in again.results] == [(x.allowed, x.reason) for x in r.results]


def test_conn_14_batch_size_is_1_to_100_and_items_are_authorized_each(w):
    u = w.user()
    org, (a, b, c) = w.organization(u)
    w.quick(u, org, a)
    other = w.user()
    for n in (0, 101):
        with om.raises_rpc(grpc.StatusCode.INVALID_ARGUMENT) as e:
            w.conn.BatchCheckMirrorAccess(cpb.BatchCheckMirrorAccessRequest(
                items=[cpb.MirrorAccessItem(user_id=u, source_hub_id=a, target_hub_id=b)] * n),
                metadata=om.bearer(SVC))
        assert "items" in e.details.violations
        with om.raises_rpc(grpc.StatusCode.INVALID_ARGUMENT) as e:
            w.conn.BatchCheckAssetCopy(cpb.BatchCheckAssetCopyRequest(
                items=[cpb.FlowItem(source_hub_id=a, target_hub_id=b)] * n), metadata=om.bearer(SVC))
        assert "items" in e.details.violations
    ok = w.conn.BatchCheckMirrorAccess(cpb.BatchCheckMirrorAccessRequest(
        items=[cpb.MirrorAccessItem(user_id=u, source_hub_id=a, target_hub_id=b)] * 100), metadata=om.bearer(SVC))
    assert len(ok.results) == 100
    # a user asks: only about themselves (mirror), only as a member of S or T (flows)
    r = w.conn.BatchCheckMirrorAccess(cpb.BatchCheckMirrorAccessRequest(items=[
        cpb.MirrorAccessItem(user_id=u, source_hub_id=a, target_hub_id=b),
        cpb.MirrorAccessItem(user_id=other, source_hub_id=a, target_hub_id=b)]), metadata=om.as_user(u))
    assert r.results[0].status.code == 0
    assert r.results[1].status.code == grpc.StatusCode.PERMISSION_DENIED.value[0]
    r = w.conn.BatchCheckAssetCopy(cpb.BatchCheckAssetCopyRequest(items=[
        cpb.FlowItem(source_hub_id=a, target_hub_id=b)]), metadata=om.as_user(other))
    assert r.results[0].status.code == grpc.StatusCode.PERMISSION_DENIED.value[0]
    assert r.results[0].status.error_reason == "PERMISSION_DENIED"


# ---- CONN-10..CONN-12: workflows -------------------------------------------------------

def test_conn_10_workflows_is_a_directional_feature_of_each_connection(w):
    u = w.user()
    org, (a, b, c) = w.organization(u)
    r = w.add(u, org, a, a, [b], workflows=fs(D.DIRECTION_ONE_WAY, a))
    (conn,) = r.connections
    assert (conn.workflows.direction, conn.workflows.source_hub_id) == (D.DIRECTION_ONE_WAY, a)
    assert conn.mirroring.direction == D.DIRECTION_OFF
    full = cpb.Consistency(fully_consistent=True)
    assert workflow(w, a, b, full) == (True, 0)
    assert workflow(w, b, a, full) == (False, R.DENIAL_REASON_DIRECTION_NOT_ALLOWED)
    assert workflow(w, a, c, full) == (False, R.DENIAL_REASON_NOT_CONNECTED)
    tok = w.batch(u, org, a, [cpb.ConnectionChange(operation=OP.OPERATION_UPDATE, account_a=a, account_b=b,
                                                   workflows=fs(D.DIRECTION_BOTH))]).consistency_token
    assert workflow(w, b, a, fresh(tok)) == (True, 0)
    # all_features includes workflows
    tok = w.batch(u, org, a, [cpb.ConnectionChange(operation=OP.OPERATION_UPDATE, account_a=a, account_b=b,
                                                   all_features=fs(D.DIRECTION_OFF))]).consistency_token
    assert workflow(w, a, b, fresh(tok)) == (False, R.DENIAL_REASON_DIRECTION_NOT_ALLOWED)
    with om.raises_rpc(grpc.StatusCode.INVALID_ARGUMENT):
        w.batch(u, org, a, [cpb.ConnectionChange(operation=OP.OPERATION_UPDATE, account_a=a, account_b=b,
                                                 all_features=fs(D.DIRECTION_OFF), workflows=fs(D.DIRECTION_BOTH))])
    with om.raises_rpc(grpc.StatusCode.INVALID_ARGUMENT, "SAME_ACCOUNT"):
        workflow(w, a, a)


def test_conn_11_sensitive_account_is_never_a_workflow_source(w):
    u = w.user()
    org, (a, b, c) = w.organization(u, sensitive=(1,))
    # refused at write time
    with om.raises_rpc(grpc.StatusCode.FAILED_PRECONDITION, "SENSITIVE_DATA_SOURCE"):
        w.add(u, org, a, b, [c], workflows=fs(D.DIRECTION_ONE_WAY, b))
    with om.raises_rpc(grpc.StatusCode.FAILED_PRECONDITION, "SENSITIVE_DATA_SOURCE"):
        w.add(u, org, a, b, [c], workflows=fs(D.DIRECTION_BOTH))
    # quick connect (CONN-02) includes workflows, one-way into the sensitive account
    got = {(x.account_a, x.account_b): x for x in w.quick(u, org, a).connections}
    ab = got[pair(a, b)]
    assert (ab.workflows.direction, ab.workflows.source_hub_id) == (D.DIRECTION_ONE_WAY, a)
    ac = got[pair(a, c)]
    assert ac.workflows.direction == D.DIRECTION_BOTH
    # turning sensitive data on later restricts workflows automatically
    acct = apb.Account(hub_id=c, sensitive_data_enabled=True)
    tok = w.acc.UpdateAccount(apb.UpdateAccountRequest(
        account=acct, update_mask=field_mask_pb2.FieldMask(paths=["sensitive_data_enabled"])),
        metadata=om.bearer(om.service_token("provisioning"))).consistency_token
    assert workflow(w, c, a, fresh(tok)) == (False, R.DENIAL_REASON_DIRECTION_NOT_ALLOWED)
    assert workflow(w, a, c, fresh(tok)) == (True, 0)
    ac = w.pairs(u, org)[pair(a, c)]
    assert (ac.workflows.direction, ac.workflows.source_hub_id) == (D.DIRECTION_ONE_WAY, a)
    ev = {(m.after.account_a, m.after.account_b): m for _, m in conn_events(cev.ConnectionRestricted, org)
          if m.sensitive_hub_id == c}
    assert ev[pair(a, c)].after.workflows.direction == D.DIRECTION_ONE_WAY           # BOTH -> into c
    assert ev[pair(b, c)].after.workflows.direction == D.DIRECTION_OFF               # one-way out of c -> OFF
    # read time: a sensitive source never writes, whatever the configuration says
    x, y = pair(a, b)
    psql(f"UPDATE connections.connections SET workflows = 2, workflows_source = 0"
         f" WHERE account_a = {x} AND account_b = {y}")
    assert workflow(w, b, a, cpb.Consistency(fully_consistent=True)) == (False, R.DENIAL_REASON_SENSITIVE_SOURCE)


def test_conn_12_check_workflow_write_is_asked_by_services_or_members(w):
    u = w.user()
    org, (a, b, c) = w.organization(u)
    w.quick(u, org, a)
    outsider = w.user()
    r = w.conn.CheckWorkflowWrite(cpb.CheckWorkflowWriteRequest(source_hub_id=a, target_hub_id=b),
                                  metadata=om.as_user(u))
    assert r.allowed
    with om.raises_rpc(grpc.StatusCode.PERMISSION_DENIED):
        w.conn.CheckWorkflowWrite(cpb.CheckWorkflowWriteRequest(source_hub_id=a, target_hub_id=b),
                                  metadata=om.as_user(outsider))


def test_conn_13_partner_access_change_token_names_the_linked_membership(w, suite):
    """A partner access change adds or removes a membership in the client
    account through the accounts service (PART-05, PART-07): its token names
    that accounts commit, so a check by the employee carrying it sees the
    membership come and go (CheckAssetCopy: members of S or T only)."""
    from orgmesh.partners.v1 import partners_pb2 as ppb
    from orgmesh.partners.v1 import partners_pb2_grpc as pgrpc
    p = suite.stub("partners", pgrpc.PartnersServiceStub)
    admin = om.bearer(om.service_token("provisioning"))
    m, e = w.user(), w.user()
    partner = w.acc.CreateAccount(apb.CreateAccountRequest(account=apb.Account(
        hub_id=random_id(), name=f"agency-{uuid.uuid4().hex[:8]}", kind=apb.ACCOUNT_KIND_PARTNER,
        hosting_location="na1")), metadata=admin).account.hub_id
    w.member(partner, m, [apb.ROLE_SUPER_ADMIN])
    w.member(partner, e)
    assert p.TagEmployees(ppb.TagEmployeesRequest(partner_hub_id=partner, user_ids=[e]),
                          metadata=om.as_user(m)).results[0].status == ppb.ITEM_STATUS_DONE
    u = w.user()
    org, (a, b, c) = w.organization(u)
    tok = w.quick(u, org, a).consistency_token
    check = lambda t: w.conn.CheckAssetCopy(cpb.CheckAssetCopyRequest(  # noqa: E731
        source_hub_id=a, target_hub_id=b, consistency=fresh(t)), metadata=om.as_user(e))
    with om.raises_rpc(grpc.StatusCode.PERMISSION_DENIED):
        check(tok)
    r = p.AssignClientsToEmployee(ppb.AssignClientsToEmployeeRequest(
        partner_hub_id=partner, employee_user_id=e, client_hub_ids=[a]), metadata=om.as_user(m)).results[0]
    approved = p.ApproveAccessRequest(ppb.ApproveAccessRequestRequest(
        access_request_id=r.access_request.access_request_id, roles=[apb.ROLE_MARKETING_ACCESS]),
        metadata=om.as_user(u))
    assert approved.consistency_token
    assert check(approved.consistency_token).allowed
    removed = p.RemoveEmployeeFromClient(ppb.RemoveEmployeeFromClientRequest(
        partner_hub_id=partner, employee_user_id=e, client_hub_id=a, confirmation="REMOVE"),
        metadata=om.as_user(m))
    assert removed.membership_removed and removed.consistency_token
    with om.raises_rpc(grpc.StatusCode.PERMISSION_DENIED):
        check(removed.consistency_token)

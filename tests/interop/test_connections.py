"""The connections service (SPEC 4, CONN-01..CONN-09) driven through its gRPC
API from Python, next to real accounts and organizations services: accounts,
users, memberships and seats are made with the accounts service's RPCs,
organizations with the organizations service's (MFA token and data-sharing
acknowledgement, as a user would), and the automatic rules (CONN-05, CONN-09)
are triggered by changing accounts and organizations there.

Events are read back from the connections service's outbox (the log of
record, SPEC 2) with psql. The freshness bound of CONN-09 is measured: after a
committed change the hot checks answer the new truth within 1 s."""

import base64
import os
import subprocess
import threading
import time
import uuid
import random

import grpc
import pytest
from google.protobuf import field_mask_pb2

import orgmesh_testlib as om
from orgmesh.accounts.v1 import accounts_pb2 as apb
from orgmesh.accounts.v1 import accounts_pb2_grpc as agrpc
from orgmesh.connections.v1 import connections_pb2 as cpb
from orgmesh.connections.v1 import connections_pb2_grpc as cgrpc
from orgmesh.connections.v1 import events_pb2 as cev
from orgmesh.events.v1 import envelope_pb2
from orgmesh.organizations.v1 import organizations_pb2 as opb
from orgmesh.organizations.v1 import organizations_pb2_grpc as ogrpc

OM_SERVICES = ["accounts", "organizations", "connections"]
# Run alone: the stack's Redis streams and consumer groups are shared by every
# test database, so another file's organizations service would take the
# accounts events this file waits for (and the timing bounds need a quiet box).
pytestmark = pytest.mark.exclusive_stack
OM_SERVICE_ENV = {"organizations": {"ORGMESH_EVT_CLAIM_IDLE_MS": "1000"},
                  "connections": {"ORGMESH_EVT_CLAIM_IDLE_MS": "1000"}}

ADMIN = om.service_token("provisioning")
SVC = om.service_token("crm")
MKT_ENT = [(apb.HUB_MARKETING, apb.TIER_ENTERPRISE)]
PRO = [(apb.HUB_SALES, apb.TIER_PROFESSIONAL)]
ACK = opb.DataSharingAcknowledgement(accepted=True, text_version="2023-06")
D = cpb.Direction
R = cpb.DenialReason
OP = cpb.ConnectionChange.Operation
PSQL = "/usr/lib/postgresql/15/bin/psql"
B64 = "translate(encode(envelope, 'base64'), E'\\n', '')"
BOUND_S = 1.0          # CONN-09 while healthy
TTL_S = 2.0            # ORGMESH_CONN_CACHE_TTL_MS default


def random_id():
    return random.randrange(10**12, 9 * 10**15)


def psql(sql):
    r = subprocess.run([PSQL, "-qAtX", "-v", "ON_ERROR_STOP=1", "-d", os.environ["ORGMESH_PG_URL"], "-c", sql],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, check=True)
    return [line for line in r.stdout.splitlines() if line]


def conn_events(cls, org_id):
    rows = psql(f"SELECT {B64} FROM connections.outbox WHERE type = '{cls.DESCRIPTOR.full_name}'"
                f" AND subject = 'connections/{org_id}' ORDER BY id")
    out = []
    for row in rows:
        env = envelope_pb2.Envelope.FromString(base64.b64decode(row))
        msg = cls()
        env.payload.Unpack(msg)
        out.append((env, msg))
    return out


def fs(direction, source=0):
    return cpb.FeatureSetting(direction=direction, source_hub_id=source)


def dirs(c):
    """(mirroring, mirroring source, asset copying, asset source) of a connection."""
    return (c.mirroring.direction, c.mirroring.source_hub_id, c.asset_copying.direction,
            c.asset_copying.source_hub_id)


class World:
    def __init__(self, suite):
        self.acc = suite.stub("accounts", agrpc.AccountsServiceStub)
        self.org = suite.stub("organizations", ogrpc.OrganizationsServiceStub)
        self.conn = suite.stub("connections", cgrpc.ConnectionsServiceStub)

    def user(self):
        u = apb.User(user_id=random_id(), email=f"u-{uuid.uuid4().hex[:12]}@example.com", display_name="T",
                     locale="en", two_factor_enabled=True)
        return self.acc.CreateUser(apb.CreateUserRequest(user=u), metadata=om.bearer(ADMIN)).user.user_id

    def account(self, owner, subs=PRO, sensitive=False):
        a = apb.Account(hub_id=random_id(), name=f"acct-{uuid.uuid4().hex[:8]}", kind=apb.ACCOUNT_KIND_STANDARD,
                        hosting_location="na1", sensitive_data_enabled=sensitive,
                        subscriptions=[apb.Subscription(hub=h, tier=t) for h, t in subs])
        hub = self.acc.CreateAccount(apb.CreateAccountRequest(account=a), metadata=om.bearer(ADMIN)).account.hub_id
        self.member(hub, owner, [apb.ROLE_SUPER_ADMIN])
        return hub

    def member(self, hub, user, roles=(), seats=()):
        m = apb.Membership(hub_id=hub, user_id=user, roles=list(roles), seats=list(seats))
        self.acc.CreateMembership(apb.CreateMembershipRequest(membership=m), metadata=om.bearer(ADMIN))

    def set_seats(self, hub, user, seats):
        m = apb.Membership(hub_id=hub, user_id=user, seats=list(seats))
        self.acc.UpdateMembership(apb.UpdateMembershipRequest(
            membership=m, update_mask=field_mask_pb2.FieldMask(paths=["seats"])), metadata=om.bearer(ADMIN))

    def set_sensitive(self, hub, on=True):
        a = apb.Account(hub_id=hub, sensitive_data_enabled=on)
        self.acc.UpdateAccount(apb.UpdateAccountRequest(
            account=a, update_mask=field_mask_pb2.FieldMask(paths=["sensitive_data_enabled"])),
            metadata=om.bearer(ADMIN))

    def organization(self, owner, n=3, sensitive=()):
        """An organization of n accounts (the first MARKETING ENTERPRISE),
        created as test_organizations does: MFA token and acknowledgement."""
        hubs = [self.account(owner, MKT_ENT if i == 0 else PRO, sensitive=i in sensitive) for i in range(n)]
        req = opb.CreateOrganizationRequest(enterprise_hub_id=hubs[0], member_hub_ids=hubs[1:])
        req.acknowledgement.CopyFrom(ACK)
        o = self.org.CreateOrganization(req, metadata=om.as_user(owner, mfa_ago=0)).organization
        return o.organization_id, hubs

    def remove_member(self, owner, org_id, acting, hub):
        return self.org.RemoveOrgMember(opb.RemoveOrgMemberRequest(
            organization_id=org_id, acting_hub_id=acting, hub_id=hub), metadata=om.as_user(owner)).organization

    # -- connections --
    def quick(self, user, org_id, acting, **kw):
        return self.conn.QuickConnect(cpb.QuickConnectRequest(organization_id=org_id, acting_hub_id=acting, **kw),
                                      metadata=om.as_user(user))

    def add(self, user, org_id, acting, frm, to, **kw):
        return self.conn.AddConnections(cpb.AddConnectionsRequest(
            organization_id=org_id, acting_hub_id=acting, from_hub_id=frm, to_hub_ids=list(to), **kw),
            metadata=om.as_user(user))

    def batch(self, user, org_id, acting, changes, **kw):
        return self.conn.BatchUpdateConnections(cpb.BatchUpdateConnectionsRequest(
            organization_id=org_id, acting_hub_id=acting, changes=changes, **kw), metadata=om.as_user(user))

    def list(self, user, org_id, **kw):
        return self.conn.ListConnections(cpb.ListConnectionsRequest(organization_id=org_id, **kw),
                                         metadata=om.as_user(user))

    def pairs(self, user, org_id):
        return {(c.account_a, c.account_b): c for c in self.list(user, org_id, page_size=1000).connections}

    def mirror(self, user, s, t, token=None):
        r = self.conn.CheckMirrorAccess(cpb.CheckMirrorAccessRequest(user_id=user, source_hub_id=s, target_hub_id=t),
                                        metadata=om.bearer(token or SVC))
        return r.allowed, r.reason

    def asset(self, s, t):
        r = self.conn.CheckAssetCopy(cpb.CheckAssetCopyRequest(source_hub_id=s, target_hub_id=t),
                                     metadata=om.bearer(SVC))
        return r.allowed, r.reason

    def sources(self, user, t):
        return list(self.conn.ListMirrorSources(cpb.ListMirrorSourcesRequest(user_id=user, target_hub_id=t),
                                                metadata=om.bearer(SVC)).source_hub_ids)


@pytest.fixture
def w(suite):
    return World(suite)


def pair(x, y):
    return (min(x, y), max(x, y))


def until(fn, value, timeout):
    """Polls fn until it returns value; returns the seconds it took."""
    t0 = time.monotonic()
    last = None
    while time.monotonic() - t0 < timeout:
        last = fn()
        if last == value:
            took = time.monotonic() - t0
            print(f"until: {value!r} after {took * 1000:.1f} ms")
            return took
        time.sleep(0.01)
    raise AssertionError(f"still {last!r}, expected {value!r} after {timeout} s")


# ---- CONN-02 -------------------------------------------------------------------------

def test_conn_02_quick_connect_sets_every_pair_both_replacing_what_was_there(w):
    u = w.user()
    org, (a, b, c) = w.organization(u)
    w.add(u, org, a, a, [b], all_features=fs(D.DIRECTION_ONE_WAY, a))
    r = w.quick(u, org, b)                                        # from any account (CONN-08)
    got = {(x.account_a, x.account_b): dirs(x) for x in r.connections}
    both = (D.DIRECTION_BOTH, 0, D.DIRECTION_BOTH, 0)
    assert got == {pair(a, b): both, pair(a, c): both, pair(b, c): both}
    assert {k: dirs(v) for k, v in w.pairs(u, org).items()} == got
    ev = conn_events(cev.ConnectionsChanged, org)
    assert ev[-1][1].origin == cpb.CHANGE_ORIGIN_QUICK_CONNECT
    assert len(ev[-1][1].changes) == 3 and ev[-1][1].actor == f"user:{u}" and ev[-1][1].acting_hub_id == b
    # repeating changes nothing and emits nothing
    w.quick(u, org, a)
    assert len(conn_events(cev.ConnectionsChanged, org)) == len(ev)


def test_conn_02_quick_connect_never_makes_a_sensitive_account_a_source(w):
    u = w.user()
    org, (a, b, c) = w.organization(u, sensitive=(1, 2))
    got = {(x.account_a, x.account_b): dirs(x) for x in w.quick(u, org, a).connections}
    assert got[pair(a, b)] == (D.DIRECTION_ONE_WAY, a, D.DIRECTION_BOTH, 0)     # into the sensitive one
    assert got[pair(a, c)] == (D.DIRECTION_ONE_WAY, a, D.DIRECTION_BOTH, 0)
    assert got[pair(b, c)] == (D.DIRECTION_OFF, 0, D.DIRECTION_BOTH, 0)         # two sensitive accounts


# ---- CONN-03, CONN-01 ---------------------------------------------------------------

def test_conn_03_manual_connections_from_one_account(w):
    u = w.user()
    org, (a, b, c) = w.organization(u)
    r = w.add(u, org, a, b, [a, c], all_features=fs(D.DIRECTION_ONE_WAY))   # "one-way" naming no feature
    assert len(r.created_connection_ids) == 2
    got = {(x.account_a, x.account_b): dirs(x) for x in r.connections}
    assert got == {pair(a, b): (D.DIRECTION_ONE_WAY, b, D.DIRECTION_ONE_WAY, b),
                   pair(b, c): (D.DIRECTION_ONE_WAY, b, D.DIRECTION_ONE_WAY, b)}
    # then set each feature and direction
    w.batch(u, org, a, [cpb.ConnectionChange(operation=OP.OPERATION_UPDATE, account_a=a, account_b=b,
                                             mirroring=fs(D.DIRECTION_BOTH))])
    assert dirs(w.pairs(u, org)[pair(a, b)]) == (D.DIRECTION_BOTH, 0, D.DIRECTION_ONE_WAY, b)
    # defaults OFF; at most one per pair
    w.add(u, org, a, a, [c])
    assert dirs(w.pairs(u, org)[pair(a, c)]) == (D.DIRECTION_OFF, 0, D.DIRECTION_OFF, 0)
    with om.raises_rpc(grpc.StatusCode.ALREADY_EXISTS):
        w.add(u, org, a, c, [a])


def test_conn_01_pairs_are_two_different_accounts_of_the_organization(w):
    u = w.user()
    org, (a, b, c) = w.organization(u)
    outsider = w.account(u)
    with om.raises_rpc(grpc.StatusCode.INVALID_ARGUMENT) as r:
        w.add(u, org, a, a, [a])
    assert "to_hub_ids[0]" in r.details.violations
    with om.raises_rpc(grpc.StatusCode.INVALID_ARGUMENT):
        w.batch(u, org, a, [cpb.ConnectionChange(operation=OP.OPERATION_CREATE, account_a=b, account_b=b)])
    with om.raises_rpc(grpc.StatusCode.FAILED_PRECONDITION, "NOT_IN_ORGANIZATION"):
        w.add(u, org, a, a, [outsider])
    with om.raises_rpc(grpc.StatusCode.INVALID_ARGUMENT):          # ONE_WAY source outside the pair
        w.add(u, org, a, a, [b], mirroring=fs(D.DIRECTION_ONE_WAY, c))
    with om.raises_rpc(grpc.StatusCode.INVALID_ARGUMENT):          # all_features is exclusive
        w.add(u, org, a, a, [b], mirroring=fs(D.DIRECTION_BOTH), all_features=fs(D.DIRECTION_BOTH))
    with om.raises_rpc(grpc.StatusCode.INVALID_ARGUMENT, "SAME_ACCOUNT"):
        w.mirror(u, a, a)
    assert w.pairs(u, org) == {}
    # request_id (SPEC 8): a repeat returns the first result, acting once
    r1 = w.add(u, org, a, a, [b], request_id="rq-1")
    r2 = w.add(u, org, a, a, [b], request_id="rq-1")
    assert r1.created_connection_ids == r2.created_connection_ids and len(w.pairs(u, org)) == 1


# ---- CONN-04 -------------------------------------------------------------------------

def test_conn_04_batch_is_all_or_nothing_and_validate_only_writes_nothing(w):
    u = w.user()
    org, (a, b, c) = w.organization(u)
    w.add(u, org, a, a, [b])
    before = {k: dirs(v) for k, v in w.pairs(u, org).items()}
    n_events = len(conn_events(cev.ConnectionsChanged, org))
    good = cpb.ConnectionChange(operation=OP.OPERATION_UPDATE, account_a=b, account_b=a,
                                all_features=fs(D.DIRECTION_BOTH))
    create = cpb.ConnectionChange(operation=OP.OPERATION_CREATE, account_a=a, account_b=c,
                                  asset_copying=fs(D.DIRECTION_ONE_WAY, c))
    missing = cpb.ConnectionChange(operation=OP.OPERATION_DELETE, account_a=b, account_b=c)
    with om.raises_rpc(grpc.StatusCode.NOT_FOUND):
        w.batch(u, org, a, [good, create, missing])
    assert {k: dirs(v) for k, v in w.pairs(u, org).items()} == before
    # validate_only: the configuration that would result, nothing applied
    r = w.batch(u, org, a, [good, create], validate_only=True)
    assert {(x.account_a, x.account_b): dirs(x) for x in r.connections} == {
        pair(a, b): (D.DIRECTION_BOTH, 0, D.DIRECTION_BOTH, 0),
        pair(a, c): (D.DIRECTION_OFF, 0, D.DIRECTION_ONE_WAY, c)}
    assert {k: dirs(v) for k, v in w.pairs(u, org).items()} == before
    assert len(conn_events(cev.ConnectionsChanged, org)) == n_events
    w.batch(u, org, a, [good, create])
    assert len(w.pairs(u, org)) == 2
    assert len(conn_events(cev.ConnectionsChanged, org)) == n_events + 1
    # a stale etag fails the whole batch
    ab = w.pairs(u, org)[pair(a, b)]
    w.batch(u, org, a, [cpb.ConnectionChange(operation=OP.OPERATION_UPDATE, account_a=a, account_b=b,
                                             mirroring=fs(D.DIRECTION_OFF), etag=ab.etag)])
    with om.raises_rpc(grpc.StatusCode.ABORTED, "ETAG_MISMATCH"):
        w.batch(u, org, a, [cpb.ConnectionChange(operation=OP.OPERATION_DELETE, account_a=a, account_b=b,
                                                 etag=ab.etag)])
    # DeleteConnection honours validate_only too
    ac = w.pairs(u, org)[pair(a, c)]
    r = w.conn.DeleteConnection(cpb.DeleteConnectionRequest(connection_id=ac.connection_id, acting_hub_id=c,
                                                            validate_only=True), metadata=om.as_user(u))
    assert [(x.account_a, x.account_b) for x in r.connections] == [pair(a, b)]
    assert pair(a, c) in w.pairs(u, org)
    w.conn.DeleteConnection(cpb.DeleteConnectionRequest(connection_id=ac.connection_id, acting_hub_id=c),
                            metadata=om.as_user(u))
    assert pair(a, c) not in w.pairs(u, org)


# ---- CONN-05 -------------------------------------------------------------------------

def test_conn_05_sensitive_account_never_mirroring_source(w):
    u = w.user()
    org, (a, s, c) = w.organization(u, sensitive=(1,))
    for setting in (dict(mirroring=fs(D.DIRECTION_BOTH)), dict(mirroring=fs(D.DIRECTION_ONE_WAY, s)),
                    dict(all_features=fs(D.DIRECTION_ONE_WAY, s))):
        with om.raises_rpc(grpc.StatusCode.FAILED_PRECONDITION, "SENSITIVE_DATA_SOURCE"):
            w.add(u, org, a, s, [a], **setting)
        with om.raises_rpc(grpc.StatusCode.FAILED_PRECONDITION, "SENSITIVE_DATA_SOURCE"):
            w.add(u, org, a, s, [a], validate_only=True, **setting)
    # into it is fine; asset copying out of it is fine (CONN-05 is about mirroring)
    w.add(u, org, a, s, [a], mirroring=fs(D.DIRECTION_ONE_WAY, a), asset_copying=fs(D.DIRECTION_ONE_WAY, s))
    with om.raises_rpc(grpc.StatusCode.FAILED_PRECONDITION, "SENSITIVE_DATA_SOURCE"):
        w.batch(u, org, a, [cpb.ConnectionChange(operation=OP.OPERATION_UPDATE, account_a=a, account_b=s,
                                                 mirroring=fs(D.DIRECTION_BOTH))])
    assert dirs(w.pairs(u, org)[pair(a, s)]) == (D.DIRECTION_ONE_WAY, a, D.DIRECTION_ONE_WAY, s)


def test_conn_05_turning_sensitive_data_on_restricts_every_connection(w):
    u = w.user()
    org, (a, b, c) = w.organization(u)
    w.quick(u, org, a)
    w.batch(u, org, a, [cpb.ConnectionChange(operation=OP.OPERATION_UPDATE, account_a=b, account_b=c,
                                             mirroring=fs(D.DIRECTION_ONE_WAY, b))])
    reader = w.user()
    w.member(c, reader, seats=[apb.SEAT_SALES])
    om.eventually(lambda: w.mirror(reader, b, c) == (True, R.DENIAL_REASON_UNSPECIFIED), timeout=10)
    w.set_sensitive(b)                                                  # an accounts event
    want = {pair(a, b): (D.DIRECTION_ONE_WAY, a, D.DIRECTION_BOTH, 0),   # BOTH -> ONE_WAY into b
            pair(b, c): (D.DIRECTION_OFF, 0, D.DIRECTION_BOTH, 0),       # ONE_WAY out of b -> OFF
            pair(a, c): (D.DIRECTION_BOTH, 0, D.DIRECTION_BOTH, 0)}      # untouched
    om.eventually(lambda: {k: dirs(v) for k, v in w.pairs(u, org).items()} == want, timeout=10)
    assert w.mirror(reader, b, c)[0] is False
    ev = conn_events(cev.ConnectionRestricted, org)
    assert len(ev) == 2
    for env, m in ev:
        assert m.sensitive_hub_id == b and m.actor == "rule:CONN-05" and m.cause_event_id
        assert m.reason == cev.RESTRICTION_REASON_SENSITIVE_DATA_ENABLED and m.feature == cpb.FEATURE_MIRRORING
        assert m.before.asset_copying == m.after.asset_copying
    hist = w.conn.ListConnectionHistory(cpb.ListConnectionHistoryRequest(organization_id=org),
                                        metadata=om.as_user(u)).entries
    restricted = [e for e in hist if e.action == "connection.restrict"]
    assert len(restricted) == 2 and all(e.actor == "rule:CONN-05" and "SENSITIVE_DATA_ENABLED" in e.reason
                                        for e in restricted)


def test_conn_05_check_refuses_a_sensitive_source_whatever_the_configuration(w):
    u = w.user()
    org, (a, s) = w.organization(u, n=2, sensitive=(1,))
    w.add(u, org, a, a, [s], mirroring=fs(D.DIRECTION_ONE_WAY, a))
    reader = w.user()
    w.member(a, reader, seats=[apb.SEAT_SERVICE])
    om.eventually(lambda: w.mirror(reader, s, a) == (False, R.DENIAL_REASON_DIRECTION_NOT_ALLOWED), timeout=10)
    # a configuration that says otherwise (written behind the service's back)
    psql(f"UPDATE connections.connections SET mirroring = 2, mirroring_source = 0 "
         f"WHERE account_a = {min(a, s)} AND account_b = {max(a, s)}; SELECT pg_notify('connections_cache', '')")
    om.eventually(lambda: w.mirror(reader, s, a) == (False, R.DENIAL_REASON_SENSITIVE_SOURCE), timeout=5)
    assert w.mirror(reader, a, s)[1] == R.DENIAL_REASON_NOT_A_MEMBER
    assert s not in w.sources(reader, a)


# ---- CONN-06, CONN-07 ----------------------------------------------------------------

def test_conn_06_mirroring_needs_a_sales_or_service_seat_in_the_target(w):
    u = w.user()
    org, (a, b, c) = w.organization(u)
    w.add(u, org, a, a, [b], mirroring=fs(D.DIRECTION_ONE_WAY, a))
    seated, seatless, stranger = w.user(), w.user(), w.user()
    w.member(b, seated, seats=[apb.SEAT_SALES])
    w.member(b, seatless, roles=[apb.ROLE_MARKETING_ACCESS])
    om.eventually(lambda: w.mirror(seated, a, b) == (True, R.DENIAL_REASON_UNSPECIFIED), timeout=10)
    om.eventually(lambda: w.mirror(seatless, a, b) == (False, R.DENIAL_REASON_NO_SEAT), timeout=10)
    assert w.mirror(stranger, a, b) == (False, R.DENIAL_REASON_NOT_A_MEMBER)
    assert w.mirror(seated, b, a) == (False, R.DENIAL_REASON_DIRECTION_NOT_ALLOWED)
    assert w.mirror(seated, c, b) == (False, R.DENIAL_REASON_NOT_CONNECTED)
    other_org, (x, _) = w.organization(u, n=2)
    assert w.mirror(seated, x, b) == (False, R.DENIAL_REASON_NOT_SAME_ORGANIZATION)
    assert w.sources(seated, b) == [a] and w.sources(seatless, b) == []
    # a seat given: within the bound
    w.set_seats(b, seatless, [apb.SEAT_SERVICE])
    assert until(lambda: w.mirror(seatless, a, b)[0], True, 5) < BOUND_S
    # a seat taken away: within the bound
    w.set_seats(b, seated, [])
    assert until(lambda: w.mirror(seated, a, b)[0], False, 5) < BOUND_S
    # users ask about themselves only; services about anyone
    assert w.mirror(seatless, a, b, token=om.user_token(seatless))[0] is True
    with om.raises_rpc(grpc.StatusCode.PERMISSION_DENIED):
        w.mirror(seatless, a, b, token=om.user_token(stranger))
    with om.raises_rpc(grpc.StatusCode.UNAUTHENTICATED):
        w.mirror(seatless, a, b, token=om.forged_token(seatless))


def test_conn_07_asset_copy_follows_the_asset_copying_direction(w):
    u = w.user()
    org, (a, b, c) = w.organization(u)
    w.add(u, org, a, a, [b], mirroring=fs(D.DIRECTION_BOTH), asset_copying=fs(D.DIRECTION_ONE_WAY, b))
    om.eventually(lambda: w.asset(b, a) == (True, R.DENIAL_REASON_UNSPECIFIED), timeout=5)
    assert w.asset(a, b) == (False, R.DENIAL_REASON_DIRECTION_NOT_ALLOWED)
    assert w.asset(a, c) == (False, R.DENIAL_REASON_NOT_CONNECTED)
    w.batch(u, org, a, [cpb.ConnectionChange(operation=OP.OPERATION_UPDATE, account_a=a, account_b=b,
                                             asset_copying=fs(D.DIRECTION_BOTH))])
    assert until(lambda: w.asset(a, b)[0], True, 5) < BOUND_S
    # users: members of S or T only
    r = w.conn.CheckAssetCopy(cpb.CheckAssetCopyRequest(source_hub_id=a, target_hub_id=b), metadata=om.as_user(u))
    assert r.allowed
    with om.raises_rpc(grpc.StatusCode.PERMISSION_DENIED):
        w.conn.CheckAssetCopy(cpb.CheckAssetCopyRequest(source_hub_id=a, target_hub_id=b),
                              metadata=om.as_user(w.user()))


# ---- CONN-08 -------------------------------------------------------------------------

def test_conn_08_managers_are_super_admin_in_every_account(w):
    u = w.user()
    org, (a, b, c) = w.organization(u)
    half = w.user()
    w.member(a, half, roles=[apb.ROLE_SUPER_ADMIN])
    w.member(b, half, roles=[apb.ROLE_SUPER_ADMIN])
    w.member(c, half, roles=[apb.ROLE_ACCOUNT_PERMISSIONS])
    with om.raises_rpc(grpc.StatusCode.PERMISSION_DENIED, "NOT_SUPER_ADMIN"):
        w.quick(half, org, a)
    with om.raises_rpc(grpc.StatusCode.PERMISSION_DENIED, "NOT_SUPER_ADMIN"):
        w.add(half, org, a, a, [b], validate_only=True)
    outside = w.account(u)
    with om.raises_rpc(grpc.StatusCode.FAILED_PRECONDITION, "NOT_IN_ORGANIZATION"):
        w.quick(u, org, outside)
    with om.raises_rpc(grpc.StatusCode.PERMISSION_DENIED):         # services do not manage
        w.conn.QuickConnect(cpb.QuickConnectRequest(organization_id=org, acting_hub_id=a), metadata=om.bearer(SVC))
    w.quick(u, org, c)                                              # any account, not only the Enterprise one
    # viewing follows ORG-08: SUPER_ADMIN or PARTNER_ADMIN in an account of it
    viewer, nobody = w.user(), w.user()
    w.member(c, viewer, roles=[apb.ROLE_PARTNER_ADMIN])
    w.member(c, nobody, roles=[apb.ROLE_MARKETING_ACCESS], seats=[apb.SEAT_SALES])
    assert len(w.list(viewer, org).connections) == 3
    assert len(w.list(half, org).connections) == 3
    with om.raises_rpc(grpc.StatusCode.PERMISSION_DENIED):
        w.list(nobody, org)
    cid = w.list(viewer, org).connections[0].connection_id
    with om.raises_rpc(grpc.StatusCode.PERMISSION_DENIED):
        w.conn.GetConnection(cpb.GetConnectionRequest(connection_id=cid), metadata=om.as_user(nobody))
    assert w.conn.GetConnection(cpb.GetConnectionRequest(connection_id=cid),
                                metadata=om.as_user(viewer)).connection.connection_id == cid
    with om.raises_rpc(grpc.StatusCode.INVALID_ARGUMENT):
        w.list(viewer, org, page_size=-1)
    p1 = w.list(viewer, org, page_size=2)
    p2 = w.list(viewer, org, page_size=2, page_token=p1.next_page_token)
    assert len(p1.connections) == 2 and len(p2.connections) == 1 and not p2.next_page_token


# ---- CONN-09 -------------------------------------------------------------------------

def test_conn_09_account_removed_from_organization_ends_its_connections_within_a_second(w):
    u = w.user()
    org, (a, b, c) = w.organization(u)
    w.quick(u, org, a)
    reader = w.user()
    w.member(a, reader, seats=[apb.SEAT_SALES])
    om.eventually(lambda: w.mirror(reader, c, a) == (True, R.DENIAL_REASON_UNSPECIFIED), timeout=10)
    assert sorted(w.sources(reader, a)) == sorted([b, c])
    w.remove_member(u, org, a, c)                                   # committed by organizations
    took = until(lambda: w.mirror(reader, c, a), (False, R.DENIAL_REASON_NOT_SAME_ORGANIZATION), 5)
    assert took < BOUND_S, f"the check answered 'yes' {took:.3f} s after the removal"
    # each answer is bounded on its own: the list may follow a few ms later
    # than the check (an entry whose TTL ran out is re-read before the NOTIFY
    # that invalidates the others arrives)
    assert until(lambda: w.sources(reader, a), [b], 5) < BOUND_S
    assert set(w.pairs(u, org)) == {pair(a, b)}
    ended = conn_events(cev.ConnectionsEnded, org)
    assert len(ended) == 1
    m = ended[0][1]
    assert m.reason == cev.END_REASON_ACCOUNT_LEFT_ORGANIZATION and m.departed_hub_id == c
    assert m.actor == "rule:CONN-09" and m.cause_event_id and len(m.connections) == 2


def test_conn_09_account_leaving_automatically_ends_its_connections_with_the_cause(w):
    u = w.user()
    org, (a, b, c) = w.organization(u)
    w.quick(u, org, a)
    om.eventually(lambda: w.asset(c, a)[0], timeout=5)
    w.acc.DeactivateAccount(apb.DeactivateAccountRequest(hub_id=c, reason="test"), metadata=om.as_user(u))
    # accounts -> organizations (ORG-09) -> connections (CONN-09)
    om.eventually(lambda: set(w.pairs(u, org)) == {pair(a, b)}, timeout=15)
    assert w.asset(c, a) == (False, R.DENIAL_REASON_NOT_SAME_ORGANIZATION)
    (env, m), = conn_events(cev.ConnectionsEnded, org)
    assert m.departed_hub_id == c and m.cause_reason == "DEACTIVATED" and env.actor == "rule:CONN-09"
    hist = w.conn.ListConnectionHistory(cpb.ListConnectionHistoryRequest(organization_id=org),
                                        metadata=om.as_user(u)).entries
    ended = [e for e in hist if e.action == "connection.end"]
    assert len(ended) == 2 and all(e.actor == "rule:CONN-09" and "DEACTIVATED" in e.reason for e in ended)


def test_conn_09_organization_deleted_ends_every_connection(w):
    u = w.user()
    org, (a, b) = w.organization(u, n=2)
    w.quick(u, org, a)
    om.eventually(lambda: w.asset(a, b)[0], timeout=5)
    etag = w.org.GetOrganization(opb.GetOrganizationRequest(organization_id=org), metadata=om.as_user(u)).organization.etag
    w.org.DeleteOrganization(opb.DeleteOrganizationRequest(organization_id=org, acting_hub_id=a, etag=etag),
                             metadata=om.as_user(u))
    assert until(lambda: w.asset(a, b), (False, R.DENIAL_REASON_NOT_SAME_ORGANIZATION), 5) < BOUND_S
    ended = conn_events(cev.ConnectionsEnded, org)
    assert len(ended) == 1 and ended[0][1].reason == cev.END_REASON_ORGANIZATION_DELETED
    assert psql(f"SELECT count(*) FROM connections.connections WHERE organization_id = '{org}'") == ["0"]
    with om.raises_rpc(grpc.StatusCode.NOT_FOUND):
        w.list(u, org)


def test_conn_09_ttl_bounds_staleness_when_no_invalidation_arrives(w):
    """A change the service is not told about (here written straight into its
    tables, as when the invalidation path is broken) is seen after the TTL."""
    u = w.user()
    org, (a, b) = w.organization(u, n=2)
    w.add(u, org, a, a, [b], asset_copying=fs(D.DIRECTION_BOTH))
    om.eventually(lambda: w.asset(a, b)[0], timeout=5)
    psql(f"UPDATE connections.connections SET asset_copying = 1 WHERE account_a = {min(a, b)}"
         f" AND account_b = {max(a, b)}")
    took = until(lambda: w.asset(a, b)[0], False, TTL_S + 2)
    assert took <= TTL_S + 0.8, f"stale for {took:.2f} s, TTL is {TTL_S} s"


def test_conn_09_checks_never_contradict_the_committed_configuration_under_load(w):
    u = w.user()
    org, (a, b) = w.organization(u, n=2)
    reader = w.user()
    w.member(b, reader, seats=[apb.SEAT_SALES])
    w.add(u, org, a, a, [b], mirroring=fs(D.DIRECTION_BOTH))
    om.eventually(lambda: w.mirror(reader, a, b)[0], timeout=10)
    # commits: (earliest possible commit time, latest, value)
    commits = [(0.0, time.monotonic(), True)]
    answers, stop, errors = [], threading.Event(), []

    def hammer():
        ch = grpc.insecure_channel(w_addr)
        stub = cgrpc.ConnectionsServiceStub(ch)
        req = cpb.CheckMirrorAccessRequest(user_id=reader, source_hub_id=a, target_hub_id=b)
        md = om.bearer(SVC)
        try:
            while not stop.is_set():
                s = time.monotonic()
                r = stub.CheckMirrorAccess(req, metadata=md)
                answers.append((s, time.monotonic(), r.allowed))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)
        finally:
            ch.close()

    w_addr = w_suite_addr[0]
    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    value = True
    # Changes further apart than the bound, so that each configuration is the
    # only acceptable answer for a while: a stale answer cannot hide.
    for i in range(6):
        value = not value
        s = time.monotonic()
        w.batch(u, org, a, [cpb.ConnectionChange(operation=OP.OPERATION_UPDATE, account_a=a, account_b=b,
                                                 mirroring=fs(D.DIRECTION_BOTH if value else D.DIRECTION_OFF))])
        commits.append((s, time.monotonic(), value))
        time.sleep(BOUND_S + 0.3 + (i % 3) * 0.2)
    time.sleep(BOUND_S + 0.2)
    stop.set()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(answers) > 200

    def acceptable(s, e):
        """Values a correct service may give for a call made in [s, e]: those
        of every configuration that was current at some time in [s - BOUND, e]."""
        ok = set()
        for i, (c0, c1, v) in enumerate(commits):
            replaced_by = commits[i + 1][0] if i + 1 < len(commits) else float("inf")
            if c0 <= e and replaced_by >= s - BOUND_S:
                ok.add(v)
        return ok

    bad = [(s, v) for s, e, v in answers if v not in acceptable(s, e)]
    assert not bad, f"{len(bad)} of {len(answers)} answers contradicted a configuration committed over {BOUND_S} s before"
    # and the answers did follow the changes
    assert {v for _, _, v in answers} == {True, False}
    assert answers[-1][2] == value


w_suite_addr = [None]


@pytest.fixture(autouse=True)
def _addr(suite):
    w_suite_addr[0] = suite.addr("connections")


def test_conn_09_own_changes_reach_the_checks_within_a_second_while_redis_is_down(w):
    """Invalidation rides on PostgreSQL NOTIFY (delivered at commit), not on
    Redis: with Redis stopped, a configuration change is still answered by the
    checks within the bound (SPEC 9: Redis going away never costs correctness)."""
    u = w.user()
    org, (a, b) = w.organization(u, n=2)
    w.add(u, org, a, a, [b], asset_copying=fs(D.DIRECTION_BOTH))
    om.eventually(lambda: w.asset(a, b)[0], timeout=5)
    with om.redis_down():
        w.batch(u, org, a, [cpb.ConnectionChange(operation=OP.OPERATION_UPDATE, account_a=a, account_b=b,
                                                 asset_copying=fs(D.DIRECTION_ONE_WAY, b))])
        assert until(lambda: w.asset(a, b), (False, R.DENIAL_REASON_DIRECTION_NOT_ALLOWED), 5) < BOUND_S
        assert w.asset(b, a)[0] is True
    # the event waited in the outbox and is relayed once Redis is back
    assert conn_events(cev.ConnectionsChanged, org)[-1][1].origin == cpb.CHANGE_ORIGIN_BATCH_UPDATE


# ---- two replicas ----------------------------------------------------------------------

def test_conn_09_two_replicas_follow_every_change_within_a_second(w, suite):
    """SPEC 9 scale-out: two replicas of the service share one database and one
    consumer group. A change committed through one replica, and an event applied
    by whichever replica's consumer took it, reach the checks of *both* within
    the bound (the invalidation is PostgreSQL NOTIFY, heard by every replica),
    and the automatic rule runs once, not once per replica."""
    second = suite["connections"].replica("connections-2.log")
    try:
        other = second.stub(cgrpc.ConnectionsServiceStub)

        def mirror_on(stub, user, s, t):
            r = stub.CheckMirrorAccess(cpb.CheckMirrorAccessRequest(user_id=user, source_hub_id=s, target_hub_id=t),
                                       metadata=om.bearer(SVC))
            return r.allowed, r.reason

        both = (lambda *k: mirror_on(w.conn, *k), lambda *k: mirror_on(other, *k))
        u = w.user()
        org, (a, b, c) = w.organization(u)
        reader = w.user()
        w.member(a, reader, seats=[apb.SEAT_SALES])
        w.quick(u, org, a)
        for check in both:                          # both caches warm and agreeing
            om.eventually(lambda: check(reader, c, a) == (True, R.DENIAL_REASON_UNSPECIFIED), timeout=10)

        # a change through the first replica, seen by the second (and back)
        w.batch(u, org, a, [cpb.ConnectionChange(operation=OP.OPERATION_UPDATE, account_a=a, account_b=c,
                                                 mirroring=fs(D.DIRECTION_OFF))])
        assert until(lambda: both[1](reader, c, a)[0], False, 5) < BOUND_S
        other.BatchUpdateConnections(cpb.BatchUpdateConnectionsRequest(
            organization_id=org, acting_hub_id=a, changes=[cpb.ConnectionChange(
                operation=OP.OPERATION_UPDATE, account_a=a, account_b=c, mirroring=fs(D.DIRECTION_BOTH))]),
            metadata=om.as_user(u))
        assert until(lambda: both[0](reader, c, a)[0], True, 5) < BOUND_S

        # an accounts event (the seat taken away): one replica applies it
        w.set_seats(a, reader, [])
        for check in both:
            assert until(lambda: check(reader, c, a), (False, R.DENIAL_REASON_NO_SEAT), 5) < BOUND_S
        w.set_seats(a, reader, [apb.SEAT_SERVICE])
        for check in both:
            om.eventually(lambda: check(reader, c, a)[0], timeout=5)

        # an organizations event (CONN-09 cascade): both replicas say no
        w.remove_member(u, org, a, c)
        for check in both:
            took = until(lambda: check(reader, c, a), (False, R.DENIAL_REASON_NOT_SAME_ORGANIZATION), 5)
            assert took < BOUND_S, f"a replica answered 'yes' {took:.3f} s after the removal"
        time.sleep(0.5)                              # a second application would have written by now
        ended = conn_events(cev.ConnectionsEnded, org)
        assert len(ended) == 1 and ended[0][1].departed_hub_id == c
        assert set(w.pairs(u, org)) == {pair(a, b)}
    finally:
        assert second.stop() == []

"""The organizations service (SPEC 3, ORG-01..ORG-12) driven through its gRPC
API from Python, next to a real accounts service: accounts, users and
memberships are made with the accounts service's RPCs, and the automatic rules
(ORG-09, ORG-10) are triggered by changing accounts there.

Events are read back from the organizations service's outbox (the log of
record, SPEC 2) with psql; a duplicate delivery is produced by adding the same
accounts event to the Redis stream again with redis-cli."""

import base64
import os
import random
import subprocess
import threading
import time
import uuid

import grpc
import pytest
from google.protobuf import field_mask_pb2
from google.rpc import error_details_pb2

import orgmesh_testlib as om
from orgmesh.accounts.v1 import accounts_pb2 as apb
from orgmesh.accounts.v1 import accounts_pb2_grpc as agrpc
from orgmesh.events.v1 import envelope_pb2
from orgmesh.organizations.v1 import events_pb2 as oev
from orgmesh.organizations.v1 import organizations_pb2 as opb
from orgmesh.organizations.v1 import organizations_pb2_grpc as ogrpc

OM_SERVICES = ["accounts", "organizations"]
# Run alone: the stack's Redis streams and consumer groups are shared by every
# test database, so an organizations service started by another test file at
# the same time would take (and apply to its own database) the accounts events
# this file's automatic-rule tests wait for.
pytestmark = pytest.mark.exclusive_stack
# Quick retries of events left pending by a failed attempt.
OM_SERVICE_ENV = {"organizations": {"ORGMESH_EVT_CLAIM_IDLE_MS": "1000",
                                    "ORGMESH_ORG_TOMBSTONE_PURGE_MS": "200"}}  # ORG-13

ADMIN = om.service_token("provisioning")
MKT_ENT = [(apb.HUB_MARKETING, apb.TIER_ENTERPRISE)]
PRO = [(apb.HUB_SALES, apb.TIER_PROFESSIONAL)]
STARTER = [(apb.HUB_SALES, apb.TIER_STARTER)]
ACK = opb.DataSharingAcknowledgement(accepted=True, text_version="2023-06")
R = opb.IneligibilityReason
PSQL = "/usr/lib/postgresql/15/bin/psql"
B64 = "translate(encode(envelope, 'base64'), E'\\n', '')"


# ---- the world: users, accounts, memberships in the accounts service ------------

def random_id():
    return random.randrange(10**12, 9 * 10**15)


class World:
    def __init__(self, suite):
        self.acc = suite.stub("accounts", agrpc.AccountsServiceStub)
        self.org = suite.stub("organizations", ogrpc.OrganizationsServiceStub)
        self.suite = suite

    # Ids are chosen at random (an import, service identities only) rather
    # than taken from the accounts service's sequence: the test stack's Redis
    # streams are shared by every test database, and sequence-made ids would
    # collide with other test files' accounts.
    def user(self, tfa=True):
        email = f"u-{uuid.uuid4().hex[:12]}@example.com"
        u = apb.User(user_id=random_id(), email=email, display_name="Test User", locale="en",
                     two_factor_enabled=tfa)
        return self.acc.CreateUser(apb.CreateUserRequest(user=u), metadata=om.bearer(ADMIN)).user.user_id

    def account(self, owner, subs=MKT_ENT, loc="na1", kind=apb.ACCOUNT_KIND_STANDARD, name=None):
        """A new account whose SUPER_ADMIN is `owner` (as when a user creates one)."""
        a = apb.Account(hub_id=random_id(), name=name or f"acct-{uuid.uuid4().hex[:8]}", kind=kind,
                        hosting_location=loc, subscriptions=[apb.Subscription(hub=h, tier=t) for h, t in subs])
        hub = self.acc.CreateAccount(apb.CreateAccountRequest(account=a), metadata=om.bearer(ADMIN)).account.hub_id
        m = apb.Membership(hub_id=hub, user_id=owner, roles=[apb.ROLE_SUPER_ADMIN])
        self.acc.CreateMembership(apb.CreateMembershipRequest(membership=m), metadata=om.bearer(ADMIN))
        return hub

    def add_member(self, hub, owner, user, roles):
        m = apb.Membership(hub_id=hub, user_id=user, roles=roles)
        self.acc.CreateMembership(apb.CreateMembershipRequest(membership=m), metadata=om.as_user(owner))

    def set_subs(self, hub, owner, subs):
        a = apb.Account(hub_id=hub, subscriptions=[apb.Subscription(hub=h, tier=t) for h, t in subs])
        self.acc.UpdateAccount(apb.UpdateAccountRequest(
            account=a, update_mask=field_mask_pb2.FieldMask(paths=["subscriptions"])), metadata=om.as_user(owner))

    def set_location(self, hub, owner, loc):
        a = apb.Account(hub_id=hub, hosting_location=loc)
        self.acc.UpdateAccount(apb.UpdateAccountRequest(
            account=a, update_mask=field_mask_pb2.FieldMask(paths=["hosting_location"])), metadata=om.as_user(owner))

    def deactivate(self, hub, owner):
        self.acc.DeactivateAccount(apb.DeactivateAccountRequest(hub_id=hub, reason="test"),
                                   metadata=om.as_user(owner))

    # -- organizations --
    def create(self, user, ent, members=(), ack=ACK, mfa_ago=0, **kw):
        md = om.as_user(user, mfa_ago=mfa_ago) if mfa_ago is not None else om.as_user(user)
        req = opb.CreateOrganizationRequest(enterprise_hub_id=ent, member_hub_ids=list(members), **kw)
        if ack is not None:
            req.acknowledgement.CopyFrom(ack)
        return self.org.CreateOrganization(req, metadata=md).organization

    def add(self, user, org_id, acting, hubs, ack=ACK, mfa_ago=0, **kw):
        md = om.as_user(user, mfa_ago=mfa_ago) if mfa_ago is not None else om.as_user(user)
        req = opb.AddOrgMembersRequest(organization_id=org_id, acting_hub_id=acting, hub_ids=list(hubs), **kw)
        if ack is not None:
            req.acknowledgement.CopyFrom(ack)
        return self.org.AddOrgMembers(req, metadata=md)

    def remove(self, user, org_id, acting, hub, **kw):
        return self.org.RemoveOrgMember(opb.RemoveOrgMemberRequest(
            organization_id=org_id, acting_hub_id=acting, hub_id=hub, **kw), metadata=om.as_user(user)).organization

    def delete(self, user, org_id, acting, etag, **kw):
        return self.org.DeleteOrganization(opb.DeleteOrganizationRequest(
            organization_id=org_id, acting_hub_id=acting, etag=etag, **kw), metadata=om.as_user(user))

    def get(self, user, org_id):
        return self.org.GetOrganization(opb.GetOrganizationRequest(organization_id=org_id),
                                        metadata=om.as_user(user)).organization

    def by_account(self, user, hub):
        return self.org.GetOrganizationByAccount(opb.GetOrganizationByAccountRequest(hub_id=hub),
                                                 metadata=om.as_user(user)).organization

    def history(self, user, org_id, **kw):
        return self.org.ListOrganizationHistory(opb.ListOrganizationHistoryRequest(
            organization_id=org_id, **kw), metadata=om.as_user(user))

    def eligible(self, user, ent=None, org_id=None, **kw):
        req = opb.ListEligibleAccountsRequest(**kw)
        if ent is not None:
            req.enterprise_hub_id = ent
        if org_id is not None:
            req.organization_id = org_id
        return self.org.ListEligibleAccounts(req, metadata=om.as_user(user))

    def members_of(self, user, org_id):
        return [m.hub_id for m in self.get(user, org_id).members]

    def not_in_any_org(self, user, hub):
        try:
            self.by_account(user, hub)
        except grpc.RpcError as e:
            return e.code() == grpc.StatusCode.NOT_FOUND
        return False


@pytest.fixture
def w(suite):
    return World(suite)


# ---- reading the outbox (the log of record) --------------------------------------

def psql(sql):
    r = subprocess.run([PSQL, "-qAtX", "-v", "ON_ERROR_STOP=1", "-d", os.environ["ORGMESH_PG_URL"], "-c", sql],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, check=True)
    return [line for line in r.stdout.splitlines() if line]


def events(schema, type_name, subject=None):
    """(Envelope, payload) of every event `type_name` in the schema's outbox."""
    where = f"type = '{type_name}'"
    if subject:
        where += f" AND subject = '{subject}'"
    rows = psql(f"SELECT {B64} FROM {schema}.outbox WHERE {where} ORDER BY id")
    return [envelope_pb2.Envelope.FromString(base64.b64decode(row)) for row in rows]


def org_events(cls, org_id):
    out = []
    for env in events("organizations", cls.DESCRIPTOR.full_name, f"organizations/{org_id}"):
        msg = cls()
        env.payload.Unpack(msg)
        out.append((env, msg))
    return out


def accounts_envelopes(type_name, hub):
    rows = psql(f"SELECT {B64} FROM accounts.outbox WHERE type = '{type_name}'"
                f" AND subject = 'accounts/{hub}' ORDER BY id")
    return [base64.b64decode(r) for r in rows]


def history_actions(w, user, org_id):
    return [(e.action, e.resource, e.actor, e.reason) for e in w.history(user, org_id, page_size=1000).entries]


# ---- ORG-05 --------------------------------------------------------------------------

def test_org_05_lists_every_account_with_all_its_reasons(w):
    u, v = w.user(), w.user()
    ent = w.account(u, MKT_ENT, "na1")
    ok = w.account(u, PRO, "na1")
    bad = w.account(u, STARTER, "eu1", kind=apb.ACCOUNT_KIND_SANDBOX)   # three reasons at once
    off = w.account(u, PRO, "na1")
    w.deactivate(off, u)
    theirs = w.account(v, PRO, "na1")
    w.add_member(theirs, v, u, [apb.ROLE_MARKETING_ACCESS])            # member, not SUPER_ADMIN
    ent2, taken = w.account(u, MKT_ENT, "na1"), w.account(u, PRO, "na1")
    w.create(u, ent2, [taken])

    def reasons():
        got = {}
        token = ""
        while True:                      # paged: 2 at a time
            r = w.eligible(u, ent=ent, page_size=2, page_token=token)
            assert len(r.candidates) <= 2
            for c in r.candidates:
                got[c.hub_id] = (c.eligible, set(c.reasons))
            token = r.next_page_token
            if not token:
                return got
    want = {
        ent: (True, set()),
        ok: (True, set()),
        bad: (False, {R.INELIGIBILITY_REASON_SANDBOX, R.INELIGIBILITY_REASON_NO_PROFESSIONAL_SUBSCRIPTION,
                      R.INELIGIBILITY_REASON_HOSTING_LOCATION_MISMATCH}),
        off: (False, {R.INELIGIBILITY_REASON_DEACTIVATED}),
        theirs: (False, {R.INELIGIBILITY_REASON_NOT_SUPER_ADMIN}),
        ent2: (False, {R.INELIGIBILITY_REASON_ALREADY_IN_ORGANIZATION}),
        taken: (False, {R.INELIGIBILITY_REASON_ALREADY_IN_ORGANIZATION}),
    }
    # the deactivation reaches the local copy through the event
    om.eventually(lambda: reasons() == want, timeout=20)
    elig = w.eligible(u, ent=ent, filter=opb.CANDIDATE_FILTER_ELIGIBLE)
    assert sorted(c.hub_id for c in elig.candidates) == sorted([ent, ok])
    inel = w.eligible(u, ent=ent, filter=opb.CANDIDATE_FILTER_INELIGIBLE)
    assert sorted(c.hub_id for c in inel.candidates) == sorted([bad, off, theirs, ent2, taken])


def test_org_05_target_must_be_enterprise_and_input_is_checked(w):
    u = w.user()
    pro = w.account(u, PRO)
    with om.raises_rpc(grpc.StatusCode.FAILED_PRECONDITION, "NOT_ENTERPRISE_ACCOUNT"):
        w.eligible(u, ent=pro)
    with om.raises_rpc(grpc.StatusCode.INVALID_ARGUMENT):
        w.eligible(u, ent=pro, page_size=-1)
    with om.raises_rpc(grpc.StatusCode.INVALID_ARGUMENT):
        w.eligible(u)                                           # no target
    with om.raises_rpc(grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN"):
        w.eligible(u, ent=w.account(u), page_token="forged")


def test_org_05_candidates_for_an_existing_organization(w):
    u = w.user()
    ent, a, b = w.account(u), w.account(u, PRO), w.account(u, PRO, "eu1")
    o = w.create(u, ent)
    got = {c.hub_id: set(c.reasons) for c in w.eligible(u, org_id=o.organization_id).candidates}
    assert got[ent] == {R.INELIGIBILITY_REASON_ALREADY_IN_ORGANIZATION}
    assert got[a] == set()
    assert got[b] == {R.INELIGIBILITY_REASON_HOSTING_LOCATION_MISMATCH}


# ---- ORG-01 --------------------------------------------------------------------------

def test_org_01_create_from_enterprise_account_with_four_more(w):
    u = w.user()
    ent = w.account(u)
    others = [w.account(u, PRO) for _ in range(4)]
    o = w.create(u, ent, others)
    assert [m.hub_id for m in o.members] == [ent] + others
    assert [m.founding_account for m in o.members] == [True, False, False, False, False]
    assert o.founding_hub_id == ent and o.hosting_location == "na1" and o.created_by_user_id == u
    assert o.members[0].marketing_enterprise and not o.members[1].marketing_enterprise
    assert o.etag and o.version >= 1
    assert w.get(u, o.organization_id) == o
    assert w.by_account(u, others[2]).organization_id == o.organization_id
    listed = w.org.ListOrgMembers(opb.ListOrgMembersRequest(organization_id=o.organization_id, page_size=3),
                                  metadata=om.as_user(u))
    assert [m.hub_id for m in listed.members] == [ent] + others[:2] and listed.next_page_token
    rest = w.org.ListOrgMembers(opb.ListOrgMembersRequest(organization_id=o.organization_id, page_size=3,
                                                          page_token=listed.next_page_token), metadata=om.as_user(u))
    assert [m.hub_id for m in rest.members] == others[2:] and rest.next_page_token == ""


def test_org_01_configure_later_with_no_other_account(w):
    u = w.user()
    ent = w.account(u)
    o = w.create(u, ent)
    assert [m.hub_id for m in o.members] == [ent]


def test_org_01_six_accounts_exceed_the_cap_and_nothing_is_created(w):
    u = w.user()
    ent = w.account(u)
    others = [w.account(u, PRO) for _ in range(5)]
    with om.raises_rpc(grpc.StatusCode.RESOURCE_EXHAUSTED, "ORG_ACCOUNT_LIMIT"):
        w.create(u, ent, others)
    assert all(w.not_in_any_org(u, h) for h in [ent] + others)


def test_org_01_requires_a_marketing_enterprise_account(w):
    u = w.user()
    sales_ent = w.account(u, [(apb.HUB_SALES, apb.TIER_ENTERPRISE), (apb.HUB_MARKETING, apb.TIER_PROFESSIONAL)])
    other = w.account(u, PRO)
    with om.raises_rpc(grpc.StatusCode.FAILED_PRECONDITION, "NOT_ENTERPRISE_ACCOUNT"):
        w.create(u, sales_ent, [other])
    assert w.not_in_any_org(u, sales_ent) and w.not_in_any_org(u, other)


def test_org_01_concurrent_adds_never_exceed_the_cap(w):
    u = w.user()
    for _ in range(3):
        ent = w.account(u)
        o = w.create(u, ent, [w.account(u, PRO), w.account(u, PRO)])
        groups = [[w.account(u, PRO), w.account(u, PRO)] for _ in range(2)]   # each fits alone
        results = [None, None]
        barrier = threading.Barrier(2)

        def go(i):
            barrier.wait()
            try:
                w.add(u, o.organization_id, ent, groups[i])
                results[i] = "ok"
            except grpc.RpcError as e:
                results[i] = om.error_details(e).reason
        ts = [threading.Thread(target=go, args=(i,)) for i in range(2)]
        [t.start() for t in ts]
        [t.join() for t in ts]
        assert sorted(results) == ["ORG_ACCOUNT_LIMIT", "ok"], results
        assert len(w.members_of(u, o.organization_id)) == 5


# ---- ORG-02 --------------------------------------------------------------------------

def test_org_02_ineligible_accounts_fail_the_whole_request_with_every_reason(w):
    u = w.user()
    sandbox = w.account(u, PRO, kind=apb.ACCOUNT_KIND_SANDBOX)
    ent = w.account(u)
    good = w.account(u, PRO)
    starter = w.account(u, STARTER)
    far = w.account(u, PRO, "eu1")
    bad = {sandbox: "SANDBOX", starter: "NO_PROFESSIONAL_SUBSCRIPTION", far: "HOSTING_LOCATION_MISMATCH"}
    # the status carries the reason of the first account in hub_id order
    with om.raises_rpc(grpc.StatusCode.FAILED_PRECONDITION, bad[min(bad)]) as r:
        w.create(u, ent, [good, starter, far, sandbox])
    pf = r.details.detail(error_details_pb2.PreconditionFailure)
    got = {(v.subject, v.type) for v in pf.violations}
    assert got == {(f"accounts/{sandbox}", "SANDBOX"), (f"accounts/{starter}", "NO_PROFESSIONAL_SUBSCRIPTION"),
                   (f"accounts/{far}", "HOSTING_LOCATION_MISMATCH")}
    assert all(w.not_in_any_org(u, h) for h in (ent, good, starter, far, sandbox))


def test_org_02_enterprise_account_itself_must_be_eligible(w):
    u = w.user()
    sandbox_ent = w.account(u, MKT_ENT, kind=apb.ACCOUNT_KIND_SANDBOX)
    with om.raises_rpc(grpc.StatusCode.FAILED_PRECONDITION, "SANDBOX"):
        w.create(u, sandbox_ent, [w.account(u, PRO)])
    off = w.account(u, MKT_ENT)
    w.deactivate(off, u)

    def refused():
        with om.raises_rpc(grpc.StatusCode.FAILED_PRECONDITION, "DEACTIVATED"):
            w.create(u, off)
        return True
    om.eventually(refused, timeout=20)


def test_org_02_an_account_is_never_in_two_organizations(w):
    u = w.user()
    e1, e2, x = w.account(u), w.account(u), w.account(u, PRO)
    w.create(u, e1, [x])
    with om.raises_rpc(grpc.StatusCode.FAILED_PRECONDITION, "ALREADY_IN_ORGANIZATION"):
        w.create(u, e2, [x])
    o2 = w.create(u, e2)
    with om.raises_rpc(grpc.StatusCode.FAILED_PRECONDITION, "ALREADY_IN_ORGANIZATION"):
        w.add(u, o2.organization_id, e2, [x])


def test_org_02_concurrent_creates_never_share_an_account(w):
    u = w.user()
    for _ in range(4):
        e1, e2, x = w.account(u), w.account(u), w.account(u, PRO)
        results = [None, None]
        barrier = threading.Barrier(2)

        def go(i, ent):
            barrier.wait()
            try:
                w.create(u, ent, [x])
                results[i] = "ok"
            except grpc.RpcError as e:
                results[i] = om.error_details(e).reason
        ts = [threading.Thread(target=go, args=(i, e)) for i, e in enumerate((e1, e2))]
        [t.start() for t in ts]
        [t.join() for t in ts]
        assert sorted(results) == ["ALREADY_IN_ORGANIZATION", "ok"], results
        owner = w.by_account(u, x)
        assert x in [m.hub_id for m in owner.members]


def test_org_02_account_deactivated_while_it_joins_ends_up_outside(w):
    # Without the lock on the account's copy in AddOrgMembers this fails in
    # most runs (the join commits after the event handler looked).
    u = w.user()
    for _ in range(8):
        ent = w.account(u)
        o = w.create(u, ent)
        x = w.account(u, PRO)
        w.eligible(u, ent=ent)          # the copy of x exists before the race
        barrier = threading.Barrier(2)
        out = {}

        def join():
            barrier.wait()
            try:
                w.add(u, o.organization_id, ent, [x])
                out["add"] = "ok"
            except grpc.RpcError as e:
                out["add"] = om.error_details(e).reason

        def deactivate():
            barrier.wait()
            w.deactivate(x, u)
        ts = [threading.Thread(target=join), threading.Thread(target=deactivate)]
        [t.start() for t in ts]
        [t.join() for t in ts]
        assert out["add"] in ("ok", "DEACTIVATED"), out
        om.eventually(lambda: x not in w.members_of(u, o.organization_id), timeout=20)
        om.eventually(lambda: w.not_in_any_org(u, x), timeout=20)


# ---- ORG-03, ORG-04, ORG-06 ----------------------------------------------------------

def test_org_03_requires_super_admin_in_every_account(w):
    u, v = w.user(), w.user()
    ent = w.account(u)
    theirs = w.account(v, PRO)
    w.add_member(theirs, v, u, [apb.ROLE_MARKETING_ACCESS, apb.ROLE_PARTNER_ADMIN])
    with om.raises_rpc(grpc.StatusCode.PERMISSION_DENIED, "NOT_SUPER_ADMIN"):
        w.create(u, ent, [theirs])
    # nor in the Enterprise account
    their_ent = w.account(v)
    w.add_member(their_ent, v, u, [apb.ROLE_ACCOUNT_PERMISSIONS])
    with om.raises_rpc(grpc.StatusCode.PERMISSION_DENIED, "NOT_SUPER_ADMIN"):
        w.create(u, their_ent)
    # nor when adding
    o = w.create(u, ent)
    with om.raises_rpc(grpc.StatusCode.PERMISSION_DENIED, "NOT_SUPER_ADMIN"):
        w.add(u, o.organization_id, ent, [theirs])
    assert w.members_of(u, o.organization_id) == [ent]


def test_org_04_requires_two_factor_enabled(w):
    u = w.user(tfa=False)
    ent = w.account(u)
    with om.raises_rpc(grpc.StatusCode.UNAUTHENTICATED, "MFA_REQUIRED"):
        w.create(u, ent, mfa_ago=0)
    assert w.not_in_any_org(u, ent)


def test_org_04_requires_a_second_factor_verified_within_five_minutes(w):
    u = w.user()
    ent, a = w.account(u), w.account(u, PRO)
    with om.raises_rpc(grpc.StatusCode.UNAUTHENTICATED, "MFA_REQUIRED"):
        w.create(u, ent, mfa_ago=None)               # no mfa_at claim
    with om.raises_rpc(grpc.StatusCode.UNAUTHENTICATED, "MFA_REQUIRED"):
        w.create(u, ent, mfa_ago=301)
    o = w.create(u, ent, mfa_ago=240)
    with om.raises_rpc(grpc.StatusCode.UNAUTHENTICATED, "MFA_REQUIRED"):
        w.add(u, o.organization_id, ent, [a], mfa_ago=400)
    with om.raises_rpc(grpc.StatusCode.UNAUTHENTICATED, "MFA_REQUIRED"):
        w.add(u, o.organization_id, ent, [a], mfa_ago=None)
    w.add(u, o.organization_id, ent, [a], mfa_ago=10)
    assert w.members_of(u, o.organization_id) == [ent, a]


def test_org_06_requires_and_stores_the_acknowledgement(w):
    u = w.user()
    ent, a, b = w.account(u), w.account(u, PRO), w.account(u, PRO)
    with om.raises_rpc(grpc.StatusCode.FAILED_PRECONDITION, "ACKNOWLEDGEMENT_REQUIRED"):
        w.create(u, ent, [a], ack=None)
    with om.raises_rpc(grpc.StatusCode.FAILED_PRECONDITION, "ACKNOWLEDGEMENT_REQUIRED"):
        w.create(u, ent, [a], ack=opb.DataSharingAcknowledgement(accepted=False, text_version="2023-06"))
    with om.raises_rpc(grpc.StatusCode.INVALID_ARGUMENT):
        w.create(u, ent, [a], ack=opb.DataSharingAcknowledgement(accepted=True))
    assert w.not_in_any_org(u, ent)
    o = w.create(u, ent, [a])
    with om.raises_rpc(grpc.StatusCode.FAILED_PRECONDITION, "ACKNOWLEDGEMENT_REQUIRED"):
        w.add(u, o.organization_id, ent, [b], ack=None)
    added = w.add(u, o.organization_id, ent, [b]).added[0]
    ack_ids = {m.acknowledgement_id for m in o.members}
    assert len(ack_ids) == 1 and added.acknowledgement_id not in ack_ids
    rows = psql("SELECT user_id, text_version, array_to_string(hub_ids, ','), action FROM"
                f" organizations.acknowledgements WHERE organization_id = '{o.organization_id}'"
                " ORDER BY create_time")
    assert rows == [f"{u}|2023-06|{ent},{a}|create", f"{u}|2023-06|{b}|add"]
    (env, created), = org_events(oev.OrganizationCreated, o.organization_id)
    assert created.acknowledgement.accepted and created.actor == f"user:{u}"


# ---- ORG-07 --------------------------------------------------------------------------

def test_org_07_add_and_remove_accounts(w):
    u = w.user()
    ent, a, b = w.account(u), w.account(u, PRO), w.account(u, PRO)
    o = w.create(u, ent)
    r = w.add(u, o.organization_id, ent, [a, b], etag=o.etag)
    assert [m.hub_id for m in r.added] == [a, b]
    assert [m.hub_id for m in r.organization.members] == [ent, a, b]
    added = org_events(oev.OrgMemberAdded, o.organization_id)
    assert [(e.member.hub_id, e.actor) for _, e in added] == [(a, f"user:{u}"), (b, f"user:{u}")]
    assert [env.aggregate_version for env, _ in added] == [o.version + 1, o.version + 2]
    with om.raises_rpc(grpc.StatusCode.ABORTED, "ETAG_MISMATCH"):
        w.remove(u, o.organization_id, ent, a, etag=o.etag)
    after = w.remove(u, o.organization_id, ent, a, reason="not needed")
    assert [m.hub_id for m in after.members] == [ent, b]
    (env, ev), = org_events(oev.OrgMemberRemoved, o.organization_id)
    assert ev.member.hub_id == a and ev.reason == opb.DEPARTURE_REASON_REMOVED_BY_ADMIN
    assert ev.actor == f"user:{u}" and list(ev.remaining_hub_ids) == [ent, b] and ev.detail == "not needed"
    with om.raises_rpc(grpc.StatusCode.FAILED_PRECONDITION, "NOT_IN_ORGANIZATION"):
        w.remove(u, o.organization_id, ent, a)


def test_org_07_last_enterprise_account_cannot_be_removed(w):
    u = w.user()
    ent, a = w.account(u), w.account(u, PRO)
    o = w.create(u, ent, [a])
    with om.raises_rpc(grpc.StatusCode.FAILED_PRECONDITION, "LAST_ENTERPRISE_ACCOUNT"):
        w.remove(u, o.organization_id, ent, ent)
    assert w.members_of(u, o.organization_id) == [ent, a]
    # with a second Enterprise account, the first may go (acting from itself)
    e2 = w.account(u)
    w.add(u, o.organization_id, ent, [e2])
    after = w.remove(u, o.organization_id, ent, ent)
    assert [m.hub_id for m in after.members] == [a, e2]


def test_org_07_managing_requires_acting_from_an_enterprise_account_of_the_organization(w):
    u = w.user()
    ent, a, b, outside = w.account(u), w.account(u, PRO), w.account(u, PRO), w.account(u)
    o = w.create(u, ent, [a])
    with om.raises_rpc(grpc.StatusCode.FAILED_PRECONDITION, "NOT_ENTERPRISE_ACCOUNT"):
        w.add(u, o.organization_id, a, [b])
    with om.raises_rpc(grpc.StatusCode.FAILED_PRECONDITION, "NOT_ENTERPRISE_ACCOUNT"):
        w.delete(u, o.organization_id, a, o.etag)
    with om.raises_rpc(grpc.StatusCode.FAILED_PRECONDITION, "NOT_IN_ORGANIZATION"):
        w.remove(u, o.organization_id, outside, a)
    assert w.members_of(u, o.organization_id) == [ent, a]


def test_org_07_managing_requires_super_admin_in_every_account(w):
    u, v = w.user(), w.user()
    ent, a, b = w.account(u), w.account(u, PRO), w.account(u, PRO)
    o = w.create(u, ent, [a])
    w.add_member(ent, u, v, [apb.ROLE_SUPER_ADMIN])
    w.add_member(a, u, v, [apb.ROLE_MARKETING_ACCESS])
    w.add_member(b, u, v, [apb.ROLE_SUPER_ADMIN])
    with om.raises_rpc(grpc.StatusCode.PERMISSION_DENIED, "NOT_SUPER_ADMIN"):
        w.add(v, o.organization_id, ent, [b])
    with om.raises_rpc(grpc.StatusCode.PERMISSION_DENIED, "NOT_SUPER_ADMIN"):
        w.remove(v, o.organization_id, ent, a)
    with om.raises_rpc(grpc.StatusCode.PERMISSION_DENIED, "NOT_SUPER_ADMIN"):
        w.delete(v, o.organization_id, ent, o.etag)
    assert w.members_of(u, o.organization_id) == [ent, a]


# ---- ORG-08 --------------------------------------------------------------------------

def test_org_08_only_super_or_partner_admins_of_a_member_account_can_view(w):
    u, partner, marketer, stranger = w.user(), w.user(), w.user(), w.user()
    ent, a = w.account(u), w.account(u, PRO)
    o = w.create(u, ent, [a])
    w.add_member(a, u, partner, [apb.ROLE_PARTNER_ADMIN])
    w.add_member(a, u, marketer, [apb.ROLE_MARKETING_ACCESS, apb.ROLE_ACCOUNT_PERMISSIONS])
    assert w.get(partner, o.organization_id).organization_id == o.organization_id
    assert w.by_account(partner, ent).organization_id == o.organization_id
    assert w.history(partner, o.organization_id).entries
    # other orgmesh services read it with their own identity (SPEC 8)
    svc = w.org.GetOrganization(opb.GetOrganizationRequest(organization_id=o.organization_id),
                                metadata=om.bearer(om.service_token("connections"))).organization
    assert svc.organization_id == o.organization_id
    # ORG-08 "everyone else: PERMISSION_DENIED" holds for members of an account of
    # the organization (they may know it exists); a stranger is told no more than
    # for an organization that does not exist (AIP-193, issue 13 defect 5).
    for who, code in ((marketer, grpc.StatusCode.PERMISSION_DENIED), (stranger, grpc.StatusCode.NOT_FOUND)):
        with om.raises_rpc(code):
            w.get(who, o.organization_id)
        with om.raises_rpc(code):
            w.by_account(who, a)
        with om.raises_rpc(code):
            w.org.ListOrgMembers(opb.ListOrgMembersRequest(organization_id=o.organization_id),
                                 metadata=om.as_user(who))
        with om.raises_rpc(code):
            w.history(who, o.organization_id)
    with om.raises_rpc(grpc.StatusCode.NOT_FOUND) as r:  # same answer as for an id that exists nowhere
        w.get(stranger, "00000000-0000-4000-8000-000000000001")
    assert r.details.reason == "NOT_FOUND"


# ---- ORG-09, ORG-10 (automatic, from the accounts service's events) -------------------

def removed_events(org_id, hub):
    return [e for _, e in org_events(oev.OrgMemberRemoved, org_id) if e.member.hub_id == hub]


def wait_departure(w, u, org_id, hub, reason):
    om.eventually(lambda: hub not in w.members_of(u, org_id), timeout=20)
    evs = removed_events(org_id, hub)
    assert len(evs) == 1, evs
    ev = evs[0]
    assert ev.reason == reason and ev.actor == "rule:ORG-09" and ev.cause_event_id
    entries = [e for e in w.history(u, org_id).entries if e.action == "org.member.remove"]
    assert entries[0].resource == f"organizations/{org_id}/members/{hub}"
    assert entries[0].actor == "rule:ORG-09"
    assert entries[0].reason.startswith(opb.DepartureReason.Name(reason)[len("DEPARTURE_REASON_"):])
    return ev


def test_org_09_downgraded_account_leaves(w):
    u = w.user()
    ent, a, b = w.account(u), w.account(u, PRO), w.account(u, PRO)
    o = w.create(u, ent, [a, b])
    w.set_subs(a, u, STARTER)
    ev = wait_departure(w, u, o.organization_id, a, opb.DEPARTURE_REASON_DOWNGRADED)
    assert list(ev.remaining_hub_ids) == [ent, b]
    assert w.not_in_any_org(u, a)


def test_org_09_account_moving_its_hosting_location_leaves(w):
    u = w.user()
    ent, a = w.account(u), w.account(u, PRO)
    o = w.create(u, ent, [a])
    w.set_location(a, u, "eu1")
    ev = wait_departure(w, u, o.organization_id, a, opb.DEPARTURE_REASON_HOSTING_LOCATION_CHANGED)
    assert "na1" in ev.detail and "eu1" in ev.detail


def test_org_09_deactivated_account_leaves(w):
    u = w.user()
    ent, a = w.account(u), w.account(u, PRO)
    o = w.create(u, ent, [a])
    w.deactivate(a, u)
    wait_departure(w, u, o.organization_id, a, opb.DEPARTURE_REASON_DEACTIVATED)


def test_org_09_deleted_account_leaves(w):
    u = w.user()
    ent, a, b = w.account(u), w.account(u, PRO), w.account(u, PRO)
    o = w.create(u, ent, [a, b])
    w.acc.DeleteAccount(apb.DeleteAccountRequest(hub_id=a, reason="closed"), metadata=om.as_user(u))
    wait_departure(w, u, o.organization_id, a, opb.DEPARTURE_REASON_ACCOUNT_DELETED)
    assert w.members_of(u, o.organization_id) == [ent, b]


def test_org_09_applied_once_when_delivered_twice_and_after_a_restart(w, suite):
    u = w.user()
    ent, a = w.account(u), w.account(u, PRO)
    o = w.create(u, ent, [a])
    w.deactivate(a, u)
    wait_departure(w, u, o.organization_id, a, opb.DEPARTURE_REASON_DEACTIVATED)
    # a second delivery of the same accounts event, while a new one follows
    envs = accounts_envelopes("orgmesh.accounts.v1.AccountDeactivated", a)
    assert len(envs) == 1
    xadd_accounts_event(envs[0], "orgmesh.accounts.v1.AccountDeactivated")
    suite["organizations"].restart()
    w.org = suite.stub("organizations", ogrpc.OrganizationsServiceStub)   # the old channel was closed
    w.add(u, o.organization_id, ent, [w.account(u, PRO)])       # the service works after the restart
    marker = w.account(u, PRO)
    o2 = w.create(u, w.account(u), [marker])
    w.deactivate(marker, u)                                      # queued after the duplicate
    om.eventually(lambda: marker not in w.members_of(u, o2.organization_id), timeout=20)
    assert len(removed_events(o.organization_id, a)) == 1
    assert len([e for e in history_actions(w, u, o.organization_id) if e[0] == "org.member.remove"]) == 1


def xadd_accounts_event(raw, type_name):
    subprocess.run(["redis-cli", "-h", os.environ["ORGMESH_REDIS_HOST"], "-p", os.environ["ORGMESH_REDIS_PORT"],
                    "-x", "XADD", os.environ.get("ORGMESH_REDIS_NAMESPACE", "") + "orgmesh:events:accounts", "*", "t", type_name, "e"],
                   input=raw, check=True, stdout=subprocess.PIPE)


def test_org_09_an_older_account_state_never_overrides_a_newer_one(w):
    # Redelivery can reorder (SPEC 2): an old AccountDowngraded arriving (as a
    # new delivery) after the account was upgraded again must not remove it.
    u = w.user()
    ent, a = w.account(u), w.account(u, PRO)
    o = w.create(u, ent, [a])
    w.set_subs(a, u, STARTER)
    wait_departure(w, u, o.organization_id, a, opb.DEPARTURE_REASON_DOWNGRADED)
    w.set_subs(a, u, PRO)

    def eligible_again():
        c = [c for c in w.eligible(u, ent=ent).candidates if c.hub_id == a][0]
        return c.eligible
    om.eventually(eligible_again, timeout=20)
    w.add(u, o.organization_id, ent, [a])
    (raw,) = accounts_envelopes("orgmesh.accounts.v1.AccountDowngraded", a)
    env = envelope_pb2.Envelope.FromString(raw)
    env.id = str(uuid.uuid4())                       # not a duplicate: an old state, delivered late
    xadd_accounts_event(env.SerializeToString(), env.type)
    marker = w.account(u, PRO)
    o2 = w.create(u, w.account(u), [marker])
    w.deactivate(marker, u)                          # queued after the stale event
    om.eventually(lambda: marker not in w.members_of(u, o2.organization_id), timeout=20)
    assert w.members_of(u, o.organization_id) == [ent, a]
    applied = psql(f"SELECT count(*) FROM organizations.applied_events WHERE event_id = '{env.id}'")
    assert applied == ["1"]                          # it was consumed, and changed nothing


def test_org_10_organization_deleted_when_its_last_enterprise_account_is_downgraded(w):
    u = w.user()
    ent, a = w.account(u), w.account(u, PRO)
    o = w.create(u, ent, [a])
    w.set_subs(ent, u, [(apb.HUB_MARKETING, apb.TIER_PROFESSIONAL)])   # still PROFESSIONAL: stays, but...

    # ORG-13: what remains is the tombstone, no longer NOT_FOUND
    om.eventually(lambda: w.get(u, o.organization_id).state == opb.ORGANIZATION_STATE_DELETED, timeout=20)
    (env, ev), = org_events(oev.OrganizationDeleted, o.organization_id)
    assert ev.reason == opb.DELETION_REASON_NO_ENTERPRISE_ACCOUNT and ev.actor == "rule:ORG-10"
    assert env.actor == "rule:ORG-10"
    assert sorted(ev.former_member_hub_ids) == sorted([ent, a])
    assert w.not_in_any_org(u, ent) and w.not_in_any_org(u, a)
    assert not removed_events(o.organization_id, ent)


def test_org_10_organization_deleted_when_its_only_enterprise_account_leaves(w):
    u = w.user()
    ent, a = w.account(u), w.account(u, PRO)
    o = w.create(u, ent, [a])
    w.deactivate(ent, u)
    om.eventually(lambda: w.not_in_any_org(u, a), timeout=20)
    (ev,) = removed_events(o.organization_id, ent)
    assert ev.reason == opb.DEPARTURE_REASON_DEACTIVATED
    (_, deleted), = org_events(oev.OrganizationDeleted, o.organization_id)
    assert deleted.reason == opb.DELETION_REASON_NO_ENTERPRISE_ACCOUNT
    assert list(deleted.former_member_hub_ids) == [a]


# ---- ORG-13: the tombstone of an automatic deletion ------------------------------------

def org10_deleted(w):
    """An organization (Enterprise account ent, a PRO account a, super admin
    u) that ORG-10 deletes because ent drops below ENTERPRISE."""
    u = w.user()
    ent, a = w.account(u), w.account(u, PRO)
    o = w.create(u, ent, [a])
    w.set_subs(ent, u, [(apb.HUB_MARKETING, apb.TIER_PROFESSIONAL)])
    om.eventually(lambda: w.not_in_any_org(u, ent) and w.not_in_any_org(u, a), timeout=20)
    return u, ent, a, o


def test_org_13_tombstone_and_history_after_org_10_for_former_members_admins(w):
    u, ent, a, o = org10_deleted(w)
    partner, marketer, stranger = w.user(), w.user(), w.user()
    w.add_member(a, u, partner, [apb.ROLE_PARTNER_ADMIN])
    w.add_member(a, u, marketer, [apb.ROLE_MARKETING_ACCESS])
    t = w.get(u, o.organization_id)
    assert t.state == opb.ORGANIZATION_STATE_DELETED
    assert t.deletion_reason == opb.DELETION_REASON_NO_ENTERPRISE_ACCOUNT
    assert sorted(t.former_member_hub_ids) == sorted([ent, a]) and list(t.members) == []
    assert t.organization_id == o.organization_id and t.founding_hub_id == ent and t.create_time == o.create_time
    retention = t.purge_time.seconds - t.delete_time.seconds
    assert abs(retention - 90 * 86400) <= 2, retention  # the default retention
    # its history, with the deletion and its reason, stays readable
    entries = list(w.history(u, o.organization_id).entries)
    delete = [e for e in entries if e.action == "org.delete"]
    assert len(delete) == 1 and "NO_ENTERPRISE_ACCOUNT" in delete[0].reason, entries
    assert delete[0].actor == "rule:ORG-10"
    # a former member account's partner admin may read it too
    assert w.get(partner, o.organization_id).state == opb.ORGANIZATION_STATE_DELETED
    assert w.history(partner, o.organization_id).entries
    # a plain member of a former account knows it existed; a stranger learns nothing (ORG-08's conventions)
    for who, code in ((marketer, grpc.StatusCode.PERMISSION_DENIED), (stranger, grpc.StatusCode.NOT_FOUND)):
        with om.raises_rpc(code):
            w.get(who, o.organization_id)
        with om.raises_rpc(code):
            w.history(who, o.organization_id)
    # services act on the events: for them it is gone; the accounts are free, members are not listed
    with om.raises_rpc(grpc.StatusCode.NOT_FOUND):
        w.org.GetOrganization(opb.GetOrganizationRequest(organization_id=o.organization_id),
                              metadata=om.bearer(om.service_token("connections")))
    with om.raises_rpc(grpc.StatusCode.NOT_FOUND):
        w.org.ListOrgMembers(opb.ListOrgMembersRequest(organization_id=o.organization_id), metadata=om.as_user(u))


def test_org_13_deleted_by_a_manager_leaves_no_tombstone(w):
    u = w.user()
    ent, a = w.account(u), w.account(u, PRO)
    o = w.create(u, ent, [a])
    assert w.get(u, o.organization_id).state == opb.ORGANIZATION_STATE_ACTIVE
    w.delete(u, o.organization_id, ent, o.etag)
    with om.raises_rpc(grpc.StatusCode.NOT_FOUND):
        w.get(u, o.organization_id)
    with om.raises_rpc(grpc.StatusCode.NOT_FOUND):
        w.history(u, o.organization_id)


def test_org_13_tombstone_purged_after_its_retention_by_the_database_clock(w):
    u, ent, a, o = org10_deleted(w)
    assert w.get(u, o.organization_id).state == opb.ORGANIZATION_STATE_DELETED
    # the retention ends (the purge loop compares with the database's now())
    psql(f"UPDATE organizations.org_tombstones SET purge_time = now() - interval '1 second'"
         f" WHERE organization_id = '{o.organization_id}'")

    def purged():
        with om.raises_rpc(grpc.StatusCode.NOT_FOUND):
            w.get(u, o.organization_id)
        with om.raises_rpc(grpc.StatusCode.NOT_FOUND):
            w.history(u, o.organization_id)
        return True
    om.eventually(purged, timeout=10)
    om.eventually(lambda: psql(f"SELECT count(*) FROM organizations.org_tombstones"
                               f" WHERE organization_id = '{o.organization_id}'") == ["0"], timeout=10)


# ---- ORG-11, ORG-12 --------------------------------------------------------------------

def test_org_11_delete_requires_the_current_etag(w):
    u = w.user()
    ent, a, b = w.account(u), w.account(u, PRO), w.account(u, PRO)
    o = w.create(u, ent, [a])
    with om.raises_rpc(grpc.StatusCode.INVALID_ARGUMENT) as r:
        w.delete(u, o.organization_id, ent, "")
    assert "etag" in r.details.violations
    w.add(u, o.organization_id, ent, [b])
    with om.raises_rpc(grpc.StatusCode.ABORTED, "ETAG_MISMATCH"):
        w.delete(u, o.organization_id, ent, o.etag)
    cur = w.get(u, o.organization_id)
    w.delete(u, o.organization_id, ent, cur.etag, reason="done")
    with om.raises_rpc(grpc.StatusCode.NOT_FOUND):
        w.get(u, o.organization_id)
    (env, ev), = org_events(oev.OrganizationDeleted, o.organization_id)
    assert ev.reason == opb.DELETION_REASON_DELETED_BY_ADMIN and ev.actor == f"user:{u}"
    assert list(ev.former_member_hub_ids) == [ent, a, b] and ev.detail == "done"
    assert env.aggregate_version == cur.version + 1
    # the accounts are free again
    w.create(u, ent, [a, b])


def test_org_12_every_change_is_an_event_and_an_audit_entry(w):
    u = w.user()
    ent, a, b = w.account(u), w.account(u, PRO), w.account(u, PRO)
    o = w.create(u, ent, [a], request_id="create-1")
    w.add(u, o.organization_id, ent, [b])
    w.remove(u, o.organization_id, ent, a, reason="bye")
    w.set_subs(b, u, STARTER)
    om.eventually(lambda: w.members_of(u, o.organization_id) == [ent], timeout=20)
    h = history_actions(w, u, o.organization_id)       # newest first
    oid = o.organization_id
    assert h[0] == ("org.member.remove", f"organizations/{oid}/members/{b}", "rule:ORG-09",
                    "DOWNGRADED: no subscription at PROFESSIONAL or ENTERPRISE")
    assert h[1] == ("org.member.remove", f"organizations/{oid}/members/{a}", f"user:{u}", "REMOVED_BY_ADMIN: bye")
    assert h[2][:3] == ("org.member.add", f"organizations/{oid}/members/{b}", f"user:{u}")
    assert {x[:3] for x in h[3:]} == {("org.member.add", f"organizations/{oid}/members/{ent}", f"user:{u}"),
                                      ("org.member.add", f"organizations/{oid}/members/{a}", f"user:{u}"),
                                      ("org.create", f"organizations/{oid}", f"user:{u}")}
    created = [e for e in w.history(u, oid, page_size=100).entries if e.action == "org.create"][0]
    assert created.request_id == "create-1"
    assert created.after.type_url.endswith("orgmesh.organizations.v1.Organization")
    page = w.history(u, oid, page_size=2)
    assert len(page.entries) == 2 and page.next_page_token
    nxt = w.history(u, oid, page_size=2, page_token=page.next_page_token)
    assert nxt.entries[0].id != page.entries[-1].id
    types = psql(f"SELECT type FROM organizations.outbox WHERE subject = 'organizations/{oid}' ORDER BY id")
    assert types == ["orgmesh.organizations.v1.OrganizationCreated", "orgmesh.organizations.v1.OrgMemberAdded",
                     "orgmesh.organizations.v1.OrgMemberRemoved", "orgmesh.organizations.v1.OrgMemberRemoved"]


# ---- bad input, idempotency ---------------------------------------------------------------

def test_org_01_bad_input_is_refused_with_a_clear_status(w):
    u = w.user()
    ent, a = w.account(u), w.account(u, PRO)
    with om.raises_rpc(grpc.StatusCode.INVALID_ARGUMENT) as r:
        w.create(u, ent, [a, a])
    assert "member_hub_ids[1]" in r.details.violations
    with om.raises_rpc(grpc.StatusCode.INVALID_ARGUMENT):
        w.create(u, ent, [ent])
    with om.raises_rpc(grpc.StatusCode.INVALID_ARGUMENT):
        w.create(u, 0)
    with om.raises_rpc(grpc.StatusCode.INVALID_ARGUMENT):
        w.create(u, ent, [2**63 + 5])
    with om.raises_rpc(grpc.StatusCode.NOT_FOUND):
        w.create(u, ent, [a, 987654321012])                      # unknown account
    with om.raises_rpc(grpc.StatusCode.INVALID_ARGUMENT, "BATCH_TOO_LARGE"):
        w.create(u, ent, list(range(1, 102)))
    assert w.not_in_any_org(u, ent) and w.not_in_any_org(u, a)
    o = w.create(u, ent)
    with om.raises_rpc(grpc.StatusCode.INVALID_ARGUMENT) as r:
        w.add(u, o.organization_id, ent, [])                     # zero accounts
    assert "hub_ids" in r.details.violations
    with om.raises_rpc(grpc.StatusCode.INVALID_ARGUMENT):
        w.add(u, o.organization_id, ent, [a, a])
    with om.raises_rpc(grpc.StatusCode.INVALID_ARGUMENT):
        w.add(u, "not-a-uuid", ent, [a])
    with om.raises_rpc(grpc.StatusCode.INVALID_ARGUMENT):
        w.add(u, o.organization_id, ent, [a], etag="garbage")
    with om.raises_rpc(grpc.StatusCode.RESOURCE_EXHAUSTED, "ORG_ACCOUNT_LIMIT"):
        w.add(u, o.organization_id, ent, [w.account(u, PRO) for _ in range(5)])
    with om.raises_rpc(grpc.StatusCode.NOT_FOUND):
        w.add(u, str(uuid.uuid4()), ent, [a])
    with om.raises_rpc(grpc.StatusCode.NOT_FOUND):
        w.add(u, o.organization_id, ent, [987654321013])
    with om.raises_rpc(grpc.StatusCode.INVALID_ARGUMENT):
        w.org.ListOrgMembers(opb.ListOrgMembersRequest(organization_id=o.organization_id, page_size=-1),
                             metadata=om.as_user(u))
    with om.raises_rpc(grpc.StatusCode.UNAUTHENTICATED):
        w.org.GetOrganization(opb.GetOrganizationRequest(organization_id=o.organization_id))
    assert w.members_of(u, o.organization_id) == [ent]


def test_org_01_request_id_makes_create_idempotent(w):
    u = w.user()
    ent, a = w.account(u), w.account(u, PRO)
    o1 = w.create(u, ent, [a], request_id="same")
    o2 = w.create(u, ent, [a], request_id="same")
    assert o1.organization_id == o2.organization_id
    with om.raises_rpc(grpc.StatusCode.INVALID_ARGUMENT, "REQUEST_ID_REUSED"):
        w.create(u, ent, [], request_id="same")
    assert len(org_events(oev.OrganizationCreated, o1.organization_id)) == 1
    w.delete(u, o1.organization_id, ent, o1.etag, request_id="del")
    w.delete(u, o1.organization_id, ent, o1.etag, request_id="del")       # the first result again
    with om.raises_rpc(grpc.StatusCode.NOT_FOUND):
        w.delete(u, o1.organization_id, ent, o1.etag, request_id="del-2")
    assert len(org_events(oev.OrganizationDeleted, o1.organization_id)) == 1


def test_org_02_rules_need_the_accounts_copies_and_nothing_is_guessed_without_them(w, suite):
    # A missing copy is fetched from the accounts service; while that service
    # is down the call fails as a whole (UNAVAILABLE) and leaves nothing.
    u = w.user()
    ent = w.account(u)
    o = w.create(u, ent)                                  # copies of u, ent exist now
    fresh = w.account(u, PRO)
    suite["accounts"].kill()
    try:
        with om.raises_rpc(grpc.StatusCode.UNAVAILABLE):
            w.add(u, o.organization_id, ent, [987654321099])
        assert w.members_of(u, o.organization_id) == [ent]   # reads need no accounts service
    finally:
        suite["accounts"].restart()
        w.acc = suite.stub("accounts", agrpc.AccountsServiceStub)
    w.add(u, o.organization_id, ent, [fresh])
    assert w.members_of(u, o.organization_id) == [ent, fresh]


# ---- the interop flow (a generated Python client end to end) --------------------------------

def test_interop_create_list_eligible_add_remove_delete(w):
    u = w.user()
    ent, a, b = w.account(u, name="Acme EU"), w.account(u, PRO), w.account(u, PRO)
    cands = w.eligible(u, ent=ent, filter=opb.CANDIDATE_FILTER_ELIGIBLE).candidates
    assert {c.hub_id for c in cands} >= {ent, a, b}
    assert [c for c in cands if c.hub_id == ent][0].marketing_enterprise
    o = w.create(u, ent, [a], request_id=str(uuid.uuid4()))
    assert o.members[0].name == "Acme EU"
    o = w.add(u, o.organization_id, ent, [b], etag=o.etag).organization
    assert [m.hub_id for m in o.members] == [ent, a, b]
    o = w.remove(u, o.organization_id, ent, b, etag=o.etag)
    assert [m.hub_id for m in o.members] == [ent, a]
    w.delete(u, o.organization_id, ent, o.etag)
    with om.raises_rpc(grpc.StatusCode.NOT_FOUND):
        w.by_account(u, ent)

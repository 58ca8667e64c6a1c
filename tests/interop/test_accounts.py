"""The accounts service from a Python client (SPEC 1, 2, 8; PART-01/07/08):
accounts, users and memberships read back as written, field violations,
etags, request ids, tokens, who may do what, the internal RPCs, and the
events relayed to the Redis stream orgmesh:events:accounts."""

import os
import socket
import uuid

import grpc
import pytest

import orgmesh_testlib as om
from google.protobuf import field_mask_pb2
from orgmesh.accounts.v1 import accounts_pb2 as pb
from orgmesh.accounts.v1 import accounts_pb2_grpc as pb_grpc
from orgmesh.accounts.v1 import events_pb2
from orgmesh.events.v1 import envelope_pb2
from orgmesh.type.v1 import money_pb2

OM_SERVICES = ["accounts"]

# with-stack.sh gives each suite its own Redis namespace (ORGMESH_REDIS_NAMESPACE).
STREAM = os.environ.get("ORGMESH_REDIS_NAMESPACE", "") + "orgmesh:events:accounts"
IDENTITY = om.bearer(om.service_token("identity"))   # provisions users (SPEC 8 service identity)
PARTNERS = om.bearer(om.service_token("partners"))


# ---- helpers -------------------------------------------------------------------

@pytest.fixture
def acc(suite):
    return suite.stub("accounts", pb_grpc.AccountsServiceStub)


@pytest.fixture
def internal(suite):
    return suite.stub("accounts", pb_grpc.AccountsInternalServiceStub)


def unique(prefix="t"):
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def traced(metadata, trace_id):
    """Call metadata with our own trace id, which the events carry."""
    return tuple(metadata) + (("x-trace-id", trace_id),)


def new_user(acc, name=None, **fields):
    name = name or unique("user")
    u = pb.User(email=f"{name}@example.com", display_name=name.title(), **fields)
    return acc.CreateUser(pb.CreateUserRequest(user=u), metadata=IDENTITY).user


def new_account(acc, owner, name=None, kind=pb.ACCOUNT_KIND_STANDARD, subs=None, metadata=None, **fields):
    a = pb.Account(name=name or unique("Account"), kind=kind, hosting_location="eu1",
                   subscriptions=subs or [], **fields)
    md = metadata or om.as_user(owner.user_id)
    return acc.CreateAccount(pb.CreateAccountRequest(account=a), metadata=md).account


def add_member(acc, admin_md, hub_id, user_id, roles=(), seats=()):
    m = pb.Membership(hub_id=hub_id, user_id=user_id, roles=list(roles), seats=list(seats))
    return acc.CreateMembership(pb.CreateMembershipRequest(membership=m), metadata=admin_md).membership


def pro(hub=pb.HUB_MARKETING, tier=pb.TIER_PROFESSIONAL):
    return pb.Subscription(hub=hub, tier=tier)


# A very small Redis client (RESP2), enough for XREVRANGE with binary values.
class Redis:
    def __init__(self):
        env = om.stack_env()
        self.sock = socket.create_connection((env["ORGMESH_REDIS_HOST"], int(env["ORGMESH_REDIS_PORT"])),
                                             timeout=5)
        self.f = self.sock.makefile("rb")

    def close(self):
        self.f.close()
        self.sock.close()

    def cmd(self, *args):
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(a), a))
        self.sock.sendall(b"".join(out))
        return self._read()

    def _read(self):
        line = self.f.readline()
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = self.f.read(n + 2)
            return data[:-2]
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._read() for _ in range(n)]
        raise RuntimeError(f"bad RESP line {line!r}")


def events_with_trace(trace_id, count=5000):
    """(type, envelope, payload) of the stream's entries caused by calls that
    carried `trace_id`, oldest first. The stream is shared by the tests that
    run side by side, the trace id keeps ours apart."""
    r = Redis()
    try:
        entries = r.cmd("XREVRANGE", STREAM, "+", "-", "COUNT", count) or []
    finally:
        r.close()
    out = []
    for _id, fields in reversed(entries):
        kv = dict(zip(fields[0::2], fields[1::2]))
        env = envelope_pb2.Envelope.FromString(kv[b"e"])
        if env.trace_id != trace_id:
            continue
        cls = getattr(events_pb2, env.type.rsplit(".", 1)[1])
        payload = cls()
        env.payload.Unpack(payload)
        out.append((env.type.rsplit(".", 1)[1], env, payload))
    return out


def wait_events(trace_id, n, timeout=5.0):
    return om.eventually(lambda: (lambda ev: ev if len(ev) >= n else None)(events_with_trace(trace_id)),
                         timeout=timeout, message=f"{n} events with trace {trace_id}")


# ---- reading back what was written -------------------------------------------------

def test_create_account_user_membership_and_read_them_back(acc):
    owner = new_user(acc, locale="pt-br", two_factor_enabled=True)
    assert owner.user_id > 0 and owner.locale == "pt-BR" and owner.two_factor_enabled
    assert owner.etag == '"v1"'

    a = new_account(acc, owner, subs=[pro(pb.HUB_SALES, pb.TIER_STARTER), pro()],
                    mrr=money_pb2.Money(amount_minor=99900, currency_code="EUR"))
    assert a.hub_id > 0 and a.state == pb.ACCOUNT_STATE_ACTIVE and a.version == 1 and a.etag == '"v1"'
    got = acc.GetAccount(pb.GetAccountRequest(hub_id=a.hub_id), metadata=om.as_user(owner.user_id)).account
    assert got == a
    assert [(s.hub, s.tier) for s in got.subscriptions] == [(pb.HUB_MARKETING, pb.TIER_PROFESSIONAL),
                                                            (pb.HUB_SALES, pb.TIER_STARTER)]
    assert got.mrr.amount_minor == 99900 and got.mrr.currency_code == "EUR"

    # the creator became its SUPER_ADMIN
    mine = acc.GetMembership(pb.GetMembershipRequest(hub_id=a.hub_id, user_id=owner.user_id),
                             metadata=om.as_user(owner.user_id)).membership
    assert list(mine.roles) == [pb.ROLE_SUPER_ADMIN]

    colleague = new_user(acc)
    m = add_member(acc, om.as_user(owner.user_id), a.hub_id, colleague.user_id,
                   roles=[pb.ROLE_MARKETING_ACCESS], seats=[pb.SEAT_SALES])
    assert list(m.roles) == [pb.ROLE_MARKETING_ACCESS] and list(m.seats) == [pb.SEAT_SALES]
    assert not m.HasField("partner_link") and not m.partner_employee

    listed = acc.ListMemberships(pb.ListMembershipsRequest(hub_id=a.hub_id),
                                 metadata=om.as_user(colleague.user_id)).memberships
    assert {x.user_id for x in listed} == {owner.user_id, colleague.user_id}
    mine = acc.ListAccounts(pb.ListAccountsRequest(), metadata=om.as_user(colleague.user_id)).accounts
    assert [x.hub_id for x in mine] == [a.hub_id]
    # colleagues see each other; the email lookup ignores case
    seen = acc.GetUserByEmail(pb.GetUserByEmailRequest(email=owner.email.upper()),
                              metadata=om.as_user(colleague.user_id)).user
    assert seen.user_id == owner.user_id


def test_non_member_cannot_read_an_account(acc):
    """A stranger is told no more than for an account that does not exist
    (AIP-193, issue 13 defect 5): NOT_FOUND, not PERMISSION_DENIED."""
    owner, stranger = new_user(acc), new_user(acc)
    a = new_account(acc, owner)
    with om.raises_rpc(grpc.StatusCode.NOT_FOUND, "NOT_FOUND"):
        acc.GetAccount(pb.GetAccountRequest(hub_id=a.hub_id), metadata=om.as_user(stranger.user_id))
    with om.raises_rpc(grpc.StatusCode.NOT_FOUND):
        acc.GetUserByEmail(pb.GetUserByEmailRequest(email=owner.email), metadata=om.as_user(stranger.user_id))


# ---- invalid input ----------------------------------------------------------------------

def test_bad_account_fields_are_field_violations(acc):
    owner = new_user(acc)
    bad = pb.Account(name="", kind=pb.ACCOUNT_KIND_UNSPECIFIED, hosting_location="mars1",
                     subscriptions=[pro(), pro(pb.HUB_MARKETING, pb.TIER_FREE)],
                     mrr=money_pb2.Money(amount_minor=-5, currency_code="eur"))
    with om.raises_rpc(grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT") as r:
        acc.CreateAccount(pb.CreateAccountRequest(account=bad), metadata=om.as_user(owner.user_id))
    v = r.details.violations
    for field in ("account.name", "account.kind", "account.hosting_location", "account.subscriptions[1].hub",
                  "account.mrr.amount_minor", "account.mrr.currency_code"):
        assert field in v, f"no violation for {field}: {v}"
    # nothing was created
    assert len(acc.ListAccounts(pb.ListAccountsRequest(), metadata=om.as_user(owner.user_id)).accounts) == 0


def test_account_name_over_200_characters_is_refused(acc):
    owner = new_user(acc)
    with om.raises_rpc(grpc.StatusCode.INVALID_ARGUMENT) as r:
        new_account(acc, owner, name="é" * 201)
    assert "account.name" in r.details.violations
    assert new_account(acc, owner, name="é" * 200).name == "é" * 200


def test_bad_user_fields_are_field_violations(acc):
    u = pb.User(email="not-an-email", display_name="", locale="english")
    with om.raises_rpc(grpc.StatusCode.INVALID_ARGUMENT) as r:
        acc.CreateUser(pb.CreateUserRequest(user=u), metadata=IDENTITY)
    assert set(r.details.violations) >= {"user.email", "user.display_name", "user.locale"}


def test_email_is_unique_ignoring_case(acc):
    u = new_user(acc)
    dup = pb.User(email=u.email.upper(), display_name="Someone Else")
    with om.raises_rpc(grpc.StatusCode.ALREADY_EXISTS, "EMAIL_TAKEN"):
        acc.CreateUser(pb.CreateUserRequest(user=dup), metadata=IDENTITY)
    other = new_user(acc)
    upd = pb.UpdateUserRequest(user=pb.User(user_id=other.user_id, email=u.email.title()),
                               update_mask=field_mask_pb2.FieldMask(paths=["email"]))
    with om.raises_rpc(grpc.StatusCode.ALREADY_EXISTS, "EMAIL_TAKEN"):
        acc.UpdateUser(upd, metadata=om.as_user(other.user_id))


def test_update_needs_a_known_mask(acc):
    owner = new_user(acc)
    a = new_account(acc, owner)
    md = om.as_user(owner.user_id)
    with om.raises_rpc(grpc.StatusCode.INVALID_ARGUMENT) as r:
        acc.UpdateAccount(pb.UpdateAccountRequest(account=pb.Account(hub_id=a.hub_id, name="x")), metadata=md)
    assert "update_mask" in r.details.violations
    with om.raises_rpc(grpc.StatusCode.INVALID_ARGUMENT) as r:
        acc.UpdateAccount(pb.UpdateAccountRequest(account=pb.Account(hub_id=a.hub_id, kind=pb.ACCOUNT_KIND_SANDBOX),
                                                  update_mask=field_mask_pb2.FieldMask(paths=["kind"])), metadata=md)
    assert "update_mask" in r.details.violations


# ---- etags and request ids --------------------------------------------------------------

def test_stale_etag_is_aborted(acc):
    owner = new_user(acc)
    a = new_account(acc, owner)
    md = om.as_user(owner.user_id)
    mask = field_mask_pb2.FieldMask(paths=["name"])
    first = acc.UpdateAccount(pb.UpdateAccountRequest(account=pb.Account(hub_id=a.hub_id, name="Renamed"),
                                                      update_mask=mask, etag=a.etag), metadata=md).account
    assert first.name == "Renamed" and first.etag != a.etag
    with om.raises_rpc(grpc.StatusCode.ABORTED, "ETAG_MISMATCH"):
        acc.UpdateAccount(pb.UpdateAccountRequest(account=pb.Account(hub_id=a.hub_id, name="Again"),
                                                  update_mask=mask, etag=a.etag), metadata=md)
    with om.raises_rpc(grpc.StatusCode.ABORTED, "ETAG_MISMATCH"):
        acc.DeleteAccount(pb.DeleteAccountRequest(hub_id=a.hub_id, etag=a.etag), metadata=md)
    got = acc.GetAccount(pb.GetAccountRequest(hub_id=a.hub_id), metadata=md).account
    assert got.name == "Renamed"


def test_repeated_request_id_acts_once(acc):
    owner = new_user(acc)
    trace = unique("trace")
    md = traced(om.as_user(owner.user_id), trace)
    req = pb.CreateAccountRequest(account=pb.Account(name=unique("Once"), kind=pb.ACCOUNT_KIND_STANDARD,
                                                     hosting_location="na1"),
                                  request_id=unique("req"))
    one = acc.CreateAccount(req, metadata=md).account
    two = acc.CreateAccount(req, metadata=md).account
    assert one == two
    listed = acc.ListAccounts(pb.ListAccountsRequest(), metadata=om.as_user(owner.user_id)).accounts
    assert [x.hub_id for x in listed] == [one.hub_id]
    ev = wait_events(trace, 2)   # AccountCreated + MembershipAdded of the creator
    assert [t for t, _, _ in ev].count("AccountCreated") == 1
    assert len(ev) == 2


def test_same_request_id_with_another_body_is_invalid(acc):
    owner = new_user(acc)
    md = om.as_user(owner.user_id)
    rid = unique("req")
    acc.CreateAccount(pb.CreateAccountRequest(account=pb.Account(name="A", kind=pb.ACCOUNT_KIND_STANDARD,
                                                                 hosting_location="na1"), request_id=rid),
                      metadata=md)
    with om.raises_rpc(grpc.StatusCode.INVALID_ARGUMENT, "REQUEST_ID_REUSED"):
        acc.CreateAccount(pb.CreateAccountRequest(account=pb.Account(name="B", kind=pb.ACCOUNT_KIND_STANDARD,
                                                                     hosting_location="na1"), request_id=rid),
                          metadata=md)


# ---- identity ---------------------------------------------------------------------------

@pytest.mark.parametrize("token", ["forged", "expired", "wrong_audience", "missing"])
def test_bad_tokens_are_unauthenticated(acc, token):
    md = {
        "forged": lambda: om.bearer(om.forged_token(1)),
        "expired": lambda: om.bearer(om.expired_token(1)),
        "wrong_audience": lambda: om.bearer(om.wrong_audience_token(1)),
        "missing": lambda: (),
    }[token]()
    with om.raises_rpc(grpc.StatusCode.UNAUTHENTICATED):
        acc.ListAccounts(pb.ListAccountsRequest(), metadata=md)


def test_internal_rpcs_refuse_user_tokens(acc, internal):
    owner = new_user(acc)
    a = new_account(acc, owner)
    with om.raises_rpc(grpc.StatusCode.PERMISSION_DENIED, "SERVICE_IDENTITY_REQUIRED"):
        internal.BatchGetAccounts(pb.BatchGetAccountsRequest(hub_ids=[a.hub_id]),
                                  metadata=om.as_user(owner.user_id))
    with om.raises_rpc(grpc.StatusCode.PERMISSION_DENIED, "SERVICE_IDENTITY_REQUIRED"):
        internal.SetPartnerEmployee(pb.SetPartnerEmployeeRequest(hub_id=a.hub_id, user_id=owner.user_id,
                                                                 partner_employee=True),
                                    metadata=om.as_user(owner.user_id))
    # partner_employee and partner_link belong to the partners service alone (SPEC 1, issue 13)
    with om.raises_rpc(grpc.StatusCode.PERMISSION_DENIED, "SERVICE_NOT_ALLOWED"):
        internal.SetPartnerEmployee(pb.SetPartnerEmployeeRequest(hub_id=a.hub_id, user_id=owner.user_id,
                                                                 partner_employee=True),
                                    metadata=om.bearer(om.service_token("organizations")))


def test_batch_get_keeps_request_order_and_names_missing(acc, internal):
    owner = new_user(acc)
    a, b = new_account(acc, owner), new_account(acc, owner)
    resp = internal.BatchGetAccounts(pb.BatchGetAccountsRequest(hub_ids=[b.hub_id, 999999999, a.hub_id, b.hub_id]),
                                     metadata=om.bearer(om.service_token("organizations")))
    assert [x.hub_id for x in resp.accounts] == [b.hub_id, a.hub_id]
    assert list(resp.missing_hub_ids) == [999999999]
    with om.raises_rpc(grpc.StatusCode.INVALID_ARGUMENT, "BATCH_TOO_LARGE"):
        internal.BatchGetUsers(pb.BatchGetUsersRequest(user_ids=list(range(1, 102))),
                               metadata=om.bearer(om.service_token("notifier")))


# ---- who may do what -------------------------------------------------------------------------

def partner_setup(acc, internal):
    """A client account (admin + one plain member) and a partner employee who
    works in it through a partner link with SUPER_ADMIN."""
    admin, member, employee, manager = new_user(acc), new_user(acc), new_user(acc), new_user(acc)
    client = new_account(acc, admin, name=unique("Client"))
    partner = new_account(acc, manager, name=unique("Agency"), kind=pb.ACCOUNT_KIND_PARTNER)
    add_member(acc, om.as_user(admin.user_id), client.hub_id, member.user_id, roles=[pb.ROLE_MARKETING_ACCESS])
    add_member(acc, om.as_user(manager.user_id), partner.hub_id, employee.user_id)
    linked = internal.AddPartnerLinkedMembership(pb.AddPartnerLinkedMembershipRequest(
        hub_id=client.hub_id, user_id=employee.user_id, partner_hub_id=partner.hub_id,
        assignment_id=unique("as"), roles=[pb.ROLE_SUPER_ADMIN]), metadata=PARTNERS)
    assert not linked.already_member
    assert linked.membership.partner_link.partner_hub_id == partner.hub_id
    assert not linked.membership.partner_link.membership_predates_link
    return admin, member, employee, client, partner, linked.membership


def test_part_08_partner_actor_cannot_remove_member(acc, internal):
    admin, member, employee, client, _, _ = partner_setup(acc, internal)
    with om.raises_rpc(grpc.StatusCode.PERMISSION_DENIED, "PARTNER_IDENTITY_FORBIDDEN"):
        acc.DeleteMembership(pb.DeleteMembershipRequest(hub_id=client.hub_id, user_id=member.user_id),
                             metadata=om.as_user(employee.user_id))
    # still there
    acc.GetMembership(pb.GetMembershipRequest(hub_id=client.hub_id, user_id=member.user_id),
                      metadata=om.as_user(admin.user_id))


def test_part_08_member_without_manage_role_cannot_remove(acc, internal):
    admin, member, employee, client, _, _ = partner_setup(acc, internal)
    with om.raises_rpc(grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED"):
        acc.DeleteMembership(pb.DeleteMembershipRequest(hub_id=client.hub_id, user_id=employee.user_id),
                             metadata=om.as_user(member.user_id))


def test_part_08_client_removes_partner_linked_member_and_event_says_so(acc, internal):
    admin, _, employee, client, partner, linked = partner_setup(acc, internal)
    trace = unique("trace")
    acc.DeleteMembership(pb.DeleteMembershipRequest(hub_id=client.hub_id, user_id=employee.user_id,
                                                    etag=linked.etag, reason="no longer needed"),
                         metadata=traced(om.as_user(admin.user_id), trace))
    with om.raises_rpc(grpc.StatusCode.NOT_FOUND):
        acc.GetMembership(pb.GetMembershipRequest(hub_id=client.hub_id, user_id=employee.user_id),
                          metadata=om.as_user(admin.user_id))
    (kind, env, removed), = wait_events(trace, 1)
    assert kind == "MembershipRemoved"
    assert env.subject == f"accounts/{client.hub_id}/memberships/{employee.user_id}"
    assert env.actor == f"user:{admin.user_id}" and env.aggregate_version == linked.version + 1
    assert removed.partner_linked and removed.cause == pb.MEMBERSHIP_REMOVAL_CAUSE_REMOVED_BY_ACCOUNT
    assert removed.membership.partner_link.partner_hub_id == partner.hub_id
    assert removed.reason == "no longer needed" and removed.user_email == employee.email


def test_part_07_ending_a_link_keeps_a_membership_that_predates_it(acc, internal):
    admin, member, employee, client, partner, linked = partner_setup(acc, internal)
    # the plain member is linked too, later: only the link goes
    before = internal.AddPartnerLinkedMembership(pb.AddPartnerLinkedMembershipRequest(
        hub_id=client.hub_id, user_id=member.user_id, partner_hub_id=partner.hub_id, assignment_id="as-old"),
        metadata=PARTNERS)
    assert before.already_member and before.membership.partner_link.membership_predates_link
    r = internal.RemovePartnerLinkedMembership(pb.RemovePartnerLinkedMembershipRequest(
        hub_id=client.hub_id, user_id=member.user_id, assignment_id="as-old", reason="PART-07"),
        metadata=PARTNERS)
    assert r.link_cleared and not r.membership_removed
    assert not r.membership.HasField("partner_link") and list(r.membership.roles) == [pb.ROLE_MARKETING_ACCESS]

    # the employee's membership exists because of the link: it goes
    r = internal.RemovePartnerLinkedMembership(pb.RemovePartnerLinkedMembershipRequest(
        hub_id=client.hub_id, user_id=employee.user_id, assignment_id=linked.partner_link.assignment_id,
        on_behalf_of="rule:PART-09"), metadata=PARTNERS)
    assert r.membership_removed and not r.link_cleared
    # safe to repeat
    again = internal.RemovePartnerLinkedMembership(pb.RemovePartnerLinkedMembershipRequest(
        hub_id=client.hub_id, user_id=employee.user_id, assignment_id=linked.partner_link.assignment_id),
        metadata=PARTNERS)
    assert not again.membership_removed and not again.link_cleared


def test_part_01_partner_employee_only_in_partner_account(acc, internal):
    admin, member, employee, client, partner, _ = partner_setup(acc, internal)
    with om.raises_rpc(grpc.StatusCode.FAILED_PRECONDITION, "NOT_PARTNER_ACCOUNT"):
        internal.SetPartnerEmployee(pb.SetPartnerEmployeeRequest(hub_id=client.hub_id, user_id=member.user_id,
                                                                 partner_employee=True), metadata=PARTNERS)
    trace = unique("trace")
    tagged = internal.SetPartnerEmployee(pb.SetPartnerEmployeeRequest(
        hub_id=partner.hub_id, user_id=employee.user_id, partner_employee=True, on_behalf_of="user:42"),
        metadata=traced(PARTNERS, trace)).membership
    assert tagged.partner_employee
    (kind, env, changed), = wait_events(trace, 1)
    assert kind == "MembershipChanged" and list(changed.changed_fields) == ["partner_employee"]
    assert env.actor == "user:42" and changed.account_kind == pb.ACCOUNT_KIND_PARTNER
    # users cannot set it themselves
    with om.raises_rpc(grpc.StatusCode.INVALID_ARGUMENT) as r:
        acc.CreateMembership(pb.CreateMembershipRequest(membership=pb.Membership(
            hub_id=partner.hub_id, user_id=admin.user_id, partner_employee=True)), metadata=IDENTITY)
    assert "membership.partner_employee" in r.details.violations


def test_account_permissions_cannot_grant_super_admin_and_one_stays(acc):
    owner, helper, newbie = new_user(acc), new_user(acc), new_user(acc)
    a = new_account(acc, owner)
    add_member(acc, om.as_user(owner.user_id), a.hub_id, helper.user_id, roles=[pb.ROLE_ACCOUNT_PERMISSIONS])
    with om.raises_rpc(grpc.StatusCode.PERMISSION_DENIED):
        add_member(acc, om.as_user(helper.user_id), a.hub_id, newbie.user_id, roles=[pb.ROLE_SUPER_ADMIN])
    add_member(acc, om.as_user(helper.user_id), a.hub_id, newbie.user_id, roles=[pb.ROLE_MARKETING_ACCESS])
    # the only SUPER_ADMIN cannot drop the role, nor be removed
    with om.raises_rpc(grpc.StatusCode.FAILED_PRECONDITION):
        acc.UpdateMembership(pb.UpdateMembershipRequest(
            membership=pb.Membership(hub_id=a.hub_id, user_id=owner.user_id, roles=[pb.ROLE_ACCOUNT_PERMISSIONS]),
            update_mask=field_mask_pb2.FieldMask(paths=["roles"])), metadata=om.as_user(owner.user_id))
    with om.raises_rpc(grpc.StatusCode.FAILED_PRECONDITION):
        acc.DeleteMembership(pb.DeleteMembershipRequest(hub_id=a.hub_id, user_id=owner.user_id),
                             metadata=om.as_user(helper.user_id))


# ---- events -----------------------------------------------------------------------------------------

def test_events_carry_types_versions_and_snapshots(acc):
    owner = new_user(acc)
    trace = unique("trace")
    md = traced(om.as_user(owner.user_id), trace)
    a = acc.CreateAccount(pb.CreateAccountRequest(account=pb.Account(
        name=unique("Ev"), kind=pb.ACCOUNT_KIND_STANDARD, hosting_location="eu1",
        subscriptions=[pro(pb.HUB_MARKETING, pb.TIER_ENTERPRISE)])), metadata=md).account
    # the last PROFESSIONAL-or-above hub drops: ORG-09 DOWNGRADED follows
    up = acc.UpdateAccount(pb.UpdateAccountRequest(
        account=pb.Account(hub_id=a.hub_id, subscriptions=[pro(pb.HUB_MARKETING, pb.TIER_STARTER)],
                           hosting_location="na1"),
        update_mask=field_mask_pb2.FieldMask(paths=["subscriptions", "hosting_location"]), etag=a.etag),
        metadata=md).account
    off = acc.DeactivateAccount(pb.DeactivateAccountRequest(hub_id=a.hub_id, reason="closing"), metadata=md).account
    # deactivating again changes nothing and emits nothing
    assert acc.DeactivateAccount(pb.DeactivateAccountRequest(hub_id=a.hub_id), metadata=md).account == off

    ev = wait_events(trace, 7)
    got = [(t, e.aggregate_version) for t, e, _ in ev if e.subject == f"accounts/{a.hub_id}"]
    assert got == [("AccountCreated", 1), ("AccountUpdated", 2), ("SubscriptionsChanged", 3),
                   ("AccountDowngraded", 4), ("HostingLocationChanged", 5), ("AccountDeactivated", 6)]
    assert up.version == 5 and off.version == 6 and off.state == pb.ACCOUNT_STATE_DEACTIVATED
    for t, e, p in ev:
        assert e.source == "accounts" and e.type == f"orgmesh.accounts.v1.{t}"
        assert e.actor == f"user:{owner.user_id}"
        if e.subject == f"accounts/{a.hub_id}":
            assert p.account.version == e.aggregate_version   # the snapshot after the change
    downgraded = next(p for t, _, p in ev if t == "AccountDowngraded")
    assert [(s.hub, s.tier) for s in downgraded.previous_subscriptions] == [(pb.HUB_MARKETING, pb.TIER_ENTERPRISE)]
    updated = next(p for t, _, p in ev if t == "AccountUpdated")
    assert set(updated.changed_fields) == {"subscriptions", "hosting_location"}
    assert updated.previous.hosting_location == "eu1" and updated.account.hosting_location == "na1"
    assert next(p for t, _, p in ev if t == "AccountDeactivated").reason == "closing"
    added = next(p for t, _, p in ev if t == "MembershipAdded")
    assert added.membership.user_id == owner.user_id and added.user_email == owner.email
    # a deactivated account is read-only until reactivated
    with om.raises_rpc(grpc.StatusCode.FAILED_PRECONDITION, "ACCOUNT_DEACTIVATED"):
        acc.UpdateAccount(pb.UpdateAccountRequest(account=pb.Account(hub_id=a.hub_id, name="x"),
                                                  update_mask=field_mask_pb2.FieldMask(paths=["name"])),
                          metadata=md)
    on = acc.ReactivateAccount(pb.ReactivateAccountRequest(hub_id=a.hub_id, etag=off.etag), metadata=md).account
    assert on.state == pb.ACCOUNT_STATE_ACTIVE and on.version == 7


def test_deleting_a_user_removes_their_memberships_first(acc):
    owner, leaver = new_user(acc), new_user(acc)
    a = new_account(acc, owner)
    add_member(acc, om.as_user(owner.user_id), a.hub_id, leaver.user_id, seats=[pb.SEAT_SERVICE])
    trace = unique("trace")
    acc.DeleteUser(pb.DeleteUserRequest(user_id=leaver.user_id, etag=leaver.etag),
                   metadata=traced(om.as_user(leaver.user_id), trace))
    kinds = [(t, e.subject) for t, e, _ in wait_events(trace, 2)]
    assert kinds == [("MembershipRemoved", f"accounts/{a.hub_id}/memberships/{leaver.user_id}"),
                     ("UserDeleted", f"users/{leaver.user_id}")]
    with om.raises_rpc(grpc.StatusCode.NOT_FOUND):
        acc.GetUser(pb.GetUserRequest(user_id=leaver.user_id), metadata=IDENTITY)
    members = acc.ListMemberships(pb.ListMembershipsRequest(hub_id=a.hub_id), metadata=om.as_user(owner.user_id))
    assert [m.user_id for m in members.memberships] == [owner.user_id]


# ---- lists and history -------------------------------------------------------------------------------

def test_lists_page_with_tokens_bound_to_their_filters(acc):
    owner = new_user(acc)
    md = om.as_user(owner.user_id)
    made = sorted(new_account(acc, owner, name=f"Paged {i}").hub_id for i in range(3))
    p1 = acc.ListAccounts(pb.ListAccountsRequest(page_size=2), metadata=md)
    assert [x.hub_id for x in p1.accounts] == made[:2] and p1.next_page_token
    p2 = acc.ListAccounts(pb.ListAccountsRequest(page_size=2, page_token=p1.next_page_token), metadata=md)
    assert [x.hub_id for x in p2.accounts] == made[2:] and p2.next_page_token == ""
    with om.raises_rpc(grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN"):
        acc.ListAccounts(pb.ListAccountsRequest(page_size=2, page_token=p1.next_page_token,
                                                name_prefix="paged"), metadata=md)
    with om.raises_rpc(grpc.StatusCode.INVALID_ARGUMENT) as r:
        acc.ListAccounts(pb.ListAccountsRequest(page_size=-1), metadata=md)
    assert "page_size" in r.details.violations
    named = acc.ListAccounts(pb.ListAccountsRequest(name_prefix="PAGED 1"), metadata=md).accounts
    assert [x.name for x in named] == ["Paged 1"]


def test_account_history_for_admins_only(acc):
    owner, member = new_user(acc), new_user(acc)
    a = new_account(acc, owner)
    add_member(acc, om.as_user(owner.user_id), a.hub_id, member.user_id)
    h = acc.ListAccountHistory(pb.ListAccountHistoryRequest(hub_id=a.hub_id), metadata=om.as_user(owner.user_id))
    actions = [e.action for e in h.entries]
    assert actions == ["membership.create", "membership.create", "account.create"]   # newest first
    created = h.entries[-1]
    assert created.actor == f"user:{owner.user_id}"
    assert created.after.type_url == "type.googleapis.com/orgmesh.accounts.v1.Account"
    snap = pb.Account()
    created.after.Unpack(snap)
    assert snap.hub_id == a.hub_id
    with om.raises_rpc(grpc.StatusCode.PERMISSION_DENIED):
        acc.ListAccountHistory(pb.ListAccountHistoryRequest(hub_id=a.hub_id), metadata=om.as_user(member.user_id))


def test_sensitive_data_enabled_event_for_conn_05(acc):
    owner = new_user(acc)
    a = new_account(acc, owner)
    trace = unique("trace")
    on = acc.UpdateAccount(pb.UpdateAccountRequest(
        account=pb.Account(hub_id=a.hub_id, sensitive_data_enabled=True),
        update_mask=field_mask_pb2.FieldMask(paths=["sensitive_data_enabled"]), etag=a.etag),
        metadata=traced(om.as_user(owner.user_id), trace)).account
    got = [(t, e.aggregate_version, p.account.sensitive_data_enabled) for t, e, p in wait_events(trace, 2)]
    assert got == [("AccountUpdated", 2, True), ("SensitiveDataEnabled", 3, True)]
    assert on.version == 3 and on.etag == '"v3"'


def test_readded_membership_continues_its_version(acc):
    owner, member = new_user(acc), new_user(acc)
    a = new_account(acc, owner)
    md = om.as_user(owner.user_id)
    first = add_member(acc, md, a.hub_id, member.user_id)
    acc.DeleteMembership(pb.DeleteMembershipRequest(hub_id=a.hub_id, user_id=member.user_id), metadata=md)
    again = add_member(acc, md, a.hub_id, member.user_id)
    # consumers never apply an older version over a newer one (SPEC 2)
    assert (first.version, again.version) == (1, 3)


def test_a_user_outside_the_directory_cannot_create_accounts(acc):
    with om.raises_rpc(grpc.StatusCode.FAILED_PRECONDITION):
        acc.CreateAccount(pb.CreateAccountRequest(account=pb.Account(
            name="Ghost", kind=pb.ACCOUNT_KIND_STANDARD, hosting_location="eu1")), metadata=om.as_user(4242424242))
    with om.raises_rpc(grpc.StatusCode.PERMISSION_DENIED):
        acc.CreateAccount(pb.CreateAccountRequest(account=pb.Account(
            hub_id=777, name="Import", kind=pb.ACCOUNT_KIND_STANDARD, hosting_location="eu1")),
            metadata=om.as_user(4242424242))
    imported = acc.CreateAccount(pb.CreateAccountRequest(account=pb.Account(
        hub_id=777, name="Import", kind=pb.ACCOUNT_KIND_STANDARD, hosting_location="eu1")), metadata=IDENTITY).account
    assert imported.hub_id == 777
    with om.raises_rpc(grpc.StatusCode.ALREADY_EXISTS):
        acc.CreateAccount(pb.CreateAccountRequest(account=pb.Account(
            hub_id=777, name="Import again", kind=pb.ACCOUNT_KIND_STANDARD, hosting_location="eu1")),
            metadata=IDENTITY)


# ---- trust configuration (SPEC 8, docs/security.md) --------------------------------------

def signed_with(sub, key_owner):
    """`sub` signed with the key bound to service:<key_owner> (or the issuer's, for None)."""
    if key_owner is None:
        return om.mint_token(sub)
    kid, secret = om.service_key(key_owner)
    return om.mint_token(sub, kid=kid, secret=secret)


def test_key_binding_service_key_cannot_sign_another_identity(acc, internal):
    u = new_user(acc)
    partner = new_account(acc, u, name=unique("Agency"), kind=pb.ACCOUNT_KIND_PARTNER)
    req = pb.SetPartnerEmployeeRequest(hub_id=partner.hub_id, user_id=u.user_id, partner_employee=True)
    # sub=service:partners signed with the assets key: one leaked key must not impersonate another service
    with om.raises_rpc(grpc.StatusCode.UNAUTHENTICATED, "KEY_NOT_BOUND_TO_SUBJECT"):
        internal.SetPartnerEmployee(req, metadata=om.bearer(signed_with("service:partners", "assets")))
    with om.raises_rpc(grpc.StatusCode.UNAUTHENTICATED, "KEY_NOT_BOUND_TO_SUBJECT"):
        internal.SetPartnerEmployee(req, metadata=om.bearer(signed_with("service:partners", None)))
    assert not acc.GetMembership(pb.GetMembershipRequest(hub_id=partner.hub_id, user_id=u.user_id),
                                 metadata=om.as_user(u.user_id)).membership.partner_employee
    # a user token signed with a service key
    with om.raises_rpc(grpc.StatusCode.UNAUTHENTICATED, "KEY_NOT_BOUND_TO_SUBJECT"):
        acc.GetAccount(pb.GetAccountRequest(hub_id=partner.hub_id),
                       metadata=om.bearer(signed_with(str(u.user_id), "notifier")))
    # the partners key itself is accepted
    assert internal.SetPartnerEmployee(req, metadata=om.bearer(signed_with("service:partners", "partners"))) \
        .membership.partner_employee


def start_alone(env, timeout=15):
    """Runs the accounts binary with `env` until it exits; (exit status, output)."""
    import subprocess
    p = subprocess.run([str(om.binary("accounts"))], env=env, stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout + p.stderr


def base_env(suite, drop=(), **extra):
    env = {k: v for k, v in suite["accounts"].env.items() if k not in drop}
    env["ORGMESH_LISTEN"] = f"127.0.0.1:{om.free_port()}"
    env["ORGMESH_METRICS_LISTEN"] = f"127.0.0.1:{om.free_port()}"
    env.update(extra)
    return env


def test_startup_refused_without_page_token_key_outside_dev_mode(suite):
    rc, out = start_alone(base_env(suite, drop=("ORGMESH_PAGE_TOKEN_KEY", "ORGMESH_DEV_MODE")))
    assert rc != 0
    assert "ORGMESH_PAGE_TOKEN_KEY is not set: refusing to start" in out


def test_startup_refused_with_hs256_keys_outside_dev_mode(suite):
    rc, out = start_alone(base_env(suite, drop=("ORGMESH_DEV_MODE",)))
    assert rc != 0
    assert "HS256 token keys are for local development only" in out


def test_startup_refused_without_key_bindings(suite):
    rc, out = start_alone(base_env(suite, drop=("ORGMESH_JWT_KEY_SUBJECTS",)))
    assert rc != 0
    assert "ORGMESH_JWT_KEY_SUBJECTS is not set" in out


# ---- service identities (issue 13): each service only what its own calls need ----------

def test_service_identity_cannot_use_user_powers(acc, internal):
    owner, other = new_user(acc), new_user(acc)
    a = new_account(acc, owner)
    add_member(acc, om.as_user(owner.user_id), a.hub_id, other.user_id, roles=[pb.ROLE_MARKETING_ACCESS])
    notifier = om.bearer(om.service_token("notifier"))
    with om.raises_rpc(grpc.StatusCode.PERMISSION_DENIED, "SERVICE_NOT_ALLOWED"):
        acc.UpdateUser(pb.UpdateUserRequest(user=pb.User(user_id=other.user_id, email=f"{unique()}@evil.test"),
                                            update_mask=field_mask_pb2.FieldMask(paths=["email"])),
                       metadata=notifier)
    with om.raises_rpc(grpc.StatusCode.PERMISSION_DENIED, "SERVICE_NOT_ALLOWED"):
        acc.UpdateMembership(pb.UpdateMembershipRequest(
            membership=pb.Membership(hub_id=a.hub_id, user_id=other.user_id, roles=[pb.ROLE_SUPER_ADMIN]),
            update_mask=field_mask_pb2.FieldMask(paths=["roles"])), metadata=notifier)
    with om.raises_rpc(grpc.StatusCode.PERMISSION_DENIED, "SERVICE_NOT_ALLOWED"):
        acc.DeleteAccount(pb.DeleteAccountRequest(hub_id=a.hub_id), metadata=notifier)
    # what the notifier's own calls need still works
    internal.BatchGetUsers(pb.BatchGetUsersRequest(user_ids=[other.user_id]), metadata=notifier)
    # and nothing changed
    me = om.as_user(owner.user_id)
    assert acc.GetUser(pb.GetUserRequest(user_id=other.user_id), metadata=me).user.email == other.email
    assert list(acc.GetMembership(pb.GetMembershipRequest(hub_id=a.hub_id, user_id=other.user_id),
                                  metadata=me).membership.roles) == [pb.ROLE_MARKETING_ACCESS]
    # assets reads memberships (ASSET-01) but changes none
    assets = om.bearer(om.service_token("assets"))
    acc.ListMemberships(pb.ListMembershipsRequest(hub_id=a.hub_id), metadata=assets)
    with om.raises_rpc(grpc.StatusCode.PERMISSION_DENIED, "SERVICE_NOT_ALLOWED"):
        acc.DeleteMembership(pb.DeleteMembershipRequest(hub_id=a.hub_id, user_id=other.user_id), metadata=assets)


def test_internal_rpcs_take_only_their_listed_services(acc, internal):
    owner = new_user(acc)
    a = new_account(acc, owner, kind=pb.ACCOUNT_KIND_PARTNER)
    for svc in ("assets", "notifier", "organizations", "connections", "accounts"):
        with om.raises_rpc(grpc.StatusCode.PERMISSION_DENIED, "SERVICE_NOT_ALLOWED"):
            internal.AddPartnerLinkedMembership(pb.AddPartnerLinkedMembershipRequest(
                hub_id=a.hub_id, user_id=owner.user_id, partner_hub_id=a.hub_id + 1, assignment_id=unique("as"),
                roles=[pb.ROLE_SUPER_ADMIN]), metadata=om.bearer(om.service_token(svc)))
    with om.raises_rpc(grpc.StatusCode.PERMISSION_DENIED, "SERVICE_NOT_ALLOWED"):
        internal.BatchGetAccounts(pb.BatchGetAccountsRequest(hub_ids=[a.hub_id]),
                                  metadata=om.bearer(om.service_token("assets")))

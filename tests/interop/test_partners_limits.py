"""Abuse limits of the partners service (issue 13, OWASP API4/API6): access
requests created, resends and emailed tokens presented are limited per actor
and per client account in a window; over a limit the answer is
RESOURCE_EXHAUSTED, reason RATE_LIMITED, with a google.rpc.RetryInfo. The
counters live in PostgreSQL, so two replicas share them.

The limits are set small here (docs/configuration.md has the defaults); every
test uses fresh users and accounts, so the counts of one never reach another."""

import uuid

import grpc
from google.rpc import error_details_pb2

import orgmesh_testlib as om
from orgmesh.accounts.v1 import accounts_pb2 as apb, accounts_pb2_grpc as agrpc
from orgmesh.partners.v1 import partners_pb2 as ppb, partners_pb2_grpc as pgrpc

OM_SERVICES = ["accounts", "partners"]
WINDOW_S = 3600
OM_SERVICE_ENV = {"partners": {
    "ORGMESH_PARTNERS_RESEND_INTERVAL_S": "0",  # PART-04's hour apart, out of the way here
    "ORGMESH_PARTNERS_RATE_WINDOW_S": str(WINDOW_S),
    "ORGMESH_PARTNERS_RATE_REQUESTS_PER_ACTOR": "3",
    "ORGMESH_PARTNERS_RATE_REQUESTS_PER_CLIENT": "2",
    "ORGMESH_PARTNERS_RATE_RESENDS_PER_ACTOR": "2",
    "ORGMESH_PARTNERS_RATE_RESENDS_PER_CLIENT": "3",
    "ORGMESH_PARTNERS_RATE_TOKENS_PER_ACTOR": "3",
    "ORGMESH_PARTNERS_RATE_TOKENS_PER_CLIENT": "2",
}}
SVC = om.bearer(om.service_token("tests"))
NOTIFIER = om.bearer(om.service_token("notifier"))
REQUESTED = ppb.ASSIGNMENT_OUTCOME_ACCESS_REQUESTED


class World:
    def __init__(self, suite):
        self.acc = suite.stub("accounts", agrpc.AccountsServiceStub)
        self.p = suite.stub("partners", pgrpc.PartnersServiceStub)
        self.pi = suite.stub("partners", pgrpc.PartnersInternalServiceStub)

    def user(self):
        u = apb.User(email=f"u.{uuid.uuid4().hex[:12]}@example.test", display_name="U")
        return self.acc.CreateUser(apb.CreateUserRequest(user=u), metadata=SVC).user.user_id

    def account(self, owner, kind=apb.ACCOUNT_KIND_STANDARD):
        a = apb.Account(name=f"acct {uuid.uuid4().hex[:8]}", kind=kind, hosting_location="na1")
        return self.acc.CreateAccount(apb.CreateAccountRequest(account=a), metadata=om.as_user(owner)).account.hub_id

    def member(self, hub, by, user, roles=()):
        self.acc.CreateMembership(apb.CreateMembershipRequest(membership=apb.Membership(
            hub_id=hub, user_id=user, roles=list(roles))), metadata=om.as_user(by))

    def partner(self, employees=1, managers=1):
        """A partner account, its managers and tagged employees."""
        ms = [self.user() for _ in range(managers)]
        hub = self.account(ms[0], apb.ACCOUNT_KIND_PARTNER)
        for m in ms[1:]:
            self.member(hub, ms[0], m, [apb.ROLE_SUPER_ADMIN])
        es = [self.user() for _ in range(employees)]
        for e in es:
            self.member(hub, ms[0], e)
        self.p.TagEmployees(ppb.TagEmployeesRequest(partner_hub_id=hub, user_ids=es), metadata=om.as_user(ms[0]))
        return hub, ms, es

    def client(self):
        admin = self.user()
        return self.account(admin), admin

    def assign(self, partner, manager, employee, clients):
        return self.p.AssignClientsToEmployee(ppb.AssignClientsToEmployeeRequest(
            partner_hub_id=partner, employee_user_id=employee, client_hub_ids=list(clients)),
            metadata=om.as_user(manager)).results

    def tokens(self, request_id, recipients):
        return {t.recipient_user_id: t.token for t in self.pi.IssueAccessRequestTokens(
            ppb.IssueAccessRequestTokensRequest(access_request_id=request_id, recipient_user_ids=recipients,
                                                event_id="ev-" + uuid.uuid4().hex), metadata=NOTIFIER).tokens}

    def by_token(self, user, token):
        return self.p.GetAccessRequest(ppb.GetAccessRequestRequest(token=token), metadata=om.as_user(user))


def w_(suite):
    return World(suite)


def assert_rate_limited(r, limit):
    """RESOURCE_EXHAUSTED RATE_LIMITED with a RetryInfo inside the window."""
    d = r.details
    info = d.detail(error_details_pb2.RetryInfo)
    assert info is not None, f"no RetryInfo in {d!r}"
    delay = info.retry_delay.seconds + info.retry_delay.nanos / 1e9
    assert 0 < delay <= WINDOW_S, delay
    assert d.error_info.domain == "partners"
    assert d.error_info.metadata["limit"] == limit, d.error_info.metadata


def test_issue13_access_requests_are_limited_per_actor(suite):
    w = w_(suite)
    partner, (m, m2), (e,) = w.partner(managers=2)
    clients = [w.client()[0] for _ in range(5)]
    # normal use stays under: three requests (the limit), one per client
    assert [r.outcome for r in w.assign(partner, m, e, clients[:3])] == [REQUESTED] * 3
    with om.raises_rpc(grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED") as r:
        w.assign(partner, m, e, clients[3:4])
    assert_rate_limited(r, "access_requests_per_actor")
    # the refused call created nothing; another manager has a count of their own
    listed = w.p.ListAccessRequests(ppb.ListAccessRequestsRequest(partner_hub_id=partner),
                                    metadata=om.as_user(m)).access_requests
    assert sorted(a.client_hub_id for a in listed) == sorted(clients[:3])
    assert w.assign(partner, m2, e, clients[3:4])[0].outcome == REQUESTED


def test_issue13_a_batch_over_the_limit_fails_as_a_whole(suite):
    w = w_(suite)
    partner, (m,), (e,) = w.partner()
    clients = [w.client()[0] for _ in range(4)]
    with om.raises_rpc(grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED") as r:
        w.assign(partner, m, e, clients)  # four requests, three allowed
    assert_rate_limited(r, "access_requests_per_actor")
    assert not w.p.ListAccessRequests(ppb.ListAccessRequestsRequest(partner_hub_id=partner),
                                      metadata=om.as_user(m)).access_requests
    # refused calls do not use the allowance up
    assert [x.outcome for x in w.assign(partner, m, e, clients[:3])] == [REQUESTED] * 3


def test_issue13_access_requests_are_limited_per_client(suite):
    w = w_(suite)
    client, _ = w.client()
    p1, (m1,), (e1, e2) = w.partner(employees=2)
    p2, (m2,), (e3,) = w.partner()
    assert w.assign(p1, m1, e1, [client])[0].outcome == REQUESTED
    assert w.assign(p1, m1, e2, [client])[0].outcome == REQUESTED
    with om.raises_rpc(grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED") as r:
        w.assign(p2, m2, e3, [client])  # another partner's manager, the same client
    assert_rate_limited(r, "access_requests_per_client")
    other_client, _ = w.client()
    assert w.assign(p2, m2, e3, [other_client])[0].outcome == REQUESTED


def test_issue13_resends_are_limited_per_actor_and_per_client(suite):
    w = w_(suite)
    partner, (m, m2), (e,) = w.partner(managers=2)
    client, _ = w.client()
    rid = w.assign(partner, m, e, [client])[0].access_request.access_request_id
    resend = ppb.ResendAccessRequestRequest(access_request_id=rid)
    for _ in range(2):
        assert w.p.ResendAccessRequest(resend, metadata=om.as_user(m)).access_request.send_count >= 2
    with om.raises_rpc(grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED") as r:
        w.p.ResendAccessRequest(resend, metadata=om.as_user(m))
    assert_rate_limited(r, "resends_per_actor")
    w.p.ResendAccessRequest(resend, metadata=om.as_user(m2))  # the client's third
    with om.raises_rpc(grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED") as r:
        w.p.ResendAccessRequest(resend, metadata=om.as_user(m2))
    assert_rate_limited(r, "resends_per_client")


def test_issue13_token_presentations_are_limited_per_actor_valid_or_not(suite):
    w = w_(suite)
    partner, (m,), (e,) = w.partner()
    client, admin = w.client()
    rid = w.assign(partner, m, e, [client])[0].access_request.access_request_id
    token = w.tokens(rid, [admin])[admin]
    assert w.by_token(admin, token).access_request.access_request_id == rid
    for _ in range(2):  # guesses count too
        with om.raises_rpc(grpc.StatusCode.PERMISSION_DENIED, "INVALID_TOKEN"):
            w.by_token(admin, "A" * 43)
    with om.raises_rpc(grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED") as r:
        w.p.ApproveAccessRequest(ppb.ApproveAccessRequestRequest(token=token), metadata=om.as_user(admin))
    assert_rate_limited(r, "token_presentations_per_actor")
    # approving by id is not presenting a token: the admin still answers
    a = w.p.ApproveAccessRequest(ppb.ApproveAccessRequestRequest(access_request_id=rid),
                                 metadata=om.as_user(admin)).access_request
    assert a.state == ppb.ASSIGNMENT_STATE_ACTIVE


def test_issue13_token_limits_hold_across_two_replicas(suite):
    """Per client: two admins of one client, each with their own token, take
    turns on two partners processes; the client's third presentation is
    refused whichever replica gets it (the count is in PostgreSQL)."""
    w = w_(suite)
    partner, (m,), (e,) = w.partner()
    client, admin = w.client()
    admin2 = w.user()
    w.member(client, admin, admin2, [apb.ROLE_SUPER_ADMIN])
    rid = w.assign(partner, m, e, [client])[0].access_request.access_request_id
    toks = w.tokens(rid, [admin, admin2])
    other = suite["partners"].replica("partners-replica-2.log")
    try:
        p2 = pgrpc.PartnersServiceStub(other.channel())
        assert w.by_token(admin, toks[admin]).access_request.access_request_id == rid
        assert p2.GetAccessRequest(ppb.GetAccessRequestRequest(token=toks[admin2]),
                                   metadata=om.as_user(admin2)).access_request.access_request_id == rid
        with om.raises_rpc(grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED") as r:
            p2.GetAccessRequest(ppb.GetAccessRequestRequest(token=toks[admin]), metadata=om.as_user(admin))
        assert_rate_limited(r, "token_presentations_per_client")
        with om.raises_rpc(grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED"):
            w.by_token(admin2, toks[admin2])
    finally:
        problems = other.stop()
    assert not problems, problems

"""The partners service end to end (SPEC 6, PART-01 ... PART-13), driven
through its public and internal gRPC APIs with the accounts service running
beside it. Each test builds its own accounts and users, so tests do not
depend on each other.

The two services get a Redis of their own (started here): the stack's Redis
is shared by test files running side by side, and accounts events of another
file's database must not reach this file's partners service."""

import atexit
import hashlib
import os
import re
import shutil
import subprocess
import threading
import time
import uuid

import grpc
import pytest
from google.protobuf import field_mask_pb2

import orgmesh_testlib as om

from orgmesh.accounts.v1 import accounts_pb2 as apb, accounts_pb2_grpc as agrpc
from orgmesh.partners.v1 import partners_pb2 as ppb, partners_pb2_grpc as pgrpc
from orgmesh.type.v1 import money_pb2

OM_SERVICES = ["accounts", "partners"]

S = ppb.AssignmentState
C = ppb.AssignmentChangeCause
O = ppb.AssignmentOutcome
SVC = om.bearer(om.service_token("tests"))
NOTIFIER = om.bearer(om.service_token("notifier"))
CONFLICT_MSG = "Their email address is already connected with another partner record for this client"


def _private_redis():
    port = om.free_port()
    exe = shutil.which("redis-server") or "/usr/bin/redis-server"
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=om._die_with_parent)  # gone with pytest, whatever happens
    atexit.register(lambda: (proc.terminate(), proc.wait(5)))
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        r = subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True, text=True)
        if r.stdout.strip() == "PONG":
            break
        time.sleep(0.05)
    env = {"ORGMESH_REDIS_PORT": str(port), "ORGMESH_REDIS_HOST": "127.0.0.1",
           "ORGMESH_EVT_CLAIM_IDLE_MS": "1000"}
    return {"accounts": dict(env), "partners": dict(env, ORGMESH_PARTNERS_TIMER_MS="200")}


OM_SERVICE_ENV = _private_redis


# ---- helpers -----------------------------------------------------------------------------

def sql(query):
    """Runs SQL in the test database (the services' schemas live there)."""
    url = os.environ.get("ORGMESH_PG_URL") or om.stack_env()["ORGMESH_PG_URL"]
    psql = shutil.which("psql") or "/usr/lib/postgresql/15/bin/psql"
    r = subprocess.run([psql, "-qAtX", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", query],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return [line.split("|") for line in r.stdout.splitlines() if line]


class World:
    def __init__(self, suite):
        self.acc = agrpc.AccountsServiceStub(suite.channel("accounts"))
        self.acc_int = agrpc.AccountsInternalServiceStub(suite.channel("accounts"))
        self.p = pgrpc.PartnersServiceStub(suite.channel("partners"))
        self.pi = pgrpc.PartnersInternalServiceStub(suite.channel("partners"))

    def user(self, name):
        tag = uuid.uuid4().hex[:10]
        u = self.acc.CreateUser(apb.CreateUserRequest(user=apb.User(
            email=f"{name.lower().replace(' ', '.')}.{tag}@example.test", display_name=name)),
            metadata=SVC).user
        return u.user_id

    def account(self, owner, name, kind=apb.ACCOUNT_KIND_STANDARD, mrr=0, currency="USD"):
        a = apb.Account(name=f"{name} {uuid.uuid4().hex[:6]}", kind=kind, hosting_location="na1")
        if mrr:
            a.mrr.CopyFrom(money_pb2.Money(amount_minor=mrr, currency_code=currency))
        return self.acc.CreateAccount(apb.CreateAccountRequest(account=a),
                                      metadata=om.as_user(owner)).account

    def member(self, hub, user, roles=()):
        return self.acc.CreateMembership(apb.CreateMembershipRequest(
            membership=apb.Membership(hub_id=hub, user_id=user, roles=list(roles))), metadata=SVC).membership

    def membership(self, hub, user):
        try:
            return self.acc.GetMembership(apb.GetMembershipRequest(hub_id=hub, user_id=user),
                                          metadata=SVC).membership
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise

    def tag(self, partner, manager, *users):
        return self.p.TagEmployees(ppb.TagEmployeesRequest(partner_hub_id=partner, user_ids=list(users)),
                                   metadata=om.as_user(manager)).results

    def assign(self, partner, manager, employee, *clients, roles=()):
        return self.p.AssignClientsToEmployee(ppb.AssignClientsToEmployeeRequest(
            partner_hub_id=partner, employee_user_id=employee, client_hub_ids=list(clients), roles=list(roles)),
            metadata=om.as_user(manager)).results

    def request(self, request_id, user):
        return self.p.GetAccessRequest(ppb.GetAccessRequestRequest(access_request_id=request_id),
                                       metadata=om.as_user(user)).access_request

    def employee_clients(self, partner, manager, employee):
        return {a.client_hub_id: a for a in self.p.ListEmployeeClients(ppb.ListEmployeeClientsRequest(
            partner_hub_id=partner, employee_user_id=employee, page_size=1000),
            metadata=om.as_user(manager)).assignments}

    def approve(self, user, request_id=None, token=None, roles=()):
        req = ppb.ApproveAccessRequestRequest(roles=list(roles))
        if token is not None:
            req.token = token
        else:
            req.access_request_id = request_id
        return self.p.ApproveAccessRequest(req, metadata=om.as_user(user))


@pytest.fixture
def w(suite):
    return World(suite)


@pytest.fixture
def pc(w):
    """A partner P (manager M, employee E tagged, plain member X) and a client C
    (admin CA, plain member CX)."""
    class Ctx:
        pass
    c = Ctx()
    c.M = w.user("Mia Manager")
    c.P = w.account(c.M, "Agency", kind=apb.ACCOUNT_KIND_PARTNER).hub_id
    c.E = w.user("Ada Lovelace")
    c.X = w.user("Xavier Plain")
    w.member(c.P, c.E)
    w.member(c.P, c.X)
    c.CA = w.user("Carla Client")
    c.C = w.account(c.CA, "Client", mrr=50000).hub_id
    c.CX = w.user("Cody Member")
    w.member(c.C, c.CX)
    res = w.tag(c.P, c.M, c.E)
    assert res[0].status == ppb.ITEM_STATUS_DONE
    return c


def outbox_types(subject_like):
    return [r[0] for r in sql("SELECT type FROM partners.outbox WHERE subject LIKE '%s' ORDER BY id"
                              % subject_like.replace("'", "''"))]


def pending_request(w, pc, client=None, roles=()):
    client = client or pc.C
    r = w.assign(pc.P, pc.M, pc.E, client, roles=roles)[0]
    assert r.outcome == O.Value("ASSIGNMENT_OUTCOME_ACCESS_REQUESTED"), r
    return r


# ---- PART-01 ------------------------------------------------------------------------------

def test_part_01_manager_tags_member_and_accounts_holds_the_tag(w, pc):
    assert w.membership(pc.P, pc.E).partner_employee  # set through accounts' internal RPC
    again = w.tag(pc.P, pc.M, pc.E, pc.X, pc.CA)
    assert [r.status for r in again] == [ppb.ITEM_STATUS_UNCHANGED, ppb.ITEM_STATUS_DONE, ppb.ITEM_STATUS_FAILED]
    assert again[1].employee.email.startswith("xavier.plain")
    assert again[2].error.reason == "NOT_FOUND" and again[2].error.field == "user_ids[2]"
    assert w.membership(pc.P, pc.X).partner_employee
    assert "orgmesh.partners.v1.EmployeeTagged" in outbox_types(f"partners/{pc.P}/employees/{pc.X}")


def test_part_01_only_partner_managers_tag(w, pc):
    with om.raises_rpc(grpc.StatusCode.PERMISSION_DENIED):
        w.tag(pc.P, pc.E, pc.X)  # a plain member of the partner
    with om.raises_rpc(grpc.StatusCode.NOT_FOUND):
        w.tag(pc.P, pc.CA, pc.X)  # not a member at all: told nothing (AIP-193)
    assert not w.membership(pc.P, pc.X).partner_employee


def test_part_01_tagging_needs_a_partner_account(w, pc):
    with om.raises_rpc(grpc.StatusCode.FAILED_PRECONDITION, "NOT_PARTNER_ACCOUNT"):
        w.tag(pc.C, pc.CA, pc.CX)


def test_part_01_untag_ends_assignments(w, pc):
    C2 = w.account(pc.CA, "Second").hub_id
    w.member(C2, pc.E)  # already a member there: ACTIVE at once
    assert w.assign(pc.P, pc.M, pc.E, C2)[0].outcome == O.Value("ASSIGNMENT_OUTCOME_ACTIVATED")
    pending_request(w, pc)
    r = w.p.UntagEmployee(ppb.UntagEmployeeRequest(partner_hub_id=pc.P, user_id=pc.E),
                          metadata=om.as_user(pc.M))
    assert (r.cancelled_request_count, r.revoked_assignment_count) == (1, 1)
    assert not w.membership(pc.P, pc.E).partner_employee
    states = {k: (a.state, a.state_cause) for k, a in w.employee_clients(pc.P, pc.M, pc.E).items()}
    assert states[pc.C] == (S.Value("ASSIGNMENT_STATE_CANCELLED"), C.Value("ASSIGNMENT_CHANGE_CAUSE_EMPLOYEE_UNTAGGED"))
    assert states[C2] == (S.Value("ASSIGNMENT_STATE_REVOKED"), C.Value("ASSIGNMENT_CHANGE_CAUSE_EMPLOYEE_UNTAGGED"))
    m = w.membership(C2, pc.E)  # predated the assignment: stays, link cleared
    assert m is not None and not m.HasField("partner_link")
    # untagged employees cannot be assigned any more (PART-03)
    res = w.assign(pc.P, pc.M, pc.E, pc.C)[0]
    assert res.outcome == O.Value("ASSIGNMENT_OUTCOME_FAILED") and res.error.reason == "NOT_PARTNER_EMPLOYEE"


# ---- PART-02 ------------------------------------------------------------------------------

def test_part_02_client_list_is_searchable_by_name_and_hub_id(w, pc):
    other = w.account(pc.CA, "Zebra Foods").hub_id
    res = w.p.AddClients(ppb.AddClientsRequest(partner_hub_id=pc.P, client_hub_ids=[pc.C, other, 999999]),
                         metadata=om.as_user(pc.M)).results
    assert [r.status for r in res] == [ppb.ITEM_STATUS_DONE, ppb.ITEM_STATUS_DONE, ppb.ITEM_STATUS_FAILED]
    assert res[2].error.reason == "NOT_FOUND"
    again = w.p.AddClients(ppb.AddClientsRequest(partner_hub_id=pc.P, client_hub_ids=[pc.C]),
                           metadata=om.as_user(pc.M)).results
    assert again[0].status == ppb.ITEM_STATUS_UNCHANGED
    by_name = w.p.SearchClients(ppb.SearchClientsRequest(partner_hub_id=pc.P, query="zEbRa"),
                                metadata=om.as_user(pc.M)).clients
    assert [c.client_hub_id for c in by_name] == [other]
    by_id = w.p.SearchClients(ppb.SearchClientsRequest(partner_hub_id=pc.P, query=str(pc.C)),
                              metadata=om.as_user(pc.M)).clients
    assert [c.client_hub_id for c in by_id] == [pc.C]
    listed = w.p.ListClients(ppb.ListClientsRequest(partner_hub_id=pc.P, page_size=1), metadata=om.as_user(pc.M))
    assert len(listed.clients) == 1 and listed.next_page_token
    with om.raises_rpc(grpc.StatusCode.PERMISSION_DENIED):
        w.p.ListClients(ppb.ListClientsRequest(partner_hub_id=pc.P), metadata=om.as_user(pc.E))


def test_part_02_assigning_adds_the_account_to_the_list(w, pc):
    pending_request(w, pc)
    clients = w.p.ListClients(ppb.ListClientsRequest(partner_hub_id=pc.P), metadata=om.as_user(pc.M)).clients
    assert [(c.client_hub_id, c.source) for c in clients] == [(pc.C, ppb.CLIENT_SOURCE_ASSIGNMENT)]
    assert "orgmesh.partners.v1.ClientAdded" in outbox_types(f"partners/{pc.P}/clients/{pc.C}")


# ---- PART-03 ------------------------------------------------------------------------------

def test_part_03_assign_from_either_side_with_a_result_per_item(w, pc):
    C2 = w.account(pc.CA, "Other").hub_id
    res = w.assign(pc.P, pc.M, pc.E, pc.C, 987654321, pc.P, C2)
    assert [r.outcome for r in res] == [O.Value("ASSIGNMENT_OUTCOME_ACCESS_REQUESTED"),
                                        O.Value("ASSIGNMENT_OUTCOME_FAILED"),
                                        O.Value("ASSIGNMENT_OUTCOME_FAILED"),
                                        O.Value("ASSIGNMENT_OUTCOME_ACCESS_REQUESTED")]
    assert res[1].error.reason == "NOT_FOUND" and res[1].error.field == "client_hub_ids[1]"
    # from the client's side: the same effect; the untagged X fails alone
    res2 = w.p.AssignEmployeesToClient(ppb.AssignEmployeesToClientRequest(
        partner_hub_id=pc.P, client_hub_id=pc.C, employee_user_ids=[pc.E, pc.X]), metadata=om.as_user(pc.M)).results
    assert res2[0].outcome == O.Value("ASSIGNMENT_OUTCOME_ALREADY_ASSIGNED")
    assert res2[0].assignment.assignment_id == res[0].assignment.assignment_id
    assert res2[1].outcome == O.Value("ASSIGNMENT_OUTCOME_FAILED")
    assert res2[1].error.reason == "NOT_PARTNER_EMPLOYEE" and res2[1].error.code == 9


def test_part_03_only_managers_assign_and_batches_are_bounded(w, pc):
    with om.raises_rpc(grpc.StatusCode.PERMISSION_DENIED):
        w.assign(pc.P, pc.E, pc.E, pc.C)
    with om.raises_rpc(grpc.StatusCode.INVALID_ARGUMENT, "BATCH_TOO_LARGE"):
        w.assign(pc.P, pc.M, pc.E, *range(1, 102))
    with om.raises_rpc(grpc.StatusCode.INVALID_ARGUMENT) as r:
        w.assign(pc.P, pc.M, pc.E, pc.C, pc.C)
    assert "client_hub_ids[1]" in r.details.violations


def test_part_03_request_id_replays_the_first_result(w, pc):
    req = ppb.AssignClientsToEmployeeRequest(partner_hub_id=pc.P, employee_user_id=pc.E,
                                             client_hub_ids=[pc.C], request_id="rq-1")
    a = w.p.AssignClientsToEmployee(req, metadata=om.as_user(pc.M)).results[0]
    b = w.p.AssignClientsToEmployee(req, metadata=om.as_user(pc.M)).results[0]
    assert a == b and b.outcome == O.Value("ASSIGNMENT_OUTCOME_ACCESS_REQUESTED")


# ---- PART-04 ------------------------------------------------------------------------------

def test_part_04_member_is_active_at_once_without_request(w, pc):
    w.member(pc.C, pc.E)
    r = w.assign(pc.P, pc.M, pc.E, pc.C)[0]
    assert r.outcome == O.Value("ASSIGNMENT_OUTCOME_ACTIVATED") and not r.HasField("access_request")
    assert r.assignment.state_cause == C.Value("ASSIGNMENT_CHANGE_CAUSE_ALREADY_MEMBER")
    types = outbox_types(f"partners/{pc.P}/assignments/{r.assignment.assignment_id}")
    assert types == ["orgmesh.partners.v1.AssignmentActivated"]  # no AccessRequested: no email

    def linked():
        m = w.membership(pc.C, pc.E)
        return m.HasField("partner_link") and m.partner_link.membership_predates_link and \
            m.partner_link.assignment_id == r.assignment.assignment_id
    om.eventually(linked, timeout=5)


def test_part_04_non_member_gets_a_pending_request_listed_by_both_sides(w, pc):
    r = pending_request(w, pc)
    ar = r.access_request
    assert ar.state == S.Value("ASSIGNMENT_STATE_PENDING") and ar.send_count == 1
    assert ar.client_hub_id == pc.C and ar.employee_display_name == "Ada Lovelace"
    assert ar.expire_time.seconds - ar.create_time.seconds == 14 * 24 * 3600
    assert outbox_types(f"partners/{pc.P}/assignments/{r.assignment.assignment_id}") == \
        ["orgmesh.partners.v1.AccessRequested"]
    by_partner = w.p.ListAccessRequests(ppb.ListAccessRequestsRequest(partner_hub_id=pc.P),
                                        metadata=om.as_user(pc.M)).access_requests
    by_client = w.p.ListAccessRequests(ppb.ListAccessRequestsRequest(client_hub_id=pc.C),
                                       metadata=om.as_user(pc.CA)).access_requests
    assert [a.access_request_id for a in by_partner] == [ar.access_request_id]
    assert [a.access_request_id for a in by_client] == [ar.access_request_id]
    with om.raises_rpc(grpc.StatusCode.PERMISSION_DENIED):
        w.p.ListAccessRequests(ppb.ListAccessRequestsRequest(client_hub_id=pc.C), metadata=om.as_user(pc.CX))


def test_part_04_tokens_are_per_recipient_and_stored_only_as_hash(w, pc):
    ar = pending_request(w, pc).access_request
    req = ppb.IssueAccessRequestTokensRequest(access_request_id=ar.access_request_id,
                                              recipient_user_ids=[pc.CA, pc.CX], event_id="ev-1")
    toks = w.pi.IssueAccessRequestTokens(req, metadata=NOTIFIER).tokens
    assert [t.recipient_user_id for t in toks] == [pc.CA]  # CX is not a client admin
    assert w.pi.IssueAccessRequestTokens(req, metadata=NOTIFIER).tokens[0].token == toks[0].token
    other = w.pi.IssueAccessRequestTokens(ppb.IssueAccessRequestTokensRequest(
        access_request_id=ar.access_request_id, recipient_user_ids=[pc.CA], event_id="ev-2"), metadata=NOTIFIER)
    assert other.tokens[0].token != toks[0].token
    stored = [r[0] for r in sql("SELECT encode(token_hash, 'hex') FROM partners.request_token")]
    assert hashlib.sha256(toks[0].token.encode()).hexdigest() in stored
    dump = sql("SELECT string_agg(t::text, ' ') FROM partners.request_token t")[0][0]
    assert toks[0].token not in dump
    with om.raises_rpc(grpc.StatusCode.PERMISSION_DENIED, "SERVICE_IDENTITY_REQUIRED"):
        w.pi.IssueAccessRequestTokens(req, metadata=om.as_user(pc.CA))


def test_part_04_tokens_in_a_batch_are_those_of_single_calls_and_not_pending_is_per_item(w, pc):
    # issue 15: the notifier asks for the tokens of a batch of emails in one call
    ar = pending_request(w, pc).access_request
    item = ppb.IssueAccessRequestTokensRequest(access_request_id=ar.access_request_id,
                                               recipient_user_ids=[pc.CA, pc.CX], event_id="ev-b1")
    unknown = ppb.IssueAccessRequestTokensRequest(access_request_id="00000000-0000-4000-8000-000000000000",
                                                  recipient_user_ids=[pc.CA], event_id="ev-b2")
    batch = ppb.IssueAccessRequestTokensBatchRequest(items=[unknown, item])
    res = w.pi.IssueAccessRequestTokensBatch(batch, metadata=NOTIFIER).results
    assert [r.not_pending for r in res] == [True, False] and not res[0].tokens
    assert [t.recipient_user_id for t in res[1].tokens] == [pc.CA]  # CX is not a client admin
    single = w.pi.IssueAccessRequestTokens(item, metadata=NOTIFIER).tokens
    assert single[0].token == res[1].tokens[0].token  # same event, same token
    stored = [r[0] for r in sql("SELECT encode(token_hash, 'hex') FROM partners.request_token")]
    assert hashlib.sha256(res[1].tokens[0].token.encode()).hexdigest() in stored
    w.p.CancelAccessRequest(ppb.CancelAccessRequestRequest(access_request_id=ar.access_request_id),
                            metadata=om.as_user(pc.M))
    res = w.pi.IssueAccessRequestTokensBatch(batch, metadata=NOTIFIER).results
    assert [r.not_pending for r in res] == [True, True] and not res[1].tokens
    with om.raises_rpc(grpc.StatusCode.INVALID_ARGUMENT):
        w.pi.IssueAccessRequestTokensBatch(ppb.IssueAccessRequestTokensBatchRequest(items=[
            ppb.IssueAccessRequestTokensRequest(access_request_id=ar.access_request_id, event_id="ev-b3")]),
            metadata=NOTIFIER)
    with om.raises_rpc(grpc.StatusCode.PERMISSION_DENIED, "SERVICE_IDENTITY_REQUIRED"):
        w.pi.IssueAccessRequestTokensBatch(batch, metadata=om.as_user(pc.CA))


def test_part_04_resend_at_most_once_per_hour(w, pc):
    ar = pending_request(w, pc).access_request
    rs = ppb.ResendAccessRequestRequest(access_request_id=ar.access_request_id)
    with om.raises_rpc(grpc.StatusCode.RESOURCE_EXHAUSTED, "RESEND_TOO_SOON"):
        w.p.ResendAccessRequest(rs, metadata=om.as_user(pc.M))
    sql(f"UPDATE partners.assignment SET last_send_time = now() - interval '61 minutes'"
        f" WHERE request_id = '{ar.access_request_id}'")
    again = w.p.ResendAccessRequest(rs, metadata=om.as_user(pc.M)).access_request
    assert again.send_count == 2 and again.expire_time == ar.expire_time  # the expiry does not move
    with om.raises_rpc(grpc.StatusCode.RESOURCE_EXHAUSTED, "RESEND_TOO_SOON"):
        w.p.ResendAccessRequest(rs, metadata=om.as_user(pc.M))
    assert "orgmesh.partners.v1.AccessRequestResent" in outbox_types(f"partners/{pc.P}/assignments/%")


def test_part_04_partner_cancels_a_pending_request(w, pc):
    ar = pending_request(w, pc).access_request
    cr = ppb.CancelAccessRequestRequest(access_request_id=ar.access_request_id, reason="wrong client")
    with om.raises_rpc(grpc.StatusCode.PERMISSION_DENIED):
        w.p.CancelAccessRequest(cr, metadata=om.as_user(pc.CA))  # the client does not cancel
    a = w.p.CancelAccessRequest(cr, metadata=om.as_user(pc.M)).access_request
    assert a.state == S.Value("ASSIGNMENT_STATE_CANCELLED") and a.answer_reason == "wrong client"
    assert w.p.CancelAccessRequest(cr, metadata=om.as_user(pc.M)).access_request == a  # repeat: as it stands
    with om.raises_rpc(grpc.StatusCode.FAILED_PRECONDITION, "REQUEST_NOT_PENDING"):
        w.approve(pc.CA, request_id=ar.access_request_id)


# ---- PART-05 ------------------------------------------------------------------------------

def test_part_05_approve_by_token_makes_a_linked_member(w, pc):
    r = pending_request(w, pc)
    ar = r.access_request
    tok = w.pi.IssueAccessRequestTokens(ppb.IssueAccessRequestTokensRequest(
        access_request_id=ar.access_request_id, recipient_user_ids=[pc.CA], event_id="e"), metadata=NOTIFIER)
    token = tok.tokens[0].token
    got = w.p.GetAccessRequest(ppb.GetAccessRequestRequest(token=token), metadata=om.as_user(pc.CA))
    assert got.access_request.access_request_id == ar.access_request_id
    resp = w.approve(pc.CA, token=token, roles=[apb.ROLE_MARKETING_ACCESS])
    assert resp.access_request.state == S.Value("ASSIGNMENT_STATE_ACTIVE")
    assert resp.assignment.state_cause == C.Value("ASSIGNMENT_CHANGE_CAUSE_APPROVED")
    assert resp.access_request.answered_by_user_id == pc.CA
    m = w.membership(pc.C, pc.E)
    assert m is not None and m.partner_link.partner_hub_id == pc.P
    assert m.partner_link.assignment_id == r.assignment.assignment_id
    assert not m.partner_link.membership_predates_link
    assert list(m.roles) == [apb.ROLE_MARKETING_ACCESS]
    types = outbox_types(f"partners/{pc.P}/assignments/{r.assignment.assignment_id}")
    assert types[-2:] == ["orgmesh.partners.v1.AccessApproved", "orgmesh.partners.v1.AssignmentActivated"]
    versions = [int(v[0]) for v in sql(f"SELECT version FROM partners.outbox WHERE subject ="
                                       f" 'partners/{pc.P}/assignments/{r.assignment.assignment_id}' ORDER BY id")]
    assert versions == sorted(set(versions)), versions  # every event its own, growing version (SPEC 2)


def test_part_05_token_is_bound_to_its_recipient_and_never_enough_alone(w, pc):
    CA2 = w.user("Second Admin")
    w.member(pc.C, CA2, roles=[apb.ROLE_SUPER_ADMIN])
    ar = pending_request(w, pc).access_request
    token = w.pi.IssueAccessRequestTokens(ppb.IssueAccessRequestTokensRequest(
        access_request_id=ar.access_request_id, recipient_user_ids=[pc.CA], event_id="e"),
        metadata=NOTIFIER).tokens[0].token
    with om.raises_rpc(grpc.StatusCode.PERMISSION_DENIED, "INVALID_TOKEN"):
        w.approve(CA2, token=token)  # another admin presenting CA's link
    with om.raises_rpc(grpc.StatusCode.PERMISSION_DENIED, "INVALID_TOKEN"):
        w.approve(pc.CA, token="A" * 43)
    with om.raises_rpc(grpc.StatusCode.UNAUTHENTICATED):
        w.p.ApproveAccessRequest(ppb.ApproveAccessRequestRequest(token=token))  # not signed in
    assert w.request(ar.access_request_id, pc.M).state == S.Value("ASSIGNMENT_STATE_PENDING")


def test_part_05_only_client_admins_approve(w, pc):
    ar = pending_request(w, pc).access_request
    for who in (pc.M, pc.CX, pc.E):  # partner manager, plain client member, the employee
        with om.raises_rpc(grpc.StatusCode.PERMISSION_DENIED):
            w.approve(who, request_id=ar.access_request_id)
    ACP = w.user("Perm Admin")
    w.member(pc.C, ACP, roles=[apb.ROLE_ACCOUNT_PERMISSIONS])
    assert w.approve(ACP, request_id=ar.access_request_id).access_request.state == S.Value("ASSIGNMENT_STATE_ACTIVE")


def test_part_05_repeated_answer_returns_it_and_conflicting_answer_fails(w, pc):
    ar = pending_request(w, pc).access_request
    first = w.approve(pc.CA, request_id=ar.access_request_id)
    second = w.approve(pc.CA, request_id=ar.access_request_id)
    assert second.access_request == first.access_request
    with om.raises_rpc(grpc.StatusCode.FAILED_PRECONDITION, "REQUEST_NOT_PENDING"):
        w.p.DeclineAccessRequest(ppb.DeclineAccessRequestRequest(access_request_id=ar.access_request_id),
                                 metadata=om.as_user(pc.CA))


def test_part_05_decline_is_final(w, pc):
    ar = pending_request(w, pc).access_request
    d = ppb.DeclineAccessRequestRequest(access_request_id=ar.access_request_id, reason="not now")
    a = w.p.DeclineAccessRequest(d, metadata=om.as_user(pc.CA)).access_request
    assert a.state == S.Value("ASSIGNMENT_STATE_DECLINED") and a.answer_reason == "not now"
    assert w.p.DeclineAccessRequest(d, metadata=om.as_user(pc.CA)).access_request.state == a.state
    with om.raises_rpc(grpc.StatusCode.FAILED_PRECONDITION, "REQUEST_NOT_PENDING"):
        w.approve(pc.CA, request_id=ar.access_request_id)
    assert w.membership(pc.C, pc.E) is None


def test_part_05_client_adding_the_employee_while_pending_activates(w, pc):
    r = pending_request(w, pc)
    w.acc.CreateMembership(apb.CreateMembershipRequest(membership=apb.Membership(hub_id=pc.C, user_id=pc.E)),
                           metadata=om.as_user(pc.CA))

    def active():
        a = w.request(r.access_request.access_request_id, pc.M)
        assert a.state == S.Value("ASSIGNMENT_STATE_ACTIVE"), a
        assert a.state_cause == C.Value("ASSIGNMENT_CHANGE_CAUSE_CLIENT_ADDED_MEMBER")
        m = w.membership(pc.C, pc.E)
        assert m.partner_link.assignment_id == r.assignment.assignment_id
        assert not m.partner_link.membership_predates_link  # adopted: PART-07 removes it
        return True
    om.eventually(active, timeout=10)


def test_part_05_unanswered_request_expires_by_the_database_clock(w, pc):
    ar = pending_request(w, pc).access_request
    sql(f"UPDATE partners.assignment SET expire_time = now() - interval '1 second'"
        f" WHERE request_id = '{ar.access_request_id}'")
    om.eventually(lambda: w.request(ar.access_request_id, pc.M).state == S.Value("ASSIGNMENT_STATE_EXPIRED"),
                  timeout=5)
    assert "orgmesh.partners.v1.AccessRequestExpired" in outbox_types(f"partners/{pc.P}/assignments/%")
    with om.raises_rpc(grpc.StatusCode.FAILED_PRECONDITION, "REQUEST_NOT_PENDING"):
        w.approve(pc.CA, request_id=ar.access_request_id)
    with om.raises_rpc(grpc.StatusCode.FAILED_PRECONDITION, "REQUEST_NOT_PENDING"):
        w.pi.IssueAccessRequestTokens(ppb.IssueAccessRequestTokensRequest(
            access_request_id=ar.access_request_id, recipient_user_ids=[pc.CA], event_id="x"), metadata=NOTIFIER)


# ---- PART-06 ------------------------------------------------------------------------------

def second_partner(w, pc):
    M2 = w.user("Max Other")
    P2 = w.account(M2, "Other Agency", kind=apb.ACCOUNT_KIND_PARTNER).hub_id
    w.member(P2, pc.E)
    w.tag(P2, M2, pc.E)
    return M2, P2


def test_part_06_second_partner_gets_conflict(w, pc):
    M2, P2 = second_partner(w, pc)
    first = pending_request(w, pc)
    res = w.assign(P2, M2, pc.E, pc.C)[0]
    assert res.outcome == O.Value("ASSIGNMENT_OUTCOME_FAILED")
    e = res.error
    assert (e.code, e.reason, e.message) == (6, "EMAIL_CONNECTED_TO_OTHER_PARTNER", CONFLICT_MSG)
    assert e.title == "Ada Lovelace couldn't be added to this client"
    assert len(e.resolutions) == 3
    assert "first partner" in e.resolutions[0] and "domain" in e.resolutions[1] and "different" in e.resolutions[2]
    # also while ACTIVE; and the first partner keeps it
    w.approve(pc.CA, request_id=first.access_request.access_request_id)
    again = w.p.AssignEmployeesToClient(ppb.AssignEmployeesToClientRequest(
        partner_hub_id=P2, client_hub_id=pc.C, employee_user_ids=[pc.E]), metadata=om.as_user(M2)).results[0]
    assert again.error.reason == "EMAIL_CONNECTED_TO_OTHER_PARTNER"
    assert w.membership(pc.C, pc.E).partner_link.partner_hub_id == pc.P


def test_part_06_two_partners_at_the_same_moment_one_wins(w, pc):
    M2, P2 = second_partner(w, pc)
    for _ in range(3):
        client = w.account(pc.CA, "Race").hub_id
        out = {}
        barrier = threading.Barrier(2)

        def run(p, m):
            barrier.wait()
            out[p] = w.assign(p, m, pc.E, client)[0]
        ts = [threading.Thread(target=run, args=a) for a in ((pc.P, pc.M), (P2, M2))]
        [t.start() for t in ts]
        [t.join() for t in ts]
        outcomes = sorted(r.outcome for r in out.values())
        assert outcomes == [O.Value("ASSIGNMENT_OUTCOME_ACCESS_REQUESTED"), O.Value("ASSIGNMENT_OUTCOME_FAILED")]
        loser = [r for r in out.values() if r.outcome == O.Value("ASSIGNMENT_OUTCOME_FAILED")][0]
        assert loser.error.reason == "EMAIL_CONNECTED_TO_OTHER_PARTNER"
        n = sql(f"SELECT count(*) FROM partners.assignment WHERE client_hub_id = {client} AND state IN (1, 2)")
        assert n == [["1"]]


# ---- PART-07 ------------------------------------------------------------------------------

def test_part_07_removal_needs_the_confirmation_text(w, pc):
    for text in ("", "remove", "REMOVE "):
        with om.raises_rpc(grpc.StatusCode.INVALID_ARGUMENT, "CONFIRMATION_REQUIRED"):
            w.p.RemoveEmployeeFromClient(ppb.RemoveEmployeeFromClientRequest(
                partner_hub_id=pc.P, employee_user_id=pc.E, client_hub_id=pc.C, confirmation=text),
                metadata=om.as_user(pc.M))


def remove(w, pc, client=None):
    return w.p.RemoveEmployeeFromClient(ppb.RemoveEmployeeFromClientRequest(
        partner_hub_id=pc.P, employee_user_id=pc.E, client_hub_id=client or pc.C, confirmation="REMOVE"),
        metadata=om.as_user(pc.M))


def test_part_07_remove_revokes_and_removes_the_linked_membership(w, pc):
    ar = pending_request(w, pc).access_request
    w.approve(pc.CA, request_id=ar.access_request_id)
    assert w.membership(pc.C, pc.E) is not None
    r = remove(w, pc)
    assert r.assignment.state == S.Value("ASSIGNMENT_STATE_REVOKED")
    assert r.assignment.state_cause == C.Value("ASSIGNMENT_CHANGE_CAUSE_REMOVED_BY_PARTNER")
    assert r.membership_removed
    assert w.membership(pc.C, pc.E) is None
    assert "orgmesh.partners.v1.AccessRevoked" in outbox_types(f"partners/{pc.P}/assignments/{r.assignment.assignment_id}")
    with om.raises_rpc(grpc.StatusCode.NOT_FOUND):
        remove(w, pc)


def test_part_07_membership_that_predates_the_assignment_stays(w, pc):
    w.member(pc.C, pc.E, roles=[apb.ROLE_MARKETING_ACCESS])
    assert w.assign(pc.P, pc.M, pc.E, pc.C)[0].outcome == O.Value("ASSIGNMENT_OUTCOME_ACTIVATED")
    om.eventually(lambda: w.membership(pc.C, pc.E).HasField("partner_link"), timeout=5)
    r = remove(w, pc)
    assert r.assignment.state == S.Value("ASSIGNMENT_STATE_REVOKED") and not r.membership_removed
    m = w.membership(pc.C, pc.E)
    assert m is not None and not m.HasField("partner_link") and list(m.roles) == [apb.ROLE_MARKETING_ACCESS]


def test_part_07_removing_a_pending_assignment_cancels_it(w, pc):
    pending_request(w, pc)
    r = remove(w, pc)
    assert r.assignment.state == S.Value("ASSIGNMENT_STATE_CANCELLED") and not r.membership_removed


def test_part_04_only_the_notifier_issues_access_request_tokens(w, pc):
    ar = pending_request(w, pc).access_request
    req = ppb.IssueAccessRequestTokensRequest(access_request_id=ar.access_request_id, recipient_user_ids=[pc.CA],
                                              event_id="not-the-notifier")
    for svc in ("assets", "accounts", "organizations", "tests"):
        with om.raises_rpc(grpc.StatusCode.PERMISSION_DENIED, "SERVICE_NOT_ALLOWED"):
            w.pi.IssueAccessRequestTokens(req, metadata=om.bearer(om.service_token(svc)))
    assert len(w.pi.IssueAccessRequestTokens(req, metadata=NOTIFIER).tokens) == 1


# ---- PART-08 ------------------------------------------------------------------------------

def test_part_08_only_the_client_removes_users(w, pc):
    ar = pending_request(w, pc, roles=[apb.ROLE_ACCOUNT_PERMISSIONS]).access_request
    w.approve(pc.CA, request_id=ar.access_request_id, roles=[apb.ROLE_ACCOUNT_PERMISSIONS])
    # the partner employee is an admin of the client through the partner link: a partner actor
    with om.raises_rpc(grpc.StatusCode.PERMISSION_DENIED, "PARTNER_IDENTITY_FORBIDDEN"):
        w.acc.DeleteMembership(apb.DeleteMembershipRequest(hub_id=pc.C, user_id=pc.CX), metadata=om.as_user(pc.E))
    # a partner manager with no membership in the client cannot even see it (AIP-193)
    with om.raises_rpc(grpc.StatusCode.NOT_FOUND):
        w.acc.DeleteMembership(apb.DeleteMembershipRequest(hub_id=pc.C, user_id=pc.CX), metadata=om.as_user(pc.M))
    assert w.membership(pc.C, pc.CX) is not None


def linked_super_admin(w, pc):
    """assign -> the client admin approves (PART-18: never SUPER_ADMIN through
    the grant), then makes the linked membership SUPER_ADMIN itself in
    accounts: E is a partner-linked SUPER_ADMIN of C (PART-05, PART-08)."""
    ar = pending_request(w, pc).access_request
    w.approve(pc.CA, request_id=ar.access_request_id)
    om.eventually(lambda: w.membership(pc.C, pc.E), timeout=5)
    update_roles(w, pc.C, pc.E, [apb.ROLE_SUPER_ADMIN], pc.CA)
    m = w.membership(pc.C, pc.E)
    assert m.HasField("partner_link") and list(m.roles) == [apb.ROLE_SUPER_ADMIN]
    return m


def _field_mask(paths):
    return field_mask_pb2.FieldMask(paths=paths)


def update_roles(w, hub, user, roles, actor):
    return w.acc.UpdateMembership(apb.UpdateMembershipRequest(
        membership=apb.Membership(hub_id=hub, user_id=user, roles=list(roles)), update_mask=_field_mask(["roles"])),
        metadata=om.as_user(actor)).membership


def test_part_08_linked_super_admin_cannot_strip_the_client_admin(w, pc):
    linked_super_admin(w, pc)
    with om.raises_rpc(grpc.StatusCode.PERMISSION_DENIED, "PARTNER_IDENTITY_FORBIDDEN"):
        update_roles(w, pc.C, pc.CA, [], pc.E)
    with om.raises_rpc(grpc.StatusCode.PERMISSION_DENIED, "PARTNER_IDENTITY_FORBIDDEN"):
        update_roles(w, pc.C, pc.CX, [apb.ROLE_MARKETING_ACCESS], pc.E)
    assert list(w.membership(pc.C, pc.CA).roles) == [apb.ROLE_SUPER_ADMIN]
    assert list(w.membership(pc.C, pc.CX).roles) == []
    # and the client admin can still remove the employee
    w.acc.DeleteMembership(apb.DeleteMembershipRequest(hub_id=pc.C, user_id=pc.E), metadata=om.as_user(pc.CA))
    assert w.membership(pc.C, pc.E) is None


def test_part_08_linked_super_admin_cannot_grant_super_admin(w, pc):
    linked_super_admin(w, pc)
    newcomer = w.user("Nina Newcomer")
    with om.raises_rpc(grpc.StatusCode.PERMISSION_DENIED, "PARTNER_IDENTITY_FORBIDDEN"):
        w.acc.CreateMembership(apb.CreateMembershipRequest(membership=apb.Membership(
            hub_id=pc.C, user_id=newcomer, roles=[apb.ROLE_SUPER_ADMIN])), metadata=om.as_user(pc.E))
    assert w.membership(pc.C, newcomer) is None
    with om.raises_rpc(grpc.StatusCode.PERMISSION_DENIED, "PARTNER_IDENTITY_FORBIDDEN"):
        update_roles(w, pc.C, pc.CX, [apb.ROLE_SUPER_ADMIN], pc.E)
    assert list(w.membership(pc.C, pc.CX).roles) == []
    # nor on its own membership, nor by giving itself other roles (the client created it)
    with om.raises_rpc(grpc.StatusCode.PERMISSION_DENIED, "PARTNER_IDENTITY_FORBIDDEN"):
        update_roles(w, pc.C, pc.E, [apb.ROLE_SUPER_ADMIN, apb.ROLE_ACCOUNT_PERMISSIONS], pc.E)
    assert list(w.membership(pc.C, pc.E).roles) == [apb.ROLE_SUPER_ADMIN]


def test_part_08_linked_super_admin_cannot_deactivate_or_delete_the_client(w, pc):
    linked_super_admin(w, pc)
    with om.raises_rpc(grpc.StatusCode.PERMISSION_DENIED, "PARTNER_IDENTITY_FORBIDDEN"):
        w.acc.DeactivateAccount(apb.DeactivateAccountRequest(hub_id=pc.C), metadata=om.as_user(pc.E))
    with om.raises_rpc(grpc.StatusCode.PERMISSION_DENIED, "PARTNER_IDENTITY_FORBIDDEN"):
        w.acc.DeleteAccount(apb.DeleteAccountRequest(hub_id=pc.C), metadata=om.as_user(pc.E))
    a = w.acc.GetAccount(apb.GetAccountRequest(hub_id=pc.C), metadata=om.as_user(pc.CA)).account
    assert a.state == apb.ACCOUNT_STATE_ACTIVE
    assert w.membership(pc.C, pc.CA) is not None


def test_part_08_linked_super_admin_cannot_change_partner_links(w, pc):
    m = linked_super_admin(w, pc)
    # no public RPC writes partner fields; the internal ones take only service:partners
    with om.raises_rpc(grpc.StatusCode.INVALID_ARGUMENT):
        w.acc.UpdateMembership(apb.UpdateMembershipRequest(
            membership=apb.Membership(hub_id=pc.C, user_id=pc.E), update_mask=_field_mask(["partner_link"])),
            metadata=om.as_user(pc.E))
    with om.raises_rpc(grpc.StatusCode.PERMISSION_DENIED):
        w.acc_int.RemovePartnerLinkedMembership(apb.RemovePartnerLinkedMembershipRequest(
            hub_id=pc.C, user_id=pc.E, assignment_id=m.partner_link.assignment_id), metadata=om.as_user(pc.E))
    after = w.membership(pc.C, pc.E)
    assert after.partner_link == m.partner_link and after.version == m.version


def test_part_08_linked_super_admin_cannot_answer_access_requests(w, pc):
    linked_super_admin(w, pc)
    # another employee of the same partner asks for the same client
    e2 = w.user("Eve Second")
    w.member(pc.P, e2)
    assert w.tag(pc.P, pc.M, e2)[0].status == ppb.ITEM_STATUS_DONE
    r = w.assign(pc.P, pc.M, e2, pc.C)[0]
    assert r.outcome == O.Value("ASSIGNMENT_OUTCOME_ACCESS_REQUESTED"), r
    rid = r.access_request.access_request_id

    # Partners learns that E is a linked SUPER_ADMIN of C from accounts' event
    # (its local copy, SPEC 2); until then E is refused as a non-admin. Retry
    # only while refused: an approval would leave the request not PENDING,
    # which fails every later attempt and the assertions below.
    def refused_as_partner_identity():
        with om.raises_rpc(grpc.StatusCode.PERMISSION_DENIED, "PARTNER_IDENTITY_FORBIDDEN"):
            w.approve(pc.E, request_id=rid, roles=[apb.ROLE_SUPER_ADMIN])
        return True
    om.eventually(refused_as_partner_identity, timeout=10)
    with om.raises_rpc(grpc.StatusCode.PERMISSION_DENIED, "PARTNER_IDENTITY_FORBIDDEN"):
        w.p.DeclineAccessRequest(ppb.DeclineAccessRequestRequest(access_request_id=rid), metadata=om.as_user(pc.E))
    # no emailed link for it either
    toks = w.pi.IssueAccessRequestTokens(ppb.IssueAccessRequestTokensRequest(
        access_request_id=rid, recipient_user_ids=[pc.E, pc.CA], event_id="ev-linked"), metadata=NOTIFIER).tokens
    assert [t.recipient_user_id for t in toks] == [pc.CA]
    assert w.request(rid, pc.M).state == S.Value("ASSIGNMENT_STATE_PENDING")
    assert w.membership(pc.C, e2) is None


def test_part_08_linked_identity_manages_only_what_it_created(w, pc):
    linked_super_admin(w, pc)
    helper = w.user("Hugo Helper")
    w.acc.CreateMembership(apb.CreateMembershipRequest(membership=apb.Membership(
        hub_id=pc.C, user_id=helper, roles=[apb.ROLE_MARKETING_ACCESS])), metadata=om.as_user(pc.E))
    assert list(update_roles(w, pc.C, helper, [apb.ROLE_ACCOUNT_PERMISSIONS], pc.E).roles) == \
        [apb.ROLE_ACCOUNT_PERMISSIONS]
    with om.raises_rpc(grpc.StatusCode.PERMISSION_DENIED, "PARTNER_IDENTITY_FORBIDDEN"):
        update_roles(w, pc.C, helper, [apb.ROLE_SUPER_ADMIN], pc.E)
    w.acc.DeleteMembership(apb.DeleteMembershipRequest(hub_id=pc.C, user_id=helper), metadata=om.as_user(pc.E))
    assert w.membership(pc.C, helper) is None


def test_part_08_client_removing_the_linked_membership_revokes(w, pc):
    r = pending_request(w, pc)
    w.approve(pc.CA, request_id=r.access_request.access_request_id)
    w.acc.DeleteMembership(apb.DeleteMembershipRequest(hub_id=pc.C, user_id=pc.E), metadata=om.as_user(pc.CA))

    def revoked():
        a = w.employee_clients(pc.P, pc.M, pc.E)[pc.C]
        assert a.state == S.Value("ASSIGNMENT_STATE_REVOKED"), a
        assert a.state_cause == C.Value("ASSIGNMENT_CHANGE_CAUSE_REMOVED_BY_CLIENT")
        return True
    om.eventually(revoked, timeout=10)
    assert "orgmesh.partners.v1.AccessRevoked" in outbox_types(f"partners/{pc.P}/assignments/{r.assignment.assignment_id}")


# ---- PART-09 ------------------------------------------------------------------------------

def test_part_09_leaving_the_partner_revokes_everything_everywhere(w, pc):
    C2 = w.account(pc.CA, "Member Already").hub_id
    C3 = w.account(pc.CA, "Waiting").hub_id
    w.member(C2, pc.E)
    ar = pending_request(w, pc).access_request
    w.approve(pc.CA, request_id=ar.access_request_id)
    assert w.assign(pc.P, pc.M, pc.E, C2)[0].outcome == O.Value("ASSIGNMENT_OUTCOME_ACTIVATED")
    pending_request(w, pc, C3)
    om.eventually(lambda: w.membership(C2, pc.E).HasField("partner_link"), timeout=5)
    # the partner removes the employee from the partner account (an accounts change)
    w.acc.DeleteMembership(apb.DeleteMembershipRequest(hub_id=pc.P, user_id=pc.E), metadata=om.as_user(pc.M))

    def all_ended():
        st = {k: a.state for k, a in w.employee_clients(pc.P, pc.M, pc.E).items()}
        assert st == {pc.C: S.Value("ASSIGNMENT_STATE_REVOKED"), C2: S.Value("ASSIGNMENT_STATE_REVOKED"),
                      C3: S.Value("ASSIGNMENT_STATE_CANCELLED")}, st
        assert w.membership(pc.C, pc.E) is None  # created by the link: removed
        m2 = w.membership(C2, pc.E)  # predated it: stays without the link
        assert m2 is not None and not m2.HasField("partner_link")
        return True
    om.eventually(all_ended, timeout=10)
    causes = {a.state_cause for a in w.employee_clients(pc.P, pc.M, pc.E).values()}
    assert causes == {C.Value("ASSIGNMENT_CHANGE_CAUSE_EMPLOYEE_LEFT_PARTNER")}


def test_part_09_cascade_wins_over_concurrent_approvals(w, pc):
    clients = [w.account(pc.CA, f"Busy {i}").hub_id for i in range(4)]
    reqs = [r.access_request.access_request_id for r in w.assign(pc.P, pc.M, pc.E, *clients)]
    barrier = threading.Barrier(len(reqs) + 1)
    errors = []

    def approve(rid):
        barrier.wait()
        try:
            w.approve(pc.CA, request_id=rid)
        except grpc.RpcError as e:
            errors.append(e.code())

    def untag():
        barrier.wait()
        w.p.UntagEmployee(ppb.UntagEmployeeRequest(partner_hub_id=pc.P, user_id=pc.E), metadata=om.as_user(pc.M))
    ts = [threading.Thread(target=approve, args=(r,)) for r in reqs] + [threading.Thread(target=untag)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    assert set(errors) <= {grpc.StatusCode.FAILED_PRECONDITION}

    def clean():
        st = w.employee_clients(pc.P, pc.M, pc.E)
        assert all(a.state in (S.Value("ASSIGNMENT_STATE_REVOKED"), S.Value("ASSIGNMENT_STATE_CANCELLED"))
                   for a in st.values()), st
        for c in clients:
            assert w.membership(c, pc.E) is None, c
        return True
    om.eventually(clean, timeout=10)


# ---- PART-10, PART-11 -----------------------------------------------------------------------

def test_part_10_only_partner_managers_list_a_clients_employees(w, pc):
    pending_request(w, pc)
    req = ppb.ListClientEmployeesRequest(partner_hub_id=pc.P, client_hub_id=pc.C)
    for who in (pc.E, pc.X):  # members of the partner without a managing role
        with om.raises_rpc(grpc.StatusCode.PERMISSION_DENIED):
            w.p.ListClientEmployees(req, metadata=om.as_user(who))
    with om.raises_rpc(grpc.StatusCode.NOT_FOUND):  # not in the partner at all: told nothing (AIP-193)
        w.p.ListClientEmployees(req, metadata=om.as_user(pc.CA))
    got = w.p.ListClientEmployees(req, metadata=om.as_user(pc.M)).assignments
    assert [a.employee_user_id for a in got] == [pc.E]


def test_part_11_views_of_employees_and_clients(w, pc):
    E2 = w.user("Bob Builder")
    w.member(pc.P, E2)
    w.tag(pc.P, pc.M, E2)
    C2 = w.account(pc.CA, "Known").hub_id
    w.member(C2, pc.E)
    w.assign(pc.P, pc.M, pc.E, pc.C, C2)
    w.assign(pc.P, pc.M, E2, pc.C)
    emps = w.p.ListPartnerEmployees(ppb.ListPartnerEmployeesRequest(partner_hub_id=pc.P),
                                    metadata=om.as_user(pc.M)).employees
    by = {e.user_id: e for e in emps}
    assert [e.display_name for e in emps] == ["Ada Lovelace", "Bob Builder"]  # ordered by name; X untagged
    assert (by[pc.E].client_count, by[pc.E].pending_request_count) == (1, 1)
    assert (by[E2].client_count, by[E2].pending_request_count) == (0, 1)
    assert by[pc.E].tagged_by_user_id == pc.M
    page1 = w.p.ListPartnerEmployees(ppb.ListPartnerEmployeesRequest(partner_hub_id=pc.P, page_size=1),
                                     metadata=om.as_user(pc.M))
    page2 = w.p.ListPartnerEmployees(ppb.ListPartnerEmployeesRequest(
        partner_hub_id=pc.P, page_size=1, page_token=page1.next_page_token), metadata=om.as_user(pc.M))
    assert [e.user_id for e in list(page1.employees) + list(page2.employees)] == [pc.E, E2]
    ec = w.employee_clients(pc.P, pc.M, pc.E)
    assert {k: a.state for k, a in ec.items()} == {pc.C: S.Value("ASSIGNMENT_STATE_PENDING"),
                                                   C2: S.Value("ASSIGNMENT_STATE_ACTIVE")}
    ce = w.p.ListClientEmployees(ppb.ListClientEmployeesRequest(partner_hub_id=pc.P, client_hub_id=pc.C),
                                 metadata=om.as_user(pc.M)).assignments
    assert [a.employee_display_name for a in ce] == ["Ada Lovelace", "Bob Builder"]
    with om.raises_rpc(grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN"):
        w.p.ListClientEmployees(ppb.ListClientEmployeesRequest(
            partner_hub_id=pc.P, client_hub_id=pc.C, page_token=page1.next_page_token), metadata=om.as_user(pc.M))


# ---- PART-12 ------------------------------------------------------------------------------

def test_part_12_report_credits_and_names_the_blockers(w, pc):
    credited = w.account(pc.CA, "Aaa Credited", mrr=12345).hub_id
    blocked = w.account(pc.CA, "Bbb Blocked", mrr=777).hub_id
    w.member(credited, pc.E)
    w.member(blocked, pc.E)
    w.member(blocked, pc.X)  # member of the partner and of the client, not tagged
    w.assign(pc.P, pc.M, pc.E, credited, blocked)
    w.p.AddClients(ppb.AddClientsRequest(partner_hub_id=pc.P, client_hub_ids=[pc.C]), metadata=om.as_user(pc.M))

    def report():
        r = w.p.GetManagedMrrReport(ppb.GetManagedMrrReportRequest(partner_hub_id=pc.P), metadata=om.as_user(pc.M))
        lines = {c.client_hub_id: c for c in r.clients}
        assert lines[credited].credited and lines[credited].mrr.amount_minor == 12345
        b = lines[blocked]
        assert not b.credited
        assert list(b.uncredited_reasons) == [ppb.UNCREDITED_REASON_BLOCKING_USERS]
        assert [(x.user_id, x.reason) for x in b.blockers] == [(pc.X, ppb.CREDIT_BLOCK_REASON_NOT_TAGGED)]
        assert list(lines[pc.C].uncredited_reasons) == [ppb.UNCREDITED_REASON_NO_ACTIVE_EMPLOYEE]
        assert [(t.currency_code, t.amount_minor) for t in r.credited_totals] == [("USD", 12345)]
        return r
    om.eventually(report, timeout=10)
    only = w.p.GetManagedMrrReport(ppb.GetManagedMrrReportRequest(
        partner_hub_id=pc.P, filter=ppb.CREDIT_FILTER_CREDITED), metadata=om.as_user(pc.M)).clients
    assert [c.client_hub_id for c in only] == [credited]
    with om.raises_rpc(grpc.StatusCode.PERMISSION_DENIED):
        w.p.GetManagedMrrReport(ppb.GetManagedMrrReportRequest(partner_hub_id=pc.P), metadata=om.as_user(pc.E))


def test_part_12_employee_refused_by_part_06_blocks_the_credit(w, pc):
    M2, P2 = second_partner(w, pc)
    w.member(pc.C, pc.E)
    assert w.assign(pc.P, pc.M, pc.E, pc.C)[0].outcome == O.Value("ASSIGNMENT_OUTCOME_ACTIVATED")
    assert w.assign(P2, M2, pc.E, pc.C)[0].error.reason == "EMAIL_CONNECTED_TO_OTHER_PARTNER"
    w.p.AddClients(ppb.AddClientsRequest(partner_hub_id=P2, client_hub_ids=[pc.C]), metadata=om.as_user(M2))

    def report():
        lines = {c.client_hub_id: c for c in w.p.GetManagedMrrReport(ppb.GetManagedMrrReportRequest(
            partner_hub_id=P2), metadata=om.as_user(M2)).clients}
        line = lines[pc.C]
        assert not line.credited
        assert [(x.user_id, x.reason) for x in line.blockers] == \
            [(pc.E, ppb.CREDIT_BLOCK_REASON_EMAIL_CONNECTED_TO_OTHER_PARTNER)]
        return True
    om.eventually(report, timeout=10)
    # the first partner keeps the credit
    mine = {c.client_hub_id: c for c in w.p.GetManagedMrrReport(ppb.GetManagedMrrReportRequest(
        partner_hub_id=pc.P), metadata=om.as_user(pc.M)).clients}
    assert mine[pc.C].credited


# ---- PART-13 ------------------------------------------------------------------------------

def act(user, hub, ago_s, aid="", kind="crm.contact.view"):
    from google.protobuf import timestamp_pb2
    t = timestamp_pb2.Timestamp(seconds=int(time.time() - ago_s))
    return ppb.Activity(activity_id=aid, user_id=user, hub_id=hub, kind=kind, time=t)


def test_part_13_activity_is_attributed_and_shown_per_client(w, pc):
    w.member(pc.C, pc.E)
    w.assign(pc.P, pc.M, pc.E, pc.C)
    acts = [act(pc.E, pc.C, 60, "a1"), act(pc.E, pc.C, 120, "a2"), act(pc.E, pc.C, 60, "a1"),
            act(pc.E, pc.C, 40 * 86400, "old"), act(pc.CX, pc.C, 10, "cx"), act(pc.E, pc.P, 10, "own")]
    r = w.pi.RecordActivities(ppb.RecordActivitiesRequest(activities=acts), metadata=SVC)
    assert (r.accepted_count, r.attributed_count) == (5, 3)
    a = w.employee_clients(pc.P, pc.M, pc.E)[pc.C]
    assert a.activity_count_30d == 2
    assert abs(a.last_activity_time.seconds - (time.time() - 60)) < 5
    e = w.p.ListPartnerEmployees(ppb.ListPartnerEmployeesRequest(partner_hub_id=pc.P),
                                 metadata=om.as_user(pc.M)).employees[0]
    assert e.last_activity_time == a.last_activity_time


def test_part_13_a_bad_batch_is_refused_as_a_whole(w, pc):
    w.member(pc.C, pc.E)
    w.assign(pc.P, pc.M, pc.E, pc.C)
    bad = [act(pc.E, pc.C, 5, "ok"), act(pc.E, pc.C, -3600, "future"), act(pc.E, pc.C, 5, "k", kind="")]
    with om.raises_rpc(grpc.StatusCode.INVALID_ARGUMENT) as r:
        w.pi.RecordActivities(ppb.RecordActivitiesRequest(activities=bad), metadata=SVC)
    assert set(r.details.violations) == {"activities[1]", "activities[2]"}
    assert w.employee_clients(pc.P, pc.M, pc.E)[pc.C].activity_count_30d == 0
    with om.raises_rpc(grpc.StatusCode.PERMISSION_DENIED, "SERVICE_IDENTITY_REQUIRED"):
        w.pi.RecordActivities(ppb.RecordActivitiesRequest(activities=bad[:1]), metadata=om.as_user(pc.M))


# ---- SPEC 8 ----------------------------------------------------------------------------------

def test_partner_history_records_the_changes(w, pc):
    pending_request(w, pc)
    entries = w.p.ListPartnerHistory(ppb.ListPartnerHistoryRequest(partner_hub_id=pc.P),
                                     metadata=om.as_user(pc.M)).entries
    actions = [e.action for e in entries]
    assert actions[:3] == ["access_request.create", "client.add", "employee.tag"]
    assert entries[0].actor == f"user:{pc.M}"


# ---- consistency: a crash between the local change and the accounts call -------------------

def test_part_07_intent_left_by_a_crash_is_finished_by_the_sync_loop(w, pc):
    r = pending_request(w, pc)
    w.approve(pc.CA, request_id=r.access_request.access_request_id)
    assert w.membership(pc.C, pc.E) is not None
    # what a crash right after committing a PART-07 removal leaves: the state
    # and the intent, but no accounts call yet
    sql(f"UPDATE partners.assignment SET state = 6, state_cause = 7, link_sync = true,"
        f" link_gen = link_gen + 1, link_sync_after = now(), end_actor = 'user:{pc.M}'"
        f" WHERE id = '{r.assignment.assignment_id}'")
    om.eventually(lambda: w.membership(pc.C, pc.E) is None, timeout=10)
    om.eventually(lambda: "orgmesh.partners.v1.AccessRevoked" in
                  outbox_types(f"partners/{pc.P}/assignments/{r.assignment.assignment_id}"), timeout=5)
    assert sql(f"SELECT link_sync, membership_removed FROM partners.assignment"
               f" WHERE id = '{r.assignment.assignment_id}'") == [["f", "t"]]


def test_part_08_a_stray_link_is_removed_when_accounts_reports_it(w, pc):
    # A link whose assignment is no longer ACTIVE here (e.g. a link call that
    # lost a race and whose intent was lost) is healed from the accounts events.
    r = pending_request(w, pc)
    w.approve(pc.CA, request_id=r.access_request.access_request_id)
    sql(f"UPDATE partners.assignment SET state = 6, state_cause = 7, link_sync = false,"
        f" end_actor = 'user:{pc.M}' WHERE id = '{r.assignment.assignment_id}'")
    from google.protobuf import field_mask_pb2
    w.acc.UpdateMembership(apb.UpdateMembershipRequest(
        membership=apb.Membership(hub_id=pc.C, user_id=pc.E, roles=[]),  # a change (PART-18 granted MARKETING_ACCESS)
        update_mask=field_mask_pb2.FieldMask(paths=["roles"])), metadata=om.as_user(pc.CA))
    om.eventually(lambda: w.membership(pc.C, pc.E) is None, timeout=10)


def test_part_09_deleting_the_client_account_ends_its_assignments(w, pc):
    C2 = w.account(pc.CA, "Closing").hub_id
    pending = pending_request(w, pc, C2)
    E2 = w.user("Eve Active")
    w.member(pc.P, E2)
    w.tag(pc.P, pc.M, E2)
    w.member(C2, E2)
    active = w.assign(pc.P, pc.M, E2, C2)[0]
    assert active.outcome == O.Value("ASSIGNMENT_OUTCOME_ACTIVATED")
    w.acc.DeleteAccount(apb.DeleteAccountRequest(hub_id=C2), metadata=om.as_user(pc.CA))

    def ended():
        got = {a.assignment_id: (a.state, a.state_cause) for a in w.p.ListClientEmployees(
            ppb.ListClientEmployeesRequest(partner_hub_id=pc.P, client_hub_id=C2), metadata=om.as_user(pc.M)).assignments}
        assert got[pending.assignment.assignment_id] == (S.Value("ASSIGNMENT_STATE_CANCELLED"),
                                                         C.Value("ASSIGNMENT_CHANGE_CAUSE_CLIENT_ACCOUNT_DELETED"))
        assert got[active.assignment.assignment_id] == (S.Value("ASSIGNMENT_STATE_REVOKED"),
                                                        C.Value("ASSIGNMENT_CHANGE_CAUSE_CLIENT_ACCOUNT_DELETED"))
        return True
    om.eventually(ended, timeout=10)


def test_part_04_link_never_creates_a_membership_the_client_did_not_grant(w, pc):
    # "Already a member" (PART-04) no longer holds when the link call runs: the
    # call would create a membership; the sync takes it back and revokes.
    w.member(pc.C, pc.E)
    r = w.assign(pc.P, pc.M, pc.E, pc.C)[0]
    aid = r.assignment.assignment_id
    om.eventually(lambda: w.membership(pc.C, pc.E).HasField("partner_link"), timeout=5)
    # the link goes (as the partners service) and the client then removes the plain membership
    w.acc_int.RemovePartnerLinkedMembership(apb.RemovePartnerLinkedMembershipRequest(
        hub_id=pc.C, user_id=pc.E, assignment_id=aid), metadata=om.bearer(om.service_token("partners")))
    w.acc.DeleteMembership(apb.DeleteMembershipRequest(hub_id=pc.C, user_id=pc.E), metadata=om.as_user(pc.CA))
    assert w.membership(pc.C, pc.E) is None
    # a link call still due for the ACTIVE assignment (as after a crash)
    sql(f"UPDATE partners.assignment SET link_sync = true, link_gen = link_gen + 1, link_sync_after = now()"
        f" WHERE id = '{aid}'")

    def healed():
        a = w.employee_clients(pc.P, pc.M, pc.E)[pc.C]
        assert a.state == S.Value("ASSIGNMENT_STATE_REVOKED"), a
        assert w.membership(pc.C, pc.E) is None
        return True
    om.eventually(healed, timeout=10)


def test_part_05_expiry_timer_is_safe_with_several_replicas(w, pc, suite):
    # a second replica of partners on the same database and streams
    svc = suite["partners"]
    env = dict(svc.env, ORGMESH_LISTEN=f"127.0.0.1:{om.free_port()}",
               ORGMESH_METRICS_LISTEN=f"127.0.0.1:{om.free_port()}", ORGMESH_PARTNERS_TIMER_MS="50")
    log = open(svc.log_path.with_name("partners-replica.log"), "ab")
    proc = subprocess.Popen([str(svc.binary)], env=env, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, preexec_fn=om._die_with_parent)
    try:
        assert om.wait_serving(env["ORGMESH_LISTEN"], 60, proc) is None
        clients = [w.account(pc.CA, f"Expiring {i}").hub_id for i in range(12)]
        reqs = [r.access_request.access_request_id for r in w.assign(pc.P, pc.M, pc.E, *clients)]
        ids = ",".join(f"'{r}'" for r in reqs)
        sql(f"UPDATE partners.assignment SET expire_time = now() - interval '1 second' WHERE request_id IN ({ids})")

        def all_expired():
            states = sql(f"SELECT state FROM partners.assignment WHERE request_id IN ({ids})")
            assert [s[0] for s in states] == ["4"] * len(reqs), states
            return True
        om.eventually(all_expired, timeout=10)
        per_request = sql("SELECT subject, count(*) FROM partners.outbox"
                          " WHERE type = 'orgmesh.partners.v1.AccessRequestExpired'"
                          f" AND subject LIKE 'partners/{pc.P}/assignments/%' GROUP BY subject")
        assert len(per_request) == len(reqs) and all(n == "1" for _, n in per_request), per_request
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
        log.close()


# ---- API-01: errors in the caller's language (AIP-193) -------------------------------------

ENUM_LIKE = re.compile(r"[A-Z][A-Z0-9_]{3,}")


def test_api_01_error_carries_localized_message_in_the_callers_locale(w, pc):
    """The same failing call (approving a request that is no longer pending)
    answered in Polish for accept-language pl-PL, in Spanish for a token
    claiming locale=es (the claim wins over the header), and in English with
    neither; the plain message never shows an enum name (it used to read
    "the access request is ASSIGNMENT_STATE_ACTIVE")."""
    from google.rpc import error_details_pb2
    ar = pending_request(w, pc).access_request
    w.approve(pc.CA, request_id=ar.access_request_id)
    decline = ppb.DeclineAccessRequestRequest(access_request_id=ar.access_request_id)

    def fail(metadata):
        with om.raises_rpc(grpc.StatusCode.FAILED_PRECONDITION, "REQUEST_NOT_PENDING") as r:
            w.p.DeclineAccessRequest(decline, metadata=metadata)
        d = r.details
        assert not ENUM_LIKE.search(d.message), d.message
        loc = d.detail(error_details_pb2.LocalizedMessage)
        assert loc is not None, d
        assert d.details.index(d.error_info) < d.details.index(loc)  # beside the ErrorInfo
        return loc.locale, loc.message

    plain = om.as_user(pc.CA)
    assert fail(plain + (("accept-language", "da, pl-PL;q=0.8, en;q=0.5"),)) == \
        ("pl", "Na tę prośbę o dostęp już odpowiedziano lub została zakończona.")
    es = om.bearer(om.user_token(pc.CA, extra_claims={"locale": "es"}))
    assert fail(es + (("accept-language", "pl"),)) == \
        ("es", "Esta solicitud de acceso ya se ha respondido o ha finalizado.")
    assert fail(plain) == ("en", "This access request has already been answered or has ended.")
    # before any token is checked, the header still chooses the words
    with om.raises_rpc(grpc.StatusCode.UNAUTHENTICATED) as r:
        w.p.DeclineAccessRequest(decline, metadata=(("accept-language", "ja"),))
    loc = r.details.detail(error_details_pb2.LocalizedMessage)
    assert (loc.locale, loc.message) == ("ja", "もう一度サインインしてください。")


def test_api_01_part_06_item_error_in_the_callers_locale(w, pc):
    """PART-06's per-item error carries its words in the caller's locale, as
    the seeds translate them; the English message stays as it was."""
    M2, P2 = second_partner(w, pc)
    pending_request(w, pc)
    req = ppb.AssignClientsToEmployeeRequest(partner_hub_id=P2, employee_user_id=pc.E, client_hub_ids=[pc.C])
    for md, locale, text in (
            (om.as_user(M2) + (("accept-language", "pl-PL, en;q=0.5"),), "pl",
             "Ich adres e-mail jest już połączony z innym rekordem partnera dla tego klienta"),
            (om.bearer(om.user_token(M2, extra_claims={"locale": "es"})), "es",
             "Dirección de correo electrónico ya conectada con otro registro de partner para este cliente"),
            (om.as_user(M2), "en", CONFLICT_MSG)):
        e = w.p.AssignClientsToEmployee(req, metadata=md).results[0].error
        assert (e.reason, e.message) == ("EMAIL_CONNECTED_TO_OTHER_PARTNER", CONFLICT_MSG)
        assert (e.locale, e.localized_message) == (locale, text)

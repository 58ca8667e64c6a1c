"""Partner grants end to end (issue 17, PART-14 ... PART-21): accounts,
partners and the notifier run against the stack with a real SMTP server
(Debian's python3-aiosmtpd) on a local port. Grants are made, approved with a
narrowed scope, extended, expired, found dormant and cut off by the client's
kill switch, all through the gRPC API; emails are read at the SMTP server in
several locales.

The short test clock: partners times every grant by the database clock, so
the tests move a grant's times (grant_end_time, activate_time,
dormant_notice_time) with their own SQL instead of waiting days; the timer
(ORGMESH_PARTNERS_TIMER_MS=200) then acts within a round or two. Every wait
polls observable state with a bound."""

import os
import shutil
import subprocess
import tempfile
import threading
import time
import uuid

import grpc
import pytest
from aiosmtpd.controller import Controller

import orgmesh_testlib as om

from orgmesh.accounts.v1 import accounts_pb2 as apb, accounts_pb2_grpc as agrpc
from orgmesh.partners.v1 import partners_pb2 as ppb, partners_pb2_grpc as pgrpc

OM_SERVICES = ["accounts", "partners", "notifier"]

SVC = om.bearer(om.service_token("tests"))
S = ppb.AssignmentState
C = ppb.AssignmentChangeCause
O = ppb.AssignmentOutcome
MARKETING, PERMS, SUPER = apb.ROLE_MARKETING_ACCESS, apb.ROLE_ACCOUNT_PERMISSIONS, apb.ROLE_SUPER_ADMIN
DAY = 86400


class SmtpSink:
    """Stores every accepted message as a file (no AUTH: local to the test)."""

    def __init__(self):
        self.port = om.free_port()
        self.dir = tempfile.mkdtemp(prefix="om-grants-smtp-")
        self.controller = None
        self.refuse = {}  # address fragment -> RCPT reply

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        for frag, reply in list(self.refuse.items()):
            if frag in address:
                return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        name = os.path.join(self.dir, f"{time.time():.6f}-{uuid.uuid4().hex}")
        with open(name + ".tmp", "wb") as f:
            f.write(envelope.original_content or envelope.content)
        os.rename(name + ".tmp", name + ".eml")
        return "250 Message accepted for delivery"

    def start(self):
        if self.controller is None:
            self.controller = Controller(self, hostname="127.0.0.1", port=self.port)
            self.controller.start()

    def stop(self):
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    def messages(self, to):
        import email
        import email.policy
        out = []
        for f in sorted(os.listdir(self.dir)):
            if f.endswith(".eml"):
                with open(os.path.join(self.dir, f), "rb") as fh:
                    msg = email.message_from_bytes(fh.read(), policy=email.policy.default)
                if msg["To"] == to:
                    out.append(msg)
        return out

    def wait_subject(self, to, fragment, count=1, timeout=20.0):
        def got():
            msgs = [m for m in self.messages(to) if fragment in str(m["Subject"])]
            assert len(msgs) >= count, f"{len(msgs)} of {count} emails '{fragment}' to {to}: " + \
                repr([str(m["Subject"]) for m in self.messages(to)])
            return msgs
        return om.eventually(got, timeout=timeout, interval=0.1)


SINK = SmtpSink()


def _private_redis():
    """Accounts events of other test files (a shared Redis) must not reach this file's services."""
    port = om.free_port()
    exe = shutil.which("redis-server") or "/usr/bin/redis-server"
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=om._die_with_parent)
    import atexit
    atexit.register(lambda: (proc.terminate(), proc.wait(5)))
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        r = subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True, text=True)
        if r.stdout.strip() == "PONG":
            break
        time.sleep(0.05)
    env = {"ORGMESH_REDIS_PORT": str(port), "ORGMESH_REDIS_HOST": "127.0.0.1", "ORGMESH_EVT_CLAIM_IDLE_MS": "1000"}
    return {
        "accounts": dict(env),
        "partners": dict(env, ORGMESH_PARTNERS_TIMER_MS="200"),
        "notifier": dict(env, ORGMESH_SMTP_URL=f"smtp://127.0.0.1:{SINK.port}",
                         ORGMESH_SMTP_FROM="orgmesh <no-reply@orgmesh.test>", ORGMESH_SMTP_TIMEOUT_MS="2000",
                         ORGMESH_NOTIFIER_RETRY_BASE_MS="100", ORGMESH_NOTIFIER_RETRY_MAX_MS="1000",
                         ORGMESH_NOTIFIER_POLL_MS="100", ORGMESH_NOTIFIER_CLIENT_HOURLY_CAP="1000"),
    }


OM_SERVICE_ENV = _private_redis


@pytest.fixture(scope="module", autouse=True)
def smtp():
    SINK.start()
    yield SINK
    SINK.stop()
    shutil.rmtree(SINK.dir, ignore_errors=True)


def sql(query):
    url = os.environ.get("ORGMESH_PG_URL") or om.stack_env()["ORGMESH_PG_URL"]
    psql = shutil.which("psql") or "/usr/lib/postgresql/15/bin/psql"
    r = subprocess.run([psql, "-qAtX", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", query],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return [line.split("|") for line in r.stdout.splitlines() if line]


class World:
    def __init__(self, suite):
        self.acc = agrpc.AccountsServiceStub(suite.channel("accounts"))
        self.p = pgrpc.PartnersServiceStub(suite.channel("partners"))
        self.pi = pgrpc.PartnersInternalServiceStub(suite.channel("partners"))

    def user(self, name, locale=""):
        tag = uuid.uuid4().hex[:10]
        return self.acc.CreateUser(apb.CreateUserRequest(user=apb.User(
            email=f"{name.lower().replace(' ', '.')}.{tag}@example.test", display_name=name, locale=locale)),
            metadata=SVC).user

    def account(self, owner, name, kind=apb.ACCOUNT_KIND_STANDARD):
        a = apb.Account(name=f"{name} {uuid.uuid4().hex[:6]}", kind=kind, hosting_location="na1")
        return self.acc.CreateAccount(apb.CreateAccountRequest(account=a), metadata=om.as_user(owner)).account

    def member(self, hub, user, roles=()):
        return self.acc.CreateMembership(apb.CreateMembershipRequest(
            membership=apb.Membership(hub_id=hub, user_id=user, roles=list(roles))), metadata=SVC).membership

    def membership(self, hub, user):
        try:
            return self.acc.GetMembership(apb.GetMembershipRequest(hub_id=hub, user_id=user), metadata=SVC).membership
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise

    def employee(self, P, M, name="Ada Lovelace"):
        E = self.user(name)
        self.member(P, E.user_id)
        assert self.p.TagEmployees(ppb.TagEmployeesRequest(partner_hub_id=P, user_ids=[E.user_id]),
                                   metadata=om.as_user(M)).results[0].status == ppb.ITEM_STATUS_DONE
        return E

    def assign(self, P, M, E, client, **terms):
        return self.p.AssignClientsToEmployee(ppb.AssignClientsToEmployeeRequest(
            partner_hub_id=P, employee_user_id=E, client_hub_ids=[client], **terms), metadata=om.as_user(M)).results[0]

    def approve(self, admin, request_id, roles=()):
        return self.p.ApproveAccessRequest(ppb.ApproveAccessRequestRequest(
            access_request_id=request_id, roles=list(roles)), metadata=om.as_user(admin))

    def grant(self, assignment_id, manager, partner, employee):
        for a in self.p.ListEmployeeClients(ppb.ListEmployeeClientsRequest(
                partner_hub_id=partner, employee_user_id=employee, page_size=1000),
                metadata=om.as_user(manager)).assignments:
            if a.assignment_id == assignment_id:
                return a
        raise AssertionError(f"assignment {assignment_id} not listed")


@pytest.fixture
def w(suite):
    return World(suite)


class Ctx:
    pass


@pytest.fixture
def g(w):
    """Partner P (manager M, Spanish), tagged employee E; client C whose owner
    CA writes Italian and a second super admin CB Polish."""
    c = Ctx()
    c.Mu = w.user("Mateo Manager", locale="es")
    c.M = c.Mu.user_id
    c.P = w.account(c.M, "Agency", kind=apb.ACCOUNT_KIND_PARTNER).hub_id
    c.E = w.employee(c.P, c.M).user_id
    c.CAu = w.user("Carla Cliente", locale="it")
    c.CA = c.CAu.user_id
    c.C = w.account(c.CA, "Client").hub_id
    c.CBu = w.user("Bogna Klient", locale="pl")
    c.CB = c.CBu.user_id
    w.member(c.C, c.CB, roles=[SUPER])
    return c


def active_grant(w, g, roles=(MARKETING,), approve_roles=(), **terms):
    r = w.assign(g.P, g.M, g.E, g.C, roles=list(roles), **terms)
    assert r.outcome == O.Value("ASSIGNMENT_OUTCOME_ACCESS_REQUESTED"), r
    resp = w.approve(g.CA, r.access_request.access_request_id, approve_roles)
    assert resp.assignment.state == S.Value("ASSIGNMENT_STATE_ACTIVE")
    om.eventually(lambda: w.membership(g.C, g.E) is not None or None, timeout=10)
    return resp.assignment


def set_times(assignment_id, **cols):
    sets = ", ".join(f"{k} = {v}" for k, v in cols.items())
    sql(f"UPDATE partners.assignment SET {sets} WHERE id = '{assignment_id}'")


# ---- PART-14, PART-16, PART-18: a time-bound grant with a narrowed scope, its notices and its end ---------

def test_part_16_expiry_with_notices_in_three_locales(w, g, smtp):
    a = active_grant(w, g, roles=(MARKETING, PERMS), approve_roles=(MARKETING,), duration_days=10)
    # PART-14: the end is the activation + the duration, on the database clock
    assert a.duration_days == 10
    assert abs(a.grant_end_time.seconds - a.activate_time.seconds - 10 * DAY) <= 1
    # PART-18: the membership has exactly the approved (narrowed) roles, the assignment records both
    m = w.membership(g.C, g.E)
    assert m.HasField("partner_link") and list(m.roles) == [MARKETING]
    assert list(a.requested_roles) == [PERMS, MARKETING] and list(a.granted_roles) == [MARKETING]

    # PART-16: a 10-day grant is within the 30-day threshold at once; the notice says 10 days
    smtp.wait_subject(g.Mu.email, "termina en 10 días")
    smtp.wait_subject(g.CAu.email, "termina tra 10 giorni")
    smtp.wait_subject(g.CBu.email, "kończy się za 10 dni")

    set_times(a.assignment_id, grant_end_time="now() + interval '6 days 23 hours'")
    smtp.wait_subject(g.Mu.email, "termina en 7 días")
    smtp.wait_subject(g.CAu.email, "termina tra 7 giorni")
    smtp.wait_subject(g.CBu.email, "kończy się za 7 dni")
    set_times(a.assignment_id, grant_end_time="now() + interval '20 hours'")
    (it,) = smtp.wait_subject(g.CAu.email, "termina tra 1 giorni")
    body = it.get_body(preferencelist=("plain",)).get_content()
    end = sql(f"SELECT to_char(grant_end_time AT TIME ZONE 'UTC', 'YYYY-MM-DD') FROM partners.assignment"
              f" WHERE id = '{a.assignment_id}'")[0][0]
    assert end in body and "DAYS" not in body and "GRANT" not in body  # an ISO date, no raw codes

    # the end: EXPIRED, GRANT_ENDED, the partner-linked membership removed (PART-09's path)
    set_times(a.assignment_id, grant_end_time="now() - interval '1 second'")
    om.eventually(lambda: w.membership(g.C, g.E) is None or None, timeout=15)
    got = w.grant(a.assignment_id, g.M, g.P, g.E)
    assert (got.state, got.state_cause) == (S.Value("ASSIGNMENT_STATE_EXPIRED"),
                                             C.Value("ASSIGNMENT_CHANGE_CAUSE_GRANT_ENDED"))
    smtp.wait_subject(g.Mu.email, "ha terminado")
    smtp.wait_subject(g.CAu.email, "è terminato")
    smtp.wait_subject(g.CBu.email, "wygasł")
    # each threshold once per grant and end: 10 (the 30-day one), 7, 1
    for u, frag in ((g.Mu, "termina en"), (g.CAu, "termina tra"), (g.CBu, "kończy się za")):
        assert len([m for m in smtp.messages(u.email) if frag in str(m["Subject"])]) == 3


# ---- PART-15: auto-extend ---------------------------------------------------------------------------------

def test_part_15_auto_extend_at_the_end(w, g):
    a = active_grant(w, g, duration_days=30, auto_extend=True)
    assert a.auto_extend
    set_times(a.assignment_id, grant_end_time="now() - interval '1 second'", notices_sent="'{1,7,30}'")

    def extended():
        got = w.grant(a.assignment_id, g.M, g.P, g.E)
        assert got.grant_end_time.seconds > time.time() + 179 * DAY, got.grant_end_time
        return got
    got = om.eventually(extended, timeout=10)
    assert got.state == S.Value("ASSIGNMENT_STATE_ACTIVE")
    assert w.membership(g.C, g.E) is not None
    # audited and in history
    hist = w.p.ListPartnerHistory(ppb.ListPartnerHistoryRequest(partner_hub_id=g.P, page_size=100),
                                  metadata=om.as_user(g.M)).entries
    assert any(e.action == "grant.extend" for e in hist)
    # the notices start again for the new end
    assert sql(f"SELECT notices_sent FROM partners.assignment WHERE id = '{a.assignment_id}'")[0][0] == "{}"


# ---- PART-14, PART-18: validation ----------------------------------------------------------------------------

def test_part_14_duration_bounds_and_until_removed(w, g):
    with om.raises_rpc(grpc.StatusCode.INVALID_ARGUMENT):
        w.assign(g.P, g.M, g.E, g.C, duration_days=731)
    with om.raises_rpc(grpc.StatusCode.INVALID_ARGUMENT):
        w.assign(g.P, g.M, g.E, g.C, duration_days=-1)
    with om.raises_rpc(grpc.StatusCode.FAILED_PRECONDITION, "DURATION_NOT_ALLOWED"):
        w.assign(g.P, g.M, g.E, g.C, until_removed=True)
    r = w.assign(g.P, g.M, g.E, g.C)  # the default (365 days)
    assert r.access_request.duration_days == 365


def test_part_18_super_admin_never_and_approval_only_narrows(w, g):
    with om.raises_rpc(grpc.StatusCode.INVALID_ARGUMENT, "ROLE_NOT_GRANTABLE"):
        w.assign(g.P, g.M, g.E, g.C, roles=[MARKETING, SUPER])
    r = w.assign(g.P, g.M, g.E, g.C, roles=[MARKETING])
    rid = r.access_request.access_request_id
    # the client's admin sees the requested roles
    got = w.p.GetAccessRequest(ppb.GetAccessRequestRequest(access_request_id=rid), metadata=om.as_user(g.CA))
    assert list(got.access_request.requested_roles) == [MARKETING]
    listed = w.p.ListAccessRequests(ppb.ListAccessRequestsRequest(client_hub_id=g.C), metadata=om.as_user(g.CA))
    assert [list(x.requested_roles) for x in listed.access_requests] == [[MARKETING]]
    with om.raises_rpc(grpc.StatusCode.INVALID_ARGUMENT, "ROLES_NOT_REQUESTED"):
        w.approve(g.CA, rid, [PERMS])
    with om.raises_rpc(grpc.StatusCode.INVALID_ARGUMENT, "ROLE_NOT_GRANTABLE"):
        w.approve(g.CA, rid, [SUPER])
    # nothing was granted by the refused answers
    assert w.membership(g.C, g.E) is None
    # default: empty roles = all requested
    assert w.approve(g.CA, rid).assignment.state == S.Value("ASSIGNMENT_STATE_ACTIVE")
    m = om.eventually(lambda: w.membership(g.C, g.E), timeout=10)
    assert list(m.roles) == [MARKETING]


# ---- PART-17: extend ------------------------------------------------------------------------------------------

def test_part_17_client_admin_extends_partner_may_not_here(w, g):
    a = active_grant(w, g, duration_days=10)
    r = w.p.ExtendPartnerGrant(ppb.ExtendPartnerGrantRequest(assignment_id=a.assignment_id, extend_days=30),
                               metadata=om.as_user(g.CA))
    assert r.assignment.grant_end_time.seconds - a.grant_end_time.seconds == 30 * DAY
    # a partner manager only where configured (off here)
    with om.raises_rpc(grpc.StatusCode.PERMISSION_DENIED):
        w.p.ExtendPartnerGrant(ppb.ExtendPartnerGrantRequest(assignment_id=a.assignment_id, extend_days=1),
                               metadata=om.as_user(g.M))
    # an admin of another account does not learn it exists
    X = w.user("Xavier Outsider")
    w.account(X.user_id, "Other")
    with om.raises_rpc(grpc.StatusCode.NOT_FOUND):
        w.p.ExtendPartnerGrant(ppb.ExtendPartnerGrantRequest(assignment_id=a.assignment_id, extend_days=1),
                               metadata=om.as_user(X.user_id))
    # the employee (a partner-linked member of the client) acts for the partner
    with om.raises_rpc(grpc.StatusCode.PERMISSION_DENIED):
        w.p.ExtendPartnerGrant(ppb.ExtendPartnerGrantRequest(assignment_id=a.assignment_id, extend_days=1),
                               metadata=om.as_user(g.E))
    # at most now + the maximum duration (730 days)
    with om.raises_rpc(grpc.StatusCode.INVALID_ARGUMENT):
        w.p.ExtendPartnerGrant(ppb.ExtendPartnerGrantRequest(assignment_id=a.assignment_id, extend_days=700),
                               metadata=om.as_user(g.CA))


# ---- PART-19: dormant ---------------------------------------------------------------------------------------------

def test_part_19_dormant_report_notice_and_revocation(w, g, smtp):
    a = active_grant(w, g, duration_days=365)
    # 80 days without activity: dormant in 10 days, listed for both sides
    set_times(a.assignment_id, activate_time="now() - interval '80 days'")
    for req, who in ((ppb.ListDormantGrantsRequest(partner_hub_id=g.P), g.M),
                     (ppb.ListDormantGrantsRequest(client_hub_id=g.C), g.CA)):
        got = w.p.ListDormantGrants(req, metadata=om.as_user(who)).grants
        assert [d.assignment.assignment_id for d in got] == [a.assignment_id]
        assert abs(got[0].dormant_time.seconds - (time.time() + 10 * DAY)) < 120
    # each side only its own
    with om.raises_rpc(grpc.StatusCode.NOT_FOUND):
        w.p.ListDormantGrants(ppb.ListDormantGrantsRequest(partner_hub_id=g.P), metadata=om.as_user(g.CA))
    with om.raises_rpc(grpc.StatusCode.NOT_FOUND):
        w.p.ListDormantGrants(ppb.ListDormantGrantsRequest(client_hub_id=g.C), metadata=om.as_user(g.M))
    # 91 days: the notice (Spanish, Italian, Polish), not yet the revocation
    set_times(a.assignment_id, activate_time="now() - interval '91 days'")
    smtp.wait_subject(g.Mu.email, "Se retirará")
    smtp.wait_subject(g.CAu.email, "sarà rimosso")
    smtp.wait_subject(g.CBu.email, "zostanie usunięty")
    assert w.grant(a.assignment_id, g.M, g.P, g.E).state == S.Value("ASSIGNMENT_STATE_ACTIVE")
    # the grace period (7 days) passes without activity: REVOKED, DORMANT, membership removed
    set_times(a.assignment_id, dormant_notice_time="now() - interval '8 days'")
    om.eventually(lambda: w.membership(g.C, g.E) is None or None, timeout=15)
    got = w.grant(a.assignment_id, g.M, g.P, g.E)
    assert (got.state, got.state_cause) == (S.Value("ASSIGNMENT_STATE_REVOKED"),
                                             C.Value("ASSIGNMENT_CHANGE_CAUSE_DORMANT"))


def test_part_19_activity_after_the_notice_keeps_the_grant(w, g):
    a = active_grant(w, g, duration_days=365)
    set_times(a.assignment_id, activate_time="now() - interval '91 days'")
    om.eventually(lambda: sql(f"SELECT dormant_notice_time IS NOT NULL FROM partners.assignment"
                              f" WHERE id = '{a.assignment_id}'")[0][0] == "t" or None, timeout=10)
    # PART-13: the employee works there after the notice; then the grace period passes
    w.pi.RecordActivities(ppb.RecordActivitiesRequest(activities=[ppb.Activity(
        user_id=g.E, hub_id=g.C, kind="login", time=om_now())]), metadata=SVC)
    set_times(a.assignment_id, dormant_notice_time="now() - interval '8 days'")
    # a later grant in the same state is revoked by the same round: wait for that, then judge ours
    g2 = Ctx()
    g2.__dict__.update(g.__dict__)
    g2.E = w.employee(g.P, g.M, "Bob Other").user_id
    b = active_grant(w, g2, duration_days=365)
    set_times(b.assignment_id, activate_time="now() - interval '91 days'")
    om.eventually(lambda: sql(f"SELECT dormant_notice_time IS NOT NULL FROM partners.assignment"
                              f" WHERE id = '{b.assignment_id}'")[0][0] == "t" or None, timeout=10)
    set_times(b.assignment_id, dormant_notice_time="now() - interval '8 days'")
    om.eventually(lambda: w.membership(g.C, g2.E) is None or None, timeout=15)
    assert w.grant(a.assignment_id, g.M, g.P, g.E).state == S.Value("ASSIGNMENT_STATE_ACTIVE")


# ---- PART-20: the client's kill switches under concurrent assignment ----------------------------------------------

def _race(w, g, partner, manager, employees, kill):
    """Threads assign `employees` to C one call at a time while `kill` runs."""
    errors, started = [], threading.Event()

    def worker(chunk):
        for e in chunk:
            try:
                w.assign(partner, manager, e, g.C)
            except grpc.RpcError as err:  # a whole call refused is fine; a crash is not
                errors.append(err)
            started.set()
    chunks = [employees[i::3] for i in range(3)]
    threads = [threading.Thread(target=worker, args=(c,)) for c in chunks]
    for t in threads:
        t.start()
    assert started.wait(10)
    resp = kill()
    for t in threads:
        t.join(30)
    assert not [e for e in errors if e.code() not in (grpc.StatusCode.FAILED_PRECONDITION,)], errors
    return resp


def _open_on_client(client, partner=None):
    q = f"SELECT count(*) FROM partners.assignment WHERE client_hub_id = {client} AND state IN (1, 2)"
    if partner is not None:
        q += f" AND partner_hub_id = {partner}"
    return int(sql(q)[0][0])


def test_part_20_kill_switch_one_partner_under_concurrent_assignment(w, g):
    # another partner's grant on the same client survives the one-partner switch
    M2 = w.user("Other Manager").user_id
    P2 = w.account(M2, "Other Agency", kind=apb.ACCOUNT_KIND_PARTNER).hub_id
    E2 = w.employee(P2, M2, "Olga Other").user_id
    assert w.assign(P2, M2, E2, g.C).outcome == O.Value("ASSIGNMENT_OUTCOME_ACCESS_REQUESTED")
    emps = [w.employee(g.P, g.M, f"Racer {i}").user_id for i in range(12)]
    for e in emps[::2]:
        w.member(g.C, e)  # half are members already: ACTIVE at once
    resp = _race(w, g, g.P, g.M, emps, lambda: w.p.RevokePartnerAccess(ppb.RevokePartnerAccessRequest(
        client_hub_id=g.C, partner_hub_id=g.P, confirmation="REMOVE", reason="audit"), metadata=om.as_user(g.CA)))
    assert resp.cancelled_request_count + resp.revoked_assignment_count >= 1
    # every assignment that raced is revoked or was never created; nothing of P stays open
    assert _open_on_client(g.C, g.P) == 0
    assert _open_on_client(g.C, P2) == 1
    r = w.assign(g.P, g.M, g.E, g.C)
    assert r.outcome == O.Value("ASSIGNMENT_OUTCOME_FAILED") and r.error.reason == "PARTNER_ACCESS_BLOCKED"
    # the linked memberships of the revoked ones are removed (PART-09's cascade)
    om.eventually(lambda: int(sql(f"SELECT count(*) FROM partners.assignment WHERE client_hub_id = {g.C}"
                                  f" AND partner_hub_id = {g.P} AND link_sync")[0][0]) == 0 or None, timeout=15)
    # audited in the partner's history
    hist = w.p.ListPartnerHistory(ppb.ListPartnerHistoryRequest(partner_hub_id=g.P, page_size=200),
                                  metadata=om.as_user(g.M)).entries
    assert any(e.action == "partner_access.revoke" for e in hist)
    # the client lifts the block
    assert w.p.RestorePartnerAccess(ppb.RestorePartnerAccessRequest(client_hub_id=g.C, partner_hub_id=g.P),
                                    metadata=om.as_user(g.CA)).restored
    hist = w.p.ListPartnerHistory(ppb.ListPartnerHistoryRequest(partner_hub_id=g.P, page_size=200),
                                  metadata=om.as_user(g.M)).entries
    assert any(e.action == "partner_access.restore" for e in hist)
    assert w.assign(g.P, g.M, g.E, g.C).outcome == O.Value("ASSIGNMENT_OUTCOME_ACCESS_REQUESTED")


def test_part_20_kill_switch_all_partners_under_concurrent_assignment(w, g):
    M2 = w.user("Other Manager").user_id
    P2 = w.account(M2, "Other Agency", kind=apb.ACCOUNT_KIND_PARTNER).hub_id
    E2 = w.employee(P2, M2, "Olga Other").user_id
    w.member(g.C, E2)
    assert w.assign(P2, M2, E2, g.C).outcome == O.Value("ASSIGNMENT_OUTCOME_ACTIVATED")
    emps = [w.employee(g.P, g.M, f"Runner {i}").user_id for i in range(9)]
    _race(w, g, g.P, g.M, emps, lambda: w.p.RevokePartnerAccess(ppb.RevokePartnerAccessRequest(
        client_hub_id=g.C, confirmation="REMOVE"), metadata=om.as_user(g.CA)))
    assert _open_on_client(g.C) == 0
    assert w.assign(P2, M2, E2, g.C).error.reason == "PARTNER_ACCESS_BLOCKED"
    # E2's membership predates the link: only the link goes (PART-07/09 keep it)
    om.eventually(lambda: not w.membership(g.C, E2).HasField("partner_link") or None, timeout=15)


def test_part_20_only_the_clients_own_admins(w, g):
    req = ppb.RevokePartnerAccessRequest(client_hub_id=g.C, confirmation="REMOVE")
    with om.raises_rpc(grpc.StatusCode.NOT_FOUND):  # the partner manager: no member of C
        w.p.RevokePartnerAccess(req, metadata=om.as_user(g.M))
    plain = w.user("Plain Member").user_id
    w.member(g.C, plain, roles=[MARKETING])
    with om.raises_rpc(grpc.StatusCode.PERMISSION_DENIED):
        w.p.RevokePartnerAccess(req, metadata=om.as_user(plain))
    with om.raises_rpc(grpc.StatusCode.INVALID_ARGUMENT, "CONFIRMATION_REQUIRED"):
        w.p.RevokePartnerAccess(ppb.RevokePartnerAccessRequest(client_hub_id=g.C, confirmation="yes"),
                                metadata=om.as_user(g.CA))
    # a partner-linked admin of the client acts for the partner, never for the client
    active_grant(w, g, roles=(MARKETING, PERMS))

    def refused_as_partner_identity():  # once partners' copy holds the linked membership
        with om.raises_rpc(grpc.StatusCode.PERMISSION_DENIED, "PARTNER_IDENTITY_FORBIDDEN"):
            w.p.RevokePartnerAccess(req, metadata=om.as_user(g.E))
        return True
    om.eventually(refused_as_partner_identity, timeout=10)
    assert _open_on_client(g.C) == 1


# ---- PART-21: the client's view -----------------------------------------------------------------------------------

def test_part_21_client_view_pages_every_pending_and_active_grant(w, g):
    a = active_grant(w, g, roles=(MARKETING, PERMS), approve_roles=(MARKETING,), duration_days=90)
    w.pi.RecordActivities(ppb.RecordActivitiesRequest(activities=[ppb.Activity(
        user_id=g.E, hub_id=g.C, kind="login", time=om_now())]), metadata=SVC)
    others = [w.employee(g.P, g.M, f"Pending {i}").user_id for i in range(2)]
    for e in others:
        w.assign(g.P, g.M, e, g.C)
    seen, token = [], ""
    for _ in range(5):
        r = w.p.ListClientGrants(ppb.ListClientGrantsRequest(client_hub_id=g.C, page_size=2, page_token=token),
                                 metadata=om.as_user(g.CA))
        seen += list(r.grants)
        token = r.next_page_token
        if not token:
            break
    assert len(seen) == 3 and len({x.assignment_id for x in seen}) == 3
    mine = [x for x in seen if x.assignment_id == a.assignment_id][0]
    assert mine.partner_hub_id == g.P and list(mine.granted_roles) == [MARKETING]
    assert mine.HasField("grant_end_time") and mine.HasField("last_activity_time")
    assert {x.state for x in seen} == {S.Value("ASSIGNMENT_STATE_ACTIVE"), S.Value("ASSIGNMENT_STATE_PENDING")}
    with om.raises_rpc(grpc.StatusCode.NOT_FOUND):
        w.p.ListClientGrants(ppb.ListClientGrantsRequest(client_hub_id=g.C), metadata=om.as_user(g.M))


def om_now():
    from google.protobuf import timestamp_pb2
    t = timestamp_pb2.Timestamp()
    t.GetCurrentTime()
    return t


# ---- PART-22: resend at once after a failed or bounced email ---------------------------------------------------

def test_part_22_resend_at_once_after_a_bounce_otherwise_once_an_hour(w, g, smtp):
    smtp.refuse[g.CAu.email] = "550 mailbox unavailable"  # CA's address bounces
    try:
        r = w.assign(g.P, g.M, g.E, g.C)
        rid = r.access_request.access_request_id

        def failed():
            ar = w.p.GetAccessRequest(ppb.GetAccessRequestRequest(access_request_id=rid),
                                      metadata=om.as_user(g.M)).access_request
            assert ar.last_send_failed, ar
            return ar
        ar = om.eventually(failed, timeout=20)
        assert abs(ar.next_resend_time.seconds - time.time()) < 60  # now, not in an hour
    finally:
        smtp.refuse.clear()
    again = w.p.ResendAccessRequest(ppb.ResendAccessRequestRequest(access_request_id=rid), metadata=om.as_user(g.M))
    assert again.access_request.send_count == 2 and not again.access_request.last_send_failed
    smtp.wait_subject(g.CAu.email, "")  # this time it arrives
    # delivered: the hourly limit holds again (PART-04)
    with om.raises_rpc(grpc.StatusCode.RESOURCE_EXHAUSTED, "RESEND_TOO_SOON"):
        w.p.ResendAccessRequest(ppb.ResendAccessRequestRequest(access_request_id=rid), metadata=om.as_user(g.M))


# ---- PART-16 with two replicas: each notice and each end handled once ---------------------------------------------

def test_part_16_two_replicas_notice_and_expire_each_grant_once(w, g, suite):
    other = suite["partners"].replica("partners-grants-replica-2.log")
    try:
        emps = [w.employee(g.P, g.M, f"Twin {i}").user_id for i in range(6)]
        ids = []
        for e in emps:
            w.member(g.C, e)  # a member already: ACTIVE at once (PART-04), the grant runs from now
            r = w.assign(g.P, g.M, e, g.C, duration_days=100)
            assert r.outcome == O.Value("ASSIGNMENT_OUTCOME_ACTIVATED"), r
            ids.append(r.assignment.assignment_id)
        in_list = ", ".join(f"'{i}'" for i in ids)
        # both timers race for the same rows: the 7-day notice (the 30-day one is past with it) ...
        sql(f"UPDATE partners.assignment SET grant_end_time = now() + interval '6 days 12 hours'"
            f" WHERE id IN ({in_list})")

        def history(action):
            es = w.p.ListPartnerHistory(ppb.ListPartnerHistoryRequest(partner_hub_id=g.P, page_size=1000),
                                        metadata=om.as_user(g.M)).entries
            return [e for e in es if e.action == action]
        om.eventually(lambda: len(history("grant.notice_end")) >= len(ids) or None, timeout=15)
        # ... then the end
        sql(f"UPDATE partners.assignment SET grant_end_time = now() - interval '1 second' WHERE id IN ({in_list})")
        om.eventually(lambda: int(sql(f"SELECT count(*) FROM partners.assignment WHERE id IN ({in_list})"
                                      f" AND state = 4")[0][0]) == len(ids) or None, timeout=15)
        om.eventually(lambda: len(history("grant.expire")) >= len(ids) or None, timeout=10)
        assert len(history("grant.notice_end")) == len(ids)
        assert len(history("grant.expire")) == len(ids)
        assert sql(f"SELECT DISTINCT notices_sent FROM partners.assignment WHERE id IN ({in_list})") == [["{7,30}"]]
    finally:
        problems = other.stop()
    assert not problems, problems

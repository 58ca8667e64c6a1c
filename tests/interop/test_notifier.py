"""The notifier end to end (SPEC 7, NOTE-01 ... NOTE-03): the accounts,
partners and notifier binaries run against the stack, and a real SMTP server
(Debian's python3-aiosmtpd, started here on a local port) writes every
message it accepts to a folder that the tests read. A test assigns a partner
employee to a client, waits for the emails at the SMTP server, checks
recipients, subject, language and link, and follows the link's token back
into the partners service as the client's signed-in admin. The SMTP server
is stopped and started again to simulate an outage, and told to refuse some
recipients (permanently with 550, temporarily with 451) to drive the retries
and the dead letters."""

import asyncio
import email
import email.policy
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from urllib.parse import parse_qs, urlparse

import grpc
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

import orgmesh_testlib as om

from orgmesh.accounts.v1 import accounts_pb2 as apb, accounts_pb2_grpc as agrpc
from orgmesh.notifier.v1 import notifier_pb2 as npb, notifier_pb2_grpc as ngrpc
from orgmesh.partners.v1 import partners_pb2 as ppb, partners_pb2_grpc as pgrpc

OM_SERVICES = ["accounts", "partners", "notifier"]

SVC = om.bearer(om.service_token("tests"))
LINK_BASE = "https://app.orgmesh.test/partner-access"
CAP = 3
SMTP_USER, SMTP_PASSWORD = "orgmesh-notifier", "s3cret-smtp"
MAX_ATTEMPTS = 8
D = npb.DeliveryState


class SmtpSink:
    """An SMTP server on a fixed local port that stores each accepted message
    as a file. `refuse` maps an address fragment to the reply its RCPT gets."""

    def __init__(self):
        self.port = om.free_port()
        self.dir = tempfile.mkdtemp(prefix="om-smtp-")
        self.refuse = {}
        self.controller = None
        self.logins = []  # (user, password) of every successful AUTH

    def authenticate(self, server, session, envelope, mechanism, auth_data):
        ok = isinstance(auth_data, LoginPassword) and \
            (auth_data.login, auth_data.password) == (SMTP_USER.encode(), SMTP_PASSWORD.encode())
        if ok:
            self.logins.append((auth_data.login.decode(), mechanism))
        return AuthResult(success=ok)

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

    def start(self, **smtp_kwargs):
        if self.controller is None:
            # AUTH is required (no TLS here): mail only goes with the
            # credentials from the notifier's configuration
            kw = dict(auth_required=True, auth_require_tls=False, authenticator=self.authenticate)
            kw.update(smtp_kwargs)
            self.controller = Controller(self, hostname="127.0.0.1", port=self.port, **kw)
            self.controller.start()

    def stop(self):
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    def messages(self, to=None):
        out = []
        for f in sorted(os.listdir(self.dir)):
            if not f.endswith(".eml"):
                continue
            with open(os.path.join(self.dir, f), "rb") as fh:
                msg = email.message_from_bytes(fh.read(), policy=email.policy.default)
            if to is None or msg["To"] == to:
                out.append(msg)
        return out

    def wait_for(self, to, count=1, timeout=15.0):
        def got():
            msgs = self.messages(to)
            assert len(msgs) >= count, f"{len(msgs)} of {count} emails to {to} arrived"
            return msgs
        return om.eventually(got, timeout=timeout, interval=0.1)


SINK = SmtpSink()


def _env():
    return {"notifier": {
        "ORGMESH_SMTP_URL": f"smtp://127.0.0.1:{SINK.port}",
        "ORGMESH_SMTP_FROM": "orgmesh <no-reply@orgmesh.test>",
        "ORGMESH_SMTP_TIMEOUT_MS": "2000",
        "ORGMESH_SMTP_USER": SMTP_USER,
        "ORGMESH_SMTP_PASSWORD": SMTP_PASSWORD,
        "ORGMESH_NOTIFIER_LINK_BASE": LINK_BASE,
        "ORGMESH_NOTIFIER_RETRY_BASE_MS": "100",
        "ORGMESH_NOTIFIER_RETRY_MAX_MS": "1000",
        "ORGMESH_NOTIFIER_MAX_ATTEMPTS": str(MAX_ATTEMPTS),
        "ORGMESH_NOTIFIER_CLIENT_HOURLY_CAP": str(CAP),
        "ORGMESH_NOTIFIER_POLL_MS": "100",
        "ORGMESH_EVT_CLAIM_IDLE_MS": "1000",
    }, "partners": {"ORGMESH_PARTNERS_TIMER_MS": "200"}}


OM_SERVICE_ENV = _env

# aiosmtpd warns that AUTH without TLS is unsafe: this SMTP server is local to the test.
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")


@pytest.fixture(scope="module")
def smtp():
    SINK.start()
    yield SINK
    SINK.stop()
    shutil.rmtree(SINK.dir, ignore_errors=True)


@pytest.fixture(autouse=True)
def smtp_up(smtp):
    """Every test starts with the SMTP server up and accepting everyone."""
    smtp.refuse.clear()
    smtp.start()
    yield


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
        self.n = ngrpc.NotifierServiceStub(suite.channel("notifier"))

    def user(self, name, locale=""):
        tag = uuid.uuid4().hex[:10]
        u = self.acc.CreateUser(apb.CreateUserRequest(user=apb.User(
            email=f"{re.sub(r'[^a-z0-9.]', '', name.lower().replace(' ', '.'))}.{tag}@example.test",
            display_name=name, locale=locale)),
            metadata=SVC).user
        return u

    def account(self, owner, name, kind=apb.ACCOUNT_KIND_STANDARD):
        a = apb.Account(name=f"{name} {uuid.uuid4().hex[:6]}", kind=kind, hosting_location="na1")
        return self.acc.CreateAccount(apb.CreateAccountRequest(account=a), metadata=om.as_user(owner)).account

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

    def partner(self):
        """A partner account with manager M; returns (partner account, M)."""
        M = self.user("Mia Manager")
        P = self.account(M.user_id, "Agency", kind=apb.ACCOUNT_KIND_PARTNER)
        return P, M

    def employee(self, P, M, name="Ada Lovelace"):
        E = self.user(name)
        self.member(P.hub_id, E.user_id)
        res = self.p.TagEmployees(ppb.TagEmployeesRequest(partner_hub_id=P.hub_id, user_ids=[E.user_id]),
                                  metadata=om.as_user(M.user_id)).results
        assert res[0].status == ppb.ITEM_STATUS_DONE
        return E

    def request(self, P, M, E, C):
        r = self.p.AssignClientsToEmployee(ppb.AssignClientsToEmployeeRequest(
            partner_hub_id=P.hub_id, employee_user_id=E.user_id, client_hub_ids=[C.hub_id]),
            metadata=om.as_user(M.user_id)).results[0]
        assert r.outcome == ppb.AssignmentOutcome.Value("ASSIGNMENT_OUTCOME_ACCESS_REQUESTED"), r
        return r.access_request

    def deliveries(self, **filters):
        return list(self.n.ListDeliveries(npb.ListDeliveriesRequest(page_size=1000, **filters),
                                          metadata=SVC).deliveries)


@pytest.fixture
def w(suite):
    return World(suite)


@pytest.fixture
def setup(w):
    """Partner P (manager M, tagged employee E) and client C whose super
    admin CA created it."""
    class Ctx:
        pass
    c = Ctx()
    c.P, c.M = w.partner()
    c.E = w.employee(c.P, c.M)
    c.CA = w.user("Carla Client")
    c.C = w.account(c.CA.user_id, "Client")
    return c


def text_of(msg):
    """The text/plain part of a multipart/alternative email (NOTE-04)."""
    return msg.get_body(preferencelist=("plain",)).get_content()


def html_of(msg):
    return msg.get_body(preferencelist=("html",)).get_content()


def link_of(msg):
    body = text_of(msg)
    links = [tok for tok in body.split() if tok.startswith(LINK_BASE)]
    assert len(links) == 1, body
    q = parse_qs(urlparse(links[0]).query)
    return links[0], q["request"][0], q["token"][0]


def expected_message_id(event_id, user_id):
    return "<" + hashlib.sha256(f"{event_id}/{user_id}".encode()).hexdigest()[:32] + "@orgmesh>"


# ---- NOTE-01 ----------------------------------------------------------------------------

def test_note_01_access_request_emails_client_super_admins(w, setup, smtp):
    s = setup
    CA2 = w.user("Second Admin")
    w.member(s.C.hub_id, CA2.user_id, roles=[apb.ROLE_SUPER_ADMIN])
    CX = w.user("Plain Member")  # not a super admin: no email
    w.member(s.C.hub_id, CX.user_id, roles=[apb.ROLE_MARKETING_ACCESS])
    ar = w.request(s.P, s.M, s.E, s.C)
    tokens = set()
    for admin in (s.CA, CA2):
        (msg,) = smtp.wait_for(admin.email)
        assert s.P.name in msg["Subject"] and s.C.name in msg["Subject"] and "Ada Lovelace" in msg["Subject"]
        assert msg["Content-Language"] == "en"
        assert msg["From"] == "orgmesh <no-reply@orgmesh.test>"
        body = text_of(msg)
        assert f"Hello {admin.display_name}," in body and s.E.email in body
        link, request_id, token = link_of(msg)
        assert request_id == ar.access_request_id
        tokens.add(token)
        (d,) = w.deliveries(recipient_user_id=admin.user_id)
        assert d.state == D.Value("DELIVERY_STATE_SENT") and d.attempts == 1
        assert d.event_type == "orgmesh.partners.v1.AccessRequested" and d.template == "access_requested"
        assert d.client_hub_id == s.C.hub_id and d.send_time.seconds > 0
        # NOTE-03: the Message-ID comes from the event id and the recipient
        assert msg["Message-ID"] == d.message_id == expected_message_id(d.event_id, admin.user_id)
        assert sql("SELECT count(*) FROM notifier.outbox WHERE type = 'orgmesh.notifier.v1.EmailDelivered'"
                   f" AND subject = 'notifier/deliveries/{d.delivery_id}'") == [["1"]]
    assert len(tokens) == 2  # one token per recipient
    assert SINK.logins and all(u == SMTP_USER for u, _ in SINK.logins)  # credentials from configuration
    # PART-04: the tokens are stored nowhere in the notifier, only fetched when sending
    for t in tokens:
        assert sql(f"SELECT count(*) FROM notifier.delivery WHERE strpos(body, '{t}') > 0"
                   f" OR strpos(subject, '{t}') > 0") == [["0"]]
    assert sql(f"SELECT count(*) FROM notifier.delivery WHERE client_hub_id = {s.C.hub_id}"
               " AND strpos(body, 'token={{token}}') > 0") == [["2"]]
    time.sleep(0.5)
    assert smtp.messages(CX.email) == [] and w.deliveries(recipient_user_id=CX.user_id) == []
    assert len(smtp.messages(s.CA.email)) == 1
    # the delivery log is for orgmesh services only
    with om.raises_rpc(grpc.StatusCode.PERMISSION_DENIED, "SERVICE_IDENTITY_REQUIRED"):
        w.n.ListDeliveries(npb.ListDeliveriesRequest(), metadata=om.as_user(s.CA.user_id))


def test_note_01_token_from_email_approves_as_client_admin(w, setup, smtp):
    s = setup
    ar = w.request(s.P, s.M, s.E, s.C)
    (msg,) = smtp.wait_for(s.CA.email)
    _, request_id, token = link_of(msg)
    assert w.membership(s.C.hub_id, s.E.user_id) is None
    resp = w.p.ApproveAccessRequest(ppb.ApproveAccessRequestRequest(token=token),
                                    metadata=om.as_user(s.CA.user_id))
    assert resp.access_request.access_request_id == request_id == ar.access_request_id
    assert resp.access_request.state == ppb.AssignmentState.Value("ASSIGNMENT_STATE_ACTIVE")
    m = w.membership(s.C.hub_id, s.E.user_id)
    assert m is not None and m.partner_link.partner_hub_id == s.P.hub_id
    # NOTE-01: the approval is mailed to the partner manager who asked and the employee
    for who in (s.M, s.E):
        (ok,) = smtp.wait_for(who.email)
        assert "granted" in ok["Subject"] and s.C.name in ok["Subject"]


def test_note_01_token_alone_grants_nothing(w, setup, smtp):
    s = setup
    CA2 = w.user("Other Admin")
    w.member(s.C.hub_id, CA2.user_id, roles=[apb.ROLE_SUPER_ADMIN])
    ar = w.request(s.P, s.M, s.E, s.C)
    (msg,) = smtp.wait_for(s.CA.email)
    _, _, token = link_of(msg)
    req = ppb.ApproveAccessRequestRequest(token=token)
    for who in (CA2, s.E, s.M):  # another client admin, the employee, the partner manager
        with om.raises_rpc(grpc.StatusCode.PERMISSION_DENIED):
            w.p.ApproveAccessRequest(req, metadata=om.as_user(who.user_id))
    with om.raises_rpc(grpc.StatusCode.UNAUTHENTICATED):
        w.p.ApproveAccessRequest(req)  # nobody signed in
    assert w.membership(s.C.hub_id, s.E.user_id) is None
    got = w.p.GetAccessRequest(ppb.GetAccessRequestRequest(access_request_id=ar.access_request_id),
                               metadata=om.as_user(s.M.user_id)).access_request
    assert got.state == ppb.AssignmentState.Value("ASSIGNMENT_STATE_PENDING")


def test_note_01_request_ended_before_the_email_goes_is_not_sent(w, setup, smtp):
    s = setup
    smtp.stop()
    try:
        ar = w.request(s.P, s.M, s.E, s.C)

        def retrying():
            ds = w.deliveries(recipient_user_id=s.CA.user_id)
            assert len(ds) == 1 and ds[0].state == D.Value("DELIVERY_STATE_RETRYING"), ds
            return ds
        om.eventually(retrying, timeout=10)
        w.p.CancelAccessRequest(ppb.CancelAccessRequestRequest(access_request_id=ar.access_request_id),
                                metadata=om.as_user(s.M.user_id))
    finally:
        smtp.start()

    def cancelled():
        ds = w.deliveries(recipient_user_id=s.CA.user_id)
        assert len(ds) == 1 and ds[0].state == D.Value("DELIVERY_STATE_CANCELLED"), ds
        return ds
    om.eventually(cancelled, timeout=10)
    # the cancellation itself is mailed to the manager and the employee, not the stale link
    (m,) = smtp.wait_for(s.E.email)
    assert "cancelled" in m["Subject"]
    time.sleep(0.5)
    assert smtp.messages(s.CA.email) == []


# ---- NOTE-02 ----------------------------------------------------------------------------

def test_note_02_email_in_recipient_locale_with_fallback(w, setup, smtp):
    s = setup
    expect = {  # locale -> (Content-Language, a phrase of its subject, a phrase of its body)
        "it-IT": ("it", "chiede l'accesso", "Ciao"),
        "es": ("es", "solicita acceso", "Hola"),
        "pl": ("pl", "prosi o dostęp", "Dzień dobry"),
        "ja": ("ja", "アクセスを依頼しています", "様"),
        "nl": ("nl", "vraagt toegang", "Hallo"),
        "pt-BR": ("en", "asks for access", "Hello"),  # no Portuguese: English
        "": ("en", "asks for access", "Hello"),
    }
    admins, clients = {}, {}
    for loc in expect:  # one client each (the hourly cap is per client and small here)
        u = w.user(f"Admin {loc or 'none'}", locale=loc)
        clients[loc] = w.account(u.user_id, f"Client {loc}")  # u is its super admin
        admins[loc] = u
        w.request(s.P, s.M, s.E, clients[loc])
    for loc, (lang, subj, greeting) in expect.items():
        (msg,) = smtp.wait_for(admins[loc].email)
        assert msg["Content-Language"] == lang, (loc, msg["Content-Language"])
        assert subj in msg["Subject"], (loc, msg["Subject"])
        assert clients[loc].name in msg["Subject"]
        body = text_of(msg)
        assert greeting in body and admins[loc].display_name in body, (loc, body)
        assert LINK_BASE + "?request=" in body
        (d,) = w.deliveries(recipient_user_id=admins[loc].user_id)
        assert d.locale == lang


# ---- NOTE-03 ----------------------------------------------------------------------------

def test_note_03_smtp_outage_then_every_email_once(w, setup, smtp):
    s = setup
    CA2 = w.user("Second Admin")
    w.member(s.C.hub_id, CA2.user_id, roles=[apb.ROLE_SUPER_ADMIN])
    C2 = w.account(s.CA.user_id, "Other Client")  # CA is super admin there too
    smtp.stop()
    try:
        w.request(s.P, s.M, s.E, s.C)
        w.request(s.P, s.M, s.E, C2)
        rcpts = [s.CA.user_id, CA2.user_id]

        def retrying():
            ds = [d for u in rcpts for d in w.deliveries(recipient_user_id=u)]
            assert len(ds) == 3, ds
            assert all(d.state == D.Value("DELIVERY_STATE_RETRYING") and d.attempts >= 2 for d in ds), ds
            assert all(d.last_error.startswith("SMTP") and d.next_attempt_time.seconds > 0 for d in ds), ds
            return ds
        om.eventually(retrying, timeout=15)
    finally:
        smtp.start()
    msgs = smtp.wait_for(s.CA.email, count=2) + smtp.wait_for(CA2.email, count=1)
    time.sleep(1.5)  # anything sent twice would show up now
    again = smtp.messages(s.CA.email) + smtp.messages(CA2.email)
    assert len(again) == 3
    assert len({m["Message-ID"] for m in again}) == 3
    ds = [d for u in rcpts for d in w.deliveries(recipient_user_id=u)]
    assert all(d.state == D.Value("DELIVERY_STATE_SENT") and d.attempts >= 2 for d in ds), ds
    assert {d.message_id for d in ds} == {m["Message-ID"] for m in msgs}


def test_note_03_hourly_cap_per_client(w, setup, smtp):
    s = setup
    others = [w.employee(s.P, s.M, f"Employee {i}") for i in range(CAP)]
    for e in [s.E] + others:  # CAP + 1 access requests to one client
        w.request(s.P, s.M, e, s.C)
    smtp.wait_for(s.CA.email, count=CAP)

    def deferred():
        ds = w.deliveries(recipient_user_id=s.CA.user_id)
        states = sorted(d.state for d in ds)
        assert states == [D.Value("DELIVERY_STATE_SENT")] * CAP + [D.Value("DELIVERY_STATE_DEFERRED")], ds
        return ds
    ds = om.eventually(deferred, timeout=10)
    held = next(d for d in ds if d.state == D.Value("DELIVERY_STATE_DEFERRED"))
    first_sent = min(d.send_time.seconds for d in ds if d.state == D.Value("DELIVERY_STATE_SENT"))
    # deferred, not dropped: due when the oldest email of the hour leaves the window
    assert abs(held.next_attempt_time.seconds - (first_sent + 3600)) <= 2
    time.sleep(1)
    assert len(smtp.messages(s.CA.email)) == CAP
    # another client is not held back by this one's cap
    other_admin = w.user("Other Client Admin")
    C2 = w.account(other_admin.user_id, "Other Client")
    w.request(s.P, s.M, s.E, C2)
    smtp.wait_for(other_admin.email)
    # an hour later (the log's clock moved back by 61 minutes) the held email goes
    sql(f"UPDATE notifier.delivery SET send_time = send_time - interval '61 minutes',"
        f" next_attempt_at = next_attempt_at - interval '61 minutes' WHERE client_hub_id = {s.C.hub_id}")
    msgs = smtp.wait_for(s.CA.email, count=CAP + 1)
    assert held.message_id in {m["Message-ID"] for m in msgs}
    (d,) = [d for d in w.deliveries(recipient_user_id=s.CA.user_id) if d.delivery_id == held.delivery_id]
    assert d.state == D.Value("DELIVERY_STATE_SENT")


def test_note_03_dead_letter_and_replay(w, setup, smtp):
    s = setup
    smtp.refuse[s.CA.email] = "550 5.1.1 mailbox unavailable"  # permanent: no retry
    w.request(s.P, s.M, s.E, s.C)

    def dead():
        ds = w.deliveries(recipient_user_id=s.CA.user_id)
        assert len(ds) == 1, ds
        d = ds[0]
        assert d.state == D.Value("DELIVERY_STATE_DEAD_LETTERED"), d
        return d
    d = om.eventually(dead, timeout=10)
    assert d.attempts == 1 and "550" in d.last_error
    dls = w.n.ListDeadLetters(npb.ListDeadLettersRequest(event_id=d.event_id), metadata=SVC).dead_letters
    assert len(dls) == 1
    dl = dls[0]
    assert dl.recipient_user_id == s.CA.user_id and dl.recipient_email == s.CA.email
    assert "550" in dl.reason and dl.event_type == "orgmesh.partners.v1.AccessRequested"
    # the dead-letter stream: an EmailDeadLettered event through the outbox
    assert sql("SELECT count(*) FROM notifier.outbox WHERE type = 'orgmesh.notifier.v1.EmailDeadLettered'"
               f" AND subject = 'notifier/deliveries/{d.delivery_id}'") == [["1"]]
    assert smtp.messages(s.CA.email) == []
    with om.raises_rpc(grpc.StatusCode.PERMISSION_DENIED, "SERVICE_IDENTITY_REQUIRED"):
        w.n.ReplayDeadLetters(npb.ReplayDeadLettersRequest(dead_letter_ids=[dl.dead_letter_id]),
                              metadata=om.as_user(s.CA.user_id))
    with om.raises_rpc(grpc.StatusCode.NOT_FOUND):
        w.n.ReplayDeadLetters(npb.ReplayDeadLettersRequest(dead_letter_ids=["999999999"]), metadata=SVC)
    with om.raises_rpc(grpc.StatusCode.INVALID_ARGUMENT):
        w.n.ReplayDeadLetters(npb.ReplayDeadLettersRequest(), metadata=SVC)
    # the mailbox works again: replay
    smtp.refuse.clear()
    r = w.n.ReplayDeadLetters(npb.ReplayDeadLettersRequest(dead_letter_ids=[dl.dead_letter_id],
                                                           request_id="replay-1"), metadata=SVC)
    assert r.replayed_count == 1 and list(r.dead_letter_ids) == [dl.dead_letter_id]
    (msg,) = smtp.wait_for(s.CA.email)
    assert msg["Message-ID"] == d.message_id  # the same Message-ID as the first try
    link_of(msg)
    om.eventually(lambda: w.deliveries(recipient_user_id=s.CA.user_id)[0].state == D.Value("DELIVERY_STATE_SENT"))
    # the same request_id answers as before; a new replay sends nothing again
    assert w.n.ReplayDeadLetters(npb.ReplayDeadLettersRequest(dead_letter_ids=[dl.dead_letter_id],
                                                              request_id="replay-1"), metadata=SVC) == r
    again = w.n.ReplayDeadLetters(npb.ReplayDeadLettersRequest(dead_letter_ids=[dl.dead_letter_id]), metadata=SVC)
    assert again.replayed_count == 0
    time.sleep(1)
    assert len(smtp.messages(s.CA.email)) == 1
    (dl2,) = w.n.ListDeadLetters(npb.ListDeadLettersRequest(event_id=d.event_id), metadata=SVC).dead_letters
    assert dl2.replay_count == 1 and dl2.last_replay_time.seconds > 0
    hist = w.n.ListDeadLetterHistory(npb.ListDeadLetterHistoryRequest(), metadata=SVC).entries
    assert hist[0].action == "notifier.deadletter.replay" and hist[0].actor == "service:tests"


def test_note_03_temporary_failures_retry_with_backoff_then_dead_letter(w, setup, smtp):
    s = setup
    smtp.refuse[s.CA.email] = "451 4.3.0 try again later"  # temporary: retried
    w.request(s.P, s.M, s.E, s.C)

    def dead():
        ds = w.deliveries(recipient_user_id=s.CA.user_id)
        assert len(ds) == 1, ds
        d = ds[0]
        assert d.state == D.Value("DELIVERY_STATE_DEAD_LETTERED"), d
        return d
    d = om.eventually(dead, timeout=30, interval=0.2)
    assert d.attempts == MAX_ATTEMPTS and "451" in d.last_error
    # backoff: 100 ms doubling, capped at 1 s, +-20 %: at least ~3 s in all
    assert d.create_time.seconds <= d.send_time.seconds or not d.HasField("send_time")
    elapsed = sql(f"SELECT extract(epoch FROM l.dead_letter_time - d.create_time) FROM notifier.dead_letter l"
                  f" JOIN notifier.delivery d ON d.id = l.delivery_id WHERE d.id = {d.delivery_id}")
    assert float(elapsed[0][0]) >= 0.8 * (0.1 + 0.2 + 0.4 + 0.8 + 1 + 1 + 1), elapsed
    (dl,) = w.n.ListDeadLetters(npb.ListDeadLettersRequest(event_id=d.event_id), metadata=SVC).dead_letters
    assert "451" in dl.reason and dl.attempts == MAX_ATTEMPTS
    assert smtp.messages(s.CA.email) == []


# ---- NOTE-01: automatic organization and connection changes ------------------------------
# The organizations and connections services are not started here: their
# events are written to their streams exactly as their relays write them
# (field "e" = the Envelope, "t" = the type), in this suite's namespace.

def publish(source, payload, actor, subject="tests/1", version=1, event_id=None):
    from google.protobuf import any_pb2, timestamp_pb2
    from orgmesh.events.v1 import envelope_pb2
    env = envelope_pb2.Envelope(id=event_id or str(uuid.uuid4()), type=payload.DESCRIPTOR.full_name, source=source,
                                subject=subject, actor=actor, aggregate_version=version)
    env.time.CopyFrom(timestamp_pb2.Timestamp(seconds=int(time.time())))
    a = any_pb2.Any()
    a.Pack(payload)
    env.payload.CopyFrom(a)
    stack = om.stack_env()
    ns = os.environ.get("ORGMESH_REDIS_NAMESPACE", "")
    r = subprocess.run(["redis-cli", "-h", stack["ORGMESH_REDIS_HOST"], "-p", stack["ORGMESH_REDIS_PORT"], "-x",
                        "XADD", f"{ns}orgmesh:events:{source}", "*", "t", env.type, "e"],
                       input=env.SerializeToString(), capture_output=True, timeout=10)
    assert r.returncode == 0 and b"ERR" not in r.stdout, r
    return env.id


def test_note_01_automatic_org_removal_and_deletion_are_mailed(w, smtp):
    from orgmesh.organizations.v1 import events_pb2 as oev, organizations_pb2 as opb
    A1 = w.user("Alma Admin", locale="it")
    A2 = w.user("Bert Admin", locale="nl")
    acc1 = w.account(A1.user_id, "Leaving Account")
    acc2 = w.account(A2.user_id, "Remaining Account")
    org = opb.Organization(organization_id=str(uuid.uuid4()), members=[opb.OrgMember(hub_id=acc2.hub_id)])
    # ORG-09: an automatic departure is mailed to the departed account's super admins
    ev = publish("organizations", oev.OrgMemberRemoved(
        organization_id=org.organization_id, member=opb.OrgMember(hub_id=acc1.hub_id, name=acc1.name),
        reason=opb.DEPARTURE_REASON_DOWNGRADED, actor="rule:ORG-09", organization=org,
        remaining_hub_ids=[acc2.hub_id], detail="MARKETING PROFESSIONAL -> STARTER"), "rule:ORG-09")
    (msg,) = smtp.wait_for(A1.email)
    assert msg["Content-Language"] == "it" and acc1.name in msg["Subject"]
    body = text_of(msg)
    # NOTE-04: the reason in Italian words, neither the code nor the event's English detail
    assert "nessun hub dell'account" in body, body
    assert "DOWNGRADED" not in body and "MARKETING PROFESSIONAL -> STARTER" not in body
    assert [d.event_id for d in w.deliveries(recipient_user_id=A1.user_id)] == [ev]
    # a manager's removal is not an automatic change: no email
    publish("organizations", oev.OrgMemberRemoved(
        organization_id=org.organization_id, member=opb.OrgMember(hub_id=acc2.hub_id, name=acc2.name),
        reason=opb.DEPARTURE_REASON_REMOVED_BY_ADMIN, actor=f"user:{A2.user_id}", organization=org),
        f"user:{A2.user_id}")
    # ORG-10: the automatic deletion is mailed to every former member's super admins
    deleted = oev.OrganizationDeleted(
        organization=org, reason=opb.DELETION_REASON_NO_ENTERPRISE_ACCOUNT, actor="rule:ORG-10",
        former_member_hub_ids=[acc1.hub_id, acc2.hub_id])
    ev2 = publish("organizations", deleted, "rule:ORG-10")
    (m2,) = smtp.wait_for(A2.email)
    assert m2["Content-Language"] == "nl" and "geen van haar accounts" in text_of(m2)
    assert "NO_ENTERPRISE_ACCOUNT" not in text_of(m2) + html_of(m2)
    assert [d.event_id for d in w.deliveries(recipient_user_id=A2.user_id)] == [ev2]
    assert len(smtp.wait_for(A1.email, count=2)) == 2
    # the same event delivered again (at-least-once streams) mails nobody twice
    publish("organizations", deleted, "rule:ORG-10", event_id=ev2)
    time.sleep(1.0)
    assert len(smtp.messages(A2.email)) == 1 and len(smtp.messages(A1.email)) == 2
    assert len(w.deliveries(event_id=ev2)) == 2


def test_note_01_connection_restricted_is_mailed_to_both_accounts(w, smtp):
    from orgmesh.connections.v1 import connections_pb2 as cpb, events_pb2 as cev
    A1 = w.user("Sensitive Admin", locale="es")
    A2 = w.user("Target Admin", locale="pl")
    acc1 = w.account(A1.user_id, "Sensitive")
    acc2 = w.account(A2.user_id, "Target")
    conn = cpb.Connection(connection_id=str(uuid.uuid4()), account_a=acc1.hub_id, account_b=acc2.hub_id)
    ev = publish("connections", cev.ConnectionRestricted(
        organization_id=str(uuid.uuid4()), before=conn, after=conn, sensitive_hub_id=acc1.hub_id,
        reason=cev.RESTRICTION_REASON_SENSITIVE_DATA_ENABLED, actor="rule:CONN-05"), "rule:CONN-05")
    for admin, lang in ((A1, "es"), (A2, "pl")):
        (msg,) = smtp.wait_for(admin.email)
        assert msg["Content-Language"] == lang and str(acc1.hub_id) in text_of(msg)
        (d,) = w.deliveries(recipient_user_id=admin.user_id)
        assert d.event_id == ev and d.template == "connection_restricted"


# ---- NOTE-04: localized emails, text and HTML ---------------------------------------------

ENUM_LIKE = re.compile(r"[A-Z][A-Z0-9_]{3,}")


def test_note_04_localized_multipart_email_in_it_pl_ja(w, smtp):
    """The issue's example: an Italian email read "Motivo: DEACTIVATED the
    account was deactivated". Now each of it, pl, ja reads the reason in its
    own words, as multipart/alternative with a text and an HTML part, and the
    account's name is escaped in the HTML part only."""
    from orgmesh.organizations.v1 import events_pb2 as oev, organizations_pb2 as opb
    expect = {"it": "l'account è stato disattivato", "pl": "konto zostało dezaktywowane",
              "ja": "アカウントが無効化されました"}
    admins, accounts = {}, {}
    for lang in expect:
        admins[lang] = w.user(f"Admin {lang}", locale=lang)
        accounts[lang] = w.account(admins[lang].user_id, 'Konto <b>&"')
        publish("organizations", oev.OrgMemberRemoved(
            organization_id=str(uuid.uuid4()),
            member=opb.OrgMember(hub_id=accounts[lang].hub_id, name=accounts[lang].name),
            reason=opb.DEPARTURE_REASON_DEACTIVATED, actor="rule:ORG-09",
            detail="the account was deactivated"), "rule:ORG-09")
    for lang, phrase in expect.items():
        (msg,) = smtp.wait_for(admins[lang].email)
        assert msg.get_content_type() == "multipart/alternative"
        assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
        assert all(p.get_content_charset() == "utf-8" for p in msg.iter_parts())
        assert msg["Content-Language"] == lang
        text, html = text_of(msg), html_of(msg)
        assert phrase in text and phrase.replace("'", "&#39;") in html, (lang, text, html)
        for part in (text, html, str(msg["Subject"])):
            assert not ENUM_LIKE.search(part), (lang, ENUM_LIKE.search(part), part)
            assert "the account was deactivated" not in part
        assert accounts[lang].name in text and accounts[lang].name in str(msg["Subject"])
        escaped = accounts[lang].name.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;") \
            .replace('"', "&quot;")
        assert escaped in html and accounts[lang].name not in html
        assert f'lang="{lang}"' in html


def test_note_04_kind_html_template_with_escaped_values_and_the_link(w, setup, smtp, suite, tmp_path):
    """A kind with its own <kind>.html: rendered when the event is handled
    (every value escaped), stored with the delivery, its link's token filled
    in at send time like the text's."""
    s = setup
    tpl = tmp_path / "templates"
    shutil.copytree(os.path.join(os.path.dirname(__file__), "..", "..", "services", "notifier", "templates"), tpl)
    (tpl / "en" / "access_requested.html").write_text(
        '<p>{{partner_name}} asks for <b>{{employee_name}}</b>: <a href="{{link}}">approve</a></p>\n')
    E = w.employee(s.P, s.M, name='Ada <b>&"')
    first = suite["notifier"]
    replica = first.replica("notifier-html.log", start=False, env={"ORGMESH_NOTIFIER_TEMPLATES": str(tpl)})
    assert first.stop() == []
    try:
        replica.start()
        replica.wait_serving()
        w.request(s.P, s.M, E, s.C)
        (msg,) = smtp.wait_for(s.CA.email)
        link, _, token = link_of(msg)
        html = html_of(msg)
        assert html.rstrip() == (f'<p>{s.P.name} asks for <b>Ada &lt;b&gt;&amp;&quot;</b>: '
                                 f'<a href="{link.replace("&", "&amp;")}">approve</a></p>'), html
        assert 'Ada <b>&"' in text_of(msg) and token
    finally:
        problems = replica.stop()
        first.restart()
    assert problems == []


# ---- NOTE-03 / SPEC 9: crashes and replicas ----------------------------------------------

def test_note_03_notifier_killed_mid_work_resumes_every_email_once(w, setup, smtp, suite):
    s = setup
    admins = [s.CA]
    for i in range(2):
        a = w.user(f"Admin {i}")
        w.member(s.C.hub_id, a.user_id, roles=[apb.ROLE_SUPER_ADMIN])
        admins.append(a)
    smtp.stop()
    try:
        w.request(s.P, s.M, s.E, s.C)
        om.eventually(lambda: len([d for a in admins for d in w.deliveries(recipient_user_id=a.user_id)]) == 3,
                      timeout=10)
        suite["notifier"].kill()  # SIGKILL: no clean stop
    finally:
        smtp.start()
    suite["notifier"].restart()
    for a in admins:
        smtp.wait_for(a.email)
    time.sleep(1.0)
    assert [len(smtp.messages(a.email)) for a in admins] == [1, 1, 1]


def test_note_03_two_replicas_send_each_email_once(w, setup, smtp, suite):
    s = setup
    second = suite["notifier"].replica("notifier-2.log")
    try:
        admins = []
        for i in range(8):  # one client each: the hourly cap stays out of the way
            a = w.user(f"Replica Admin {i}")
            admins.append(a)
            w.request(s.P, s.M, s.E, w.account(a.user_id, f"Client {i}"))
        for a in admins:
            smtp.wait_for(a.email)
        time.sleep(1.0)
        assert [len(smtp.messages(a.email)) for a in admins] == [1] * 8
        ds = [d for a in admins for d in w.deliveries(recipient_user_id=a.user_id)]
        assert len(ds) == 8 and all(d.state == D.Value("DELIVERY_STATE_SENT") and d.attempts == 1 for d in ds)
    finally:
        assert second.stop() == []


def test_note_01_starttls_and_credentials_from_configuration(w, setup, suite, tmp_path):
    """A replica configured for STARTTLS (with the server's private CA) and
    credentials mails a server that refuses anything before STARTTLS."""
    import ssl
    s = setup
    key, crt = tmp_path / "smtp.key", tmp_path / "smtp.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                    "-out", str(crt), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(crt), str(key))
    tls = SmtpSink()
    tls.start(tls_context=ctx, require_starttls=True, auth_require_tls=True)
    first = suite["notifier"]
    replica = first.replica("notifier-tls.log", start=False, env={
        "ORGMESH_SMTP_URL": f"smtp://127.0.0.1:{tls.port}", "ORGMESH_SMTP_STARTTLS": "true",
        "ORGMESH_SMTP_CA_FILE": str(crt)})
    assert first.stop() == []  # only the TLS replica sends during this test
    try:
        replica.start()
        replica.wait_serving()
        w.request(s.P, s.M, s.E, s.C)
        (msg,) = tls.wait_for(s.CA.email)
        link_of(msg)
        assert tls.logins and tls.logins[-1][0] == SMTP_USER
    finally:
        problems = replica.stop()
        tls.stop()
        shutil.rmtree(tls.dir, ignore_errors=True)
        first.restart()
    assert problems == []


class HungSink(SmtpSink):
    """Takes the whole message, then never answers the final "." (libcurl
    waits for that reply inside curl_multi_socket_action, issue 15)."""

    def __init__(self):
        super().__init__()
        self.data_seen = threading.Event()

    async def handle_DATA(self, server, session, envelope):
        self.data_seen.set()
        await asyncio.sleep(3600)
        return "451 too late"


def test_spec_09_sigterm_while_smtp_server_hangs_after_the_body_exits_within_5s(w, setup, suite):
    """A replica whose SMTP server hangs after the message body (response
    timeout 30 s) still exits within 5 s of SIGTERM: the SMTP sockets are shut
    down, the aborted exchange counts as a temporary failure (RETRYING, one
    attempt), and the email goes out once after the restart."""
    s = setup
    hung = HungSink()
    hung.start()
    first = suite["notifier"]
    replica = first.replica("notifier-hung.log", start=False, env={
        "ORGMESH_SMTP_URL": f"smtp://127.0.0.1:{hung.port}", "ORGMESH_SMTP_TIMEOUT_MS": "30000",
        "ORGMESH_NOTIFIER_RETRY_BASE_MS": "60000", "ORGMESH_NOTIFIER_RETRY_MAX_MS": "60000"})
    assert first.stop() == []  # only the replica sends until it stops
    try:
        replica.start()
        replica.wait_serving()
        w.request(s.P, s.M, s.E, s.C)
        assert hung.data_seen.wait(15), "the notifier never sent the message body"
        t0 = time.monotonic()
        problems = replica.stop()  # SIGTERM; a problem if not gone within 5 s
        took = time.monotonic() - t0
    finally:
        if replica.running():
            replica.kill()
        hung.stop()
        shutil.rmtree(hung.dir, ignore_errors=True)
        first.restart()
    assert problems == [] and took < 5.0, (problems, took)
    (d,) = World(suite).deliveries(recipient_user_id=s.CA.user_id)  # the restart closed w's channel
    assert d.state == D.Value("DELIVERY_STATE_RETRYING") and d.attempts == 1, d

"""demo.py — run by deploy/local/up once the suite is SERVING: shows each
service's health, then one short scene per capability, acting as the demo
people of deploy/local/demo_accounts.py (loaded first):

  accounts       the demo directory; Alice and "Example Co"
  organizations  Ada builds an organization from Acme Global; an ineligible
                 account is refused with its reasons; a downgraded member
                 leaves by itself (ORG-09)
  connections    quick connect and a mirroring check (CONN-02, CONN-06)
  assets         two assets copied by a background job (ASSET-02, ASSET-03)
  partners       Bright Agency's Jan gets access to Globex US: request,
                 conflict with a second agency (PART-06), approval by the
                 client, removal with "REMOVE"
  notifier       the emails sent for the scenes above

Safe to run again: the data has fixed ids and request_ids; each scene finds
what an earlier run left and puts things back where the scene needs them. A
scene whose service is not started or answers UNIMPLEMENTED says so and the
demo goes on; an unexpected error ends that scene only (exit status 1).

Environment: build/stack-local/suite.env (written by up); PYTHONPATH with
build/python and tests/interop. Run with /usr/bin/python3.
"""

import os
import sys
import time
from pathlib import Path

import grpc
from google.protobuf import field_mask_pb2
from google.rpc import error_details_pb2

sys.path.insert(0, str(Path(__file__).resolve().parent))
import demo_accounts as data  # noqa: E402  (also puts build/python on sys.path)
import orgmesh_testlib as om  # noqa: E402

from orgmesh.accounts.v1 import accounts_pb2 as apb, accounts_pb2_grpc as agrpc  # noqa: E402

T = 10  # seconds per call

# The cast (deploy/local/demo_accounts.py).
ADA, KENJI, LUCIA, PAULA, JAN, NOOR = 101, 103, 104, 105, 106, 108
ACME_GLOBAL, ACME_ITALIA, ACME_JAPAN, GLOBEX, BRIGHT, SANDBOX, LABS, NOVA = \
    1001, 1002, 1003, 1004, 1005, 1006, 1007, 1008
NAMES = {a[0]: a[1] for a in data.ACCOUNTS}
USERS = {u[0]: u[2] for u in data.USERS}
ITALIA_SUBS = [(apb.HUB_MARKETING, apb.TIER_PROFESSIONAL), (apb.HUB_SERVICE, apb.TIER_STARTER)]
ITALIA_DOWN = [(apb.HUB_MARKETING, apb.TIER_STARTER), (apb.HUB_SERVICE, apb.TIER_STARTER)]


# ---- plumbing -------------------------------------------------------------------

class Skip(Exception):
    """Ends a scene quietly with a one-line explanation."""


def dev_secret():
    # User tokens: the local issuer key "dev" (bound to users, deploy/local/lib.sh).
    key = os.environ.get("ORGMESH_DEMO_USER_KEY", "dev:HS256:orgmesh-dev-secret")
    kid, _alg, secret = key.split(":", 2)
    return kid, secret


def token(sub, **kw):
    kid, secret = dev_secret()
    return om.mint_token(sub, kid=kid, secret=secret, **kw)


def as_user(uid, mfa=False):
    """Call metadata for a user; mfa=True: the second factor was verified now."""
    return om.bearer(token(uid, mfa_at=int(time.time()) if mfa else None))


SVC = None  # service identity of the demo (set in main)

_channels = {}


def stub(service, cls):
    addr = os.environ.get(f"ORGMESH_{service.upper()}_ADDR")
    if not addr:
        raise Skip(f"{service} is not started (not built yet)")
    if addr not in _channels:
        _channels[addr] = grpc.insecure_channel(addr, options=om.CHANNEL_OPTIONS)
    return cls(_channels[addr])


def why(e):
    """CODE REASON: message of a failed call."""
    d = om.error_details(e)
    msg = (d.message or "").split(";")[0][:120]
    return f"{d.code.name} {d.reason or ''}: {msg}".replace(" :", ":")


def hub(h):
    return f"{NAMES.get(h, h)} ({h})"


def enum_name(enum, value, prefix):
    try:
        return enum.Name(value)[len(prefix):]
    except ValueError:
        return str(value)


def wait_for(fn, timeout=10.0, interval=0.1):
    """Calls fn until it returns something true; returns it, or None at the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            v = fn()
            if v:
                return v
        except grpc.RpcError as e:
            if e.code() in (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.PERMISSION_DENIED,
                            grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INVALID_ARGUMENT):
                raise
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


FAILED = []


def scene(title, service):
    """Runs one scene: prints its title, then whatever it prints; never raises."""
    def wrap(fn):
        def run(*args):
            addr = os.environ.get(f"ORGMESH_{service.upper()}_ADDR", "not started")
            print(f"\n== {title}  [{service} {addr}]")
            try:
                return fn(*args)
            except Skip as s:
                print(f"  {s}")
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.UNIMPLEMENTED:
                    print(f"  not implemented yet (the {service} service answers UNIMPLEMENTED)")
                else:
                    FAILED.append(title)
                    print(f"  stopped: {why(e)}")
            except Exception as e:  # the demo never crashes
                FAILED.append(title)
                print(f"  stopped: {type(e).__name__}: {e}")
            return None
        return run
    return wrap


# ---- health ---------------------------------------------------------------------

def show_health():
    print("Health:")
    for svc in om.SERVICES:
        addr = os.environ.get(f"ORGMESH_{svc.upper()}_ADDR")
        if not addr:
            print(f"  {svc:14} not started (not built yet)")
            continue
        with grpc.insecure_channel(addr) as ch:
            try:
                whole = om.health(ch, "", timeout=2)
                try:
                    redis = om.health(ch, "redis", timeout=2)
                except grpc.RpcError as e:
                    redis = e.code().name
                print(f"  {svc:14} {addr:16} {whole:12} (redis: {redis})")
            except grpc.RpcError as e:
                print(f"  {svc:14} {addr:16} {e.code().name}")


# ---- accounts -------------------------------------------------------------------

def subs_text(subs):
    return ", ".join(f"{apb.Hub.Name(s.hub)[4:]} {apb.Tier.Name(s.tier)[5:]}" for s in subs) or "-"


@scene("Accounts: the demo directory", "accounts")
def scene_accounts():
    acc = stub("accounts", agrpc.AccountsServiceStub)
    n = data.load(_channels[os.environ["ORGMESH_ACCOUNTS_ADDR"]], SVC, say=lambda *_: None)
    made = sum(c for c, _ in n.values())
    print(f"  demo data (deploy/local/demo_accounts.py): {len(data.USERS)} users, {len(data.ACCOUNTS)} accounts,"
          f" {len(data.MEMBERSHIPS)} memberships" + (f" ({made} created now)" if made else " (all already there)"))
    try:
        alice = acc.GetUserByEmail(apb.GetUserByEmailRequest(email="alice@example.com"),
                                   metadata=SVC, timeout=T).user
        how = "found"
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.NOT_FOUND:
            raise
        alice = acc.CreateUser(apb.CreateUserRequest(user=apb.User(
            email="alice@example.com", display_name="Alice Example", locale="en", two_factor_enabled=True),
            request_id="demo-user-alice"), metadata=SVC, timeout=T).user
        how = "created"
    mine = acc.ListAccounts(apb.ListAccountsRequest(), metadata=as_user(alice.user_id), timeout=T)
    ex = next((a for a in mine.accounts if a.name == "Example Co"), None)
    if ex is None:
        ex = acc.CreateAccount(apb.CreateAccountRequest(account=apb.Account(
            name="Example Co", kind=apb.ACCOUNT_KIND_STANDARD, hosting_location="na1"),
            request_id=f"demo-example-co-{alice.user_id}"), metadata=as_user(alice.user_id), timeout=T).account
    print(f"  {how} Alice: user {alice.user_id} <{alice.email}>, SUPER_ADMIN of account {ex.hub_id} \"{ex.name}\"")
    print(f"  {USERS[ADA]} (user {ADA}) sees her accounts (ListAccounts):")
    for a in acc.ListAccounts(apb.ListAccountsRequest(), metadata=as_user(ADA), timeout=T).accounts:
        print(f"    {a.hub_id} {a.name:<13} {apb.AccountKind.Name(a.kind)[13:]:<9} {a.hosting_location}  "
              f"{subs_text(a.subscriptions)}{'  sensitive data' if a.sensitive_data_enabled else ''}")


# ---- organizations (SPEC 3) ----------------------------------------------------------

def set_subs(acc, hub_id, subs, md):
    cur = acc.GetAccount(apb.GetAccountRequest(hub_id=hub_id), metadata=md, timeout=T).account
    want = [apb.Subscription(hub=h, tier=t) for h, t in subs]
    if list(cur.subscriptions) == want:
        return cur
    return acc.UpdateAccount(apb.UpdateAccountRequest(
        account=apb.Account(hub_id=hub_id, subscriptions=want),
        update_mask=field_mask_pb2.FieldMask(paths=["subscriptions"]), etag=cur.etag,
        request_id=f"demo-subs-{hub_id}-v{cur.version}"), metadata=md, timeout=T).account


def member_ids(org):
    return [m.hub_id for m in org.members]


@scene("Organizations: Ada builds one organization from Acme Global", "organizations")
def scene_organizations():
    from orgmesh.organizations.v1 import organizations_pb2 as opb, organizations_pb2_grpc as ogrpc
    org_stub = stub("organizations", ogrpc.OrganizationsServiceStub)
    acc = stub("accounts", agrpc.AccountsServiceStub)
    ada, ada_mfa = as_user(ADA), as_user(ADA, mfa=True)
    ack = opb.DataSharingAcknowledgement(accepted=True, text_version="2023-06")

    def find_org():
        try:
            return org_stub.GetOrganizationByAccount(opb.GetOrganizationByAccountRequest(hub_id=ACME_GLOBAL),
                                                     metadata=ada, timeout=T).organization
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise

    def candidates(org):
        req = opb.ListEligibleAccountsRequest(page_size=100)
        if org is None:
            req.enterprise_hub_id = ACME_GLOBAL
        else:
            req.organization_id = org.organization_id
        return org_stub.ListEligibleAccounts(req, metadata=ada, timeout=T).candidates

    org = find_org()
    # An earlier run downgraded Acme Italia, which left: upgrade it again (and
    # wait until the organizations service has seen it) so that it is added back.
    set_subs(acc, ACME_ITALIA, ITALIA_SUBS, SVC)
    readd = org is not None and ACME_ITALIA not in member_ids(org)
    if readd:
        wait_for(lambda: any(c.hub_id == ACME_ITALIA and c.eligible for c in candidates(org)), timeout=10)

    print(f"  candidates for {'organization ' + org.organization_id if org else hub(ACME_GLOBAL)}"
          f" (ListEligibleAccounts, as {USERS[ADA]}):")
    for c in candidates(org):
        verdict = "eligible" if c.eligible else "ineligible: " + ", ".join(
            enum_name(opb.IneligibilityReason, r, "INELIGIBILITY_REASON_") for r in c.reasons)
        print(f"    {c.hub_id} {c.name:<13} {verdict}")

    if org is None:
        org = org_stub.CreateOrganization(opb.CreateOrganizationRequest(
            enterprise_hub_id=ACME_GLOBAL, member_hub_ids=[ACME_ITALIA, ACME_JAPAN], acknowledgement=ack,
            request_id="demo-create-acme-org"), metadata=ada_mfa, timeout=T).organization
        print(f"  created organization {org.organization_id} (MFA token + data-sharing acknowledgement):")
    else:
        print(f"  found organization {org.organization_id} (made by an earlier run):")
    print("    " + ", ".join(hub(h) for h in member_ids(org)))
    if readd:
        org = org_stub.AddOrgMembers(opb.AddOrgMembersRequest(
            organization_id=org.organization_id, acting_hub_id=ACME_GLOBAL, hub_ids=[ACME_ITALIA],
            acknowledgement=ack, request_id=f"demo-readd-italia-v{org.version}"),
            metadata=ada_mfa, timeout=T).organization
        print(f"  added {hub(ACME_ITALIA)} back (AddOrgMembers, MFA + acknowledgement): it left in the last run")

    add_labs = opb.AddOrgMembersRequest(organization_id=org.organization_id, acting_hub_id=ACME_GLOBAL,
                                        hub_ids=[LABS], acknowledgement=ack)
    for label, md in (("without a recent second factor", ada), ("with MFA", ada_mfa)):
        try:
            org_stub.AddOrgMembers(add_labs, metadata=md, timeout=T)
            print(f"  adding {hub(LABS)} {label}: accepted (unexpected)")
        except grpc.RpcError as e:
            d = om.error_details(e)
            if d.code == grpc.StatusCode.UNIMPLEMENTED:
                raise
            pf = d.detail(error_details_pb2.PreconditionFailure)
            extra = "; ".join(f"{v.subject}: {v.description or v.type}" for v in pf.violations) if pf else d.message
            print(f"  adding {hub(LABS)} {label}: refused {d.code.name} {d.reason} ({extra})")

    # ORG-09: a member drops below PROFESSIONAL on every hub and leaves by itself.
    set_subs(acc, ACME_ITALIA, ITALIA_DOWN, as_user(ADA))
    t0 = time.monotonic()
    print(f"  {hub(ACME_ITALIA)} downgraded to {subs_text([apb.Subscription(hub=h, tier=t) for h, t in ITALIA_DOWN])}"
          " in the accounts service ...")
    left = wait_for(lambda: ACME_ITALIA not in member_ids(org_stub.GetOrganization(
        opb.GetOrganizationRequest(organization_id=org.organization_id), metadata=ada, timeout=T).organization),
        timeout=10)
    if not left:
        print("    still a member after 10 s (is the accounts -> organizations event path working?)")
    else:
        hist = org_stub.ListOrganizationHistory(opb.ListOrganizationHistoryRequest(
            organization_id=org.organization_id, page_size=20), metadata=ada, timeout=T).entries
        e = next((e for e in hist if e.action == "org.member.remove"
                  and e.resource.endswith(f"/members/{ACME_ITALIA}")), None)
        how = f"{e.reason} (by {e.actor})" if e else "(no history entry found)"
        print(f"    left the organization automatically after {time.monotonic() - t0:.1f} s: {how}")
    now = org_stub.GetOrganization(opb.GetOrganizationRequest(organization_id=org.organization_id),
                                   metadata=ada, timeout=T).organization
    print("    members now: " + ", ".join(hub(h) for h in member_ids(now)))
    set_subs(acc, ACME_ITALIA, ITALIA_SUBS, SVC)
    print(f"  ({NAMES[ACME_ITALIA]} is back on MARKETING PROFESSIONAL: eligible again, outside until re-added)")
    return now


# ---- connections (SPEC 4) ------------------------------------------------------------

@scene("Connections: quick connect and a mirroring check", "connections")
def scene_connections(org):
    from orgmesh.connections.v1 import connections_pb2 as cpb, connections_pb2_grpc as cgrpc
    conn = stub("connections", cgrpc.ConnectionsServiceStub)
    if org is None:
        raise Skip("no organization (the organizations scene did not make one)")

    def direction(f):
        d = enum_name(cpb.Direction, f.direction, "DIRECTION_")
        return f"{d} from {f.source_hub_id}" if f.direction == cpb.DIRECTION_ONE_WAY else d

    def quick():
        return conn.QuickConnect(cpb.QuickConnectRequest(
            organization_id=org.organization_id, acting_hub_id=ACME_GLOBAL,
            request_id=f"demo-quick-connect-v{org.version}"), metadata=as_user(ADA), timeout=T)
    r = quick()
    print(f"  QuickConnect on organization {org.organization_id}:")
    for c in r.connections:
        print(f"    {c.account_a} <-> {c.account_b}: mirroring {direction(c.mirroring)},"
              f" asset copying {direction(c.asset_copying)}")
    checks = [(KENJI, ACME_GLOBAL, ACME_JAPAN), (ADA, ACME_JAPAN, ACME_GLOBAL)]
    for user, src, dst in checks:
        a = conn.CheckMirrorAccess(cpb.CheckMirrorAccessRequest(user_id=user, source_hub_id=src, target_hub_id=dst),
                                   metadata=SVC, timeout=T)
        verdict = "allowed" if a.allowed else "denied: " + enum_name(cpb.DenialReason, a.reason, "DENIAL_REASON_")
        note = " (sensitive data: never a mirroring source)" if src == ACME_JAPAN else ""
        print(f"  CheckMirrorAccess: may {USERS[user]} see {NAMES[src]}'s data in {NAMES[dst]}? {verdict}{note}")


# ---- assets (SPEC 5) -------------------------------------------------------------------

@scene("Assets: copy two assets from Acme Global to Acme Japan", "assets")
def scene_assets(org):
    from orgmesh.assets.v1 import assets_pb2 as spb, assets_pb2_grpc as sgrpc
    assets = stub("assets", sgrpc.AssetsServiceStub)
    ada = as_user(ADA)
    wanted = [(spb.ASSET_TYPE_LIST, "Demo newsletter subscribers", '{"filter": "subscribed"}'),
              (spb.ASSET_TYPE_FORM, "Demo signup form", '{"fields": ["email"]}')]
    ids = []
    for typ, name, body in wanted:
        have = assets.ListAssets(spb.ListAssetsRequest(hub_id=ACME_GLOBAL, type=typ, name_contains=name),
                                 metadata=ada, timeout=T).assets
        a = next((x for x in have if x.name == name), None)
        if a is None:
            a = assets.CreateAsset(spb.CreateAssetRequest(asset=spb.Asset(
                hub_id=ACME_GLOBAL, type=typ, name=name, body_json=body),
                request_id=f"demo-asset-{typ}"), metadata=ada, timeout=T).asset
        ids.append(a.asset_id)
    job = assets.CopyAssets(spb.CopyAssetsRequest(
        source_hub_id=ACME_GLOBAL, target_hub_id=ACME_JAPAN, asset_ids=ids,
        options=spb.CopyOptions(conflict_policy=spb.CONFLICT_POLICY_RENAME),
        request_id="demo-copy-" + "-".join(ids)), metadata=ada, timeout=T).job
    print(f"  CopyAssets -> job {job.job_id}")
    done = (spb.COPY_JOB_STATE_SUCCEEDED, spb.COPY_JOB_STATE_PARTIALLY_SUCCEEDED,
            spb.COPY_JOB_STATE_FAILED, spb.COPY_JOB_STATE_CANCELLED)
    seen = None
    deadline = time.monotonic() + 10
    while True:
        job = assets.GetCopyJob(spb.GetCopyJobRequest(job_id=job.job_id), metadata=ada, timeout=T).job
        now = (job.state, job.done)
        if now != seen:
            print(f"    {enum_name(spb.CopyJobState, job.state, 'COPY_JOB_STATE_')} {job.done}/{job.total}"
                  + (f" ({job.failure_reason})" if job.failure_reason else ""))
            seen = now
        if job.state in done or time.monotonic() > deadline:
            break
        time.sleep(0.1)


# ---- partners (SPEC 6) -----------------------------------------------------------------

@scene("Partners: Bright Agency's Jan gets access to Globex US", "partners")
def scene_partners():
    from orgmesh.partners.v1 import partners_pb2 as ppb, partners_pb2_grpc as pgrpc
    p = stub("partners", pgrpc.PartnersServiceStub)
    acc = stub("accounts", agrpc.AccountsServiceStub)
    paula, lucia, noor = as_user(PAULA), as_user(LUCIA), as_user(NOOR)
    S = ppb.AssignmentState

    def state(v):
        return enum_name(S, v, "ASSIGNMENT_STATE_")

    def membership():
        try:
            return acc.GetMembership(apb.GetMembershipRequest(hub_id=GLOBEX, user_id=JAN), metadata=SVC,
                                     timeout=T).membership
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise

    # PART-01: tag; the tag lives on Jan's membership of the partner account.
    for partner, md in ((BRIGHT, paula), (NOVA, noor)):
        r = p.TagEmployees(ppb.TagEmployeesRequest(partner_hub_id=partner, user_ids=[JAN],
                                                   request_id=f"demo-tag-{partner}-{JAN}"),
                           metadata=md, timeout=T).results[0]
        if r.status == ppb.ITEM_STATUS_FAILED:
            raise Skip(f"tagging {USERS[JAN]} at {NAMES[partner]} failed: {r.error.reason} {r.error.message}")
    print(f"  {USERS[PAULA]} and {USERS[NOOR]} tagged {USERS[JAN]} as partner employee of"
          f" {NAMES[BRIGHT]} and of {NAMES[NOVA]}")

    # An earlier run that stopped half-way may have left an assignment open.
    cur = p.ListEmployeeClients(ppb.ListEmployeeClientsRequest(
        partner_hub_id=BRIGHT, employee_user_id=JAN, page_size=1000), metadata=paula, timeout=T).assignments
    open_ = next((a for a in cur if a.client_hub_id == GLOBEX
                  and a.state in (S.Value("ASSIGNMENT_STATE_PENDING"), S.Value("ASSIGNMENT_STATE_ACTIVE"))), None)
    m = membership()
    if m is not None and not m.HasField("partner_link"):
        raise Skip(f"{USERS[JAN]} is already a plain member of {NAMES[GLOBEX]}: nothing to request")
    if open_ is None:
        r = p.AssignClientsToEmployee(ppb.AssignClientsToEmployeeRequest(
            partner_hub_id=BRIGHT, employee_user_id=JAN, client_hub_ids=[GLOBEX]), metadata=paula, timeout=T).results[0]
        if r.outcome == ppb.ASSIGNMENT_OUTCOME_FAILED:
            raise Skip(f"assigning failed: {r.error.reason}: {r.error.message}")
        open_ = r.assignment
        print(f"  {USERS[PAULA]} assigns {USERS[JAN]} to {hub(GLOBEX)}: "
              f"{enum_name(ppb.AssignmentOutcome, r.outcome, 'ASSIGNMENT_OUTCOME_')},"
              f" access request {r.access_request.access_request_id or open_.access_request_id}"
              f" {state(r.access_request.state or open_.state)}")
    else:
        print(f"  found {USERS[JAN]}'s assignment to {hub(GLOBEX)} from an earlier run: {state(open_.state)}")

    # PART-06: the same email, by a second partner, for the same client.
    r = p.AssignClientsToEmployee(ppb.AssignClientsToEmployeeRequest(
        partner_hub_id=NOVA, employee_user_id=JAN, client_hub_ids=[GLOBEX]), metadata=noor, timeout=T).results[0]
    if r.outcome == ppb.ASSIGNMENT_OUTCOME_FAILED:
        print(f"  {NAMES[NOVA]} assigns {USERS[JAN]} to {NAMES[GLOBEX]} too: {r.error.reason}")
        print(f"    \"{r.error.title}\": {r.error.message}")
        for i, way in enumerate(r.error.resolutions, 1):
            print(f"      {i}. {way}")
    else:
        print(f"  {NAMES[NOVA]} assigns {USERS[JAN]} too: "
              f"{enum_name(ppb.AssignmentOutcome, r.outcome, 'ASSIGNMENT_OUTCOME_')} (expected a PART-06 conflict)")

    # PART-05: the client's super admin sees the request and approves it by id.
    if open_.state == S.Value("ASSIGNMENT_STATE_PENDING"):
        reqs = p.ListAccessRequests(ppb.ListAccessRequestsRequest(
            client_hub_id=GLOBEX, state=S.Value("ASSIGNMENT_STATE_PENDING"), page_size=100),
            metadata=lucia, timeout=T).access_requests
        ar = next(a for a in reqs if a.access_request_id == open_.access_request_id)
        print(f"  {USERS[LUCIA]}, {NAMES[GLOBEX]}'s super admin, lists its pending access requests:"
              f" {ar.partner_name} asks access for {ar.employee_display_name} <{ar.employee_email}>")
        got = p.ApproveAccessRequest(ppb.ApproveAccessRequestRequest(
            access_request_id=ar.access_request_id, roles=[apb.ROLE_MARKETING_ACCESS]), metadata=lucia, timeout=T)
        print(f"  she approves it by request id: {state(got.access_request.state)}")
    m = wait_for(membership, timeout=5)
    if m is None:
        print(f"  {USERS[JAN]} is not a member of {NAMES[GLOBEX]} (unexpected)")
    else:
        link = m.partner_link
        print(f"  {USERS[JAN]} is now a member of {NAMES[GLOBEX]}: roles "
              f"{'+'.join(apb.Role.Name(x)[5:] for x in m.roles) or '-'}, partner_link = partner {link.partner_hub_id},"
              f" assignment {link.assignment_id}")

    # PART-07: the partner removes the access, confirming with "REMOVE".
    r = p.RemoveEmployeeFromClient(ppb.RemoveEmployeeFromClientRequest(
        partner_hub_id=BRIGHT, employee_user_id=JAN, client_hub_id=GLOBEX, confirmation="REMOVE"),
        metadata=paula, timeout=T)
    gone = membership() is None
    print(f"  {USERS[PAULA]} removes it (confirmation \"REMOVE\"): assignment {state(r.assignment.state)},"
          f" membership {'removed' if gone else 'still there'}")


# ---- partner grants (issue 17: PART-14 ... PART-22) -------------------------------------------

@scene("Partner grants: a time-bound, scoped grant, narrowed by the client, and its notices", "partners")
def scene_grants():
    from orgmesh.notifier.v1 import notifier_pb2 as npb, notifier_pb2_grpc as ngrpc
    from orgmesh.partners.v1 import partners_pb2 as ppb, partners_pb2_grpc as pgrpc
    p = stub("partners", pgrpc.PartnersServiceStub)
    n = stub("notifier", ngrpc.NotifierServiceStub)
    acc = stub("accounts", agrpc.AccountsServiceStub)
    paula, lucia = as_user(PAULA), as_user(LUCIA)
    S = ppb.AssignmentState

    def roles(rs):
        return "+".join(apb.Role.Name(x)[5:] for x in rs) or "-"

    # A grant left open by an earlier run is removed first (the demo is re-runnable).
    for a in p.ListEmployeeClients(ppb.ListEmployeeClientsRequest(
            partner_hub_id=BRIGHT, employee_user_id=JAN, page_size=1000), metadata=paula, timeout=T).assignments:
        if a.client_hub_id == GLOBEX and a.state in (S.Value("ASSIGNMENT_STATE_PENDING"),
                                                     S.Value("ASSIGNMENT_STATE_ACTIVE")):
            p.RemoveEmployeeFromClient(ppb.RemoveEmployeeFromClientRequest(
                partner_hub_id=BRIGHT, employee_user_id=JAN, client_hub_id=GLOBEX, confirmation="REMOVE"),
                metadata=paula, timeout=T)

    def membership():
        try:
            return acc.GetMembership(apb.GetMembershipRequest(hub_id=GLOBEX, user_id=JAN), metadata=SVC,
                                     timeout=T).membership
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise
    # the partner-linked membership of a removed grant goes right after (PART-07)
    wait_for(lambda: membership() is None or not membership().HasField("partner_link"), timeout=3)

    # PART-14/PART-18: 30 days, asking for two roles
    r = p.AssignClientsToEmployee(ppb.AssignClientsToEmployeeRequest(
        partner_hub_id=BRIGHT, employee_user_id=JAN, client_hub_ids=[GLOBEX], duration_days=30,
        roles=[apb.ROLE_MARKETING_ACCESS, apb.ROLE_ACCOUNT_PERMISSIONS]), metadata=paula, timeout=T).results[0]
    if r.outcome != ppb.ASSIGNMENT_OUTCOME_ACCESS_REQUESTED:
        raise Skip(f"assigning gave {enum_name(ppb.AssignmentOutcome, r.outcome, 'ASSIGNMENT_OUTCOME_')}"
                   f" {r.error.reason}")
    ar = r.access_request
    print(f"  {USERS[PAULA]} asks {NAMES[GLOBEX]} for {USERS[JAN]}: {ar.duration_days} days,"
          f" roles {roles(ar.requested_roles)}")
    # PART-18: SUPER_ADMIN can never be asked for
    try:
        p.AssignClientsToEmployee(ppb.AssignClientsToEmployeeRequest(
            partner_hub_id=BRIGHT, employee_user_id=JAN, client_hub_ids=[GLOBEX],
            roles=[apb.ROLE_SUPER_ADMIN]), metadata=paula, timeout=T)
    except grpc.RpcError as e:
        print(f"  asking for SUPER_ADMIN instead: {why(e)}")
    # PART-18: the client's admin narrows the scope when approving
    got = p.ApproveAccessRequest(ppb.ApproveAccessRequestRequest(
        access_request_id=ar.access_request_id, roles=[apb.ROLE_MARKETING_ACCESS]), metadata=lucia, timeout=T)
    g = got.assignment
    end = time.strftime("%Y-%m-%d", time.gmtime(g.grant_end_time.seconds))
    print(f"  {USERS[LUCIA]} approves only {roles(g.granted_roles)}: the grant is"
          f" {enum_name(S, g.state, 'ASSIGNMENT_STATE_')} until {end}")
    m = wait_for(membership, timeout=5)
    if m is not None:
        print(f"  {USERS[JAN]}'s membership of {NAMES[GLOBEX]}: roles {roles(m.roles)}")
    # PART-21: the client's view of every partner grant on its account
    for x in p.ListClientGrants(ppb.ListClientGrantsRequest(client_hub_id=GLOBEX), metadata=lucia,
                                timeout=T).grants:
        print(f"  {NAMES[GLOBEX]}'s grants: {x.partner_name} / {x.employee_display_name}:"
              f" {roles(x.granted_roles) if x.granted_roles else 'asks ' + roles(x.requested_roles)},"
              f" {enum_name(S, x.state, 'ASSIGNMENT_STATE_')}")

    # PART-16: a 30-day grant is within the 30-day notice at once: the partner's
    # and the client's super admins are told, each in their language
    def notices():
        ds = n.ListDeliveries(npb.ListDeliveriesRequest(page_size=1000), metadata=SVC, timeout=T).deliveries
        return [d for d in ds if d.template == "grant_ending" and d.create_time.seconds >= g.activate_time.seconds - 1]
    ds = wait_for(lambda: notices() or None, timeout=8) or []
    mail = os.path.join("build", "stack-local", "mail", "new")
    subjects = {}
    if ds and os.path.isdir(mail):  # the local SMTP sink (deploy/local/up) keeps every email
        import email
        import email.policy
        wait_for(lambda: all(d.state == npb.DELIVERY_STATE_SENT for d in notices()), timeout=5)
        for f in os.listdir(mail):
            with open(os.path.join(mail, f), "rb") as fh:
                msg = email.message_from_bytes(fh.read(), policy=email.policy.default)
            subjects[str(msg["Message-ID"])] = str(msg["Subject"])
    for d in ds:
        subj = subjects.get(d.message_id)
        print(f"  notice -> {d.recipient_email} [{d.locale}]"
              f" {enum_name(npb.DeliveryState, d.state, 'DELIVERY_STATE_')}" + (f": \"{subj}\"" if subj else ""))
    if not ds:
        print("  (no end notice yet: the partners timer runs every ORGMESH_PARTNERS_TIMER_MS)")
    elif subjects:
        print(f"  (the emails are in {mail}, the local SMTP sink)")
    # PART-17: the client extends it by 30 days
    e = p.ExtendPartnerGrant(ppb.ExtendPartnerGrantRequest(assignment_id=g.assignment_id, extend_days=30),
                             metadata=lucia, timeout=T).assignment
    print(f"  {USERS[LUCIA]} extends it by 30 days: until"
          f" {time.strftime('%Y-%m-%d', time.gmtime(e.grant_end_time.seconds))}")
    # PART-20 (validate_only): what the client's kill switch would end now
    k = p.RevokePartnerAccess(ppb.RevokePartnerAccessRequest(client_hub_id=GLOBEX, confirmation="REMOVE",
                                                             validate_only=True), metadata=lucia, timeout=T)
    print(f"  the kill switch for every partner would revoke {k.revoked_assignment_count} grant(s) and cancel"
          f" {k.cancelled_request_count} request(s) (validate_only)")


# ---- notifier (SPEC 7) ---------------------------------------------------------------------

@scene("Notifier: the emails sent for the scenes above", "notifier")
def scene_notifier(since):
    from orgmesh.notifier.v1 import notifier_pb2 as npb, notifier_pb2_grpc as ngrpc
    n = stub("notifier", ngrpc.NotifierServiceStub)

    def recent():
        out = []
        token = ""
        while True:
            r = n.ListDeliveries(npb.ListDeliveriesRequest(page_size=1000, page_token=token), metadata=SVC, timeout=T)
            out += [d for d in r.deliveries if since is None or d.create_time.seconds >= int(since) - 1]
            token = r.next_page_token
            if not token:
                return out
    # The events take a moment to reach the notifier; the scenes above made at
    # least an access request (PART-04) and an automatic removal (ORG-09).
    wait_for(lambda: len(recent()) >= 2, timeout=5, interval=0.25)
    ds = sorted(recent(), key=lambda d: (d.create_time.seconds, d.create_time.nanos))
    if not ds:
        print("  no email recorded for this run (yet)")
        return
    for d in ds[:10]:
        print(f"  {d.event_type.rsplit('.', 1)[-1]:<17} -> {d.recipient_email:<27} [{d.locale}]"
              f" {d.template:<19} {enum_name(npb.DeliveryState, d.state, 'DELIVERY_STATE_')}")
    if len(ds) > 10:
        print(f"  ... and {len(ds) - 10} more")
    errs = sorted({d.last_error for d in ds if d.last_error and d.state != npb.DELIVERY_STATE_SENT})
    if errs:
        smtp = os.environ.get("ORGMESH_SMTP_URL", "smtp://127.0.0.1:25")
        if any("connect" in e.lower() for e in errs):
            print(f"  (not sent: no mail server answers at {smtp} (ORGMESH_SMTP_URL);"
                  " the notifier keeps retrying with backoff)")
        else:
            print(f"  (not sent yet: {errs[0][:100]})")


# ---- main ---------------------------------------------------------------------------------

def main():
    global SVC
    # SPEC 8: service:demo is signed with the key bound to it (deploy/local/lib.sh)
    SVC = om.bearer(om.mint_token("service:demo", kid="dev-demo", secret="orgmesh-dev-secret-demo"))
    since = time.time()
    show_health()
    scene_accounts()
    org = scene_organizations()
    scene_connections(org)
    scene_assets(org)
    scene_partners()
    scene_grants()
    scene_notifier(since)
    for ch in _channels.values():
        ch.close()
    if FAILED:
        print(f"\nDemo finished; these scenes stopped early: {', '.join(FAILED)}")
        return 1
    print("\nDemo finished.")
    return 0


if __name__ == "__main__":
    sys.exit(main())

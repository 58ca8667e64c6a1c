"""A mutation that fails leaves nothing behind (issue 14 defect 2), including
what it did through another service.

Every service runs with ORGMESH_TEST_FAULT_REQUEST_ID=fault- (tests only,
common/idem.c): a mutation whose request_id starts with "fault-" fails just
before COMMIT, after all of its writes and remote calls, and answers
INTERNAL. For each mutating RPC (every method whose request has a
request_id: the list comes from the protos, so a new one without a case
fails test_every_mutating_rpc_has_a_case), a case builds a request that
succeeds; the test snapshots the state tables of all six schemas, sends it
with a fault- request id, checks INTERNAL and an unchanged state once the
services are idle again, then sends it again with a plain id and checks it
succeeds and writes (so the faulted request would have written something).
partners' cached "not a member" rows (membership_copies.present = false) are
left out: a lookup records accounts' truth, not an effect of the call.

The snapshot leaves out bookkeeping that is not state (outbox, audit,
idempotency, applied_events, event delivery positions, migrations) and the version/update_time/etag
columns: an undone remote change (TagEmployees) bumps the owner's version."""

import atexit
import importlib
import os
import subprocess
import time
import uuid
import random

import grpc
import pytest

import orgmesh_testlib as om
from orgmesh.accounts.v1 import accounts_pb2 as apb, accounts_pb2_grpc as agrpc
from orgmesh.assets.v1 import assets_pb2 as spb, assets_pb2_grpc as sgrpc
from orgmesh.connections.v1 import connections_pb2 as cpb, connections_pb2_grpc as cgrpc
from orgmesh.notifier.v1 import notifier_pb2 as npb, notifier_pb2_grpc as ngrpc
from orgmesh.organizations.v1 import organizations_pb2 as opb, organizations_pb2_grpc as ogrpc
from orgmesh.partners.v1 import partners_pb2 as ppb, partners_pb2_grpc as pgrpc

OM_SERVICES = list(om.SERVICES)


def _service_env():
    """The fault for every service, and an SMTP server that accepts every
    email (otherwise the notifier's retries change its table all along)."""
    from aiosmtpd.controller import Controller

    class Sink:
        async def handle_DATA(self, server, session, envelope):
            return "250 OK"
    port = om.free_port()
    ctl = Controller(Sink(), hostname="127.0.0.1", port=port)
    ctl.start()
    atexit.register(ctl.stop)
    env = {s: {"ORGMESH_TEST_FAULT_REQUEST_ID": "fault-"} for s in om.SERVICES}
    env["notifier"]["ORGMESH_SMTP_URL"] = f"smtp://127.0.0.1:{port}"
    # No copy workers: a job stays QUEUED, so CancelCopyJob has a job to
    # cancel and the state settles (a running job keeps moving its lease).
    env["assets"]["ORGMESH_ASSETS_WORKERS"] = "0"
    return env


OM_SERVICE_ENV = _service_env

PSQL = "/usr/lib/postgresql/15/bin/psql"
ADMIN = om.bearer(om.service_token("provisioning"))
SVC = om.bearer(om.service_token("tests"))
PARTNERS_SVC = om.bearer(om.service_token("partners"))
MKT_ENT = [(apb.HUB_MARKETING, apb.TIER_ENTERPRISE)]
PRO = [(apb.HUB_SALES, apb.TIER_PROFESSIONAL)]
ACK = opb.DataSharingAcknowledgement(accepted=True, text_version="2023-06")
BOOKKEEPING = ("outbox", "audit", "idempotency", "applied_events", "runtime_migrations", "schema_migrations",
               # event delivery positions (docs/common/evt.md): they move while
               # earlier events are still being relayed and applied
               "evt_relay", "evt_groups", "evt_progress")


def mutating_rpcs():
    out = set()
    for s in om.SERVICES:
        mod = importlib.import_module(f"orgmesh.{s}.v1.{s}_pb2")
        for svc in mod.DESCRIPTOR.services_by_name.values():
            for m in svc.methods:
                if "request_id" in m.input_type.fields_by_name:
                    out.add(m.name)
    return out


def psql(sql):
    r = subprocess.run([PSQL, "-qAtX", "-v", "ON_ERROR_STOP=1", "-d", os.environ["ORGMESH_PG_URL"], "-c", sql],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, check=True)
    return [line for line in r.stdout.splitlines() if line]


_TABLES = []


def snapshot():
    """{table: digest of its rows} over the six schemas' state tables."""
    if not _TABLES:
        _TABLES.extend(psql(
            "SELECT table_schema || '.' || table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE'"
            " AND table_schema IN ('accounts','organizations','connections','assets','partners','notifier')"
            " AND table_name NOT IN (" + ",".join(f"'{t}'" for t in BOOKKEEPING) + ") ORDER BY 1"))
    sql = " UNION ALL ".join(
        f"SELECT '{t}', count(*), md5(coalesce(string_agg(x, ',' ORDER BY x), '')) FROM"
        f" (SELECT md5((to_jsonb(r) - 'version' - 'update_time' - 'etag')::text) AS x FROM {t} r{_where(t)}) s"
        for t in _TABLES)
    return dict((line.split("|", 1)[0], line.split("|", 1)[1]) for line in psql(sql))


def _where(table):
    # partners' membership copy also caches "not a member" (present = false)
    # when a call looks a membership up: accounts' truth, not the call's effect.
    return " WHERE r.present" if table == "partners.membership_copies" else ""


def rows(tables):
    """Every row of `tables`, for a readable failure."""
    out = {}
    for t in tables:
        out[t] = set(psql(f"SELECT (to_jsonb(r) - 'version' - 'update_time' - 'etag')::text FROM {t} r{_where(t)}"))
    return out


def background_pending():
    """Work the services have scheduled for later: partners' PART-09 link
    syncs wait for link_sync_after (a kill switch's revocation syncs the
    membership about a second later), so two equal snapshots are not yet idle."""
    return int(psql("SELECT count(*) FROM partners.assignment WHERE link_sync")[0])


def settled():
    """The snapshot once two in a row agree (events consumed, relays idle)
    and no scheduled background work is left."""
    prev = snapshot()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        time.sleep(0.5)
        cur = snapshot()
        if cur == prev and background_pending() == 0:
            return cur
        prev = cur
    raise AssertionError("the services never went idle")


def random_id():
    return random.randrange(10**12, 9 * 10**15)


class World:
    def __init__(self, suite):
        self.acc = agrpc.AccountsServiceStub(suite.channel("accounts"))
        self.acc_int = agrpc.AccountsInternalServiceStub(suite.channel("accounts"))
        self.org = ogrpc.OrganizationsServiceStub(suite.channel("organizations"))
        self.conn = cgrpc.ConnectionsServiceStub(suite.channel("connections"))
        self.assets = sgrpc.AssetsServiceStub(suite.channel("assets"))
        self.p = pgrpc.PartnersServiceStub(suite.channel("partners"))
        self.pi = pgrpc.PartnersInternalServiceStub(suite.channel("partners"))
        self.n = ngrpc.NotifierServiceStub(suite.channel("notifier"))

    def user(self):
        u = apb.User(email=f"u-{uuid.uuid4().hex[:12]}@example.com", display_name="T", locale="en",
                     two_factor_enabled=True)
        return self.acc.CreateUser(apb.CreateUserRequest(user=u), metadata=ADMIN).user.user_id

    def account(self, owner, subs=PRO, kind=apb.ACCOUNT_KIND_STANDARD):
        a = apb.Account(name=f"acct-{uuid.uuid4().hex[:8]}", kind=kind, hosting_location="na1",
                        subscriptions=[apb.Subscription(hub=h, tier=t) for h, t in subs])
        hub = self.acc.CreateAccount(apb.CreateAccountRequest(account=a), metadata=ADMIN).account.hub_id
        self.member(hub, owner, [apb.ROLE_SUPER_ADMIN])
        return hub

    def member(self, hub, user, roles=()):
        self.acc.CreateMembership(apb.CreateMembershipRequest(
            membership=apb.Membership(hub_id=hub, user_id=user, roles=list(roles))), metadata=ADMIN)

    def organization(self, owner, n=2):
        hubs = [self.account(owner, MKT_ENT if i == 0 else PRO) for i in range(n)]
        req = opb.CreateOrganizationRequest(enterprise_hub_id=hubs[0], member_hub_ids=hubs[1:])
        req.acknowledgement.CopyFrom(ACK)
        o = self.org.CreateOrganization(req, metadata=om.as_user(owner, mfa_ago=0)).organization
        self.etag = o.etag
        return o.organization_id, hubs

    def connected(self, owner):
        org, hubs = self.organization(owner)
        r = self.conn.QuickConnect(cpb.QuickConnectRequest(organization_id=org, acting_hub_id=hubs[0]),
                                   metadata=om.as_user(owner))
        return org, hubs, r.connections[0]

    def partner_and_client(self):
        """A partner (manager m, tagged employee e) and a client account c (admin ca)."""
        p, m, e = self.partner()
        self.p.TagEmployees(ppb.TagEmployeesRequest(partner_hub_id=p, user_ids=[e]), metadata=om.as_user(m))
        ca = self.user()
        c = self.account(ca)
        return p, m, e, ca, c

    def pending(self):
        p, m, e, ca, c = self.partner_and_client()
        r = self.p.AssignClientsToEmployee(ppb.AssignClientsToEmployeeRequest(
            partner_hub_id=p, employee_user_id=e, client_hub_ids=[c]), metadata=om.as_user(m)).results[0]
        assert r.outcome == ppb.ASSIGNMENT_OUTCOME_ACCESS_REQUESTED, r
        return m, ca, r.access_request.access_request_id

    def asset(self, user, hub, name=None):
        a = spb.Asset(hub_id=hub, type=spb.ASSET_TYPE_FORM, name=name or f"f-{uuid.uuid4().hex[:8]}",
                      body_json="{}")
        return self.assets.CreateAsset(spb.CreateAssetRequest(asset=a), metadata=om.as_user(user)).asset

    def partner(self):
        """A PARTNER account with its manager and a plain member."""
        m = self.user()
        p = self.account(m, kind=apb.ACCOUNT_KIND_PARTNER)
        e = self.user()
        self.member(p, e)
        return p, m, e


# ---- cases: each returns call(request_id) that succeeds with a plain id ---------------------

def c_create_account(w):
    def call(rid):
        a = apb.Account(name=f"acct-{uuid.uuid4().hex[:8]}", kind=apb.ACCOUNT_KIND_STANDARD, hosting_location="na1")
        w.acc.CreateAccount(apb.CreateAccountRequest(account=a, request_id=rid), metadata=ADMIN)
    return call


def c_update_account(w):
    hub = w.account(w.user())

    def call(rid):
        w.acc.UpdateAccount(apb.UpdateAccountRequest(account=apb.Account(hub_id=hub, name=f"n-{rid}"),
                                                     update_mask={"paths": ["name"]}, request_id=rid), metadata=ADMIN)
    return call


def c_deactivate_account(w):
    hub = w.account(w.user())
    return lambda rid: w.acc.DeactivateAccount(apb.DeactivateAccountRequest(hub_id=hub, reason="t", request_id=rid),
                                               metadata=ADMIN)


def c_reactivate_account(w):
    hub = w.account(w.user())
    w.acc.DeactivateAccount(apb.DeactivateAccountRequest(hub_id=hub, reason="t"), metadata=ADMIN)
    return lambda rid: w.acc.ReactivateAccount(apb.ReactivateAccountRequest(hub_id=hub, request_id=rid),
                                               metadata=ADMIN)


def c_delete_account(w):
    hub = w.account(w.user())
    return lambda rid: w.acc.DeleteAccount(apb.DeleteAccountRequest(hub_id=hub, reason="t", request_id=rid),
                                           metadata=ADMIN)


def c_create_user(w):
    def call(rid):
        u = apb.User(email=f"u-{uuid.uuid4().hex[:12]}@example.com", display_name="T")
        w.acc.CreateUser(apb.CreateUserRequest(user=u, request_id=rid), metadata=ADMIN)
    return call


def c_update_user(w):
    u = w.user()
    return lambda rid: w.acc.UpdateUser(apb.UpdateUserRequest(user=apb.User(user_id=u, display_name=f"n-{rid}"),
                                                              update_mask={"paths": ["display_name"]},
                                                              request_id=rid), metadata=ADMIN)


def c_delete_user(w):
    u = w.user()
    return lambda rid: w.acc.DeleteUser(apb.DeleteUserRequest(user_id=u, request_id=rid), metadata=ADMIN)


def c_create_membership(w):
    hub = w.account(w.user())
    u = w.user()
    return lambda rid: w.acc.CreateMembership(apb.CreateMembershipRequest(
        membership=apb.Membership(hub_id=hub, user_id=u), request_id=rid), metadata=ADMIN)


def c_update_membership(w):
    hub = w.account(w.user())
    u = w.user()
    w.member(hub, u)
    return lambda rid: w.acc.UpdateMembership(apb.UpdateMembershipRequest(
        membership=apb.Membership(hub_id=hub, user_id=u, roles=[apb.ROLE_SUPER_ADMIN]),
        update_mask={"paths": ["roles"]}, request_id=rid), metadata=ADMIN)


def c_delete_membership(w):
    owner = w.user()
    hub = w.account(owner)
    u = w.user()
    w.member(hub, u)
    return lambda rid: w.acc.DeleteMembership(apb.DeleteMembershipRequest(hub_id=hub, user_id=u, request_id=rid),
                                              metadata=om.as_user(owner))


def c_set_partner_employee(w):
    p, m, e = w.partner()
    return lambda rid: w.acc_int.SetPartnerEmployee(apb.SetPartnerEmployeeRequest(
        hub_id=p, user_id=e, partner_employee=True, request_id=rid), metadata=PARTNERS_SVC)


def c_create_organization(w):
    owner = w.user()
    hubs = [w.account(owner, MKT_ENT), w.account(owner, PRO)]

    def call(rid):
        req = opb.CreateOrganizationRequest(enterprise_hub_id=hubs[0], member_hub_ids=hubs[1:], request_id=rid)
        req.acknowledgement.CopyFrom(ACK)
        w.org.CreateOrganization(req, metadata=om.as_user(owner, mfa_ago=0))
    return call


def c_quick_connect(w):
    owner = w.user()
    org, hubs = w.organization(owner)
    return lambda rid: w.conn.QuickConnect(cpb.QuickConnectRequest(organization_id=org, acting_hub_id=hubs[0],
                                                                   request_id=rid), metadata=om.as_user(owner))


def c_create_asset(w):
    u = w.user()
    hub = w.account(u, MKT_ENT)
    return lambda rid: w.assets.CreateAsset(spb.CreateAssetRequest(asset=spb.Asset(
        hub_id=hub, type=spb.ASSET_TYPE_FORM, name=f"f-{uuid.uuid4().hex[:8]}", body_json="{}"), request_id=rid),
        metadata=om.as_user(u))


def c_update_asset(w):
    u = w.user()
    a = w.asset(u, w.account(u, MKT_ENT))
    return lambda rid: w.assets.UpdateAsset(spb.UpdateAssetRequest(
        asset=spb.Asset(asset_id=a.asset_id, name=f"n-{uuid.uuid4().hex[:8]}"), update_mask={"paths": ["name"]},
        request_id=rid), metadata=om.as_user(u))


def c_delete_asset(w):
    u = w.user()
    a = w.asset(u, w.account(u, MKT_ENT))
    return lambda rid: w.assets.DeleteAsset(spb.DeleteAssetRequest(asset_id=a.asset_id, request_id=rid),
                                            metadata=om.as_user(u))


def c_tag_employees(w):
    p, m, e = w.partner()
    return lambda rid: w.p.TagEmployees(ppb.TagEmployeesRequest(partner_hub_id=p, user_ids=[e], request_id=rid),
                                        metadata=om.as_user(m))


def c_untag_employee(w):
    p, m, e = w.partner()
    w.p.TagEmployees(ppb.TagEmployeesRequest(partner_hub_id=p, user_ids=[e]), metadata=om.as_user(m))
    return lambda rid: w.p.UntagEmployee(ppb.UntagEmployeeRequest(partner_hub_id=p, user_id=e, request_id=rid),
                                         metadata=om.as_user(m))


def c_record_activities(w):
    def call(rid):
        a = ppb.Activity(activity_id=uuid.uuid4().hex, user_id=random_id(), hub_id=random_id(), kind="crm.view")
        a.time.GetCurrentTime()
        w.pi.RecordActivities(ppb.RecordActivitiesRequest(activities=[a], request_id=rid), metadata=SVC)
    return call


def c_add_org_members(w):
    owner = w.user()
    org, hubs = w.organization(owner)
    extra = w.account(owner, PRO)

    def call(rid):
        req = opb.AddOrgMembersRequest(organization_id=org, acting_hub_id=hubs[0], hub_ids=[extra], request_id=rid)
        req.acknowledgement.CopyFrom(ACK)
        w.org.AddOrgMembers(req, metadata=om.as_user(owner, mfa_ago=0))
    return call


def c_remove_org_member(w):
    owner = w.user()
    org, hubs = w.organization(owner)
    return lambda rid: w.org.RemoveOrgMember(opb.RemoveOrgMemberRequest(
        organization_id=org, acting_hub_id=hubs[0], hub_id=hubs[1], reason="t", request_id=rid),
        metadata=om.as_user(owner))


def c_delete_organization(w):
    owner = w.user()
    org, hubs = w.organization(owner)
    etag = w.etag
    return lambda rid: w.org.DeleteOrganization(opb.DeleteOrganizationRequest(
        organization_id=org, acting_hub_id=hubs[0], etag=etag, reason="t", request_id=rid),
        metadata=om.as_user(owner, mfa_ago=0))


def c_add_connections(w):
    owner = w.user()
    org, hubs = w.organization(owner)
    return lambda rid: w.conn.AddConnections(cpb.AddConnectionsRequest(
        organization_id=org, acting_hub_id=hubs[0], from_hub_id=hubs[0], to_hub_ids=[hubs[1]],
        asset_copying=cpb.FeatureSetting(direction=cpb.DIRECTION_BOTH), request_id=rid), metadata=om.as_user(owner))


def c_batch_update_connections(w):
    owner = w.user()
    org, hubs, _ = w.connected(owner)
    change = cpb.ConnectionChange(operation=cpb.ConnectionChange.OPERATION_UPDATE, account_a=hubs[0],
                                  account_b=hubs[1], asset_copying=cpb.FeatureSetting(direction=cpb.DIRECTION_OFF))
    return lambda rid: w.conn.BatchUpdateConnections(cpb.BatchUpdateConnectionsRequest(
        organization_id=org, acting_hub_id=hubs[0], changes=[change], request_id=rid), metadata=om.as_user(owner))


def c_delete_connection(w):
    owner = w.user()
    org, hubs, conn = w.connected(owner)
    return lambda rid: w.conn.DeleteConnection(cpb.DeleteConnectionRequest(
        connection_id=conn.connection_id, acting_hub_id=hubs[0], request_id=rid), metadata=om.as_user(owner))


def c_copy_assets(w):
    owner = w.user()
    org, hubs, _ = w.connected(owner)
    a = w.asset(owner, hubs[0])
    return lambda rid: w.assets.CopyAssets(spb.CopyAssetsRequest(
        source_hub_id=hubs[0], target_hub_id=hubs[1], asset_ids=[a.asset_id], request_id=rid),
        metadata=om.as_user(owner))


def c_cancel_copy_job(w):
    owner = w.user()
    org, hubs, _ = w.connected(owner)
    a = w.asset(owner, hubs[0])
    job = w.assets.CopyAssets(spb.CopyAssetsRequest(source_hub_id=hubs[0], target_hub_id=hubs[1],
                                                    asset_ids=[a.asset_id]), metadata=om.as_user(owner)).job
    return lambda rid: w.assets.CancelCopyJob(spb.CancelCopyJobRequest(job_id=job.job_id, request_id=rid),
                                              metadata=om.as_user(owner))


def c_add_clients(w):
    p, m, e, ca, c = w.partner_and_client()
    return lambda rid: w.p.AddClients(ppb.AddClientsRequest(partner_hub_id=p, client_hub_ids=[c], request_id=rid),
                                      metadata=om.as_user(m))


def c_assign_clients_to_employee(w):
    p, m, e, ca, c = w.partner_and_client()
    return lambda rid: w.p.AssignClientsToEmployee(ppb.AssignClientsToEmployeeRequest(
        partner_hub_id=p, employee_user_id=e, client_hub_ids=[c], request_id=rid), metadata=om.as_user(m))


def c_assign_employees_to_client(w):
    p, m, e, ca, c = w.partner_and_client()
    return lambda rid: w.p.AssignEmployeesToClient(ppb.AssignEmployeesToClientRequest(
        partner_hub_id=p, client_hub_id=c, employee_user_ids=[e], request_id=rid), metadata=om.as_user(m))


def c_approve_access_request(w):
    m, ca, req_id = w.pending()
    return lambda rid: w.p.ApproveAccessRequest(ppb.ApproveAccessRequestRequest(
        access_request_id=req_id, request_id=rid), metadata=om.as_user(ca))


def c_decline_access_request(w):
    m, ca, req_id = w.pending()
    return lambda rid: w.p.DeclineAccessRequest(ppb.DeclineAccessRequestRequest(
        access_request_id=req_id, reason="t", request_id=rid), metadata=om.as_user(ca))


def c_cancel_access_request(w):
    m, ca, req_id = w.pending()
    return lambda rid: w.p.CancelAccessRequest(ppb.CancelAccessRequestRequest(
        access_request_id=req_id, reason="t", request_id=rid), metadata=om.as_user(m))


def c_resend_access_request(w):
    m, ca, req_id = w.pending()
    psql(f"UPDATE partners.assignment SET last_send_time = now() - interval '61 minutes'"
         f" WHERE request_id = '{req_id}'")
    return lambda rid: w.p.ResendAccessRequest(ppb.ResendAccessRequestRequest(
        access_request_id=req_id, request_id=rid), metadata=om.as_user(m))


def c_remove_employee_from_client(w):
    p, m, e, ca, c = w.partner_and_client()
    w.member(c, e)                                       # already a member: ACTIVE at once
    r = w.p.AssignClientsToEmployee(ppb.AssignClientsToEmployeeRequest(
        partner_hub_id=p, employee_user_id=e, client_hub_ids=[c]), metadata=om.as_user(m)).results[0]
    assert r.outcome == ppb.ASSIGNMENT_OUTCOME_ACTIVATED, r
    return lambda rid: w.p.RemoveEmployeeFromClient(ppb.RemoveEmployeeFromClientRequest(
        partner_hub_id=p, employee_user_id=e, client_hub_id=c, confirmation="REMOVE", reason="t", request_id=rid),
        metadata=om.as_user(m))


def _active_grant(w):
    p, m, e, ca, c = w.partner_and_client()
    w.member(c, e)                                       # already a member: ACTIVE at once
    r = w.p.AssignClientsToEmployee(ppb.AssignClientsToEmployeeRequest(
        partner_hub_id=p, employee_user_id=e, client_hub_ids=[c]), metadata=om.as_user(m)).results[0]
    assert r.outcome == ppb.ASSIGNMENT_OUTCOME_ACTIVATED, r
    return p, ca, c, r.assignment.assignment_id


def c_extend_partner_grant(w):  # PART-17
    p, ca, c, asg = _active_grant(w)
    return lambda rid: w.p.ExtendPartnerGrant(ppb.ExtendPartnerGrantRequest(
        assignment_id=asg, extend_days=5, request_id=rid), metadata=om.as_user(ca))


def c_revoke_partner_access(w):  # PART-20
    p, ca, c, asg = _active_grant(w)
    return lambda rid: w.p.RevokePartnerAccess(ppb.RevokePartnerAccessRequest(
        client_hub_id=c, partner_hub_id=p, confirmation="REMOVE", request_id=rid), metadata=om.as_user(ca))


def c_restore_partner_access(w):  # PART-20
    p, ca, c, asg = _active_grant(w)
    w.p.RevokePartnerAccess(ppb.RevokePartnerAccessRequest(client_hub_id=c, partner_hub_id=p, confirmation="REMOVE"),
                            metadata=om.as_user(ca))
    return lambda rid: w.p.RestorePartnerAccess(ppb.RestorePartnerAccessRequest(
        client_hub_id=c, partner_hub_id=p, request_id=rid), metadata=om.as_user(ca))


def _link(w):
    p, m, e = w.partner()
    c = w.account(w.user())
    return apb.AddPartnerLinkedMembershipRequest(hub_id=c, user_id=e, partner_hub_id=p,
                                                 assignment_id=str(uuid.uuid4()), on_behalf_of=f"user:{m}")


def c_add_partner_linked_membership(w):
    req = _link(w)

    def call(rid):
        req.request_id = rid
        w.acc_int.AddPartnerLinkedMembership(req, metadata=PARTNERS_SVC)
    return call


def c_remove_partner_linked_membership(w):
    add = _link(w)
    w.acc_int.AddPartnerLinkedMembership(add, metadata=PARTNERS_SVC)
    return lambda rid: w.acc_int.RemovePartnerLinkedMembership(apb.RemovePartnerLinkedMembershipRequest(
        hub_id=add.hub_id, user_id=add.user_id, assignment_id=add.assignment_id, reason="t",
        on_behalf_of=add.on_behalf_of, request_id=rid), metadata=PARTNERS_SVC)


def c_replay_dead_letters(w):
    """A sent access-request email turned into a dead letter (as 8 failed
    attempts would leave it), then replayed."""
    m, ca, req_id = w.pending()
    sent = om.eventually(lambda: psql(f"SELECT id FROM notifier.delivery WHERE access_request_id = '{req_id}'"
                                      f" AND state = 2"), timeout=20, message="the email was never sent")
    dl = psql(f"UPDATE notifier.delivery SET state = 5 WHERE id = {sent[0]};"
              f" INSERT INTO notifier.dead_letter (delivery_id, event_id, event_type, recipient_user_id,"
              f" recipient_email, reason, attempts) SELECT id, event_id, event_type, recipient_user_id,"
              f" recipient_email, 'test', 8 FROM notifier.delivery WHERE id = {sent[0]} RETURNING id")
    return lambda rid: w.n.ReplayDeadLetters(npb.ReplayDeadLettersRequest(dead_letter_ids=[dl[-1]], request_id=rid),
                                             metadata=SVC)


CASES = {
    "CreateAccount": c_create_account, "UpdateAccount": c_update_account,
    "DeactivateAccount": c_deactivate_account, "ReactivateAccount": c_reactivate_account,
    "DeleteAccount": c_delete_account, "CreateUser": c_create_user, "UpdateUser": c_update_user,
    "DeleteUser": c_delete_user, "CreateMembership": c_create_membership,
    "UpdateMembership": c_update_membership, "DeleteMembership": c_delete_membership,
    "SetPartnerEmployee": c_set_partner_employee, "CreateOrganization": c_create_organization,
    "QuickConnect": c_quick_connect, "CreateAsset": c_create_asset, "UpdateAsset": c_update_asset,
    "DeleteAsset": c_delete_asset, "TagEmployees": c_tag_employees, "UntagEmployee": c_untag_employee,
    "RecordActivities": c_record_activities,
    "AddOrgMembers": c_add_org_members, "RemoveOrgMember": c_remove_org_member,
    "DeleteOrganization": c_delete_organization, "AddConnections": c_add_connections,
    "BatchUpdateConnections": c_batch_update_connections, "DeleteConnection": c_delete_connection,
    "CopyAssets": c_copy_assets, "CancelCopyJob": c_cancel_copy_job, "AddClients": c_add_clients,
    "AssignClientsToEmployee": c_assign_clients_to_employee, "AssignEmployeesToClient": c_assign_employees_to_client,
    "ApproveAccessRequest": c_approve_access_request, "DeclineAccessRequest": c_decline_access_request,
    "CancelAccessRequest": c_cancel_access_request, "ResendAccessRequest": c_resend_access_request,
    "RemoveEmployeeFromClient": c_remove_employee_from_client,
    "AddPartnerLinkedMembership": c_add_partner_linked_membership,
    "RemovePartnerLinkedMembership": c_remove_partner_linked_membership,
    "ReplayDeadLetters": c_replay_dead_letters,
    "ExtendPartnerGrant": c_extend_partner_grant, "RevokePartnerAccess": c_revoke_partner_access,
    "RestorePartnerAccess": c_restore_partner_access,
}

# Mutating RPCs without a case yet (issue 14: to be written); a new RPC must
# be added to CASES or, with a reason, here.
NOT_YET = {}  # every mutating RPC has a case


def test_every_mutating_rpc_has_a_case():
    listed = set(CASES) | set(NOT_YET)
    assert mutating_rpcs() - listed == set(), "mutating RPCs without a case"
    assert listed - mutating_rpcs() == set(), "cases for RPCs that no longer exist"


def test_failed_mutations_leave_nothing(suite):
    """All cases at once (one settle before, one after: the file stays
    short in CI); the diff names the tables and rows that changed."""
    w = World(suite)
    calls = {m: CASES[m](w) for m in sorted(CASES)}
    before = settled()
    before_rows = rows(before)
    for method, call in calls.items():
        with om.raises_rpc(grpc.StatusCode.INTERNAL):
            call(f"fault-{uuid.uuid4().hex}")
    after = settled()
    changed = sorted(t for t in set(before) | set(after) if before.get(t) != after.get(t))
    if changed:
        now = rows(changed)
        diff = {t: {"gone": sorted(before_rows.get(t, set()) - now[t])[:3],
                    "new": sorted(now[t] - before_rows.get(t, set()))[:3]} for t in changed}
        raise AssertionError(f"failed calls changed {diff}")
    # The same requests succeed, and each writes something: the cases prove something.
    for method, call in calls.items():
        prev = snapshot()
        call(f"ok-{uuid.uuid4().hex}")
        assert snapshot() != prev, f"{method}'s request writes nothing: its case proves nothing"

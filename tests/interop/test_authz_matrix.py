"""The authorization matrix (issue 13): every RPC declared in proto/, called by
every kind of actor, against the running suite of all six services; the
expected answers are data in authz_matrix.tsv (see docs/security.md,
"Authorization matrix", for the format and how to add a row).

The RPCs are enumerated from the generated descriptors, not from the table:
an RPC without a row fails the test. The fixtures (two tenants, each with an
organization of two accounts, a connection, an asset and a copy job; partner
P with an employee approved in the client and made SUPER_ADMIN there by the client; partner Q in the
other tenant) are built once for the module. Requests are minimal valid
messages with the ids of one tenant; destructive calls carry a stale etag or
validate_only, so that an allowed call answers ABORTED (or OK without effect)
and the fixtures stay as they are for the next actor.

BOLA probes: every id-taking RPC is called again by the client admin (CA) and
by the partner manager (PM) with the other tenant's ids, and once with ids
that do not exist; the two answers must be identical (code and reason), so an
id's existence never shows (AIP-193, defect 5), and must not be OK.

Set OM_AUTHZ_RECORD=<file> to write the observed matrix in the table's format
(a starting point when adding RPCs; every cell must then be checked against
SPEC.md, never copied blindly)."""

import importlib
import os
import time
import uuid
from pathlib import Path

import grpc
import pytest
from google.protobuf import field_mask_pb2

import orgmesh_testlib as om
from orgmesh.accounts.v1 import accounts_pb2 as apb
from orgmesh.organizations.v1 import organizations_pb2 as opb
from orgmesh.connections.v1 import connections_pb2 as cpb
from orgmesh.assets.v1 import assets_pb2 as spb
from orgmesh.partners.v1 import partners_pb2 as ppb
from orgmesh.notifier.v1 import notifier_pb2 as npb

OM_SERVICES = list(om.SERVICES)
OM_SERVICE_ENV = {s: {"ORGMESH_EVT_CLAIM_IDLE_MS": "1000"} for s in om.SERVICES}

TABLE = Path(__file__).with_name("authz_matrix.tsv")
MODULES = {"accounts": apb, "organizations": opb, "connections": cpb, "assets": spb,
           "partners": ppb, "notifier": npb}
SETUP = om.bearer(om.service_token("tests"))  # fixture building only
ACK = opb.DataSharingAcknowledgement(accepted=True, text_version="2023-06")
SUPER = apb.ROLE_SUPER_ADMIN
GHOST_HUB = 987654321012345
GHOST_USER = 987654321012346
GHOST_UUID = "00000000-0000-4000-8000-00000000beef"

CODES = {"OK": grpc.StatusCode.OK, "UA": grpc.StatusCode.UNAUTHENTICATED,
         "PD": grpc.StatusCode.PERMISSION_DENIED, "NF": grpc.StatusCode.NOT_FOUND,
         "IA": grpc.StatusCode.INVALID_ARGUMENT, "FP": grpc.StatusCode.FAILED_PRECONDITION,
         "AB": grpc.StatusCode.ABORTED, "AE": grpc.StatusCode.ALREADY_EXISTS,
         "RE": grpc.StatusCode.RESOURCE_EXHAUSTED, "UN": grpc.StatusCode.UNAVAILABLE}
SHORT = {v: k for k, v in CODES.items()}

# Actor columns, in the order of the table. Tokens are minted per call
# (user tokens carry a fresh second factor, so MFA never hides an authz answer).
AUTH_ACTORS = ["none", "expired", "forged", "wrong_aud", "alg_none"]
USER_ACTORS = ["member", "sa_one", "client_admin", "pm", "pm_other", "linked_sa"]
# The six orgmesh services, and an operator's platform identity
# (ORGMESH_PLATFORM_SERVICES, e.g. the identity system; "service:tests" here).
SERVICE_ACTORS = [f"svc_{s}" for s in om.SERVICES] + ["svc_platform"]
BOLA_ACTORS = ["bola_ca", "bola_pm"]
ACTORS = AUTH_ACTORS + USER_ACTORS + SERVICE_ACTORS + BOLA_ACTORS


def alg_none_token(sub):
    good = om.mint_token(sub, header={"alg": "none"})
    return good.rsplit(".", 1)[0] + "."


# ---- the table ------------------------------------------------------------------------

def parse_cell(cell):
    code, _, reason = cell.partition(":")
    if code not in CODES and code != "-":
        raise ValueError(f"unknown code {code!r}")
    return code, reason or None


def load_table():
    rows, limits = {}, []
    header = None
    for n, line in enumerate(TABLE.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        cols = line.split("\t")
        if cols[0] == "rpc":
            header = cols[1:]
            assert header == ACTORS, f"{TABLE}:{n}: columns must be {ACTORS}"
            continue
        if cols[0] == "limit":
            assert len(cols) == 5, f"{TABLE}:{n}: limit rows are: limit, rpc, probe, actor, expected"
            _, rpc, probe, actor, cell = cols
            assert actor in ACTORS, f"{TABLE}:{n}: unknown actor {actor}"
            limits.append((rpc, probe, actor, parse_cell(cell)))
            continue
        assert header, f"{TABLE}:{n}: row before the header"
        assert len(cols) == len(ACTORS) + 1, f"{TABLE}:{n}: {len(cols) - 1} cells, want {len(ACTORS)}"
        assert cols[0] not in rows, f"{TABLE}:{n}: {cols[0]} twice"
        rows[cols[0]] = {a: parse_cell(c) for a, c in zip(ACTORS, cols[1:])}
    return rows, limits


def declared_rpcs():
    """{"pkg.Service/Method": (service name, method descriptor)} from the
    generated descriptors of every service's proto."""
    out = {}
    root = om.build_dir() / "python" / "orgmesh"
    for svc_dir in sorted(p for p in root.iterdir() if (p / "v1").is_dir()):
        for f in sorted((svc_dir / "v1").glob("*_pb2.py")):
            mod = importlib.import_module(f"orgmesh.{svc_dir.name}.v1.{f.stem}")
            for s in mod.DESCRIPTOR.services_by_name.values():
                for m in s.methods:
                    out[f"{s.name}/{m.name}"] = (svc_dir.name, s, m)
    return out


# ---- the world -------------------------------------------------------------------------

class Tenant:
    """The ids a request names: one tenant's, or ids that exist nowhere."""


class World:
    def __init__(self, suite):
        def stub(svc, cls):
            return suite.stub(svc, getattr(importlib.import_module(f"orgmesh.{svc}.v1.{svc}_pb2_grpc"), cls))
        self.acc = stub("accounts", "AccountsServiceStub")
        self.org = stub("organizations", "OrganizationsServiceStub")
        self.conn = stub("connections", "ConnectionsServiceStub")
        self.assets = stub("assets", "AssetsServiceStub")
        self.p = stub("partners", "PartnersServiceStub")

    def user(self, name):
        u = apb.User(email=f"{name}.{uuid.uuid4().hex[:10]}@example.test", display_name=name,
                     two_factor_enabled=True)
        return self.acc.CreateUser(apb.CreateUserRequest(user=u), metadata=SETUP).user.user_id

    def account(self, owner, kind=apb.ACCOUNT_KIND_STANDARD, tier=apb.TIER_ENTERPRISE):
        a = apb.Account(name=f"acct {uuid.uuid4().hex[:8]}", kind=kind, hosting_location="na1",
                        subscriptions=[apb.Subscription(hub=apb.HUB_MARKETING, tier=tier)])
        return self.acc.CreateAccount(apb.CreateAccountRequest(account=a),
                                      metadata=om.as_user(owner)).account.hub_id

    def member(self, hub, by, user, roles=()):
        self.acc.CreateMembership(apb.CreateMembershipRequest(membership=apb.Membership(
            hub_id=hub, user_id=user, roles=list(roles))), metadata=om.as_user(by))

    def pending(self, partner, pm, employee, client):
        r = self.p.AssignClientsToEmployee(ppb.AssignClientsToEmployeeRequest(
            partner_hub_id=partner, employee_user_id=employee, client_hub_ids=[client]),
            metadata=om.as_user(pm)).results[0]
        assert r.outcome == ppb.ASSIGNMENT_OUTCOME_ACCESS_REQUESTED, r
        return r.access_request.access_request_id

    def tenant(self):
        """One tenant: a client admin with an organization of two accounts,
        a connection, an asset and a copy job; a partner with a manager and
        tagged employees, pending requests into the client."""
        t = Tenant()
        t.admin = self.user("admin")              # SUPER_ADMIN in hub and hub2
        t.hub = self.account(t.admin)
        t.hub2 = self.account(t.admin, tier=apb.TIER_PROFESSIONAL)
        t.sa_one = self.user("saone")             # SUPER_ADMIN in hub only
        self.member(t.hub, t.admin, t.sa_one, [SUPER])
        t.member = self.user("member")            # no role in hub
        self.member(t.hub, t.admin, t.member)
        t.user = t.member                         # the user id user-RPCs name
        t.org = self.org.CreateOrganization(opb.CreateOrganizationRequest(
            enterprise_hub_id=t.hub, member_hub_ids=[t.hub2], acknowledgement=ACK),
            metadata=om.as_user(t.admin, mfa_ago=0)).organization
        t.org_id = t.org.organization_id
        md = om.as_user(t.admin)

        def quick():
            self.conn.QuickConnect(cpb.QuickConnectRequest(organization_id=t.org_id, acting_hub_id=t.hub),
                                   metadata=md)
            return True
        om.eventually(quick, timeout=15)
        t.conn_id = self.conn.ListConnections(cpb.ListConnectionsRequest(organization_id=t.org_id),
                                              metadata=md).connections[0].connection_id
        t.asset_id = self.assets.CreateAsset(spb.CreateAssetRequest(asset=spb.Asset(
            hub_id=t.hub, type=spb.ASSET_TYPE_LIST, name="list " + uuid.uuid4().hex[:6], body_json="{}")),
            metadata=md).asset.asset_id

        def copy():
            return self.assets.CopyAssets(spb.CopyAssetsRequest(
                source_hub_id=t.hub, target_hub_id=t.hub2, asset_ids=[t.asset_id]), metadata=md).job.job_id
        t.job_id = om.eventually(copy, timeout=15)
        # The partner.
        t.pm = self.user("pm")
        t.partner = self.account(t.pm, kind=apb.ACCOUNT_KIND_PARTNER, tier=apb.TIER_STARTER)
        t.staff = {}
        for name in ("linked", "approve", "decline", "cancel", "resend", "remove", "plain", "untagged"):
            t.staff[name] = self.user(name)
            self.member(t.partner, t.pm, t.staff[name])
        tag = [t.staff[n] for n in t.staff if n != "untagged"]
        self.p.TagEmployees(ppb.TagEmployeesRequest(partner_hub_id=t.partner, user_ids=tag),
                            metadata=om.as_user(t.pm))
        t.employee = t.staff["linked"]
        t.ar = {n: self.pending(t.partner, t.pm, t.staff[n], t.hub)
                for n in ("linked", "approve", "decline", "cancel", "resend", "remove")}
        # PART-18: a grant never carries SUPER_ADMIN; the client makes the
        # linked membership SUPER_ADMIN itself in accounts
        t.linked_asg = self.p.ApproveAccessRequest(ppb.ApproveAccessRequestRequest(
            access_request_id=t.ar["linked"]), metadata=om.as_user(t.admin)).assignment.assignment_id

        def make_super():
            return self.acc.UpdateMembership(apb.UpdateMembershipRequest(
                membership=apb.Membership(hub_id=t.hub, user_id=t.employee, roles=[SUPER]),
                update_mask=mask("roles")), metadata=om.as_user(t.admin)).membership
        om.eventually(make_super, timeout=15)
        return t

    @staticmethod
    def ghost(like):
        g = Tenant()
        g.__dict__.update(like.__dict__)
        for k in ("hub", "hub2", "partner"):
            setattr(g, k, GHOST_HUB + hash(k) % 1000)
        for k in ("admin", "sa_one", "member", "user", "pm", "employee"):
            setattr(g, k, GHOST_USER)
        g.staff = {k: GHOST_USER + i for i, k in enumerate(like.staff)}
        for k in ("org_id", "conn_id", "asset_id", "job_id", "linked_asg"):
            setattr(g, k, GHOST_UUID)
        g.ar = {k: GHOST_UUID for k in like.ar}
        return g


# ---- requests: a minimal valid message per RPC, naming tenant t's ids ----------------------

def stale(prefix):
    return f'"{prefix}999999"'


def mask(*paths):
    return field_mask_pb2.FieldMask(paths=list(paths))


def fresh():
    return uuid.uuid4().hex[:10]


REQUESTS = {
    # accounts
    "AccountsService/CreateAccount": lambda t: apb.CreateAccountRequest(account=apb.Account(
        name="acct " + fresh(), kind=apb.ACCOUNT_KIND_STANDARD, hosting_location="na1")),
    "AccountsService/GetAccount": lambda t: apb.GetAccountRequest(hub_id=t.hub),
    "AccountsService/ListAccounts": lambda t: apb.ListAccountsRequest(),
    "AccountsService/UpdateAccount": lambda t: apb.UpdateAccountRequest(
        account=apb.Account(hub_id=t.hub, name="renamed"), update_mask=mask("name"), etag=stale("v")),
    "AccountsService/DeactivateAccount": lambda t: apb.DeactivateAccountRequest(hub_id=t.hub, etag=stale("v")),
    "AccountsService/ReactivateAccount": lambda t: apb.ReactivateAccountRequest(hub_id=t.hub, etag=stale("v")),
    "AccountsService/DeleteAccount": lambda t: apb.DeleteAccountRequest(hub_id=t.hub, etag=stale("v")),
    "AccountsService/ListAccountHistory": lambda t: apb.ListAccountHistoryRequest(hub_id=t.hub),
    "AccountsService/CreateUser": lambda t: apb.CreateUserRequest(user=apb.User(
        email=f"new.{fresh()}@example.test", display_name="New")),
    "AccountsService/GetUser": lambda t: apb.GetUserRequest(user_id=t.user),
    "AccountsService/GetUserByEmail": lambda t: apb.GetUserByEmailRequest(email=t.user_email),
    "AccountsService/ListUsers": lambda t: apb.ListUsersRequest(),
    "AccountsService/UpdateUser": lambda t: apb.UpdateUserRequest(
        user=apb.User(user_id=t.user, display_name="Renamed"), update_mask=mask("display_name"),
        etag=stale("v")),
    "AccountsService/DeleteUser": lambda t: apb.DeleteUserRequest(user_id=t.user, etag=stale("v")),
    "AccountsService/ListUserHistory": lambda t: apb.ListUserHistoryRequest(user_id=t.user),
    # A fresh user made SUPER_ADMIN: who may grant SUPER_ADMIN (PART-08).
    "AccountsService/CreateMembership": lambda t: apb.CreateMembershipRequest(membership=apb.Membership(
        hub_id=t.hub, user_id=t.new_user(), roles=[SUPER])),
    "AccountsService/GetMembership": lambda t: apb.GetMembershipRequest(hub_id=t.hub, user_id=t.member),
    "AccountsService/ListMemberships": lambda t: apb.ListMembershipsRequest(hub_id=t.hub),
    # The client admin's membership stripped of its roles (defect 1).
    "AccountsService/UpdateMembership": lambda t: apb.UpdateMembershipRequest(
        membership=apb.Membership(hub_id=t.hub, user_id=t.admin, roles=[]), update_mask=mask("roles"),
        etag=stale("v")),
    "AccountsService/DeleteMembership": lambda t: apb.DeleteMembershipRequest(
        hub_id=t.hub, user_id=t.member, etag=stale("v")),
    "AccountsInternalService/SetPartnerEmployee": lambda t: apb.SetPartnerEmployeeRequest(
        hub_id=t.partner, user_id=t.staff["plain"], partner_employee=True),
    "AccountsInternalService/AddPartnerLinkedMembership": lambda t: apb.AddPartnerLinkedMembershipRequest(
        hub_id=t.hub, user_id=t.staff["untagged"], partner_hub_id=t.partner, assignment_id=GHOST_UUID,
        roles=[SUPER], request_id=fresh()),
    "AccountsInternalService/RemovePartnerLinkedMembership": lambda t: apb.RemovePartnerLinkedMembershipRequest(
        hub_id=t.hub, user_id=t.member, assignment_id=GHOST_UUID),
    "AccountsInternalService/BatchGetAccounts": lambda t: apb.BatchGetAccountsRequest(hub_ids=[t.hub]),
    "AccountsInternalService/BatchGetUsers": lambda t: apb.BatchGetUsersRequest(user_ids=[t.user]),
    "AccountsInternalService/ListMembershipsInternal": lambda t: apb.ListMembershipsInternalRequest(hub_id=t.hub),
    # organizations
    "OrganizationsService/ListEligibleAccounts": lambda t: opb.ListEligibleAccountsRequest(
        enterprise_hub_id=t.hub),
    "OrganizationsService/CreateOrganization": lambda t: opb.CreateOrganizationRequest(
        enterprise_hub_id=t.hub, acknowledgement=ACK),
    "OrganizationsService/GetOrganization": lambda t: opb.GetOrganizationRequest(organization_id=t.org_id),
    "OrganizationsService/GetOrganizationByAccount": lambda t: opb.GetOrganizationByAccountRequest(hub_id=t.hub),
    "OrganizationsService/ListOrgMembers": lambda t: opb.ListOrgMembersRequest(organization_id=t.org_id),
    "OrganizationsService/AddOrgMembers": lambda t: opb.AddOrgMembersRequest(
        organization_id=t.org_id, acting_hub_id=t.hub, hub_ids=[t.hub2], acknowledgement=ACK,
        etag=stale("o")),
    "OrganizationsService/RemoveOrgMember": lambda t: opb.RemoveOrgMemberRequest(
        organization_id=t.org_id, acting_hub_id=t.hub, hub_id=t.hub2, etag=stale("o")),
    "OrganizationsService/DeleteOrganization": lambda t: opb.DeleteOrganizationRequest(
        organization_id=t.org_id, acting_hub_id=t.hub, etag=stale("o")),
    "OrganizationsService/ListOrganizationHistory": lambda t: opb.ListOrganizationHistoryRequest(
        organization_id=t.org_id),
    # connections
    "ConnectionsService/ListConnections": lambda t: cpb.ListConnectionsRequest(organization_id=t.org_id),
    "ConnectionsService/GetConnection": lambda t: cpb.GetConnectionRequest(connection_id=t.conn_id),
    "ConnectionsService/QuickConnect": lambda t: cpb.QuickConnectRequest(
        organization_id=t.org_id, acting_hub_id=t.hub, validate_only=True),
    "ConnectionsService/AddConnections": lambda t: cpb.AddConnectionsRequest(
        organization_id=t.org_id, acting_hub_id=t.hub, from_hub_id=t.hub, to_hub_ids=[t.hub2],
        all_features=cpb.FeatureSetting(direction=cpb.DIRECTION_BOTH), validate_only=True),
    "ConnectionsService/BatchUpdateConnections": lambda t: cpb.BatchUpdateConnectionsRequest(
        organization_id=t.org_id, acting_hub_id=t.hub, validate_only=True,
        changes=[cpb.ConnectionChange(operation=cpb.ConnectionChange.OPERATION_UPDATE,
                                      account_a=t.hub, account_b=t.hub2,
                                      all_features=cpb.FeatureSetting(direction=cpb.DIRECTION_BOTH))]),
    "ConnectionsService/DeleteConnection": lambda t: cpb.DeleteConnectionRequest(
        connection_id=t.conn_id, acting_hub_id=t.hub, etag=stale("c")),
    "ConnectionsService/CheckMirrorAccess": lambda t: cpb.CheckMirrorAccessRequest(
        user_id=t.member, source_hub_id=t.hub2, target_hub_id=t.hub),
    "ConnectionsService/ListMirrorSources": lambda t: cpb.ListMirrorSourcesRequest(
        user_id=t.member, target_hub_id=t.hub),
    "ConnectionsService/CheckAssetCopy": lambda t: cpb.CheckAssetCopyRequest(
        source_hub_id=t.hub, target_hub_id=t.hub2),
    "ConnectionsService/ListConnectionHistory": lambda t: cpb.ListConnectionHistoryRequest(
        organization_id=t.org_id),
    # issue 18: the batch checks answer per item (an item's refusal is its
    # own status), so a user the single check refuses gets OK here
    "ConnectionsService/BatchCheckMirrorAccess": lambda t: cpb.BatchCheckMirrorAccessRequest(
        items=[cpb.MirrorAccessItem(user_id=t.member, source_hub_id=t.hub2, target_hub_id=t.hub)]),
    "ConnectionsService/BatchCheckAssetCopy": lambda t: cpb.BatchCheckAssetCopyRequest(
        items=[cpb.FlowItem(source_hub_id=t.hub, target_hub_id=t.hub2)]),
    "ConnectionsService/CheckWorkflowWrite": lambda t: cpb.CheckWorkflowWriteRequest(
        source_hub_id=t.hub, target_hub_id=t.hub2),
    "ConnectionsService/BatchCheckWorkflowWrite": lambda t: cpb.BatchCheckWorkflowWriteRequest(
        items=[cpb.FlowItem(source_hub_id=t.hub, target_hub_id=t.hub2)]),
    # assets
    "AssetsService/CreateAsset": lambda t: spb.CreateAssetRequest(asset=spb.Asset(
        hub_id=t.hub, type=spb.ASSET_TYPE_FORM, name="form " + fresh(), body_json="{}")),
    "AssetsService/GetAsset": lambda t: spb.GetAssetRequest(asset_id=t.asset_id),
    "AssetsService/ListAssets": lambda t: spb.ListAssetsRequest(hub_id=t.hub),
    "AssetsService/UpdateAsset": lambda t: spb.UpdateAssetRequest(
        asset=spb.Asset(asset_id=t.asset_id, name="renamed " + fresh()), update_mask=mask("name"),
        etag=stale("a")),
    "AssetsService/DeleteAsset": lambda t: spb.DeleteAssetRequest(asset_id=t.asset_id, etag=stale("a")),
    "AssetsService/CopyAssets": lambda t: spb.CopyAssetsRequest(
        source_hub_id=t.hub, target_hub_id=t.hub2, asset_ids=[t.asset_id],
        options=spb.CopyOptions(conflict_policy=spb.CONFLICT_POLICY_SKIP)),
    "AssetsService/GetCopyJob": lambda t: spb.GetCopyJobRequest(job_id=t.job_id),
    "AssetsService/ListCopyJobs": lambda t: spb.ListCopyJobsRequest(hub_id=t.hub),
    "AssetsService/CancelCopyJob": lambda t: spb.CancelCopyJobRequest(job_id=t.job_id),
    "AssetsService/ListCopyJobResults": lambda t: spb.ListCopyJobResultsRequest(job_id=t.job_id),
    "AssetsService/ListAssetHistory": lambda t: spb.ListAssetHistoryRequest(hub_id=t.hub, asset_id=t.asset_id),
    # partners
    "PartnersService/TagEmployees": lambda t: ppb.TagEmployeesRequest(
        partner_hub_id=t.partner, user_ids=[t.staff["plain"]]),
    "PartnersService/UntagEmployee": lambda t: ppb.UntagEmployeeRequest(
        partner_hub_id=t.partner, user_id=t.staff["untagged"]),
    "PartnersService/ListPartnerEmployees": lambda t: ppb.ListPartnerEmployeesRequest(partner_hub_id=t.partner),
    "PartnersService/ListClients": lambda t: ppb.ListClientsRequest(partner_hub_id=t.partner),
    "PartnersService/AddClients": lambda t: ppb.AddClientsRequest(partner_hub_id=t.partner,
                                                                  client_hub_ids=[t.hub]),
    "PartnersService/SearchClients": lambda t: ppb.SearchClientsRequest(partner_hub_id=t.partner, query="acct"),
    # The linked employee is ACTIVE already: an allowed call changes nothing.
    "PartnersService/AssignClientsToEmployee": lambda t: ppb.AssignClientsToEmployeeRequest(
        partner_hub_id=t.partner, employee_user_id=t.employee, client_hub_ids=[t.hub]),
    "PartnersService/AssignEmployeesToClient": lambda t: ppb.AssignEmployeesToClientRequest(
        partner_hub_id=t.partner, client_hub_id=t.hub, employee_user_ids=[t.employee]),
    "PartnersService/ListAccessRequests": lambda t: ppb.ListAccessRequestsRequest(partner_hub_id=t.partner),
    "PartnersService/GetAccessRequest": lambda t: ppb.GetAccessRequestRequest(access_request_id=t.ar["approve"]),
    "PartnersService/ApproveAccessRequest": lambda t: ppb.ApproveAccessRequestRequest(
        access_request_id=t.ar["approve"], roles=[apb.ROLE_MARKETING_ACCESS]),
    "PartnersService/DeclineAccessRequest": lambda t: ppb.DeclineAccessRequestRequest(
        access_request_id=t.ar["decline"]),
    "PartnersService/CancelAccessRequest": lambda t: ppb.CancelAccessRequestRequest(
        access_request_id=t.ar["cancel"]),
    "PartnersService/ResendAccessRequest": lambda t: ppb.ResendAccessRequestRequest(
        access_request_id=t.ar["resend"]),
    "PartnersService/RemoveEmployeeFromClient": lambda t: ppb.RemoveEmployeeFromClientRequest(
        partner_hub_id=t.partner, employee_user_id=t.staff["remove"], client_hub_id=t.hub,
        confirmation="REMOVE"),
    "PartnersService/ListEmployeeClients": lambda t: ppb.ListEmployeeClientsRequest(
        partner_hub_id=t.partner, employee_user_id=t.employee),
    "PartnersService/ListClientEmployees": lambda t: ppb.ListClientEmployeesRequest(
        partner_hub_id=t.partner, client_hub_id=t.hub),
    "PartnersService/GetManagedMrrReport": lambda t: ppb.GetManagedMrrReportRequest(partner_hub_id=t.partner),
    "PartnersService/ListPartnerHistory": lambda t: ppb.ListPartnerHistoryRequest(partner_hub_id=t.partner),
    # PART-17 (one more day: harmless), PART-20 (validate_only: nothing changes; no block to lift), PART-21, PART-19
    "PartnersService/ExtendPartnerGrant": lambda t: ppb.ExtendPartnerGrantRequest(
        assignment_id=t.linked_asg, extend_days=1),
    "PartnersService/RevokePartnerAccess": lambda t: ppb.RevokePartnerAccessRequest(
        client_hub_id=t.hub, partner_hub_id=t.partner, confirmation="REMOVE", validate_only=True),
    "PartnersService/RestorePartnerAccess": lambda t: ppb.RestorePartnerAccessRequest(
        client_hub_id=t.hub, partner_hub_id=t.partner),
    "PartnersService/ListClientGrants": lambda t: ppb.ListClientGrantsRequest(client_hub_id=t.hub),
    "PartnersService/ListDormantGrants": lambda t: ppb.ListDormantGrantsRequest(partner_hub_id=t.partner),
    "PartnersInternalService/RecordActivities": lambda t: ppb.RecordActivitiesRequest(activities=[
        ppb.Activity(activity_id=fresh(), user_id=t.employee, hub_id=t.hub, kind="crm.contact.view",
                     time=now_ts())]),
    "PartnersInternalService/IssueAccessRequestTokens": lambda t: ppb.IssueAccessRequestTokensRequest(
        access_request_id=t.ar["resend"], recipient_user_ids=[t.admin], event_id="ev-" + fresh()),
    "PartnersInternalService/IssueAccessRequestTokensBatch": lambda t: ppb.IssueAccessRequestTokensBatchRequest(
        items=[ppb.IssueAccessRequestTokensRequest(access_request_id=t.ar["resend"], recipient_user_ids=[t.admin],
                                                   event_id="ev-" + fresh())]),
    # notifier
    "NotifierService/ListDeliveries": lambda t: npb.ListDeliveriesRequest(recipient_user_id=t.admin),
    "NotifierService/ListDeadLetters": lambda t: npb.ListDeadLettersRequest(),
    "NotifierService/ReplayDeadLetters": lambda t: npb.ReplayDeadLettersRequest(dead_letter_ids=[GHOST_UUID]),
    "NotifierService/ListDeadLetterHistory": lambda t: npb.ListDeadLetterHistoryRequest(),
}


def now_ts():
    from google.protobuf import timestamp_pb2
    ts = timestamp_pb2.Timestamp()
    ts.GetCurrentTime()
    return ts


ID_SUFFIXES = ("_id", "_ids")
NOT_IDS = {"request_id", "event_id", "activity_id", "dead_letter_ids"}
# Calls that change the actors' own standing (a user who creates an account
# becomes its SUPER_ADMIN, and may then invite users): made after every other.
RUN_LAST = {"AccountsService/CreateAccount"}
# Creates whose only id is the one the server gives the new resource: there
# is no other tenant's id to name.
NO_FOREIGN_IDS = {"AccountsService/CreateAccount", "AccountsService/CreateUser"}


def takes_ids(method):
    """Whether the request names a resource by id (directly or one message
    level down): the RPCs BOLA probes must cover."""
    if f"{method.containing_service.name}/{method.name}" in NO_FOREIGN_IDS:
        return False
    def walk(t, depth):
        for f in t.fields:
            if f.name in NOT_IDS:
                continue
            if f.name.endswith(ID_SUFFIXES):
                return True
            if f.message_type is not None and depth == 0 and \
                    not f.message_type.full_name.startswith("google."):
                if walk(f.message_type, 1):
                    return True
        return False
    return walk(method.input_type, 0)


# ---- limits (SPEC 8: page sizes, 100 items per batch, 4 MiB per message) --------------------

MESSAGE_PROBE = 5 * 1024 * 1024  # over the 4 MiB every server accepts
# One string field per service for the message-size probe (the limit is the server's).
MESSAGE_FIELD = {
    "AccountsService/CreateUser": lambda r, big: setattr(r.user, "display_name", big),
    "OrganizationsService/GetOrganization": lambda r, big: setattr(r, "organization_id", big),
    "ConnectionsService/GetConnection": lambda r, big: setattr(r, "connection_id", big),
    "AssetsService/CreateAsset": lambda r, big: setattr(r.asset, "body_json", big),
    "PartnersService/SearchClients": lambda r, big: setattr(r, "query", big),
    "NotifierService/ListDeadLetters": lambda r, big: setattr(r, "event_type", big),
}
# Repeated fields that are not batches of items (sets of enum values).
NOT_BATCHES = {"roles", "seats"}
# Batches are bounded at 100 items (SPEC 8) except a copy job's assets (ASSET-02).
BATCH_LIMIT = {"AssetsService/CopyAssets": 10000}


def batch_fields(method):
    from google.protobuf.descriptor import FieldDescriptor as F
    return [f for f in method.input_type.fields
            if f.label == F.LABEL_REPEATED and f.name not in NOT_BATCHES and f.type != F.TYPE_ENUM]


def limit_probes(rpcs):
    """Every probe the table must have a row for: (rpc, probe)."""
    out = []
    for key, (_, _, m) in rpcs.items():
        if "page_size" in m.input_type.fields_by_name:
            out += [(key, "page_size=-1"), (key, "page_size=1001")]
        for f in batch_fields(m):
            n = BATCH_LIMIT.get(key, 100)
            out += [(key, f"batch={f.name}:{n}"), (key, f"batch={f.name}:{n + 1}")]
    out += [(key, "message=5MiB") for key in MESSAGE_FIELD]
    return out


def fill_batch(req, field, n):
    from google.protobuf.descriptor import FieldDescriptor as F
    f = req.DESCRIPTOR.fields_by_name[field]
    items = getattr(req, field)
    if f.type == F.TYPE_MESSAGE:
        first = items[0] if len(items) else None
        del items[:]
        for i in range(n):
            it = items.add()
            if first is not None:
                it.CopyFrom(first)
            if "activity_id" in f.message_type.fields_by_name:
                it.activity_id = f"a-{i}-{fresh()}"
        return req
    del items[:]
    if f.type == F.TYPE_STRING:
        items.extend(f"00000000-0000-4000-8000-{i:012d}" for i in range(n))
    else:
        items.extend(GHOST_HUB + 1000 + i for i in range(n))
    return req


def probe_request(key, probe, t):
    req = REQUESTS[key](t)
    what, _, arg = probe.partition("=")
    if what == "page_size":
        req.page_size = int(arg)
    elif what == "batch":
        field, _, n = arg.partition(":")
        fill_batch(req, field, int(n))
    elif what == "message":
        MESSAGE_FIELD[key](req, "x" * MESSAGE_PROBE)
    else:
        raise ValueError(probe)
    return req


# ---- calling ------------------------------------------------------------------------------

class Caller:
    def __init__(self, suite, rpcs):
        self.suite = suite
        self.calls = 0
        self._stubs = {}
        self.rpcs = rpcs

    def stub(self, key):
        if key not in self._stubs:
            svc_name, s, m = self.rpcs[key]
            out_cls = getattr(MODULES[svc_name], m.output_type.name)
            self._stubs[key] = self.suite.channel(svc_name).unary_unary(
                f"/{s.full_name}/{m.name}", request_serializer=lambda r: r.SerializeToString(),
                response_deserializer=out_cls.FromString)
        return self._stubs[key]

    def call(self, key, request, metadata):
        """(short code, reason) of one call."""
        self.calls += 1
        try:
            resp = self.stub(key)(request, metadata=metadata, timeout=10)
            # issue 18 (CONN-14): a batch check authorizes each item as the
            # single check does and reports a refusal as the item's status:
            # the matrix holds the first item's answer
            results = getattr(resp, "results", None)
            st = results[0].DESCRIPTOR.fields_by_name.get("status") if results else None
            if (st is not None and st.message_type is not None
                    and st.message_type.full_name == "orgmesh.connections.v1.CheckItemStatus"
                    and results[0].status.code != 0):
                code = next(c for c in grpc.StatusCode if c.value[0] == results[0].status.code)
                return SHORT.get(code, code.name), results[0].status.error_reason or None
            return "OK", None
        except grpc.RpcError as e:
            d = om.error_details(e)
            return SHORT.get(d.code, d.code.name), d.reason


@pytest.fixture(scope="module")
def world(suite):
    w = World(suite)
    t0 = time.monotonic()
    own, other = w.tenant(), w.tenant()
    for t in (own, other):
        t.user_email = w.acc.GetUser(apb.GetUserRequest(user_id=t.user), metadata=SETUP).user.email
        t.new_user = lambda: w.user("fresh")
    ghost = World.ghost(own)
    ghost.user_email = "nobody.at.all@example.test"
    w.own, w.other, w.ghost_t = own, other, ghost
    print(f"\nfixtures built in {time.monotonic() - t0:.1f} s")
    return w


def actor_metadata(world, actor):
    t, o = world.own, world.other
    user = {"member": t.member, "sa_one": t.sa_one, "client_admin": t.admin, "pm": t.pm,
            "pm_other": o.pm, "linked_sa": t.employee, "bola_ca": t.admin, "bola_pm": t.pm}
    if actor in user:
        return om.as_user(user[actor], mfa_ago=0)
    if actor == "svc_platform":
        return om.bearer(om.service_token("tests"))
    if actor.startswith("svc_"):
        return om.bearer(om.service_token(actor[4:]))
    sub = t.admin
    return {
        "none": (),
        "expired": om.bearer(om.expired_token(sub)),
        "forged": om.bearer(om.forged_token(sub)),
        "wrong_aud": om.bearer(om.wrong_audience_token(sub)),
        "alg_none": om.bearer(alg_none_token(sub)),
    }[actor]


def limit_actor(rpc):
    """Who makes a limit probe by default: someone the RPC lets in."""
    svc = rpc.split("/")[0]
    if rpc in ("AccountsService/ListUserHistory", "ConnectionsService/ListMirrorSources"):
        return "member"  # about the member themselves
    if svc in ("AccountsInternalService", "NotifierService") or rpc == "PartnersInternalService/RecordActivities":
        return "svc_platform"
    if svc == "PartnersInternalService":
        return "svc_notifier"
    if svc == "PartnersService":
        return "pm"
    return "client_admin"


def fmt(code, reason):
    return f"{code}:{reason}" if reason else code


def matches(expected, got):
    (ecode, ereason), (gcode, greason) = expected, got
    return ecode == gcode and (ereason is None or ereason == greason)


# ---- the test -------------------------------------------------------------------------------

def test_authz_matrix_covers_every_declared_rpc_and_holds(suite, world):
    rows, _ = load_table()
    rpcs = declared_rpcs()
    caller = Caller(suite, rpcs)
    record = os.environ.get("OM_AUTHZ_RECORD")
    missing = sorted(set(rpcs) - set(rows))
    unknown = sorted(set(rows) - set(rpcs))
    no_request = sorted(set(rpcs) - set(REQUESTS))
    failures, observed = [], {}
    t0 = time.monotonic()
    for key in sorted(rpcs, key=lambda k: k in RUN_LAST):
        if key not in REQUESTS:
            continue
        _, _, method = rpcs[key]
        observed[key] = {}
        for actor in ACTORS:
            md = actor_metadata(world, actor)
            if actor.startswith("bola_"):
                if not takes_ids(method):
                    observed[key][actor] = ("-", None)
                    continue
                got = caller.call(key, REQUESTS[key](world.other), md)
                ghost = caller.call(key, REQUESTS[key](world.ghost_t), md)
                observed[key][actor] = got
                if got[0] == "OK":
                    failures.append(f"{key} {actor}: another tenant's ids succeeded")
                if got != ghost:
                    failures.append(f"{key} {actor}: another tenant's ids answer {fmt(*got)}, "
                                    f"ids that exist nowhere {fmt(*ghost)} (existence leak)")
            else:
                got = caller.call(key, REQUESTS[key](world.own), md)
                observed[key][actor] = got
            exp = rows.get(key, {}).get(actor)
            if exp is not None and not matches(exp, got):
                failures.append(f"{key} {actor}: expected {fmt(*exp)}, got {fmt(*got)}")
            if exp is not None and exp[0] == "-" and takes_ids(method) and actor.startswith("bola_"):
                failures.append(f"{key} {actor}: takes ids, so it needs a BOLA cell")
    if record:
        with open(record, "w") as f:
            f.write("rpc\t" + "\t".join(ACTORS) + "\n")
            for key, cells in observed.items():
                f.write(key + "\t" + "\t".join(fmt(*cells[a]) for a in ACTORS) + "\n")
    # Limits: every probe the protos call for has a row.
    _, limits = load_table()
    want = set(limit_probes(rpcs))
    have = {(rpc, probe) for rpc, probe, _, _ in limits}
    limit_missing = sorted(want - have)
    observed_limits = []
    for rpc, probe, actor, exp in limits:
        if rpc not in rpcs:
            failures.append(f"limit row for undeclared RPC {rpc}")
            continue
        got = caller.call(rpc, probe_request(rpc, probe, world.own), actor_metadata(world, actor))
        observed_limits.append((rpc, probe, actor, got))
        if not matches(exp, got):
            failures.append(f"{rpc} {probe} as {actor}: expected {fmt(*exp)}, got {fmt(*got)}")
    if record:
        with open(record, "a") as f:
            for rpc, probe, actor, got in observed_limits:
                f.write(f"limit\t{rpc}\t{probe}\t{actor}\t{fmt(*got)}\n")
            for rpc, probe in limit_missing:
                actor = limit_actor(rpc)
                got = caller.call(rpc, probe_request(rpc, probe, world.own), actor_metadata(world, actor))
                f.write(f"limit\t{rpc}\t{probe}\t{actor}\t{fmt(*got)}\n")
    elapsed = time.monotonic() - t0
    covered = len(set(rpcs) & set(rows) & set(REQUESTS))
    print(f"\nauthz matrix: {covered}/{len(rpcs)} RPCs covered ({100 * covered // max(len(rpcs), 1)}%), "
          f"{caller.calls} calls in {elapsed:.1f} s, {len(failures)} mismatches")
    problems = []
    if missing:
        problems.append(f"RPCs declared in proto/ without a row in {TABLE.name}: {missing}")
    if unknown:
        problems.append(f"rows for RPCs not declared in proto/: {unknown}")
    if limit_missing:
        problems.append(f"limit probes without a row: {limit_missing}")
    if no_request:
        problems.append(f"RPCs without a request builder in REQUESTS: {no_request}")
    assert not problems and not failures, "\n".join(problems + failures)

"""The assets service (SPEC 5, ASSET-01..ASSET-06) driven through its gRPC API
from Python, next to real accounts, organizations and connections services:
users, accounts and memberships are made with the accounts service, the
organization and its connections as test_connections does (MFA token,
acknowledgement, QuickConnect / AddConnections), and copying is switched off
mid-job through BatchUpdateConnections (CONN-07 re-checked between batches).

The copy workers run with small batches and a pause between them
(ORGMESH_ASSETS_BATCH, ORGMESH_ASSETS_BATCH_DELAY_MS) so that a cancel, a
connection change or a SIGKILL lands in the middle of a job; the lease is
short (ORGMESH_ASSETS_LEASE_MS) so that a killed worker's job is taken over
quickly after the restart. Stored state is read back with psql."""

import json
import os
import subprocess
import time
import uuid
import random

import grpc
import pytest
from google.protobuf import field_mask_pb2

import orgmesh_testlib as om
from orgmesh.accounts.v1 import accounts_pb2 as apb
from orgmesh.accounts.v1 import accounts_pb2_grpc as agrpc
from orgmesh.assets.v1 import assets_pb2 as spb
from orgmesh.assets.v1 import assets_pb2_grpc as sgrpc
from orgmesh.connections.v1 import connections_pb2 as cpb
from orgmesh.connections.v1 import connections_pb2_grpc as cgrpc
from orgmesh.organizations.v1 import organizations_pb2 as opb
from orgmesh.organizations.v1 import organizations_pb2_grpc as ogrpc

OM_SERVICES = ["accounts", "organizations", "connections", "assets"]
# Kills a service and times batches: run alone (as test_connections does).
pytestmark = pytest.mark.exclusive_stack
OM_SERVICE_ENV = {"assets": {"ORGMESH_ASSETS_BATCH": "5", "ORGMESH_ASSETS_BATCH_DELAY_MS": "150",
                             "ORGMESH_ASSETS_LEASE_MS": "1500", "ORGMESH_ASSETS_POLL_MS": "100"}}

ADMIN = om.service_token("provisioning")
MKT_ENT = [(apb.HUB_MARKETING, apb.TIER_ENTERPRISE)]
PRO = [(apb.HUB_SALES, apb.TIER_PROFESSIONAL)]
ACK = opb.DataSharingAcknowledgement(accepted=True, text_version="2023-06")
D = cpb.Direction
OP = cpb.ConnectionChange.Operation
T = spb.AssetType
S = spb.CopyJobState
O = spb.CopyOutcome
PSQL = "/usr/lib/postgresql/15/bin/psql"
TERMINAL = {S.COPY_JOB_STATE_SUCCEEDED, S.COPY_JOB_STATE_PARTIALLY_SUCCEEDED, S.COPY_JOB_STATE_FAILED,
            S.COPY_JOB_STATE_CANCELLED}


def random_id():
    return random.randrange(10**12, 9 * 10**15)


def psql(sql):
    r = subprocess.run([PSQL, "-qAtX", "-v", "ON_ERROR_STOP=1", "-d", os.environ["ORGMESH_PG_URL"], "-c", sql],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, check=True)
    return [line for line in r.stdout.splitlines() if line]


def fs(direction, source=0):
    return cpb.FeatureSetting(direction=direction, source_hub_id=source)


class World:
    def __init__(self, suite):
        self.suite = suite
        self.acc = suite.stub("accounts", agrpc.AccountsServiceStub)
        self.org = suite.stub("organizations", ogrpc.OrganizationsServiceStub)
        self.conn = suite.stub("connections", cgrpc.ConnectionsServiceStub)
        self.assets = suite.stub("assets", sgrpc.AssetsServiceStub)

    def reconnect(self):
        self.assets = self.suite.stub("assets", sgrpc.AssetsServiceStub)

    def user(self):
        u = apb.User(user_id=random_id(), email=f"u-{uuid.uuid4().hex[:12]}@example.com", display_name="T",
                     locale="en", two_factor_enabled=True)
        return self.acc.CreateUser(apb.CreateUserRequest(user=u), metadata=om.bearer(ADMIN)).user.user_id

    def account(self, owner, subs=PRO):
        a = apb.Account(hub_id=random_id(), name=f"acct-{uuid.uuid4().hex[:8]}", kind=apb.ACCOUNT_KIND_STANDARD,
                        hosting_location="na1", subscriptions=[apb.Subscription(hub=h, tier=t) for h, t in subs])
        hub = self.acc.CreateAccount(apb.CreateAccountRequest(account=a), metadata=om.bearer(ADMIN)).account.hub_id
        self.member(hub, owner, [apb.ROLE_SUPER_ADMIN])
        return hub

    def member(self, hub, user, roles=()):
        m = apb.Membership(hub_id=hub, user_id=user, roles=list(roles))
        self.acc.CreateMembership(apb.CreateMembershipRequest(membership=m), metadata=om.bearer(ADMIN))

    def organization(self, owner, n=2):
        hubs = [self.account(owner, MKT_ENT if i == 0 else PRO) for i in range(n)]
        req = opb.CreateOrganizationRequest(enterprise_hub_id=hubs[0], member_hub_ids=hubs[1:])
        req.acknowledgement.CopyFrom(ACK)
        o = self.org.CreateOrganization(req, metadata=om.as_user(owner, mfa_ago=0)).organization
        return o.organization_id, hubs

    def connected(self, owner):
        """Two accounts of one organization, asset copying BOTH ways."""
        org, (a, b) = self.organization(owner)
        self.conn.QuickConnect(cpb.QuickConnectRequest(organization_id=org, acting_hub_id=a),
                               metadata=om.as_user(owner))
        return org, a, b

    def set_copying(self, owner, org, a, b, setting):
        self.conn.BatchUpdateConnections(cpb.BatchUpdateConnectionsRequest(
            organization_id=org, acting_hub_id=a, changes=[cpb.ConnectionChange(
                operation=OP.OPERATION_UPDATE, account_a=a, account_b=b, asset_copying=setting)]),
            metadata=om.as_user(owner))

    # -- assets --
    def create(self, user, hub, type_, name, body=None, refs=(), **kw):
        a = spb.Asset(hub_id=hub, type=type_, name=name, body_json=json.dumps(body or {"n": name}),
                      references=[spb.AssetReference(asset_id=r.asset_id, type=r.type) for r in refs])
        return self.assets.CreateAsset(spb.CreateAssetRequest(asset=a, **kw), metadata=om.as_user(user)).asset

    def get(self, user, asset_id):
        return self.assets.GetAsset(spb.GetAssetRequest(asset_id=asset_id), metadata=om.as_user(user)).asset

    def copy(self, user, s, t, ids, deps=False, policy=spb.CONFLICT_POLICY_RENAME, **kw):
        return self.assets.CopyAssets(spb.CopyAssetsRequest(
            source_hub_id=s, target_hub_id=t, asset_ids=list(ids),
            options=spb.CopyOptions(include_dependencies=deps, conflict_policy=policy), **kw),
            metadata=om.as_user(user)).job

    def job(self, user, job_id):
        return self.assets.GetCopyJob(spb.GetCopyJobRequest(job_id=job_id), metadata=om.as_user(user)).job

    def wait(self, user, job_id, timeout=30, until=None):
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            j = self.job(user, job_id)
            if (until(j) if until else j.state in TERMINAL):
                return j
            time.sleep(0.05)
        raise AssertionError(f"job {job_id} still {self.job(user, job_id)}")

    def results(self, user, job_id):
        out, token = [], ""
        while True:
            r = self.assets.ListCopyJobResults(spb.ListCopyJobResultsRequest(job_id=job_id, page_size=1000,
                                                                             page_token=token),
                                               metadata=om.as_user(user))
            out += list(r.results)
            token = r.next_page_token
            if not token:
                return out

    def names(self, user, hub, type_=0):
        return sorted(a.name for a in self.assets.ListAssets(
            spb.ListAssetsRequest(hub_id=hub, type=type_, page_size=1000), metadata=om.as_user(user)).assets)


@pytest.fixture
def w(suite):
    return World(suite)


def code_reason(err):
    return err.value.code(), om.ErrorDetails(err.value).reason


# ---- ASSET-01 ------------------------------------------------------------------------

def test_asset_01_create_get_list_update_delete_with_etag(w):
    u = w.user()
    hub = w.account(u)
    form = w.create(u, hub, T.ASSET_TYPE_FORM, "Signup form", {"fields": ["email"]})
    lst = w.create(u, hub, T.ASSET_TYPE_LIST, "Newsletter", refs=[form])
    mail = w.create(u, hub, T.ASSET_TYPE_EMAIL_REGULAR, "Welcome", refs=[lst, form])
    assert mail.etag and mail.version == 1 and not mail.HasField("provenance")
    got = w.get(u, mail.asset_id)
    assert [(r.asset_id, r.type) for r in got.references] == [(lst.asset_id, T.ASSET_TYPE_LIST),
                                                             (form.asset_id, T.ASSET_TYPE_FORM)]
    # unique per account and type, ignoring case
    with pytest.raises(grpc.RpcError) as e:
        w.create(u, hub, T.ASSET_TYPE_LIST, "NEWSLETTER")
    assert code_reason(e) == (grpc.StatusCode.ALREADY_EXISTS, "NAME_CONFLICT")
    w.create(u, hub, T.ASSET_TYPE_FORM, "Newsletter")       # another type: fine
    # list: filtered by type and name, paged
    for i in range(5):
        w.create(u, hub, T.ASSET_TYPE_EMAIL_AUTOMATED, f"Drip {i}")
    r = w.assets.ListAssets(spb.ListAssetsRequest(hub_id=hub, type=T.ASSET_TYPE_EMAIL_AUTOMATED, page_size=2),
                            metadata=om.as_user(u))
    seen = [a.name for a in r.assets]
    while r.next_page_token:
        r = w.assets.ListAssets(spb.ListAssetsRequest(hub_id=hub, type=T.ASSET_TYPE_EMAIL_AUTOMATED, page_size=2,
                                                      page_token=r.next_page_token), metadata=om.as_user(u))
        seen += [a.name for a in r.assets]
    assert seen == [f"Drip {i}" for i in range(5)]
    r = w.assets.ListAssets(spb.ListAssetsRequest(hub_id=hub, name_contains="newsl"), metadata=om.as_user(u))
    assert sorted((a.type, a.name) for a in r.assets) == [(T.ASSET_TYPE_LIST, "Newsletter"),
                                                         (T.ASSET_TYPE_FORM, "Newsletter")][::-1] or \
        sorted((a.type, a.name) for a in r.assets) == sorted([(T.ASSET_TYPE_LIST, "Newsletter"),
                                                              (T.ASSET_TYPE_FORM, "Newsletter")])
    with pytest.raises(grpc.RpcError) as e:
        w.assets.ListAssets(spb.ListAssetsRequest(hub_id=hub, page_size=-1), metadata=om.as_user(u))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # update with etag; a stale etag is ABORTED
    upd = w.assets.UpdateAsset(spb.UpdateAssetRequest(
        asset=spb.Asset(asset_id=mail.asset_id, name="Welcome!", body_json='{"v": 2}'),
        update_mask=field_mask_pb2.FieldMask(paths=["name", "body_json"]), etag=mail.etag),
        metadata=om.as_user(u)).asset
    assert (upd.name, json.loads(upd.body_json), upd.version) == ("Welcome!", {"v": 2}, 2)
    with pytest.raises(grpc.RpcError) as e:
        w.assets.UpdateAsset(spb.UpdateAssetRequest(
            asset=spb.Asset(asset_id=mail.asset_id, name="x"), update_mask=field_mask_pb2.FieldMask(paths=["name"]),
            etag=mail.etag), metadata=om.as_user(u))
    assert code_reason(e) == (grpc.StatusCode.ABORTED, "ETAG_MISMATCH")
    # delete: refused while referenced, then allowed
    with pytest.raises(grpc.RpcError) as e:
        w.assets.DeleteAsset(spb.DeleteAssetRequest(asset_id=form.asset_id), metadata=om.as_user(u))
    assert code_reason(e) == (grpc.StatusCode.FAILED_PRECONDITION, "ASSET_IN_USE")
    w.assets.DeleteAsset(spb.DeleteAssetRequest(asset_id=mail.asset_id, etag=upd.etag), metadata=om.as_user(u))
    with pytest.raises(grpc.RpcError) as e:
        w.get(u, mail.asset_id)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    # events and audit in the outbox, written with the changes
    types = psql("SELECT type FROM assets.outbox ORDER BY id")
    assert "orgmesh.assets.v1.AssetCreated" in types and "orgmesh.assets.v1.AssetUpdated" in types
    assert "orgmesh.assets.v1.AssetDeleted" in types


def test_asset_01_request_id_repeat_returns_first_result(w):
    u = w.user()
    hub = w.account(u)
    a1 = w.create(u, hub, T.ASSET_TYPE_FORM, "F", request_id="r-1")
    a2 = w.create(u, hub, T.ASSET_TYPE_FORM, "F", request_id="r-1")
    assert a1.asset_id == a2.asset_id
    with pytest.raises(grpc.RpcError) as e:
        w.create(u, hub, T.ASSET_TYPE_FORM, "G", request_id="r-1")
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_asset_01_invalid_body_size_and_references_are_refused(w):
    u = w.user()
    hub, other = w.account(u), w.account(u)
    foreign = w.create(u, other, T.ASSET_TYPE_FORM, "Theirs")
    bad = [
        spb.Asset(hub_id=hub, type=T.ASSET_TYPE_FORM, name="x", body_json="{not json"),
        spb.Asset(hub_id=hub, type=T.ASSET_TYPE_FORM, name="x",
                  body_json=json.dumps({"s": "a" * (256 * 1024)})),                 # > 256 KiB
        spb.Asset(hub_id=hub, type=T.ASSET_TYPE_FORM, name="", body_json="{}"),
        spb.Asset(hub_id=hub, type=0, name="x", body_json="{}"),
        # a form references nothing; a list only forms
        spb.Asset(hub_id=hub, type=T.ASSET_TYPE_FORM, name="x", body_json="{}",
                  references=[spb.AssetReference(asset_id=foreign.asset_id, type=T.ASSET_TYPE_FORM)]),
        # another account's asset; a dangling reference; a wrong type
        spb.Asset(hub_id=hub, type=T.ASSET_TYPE_LIST, name="x", body_json="{}",
                  references=[spb.AssetReference(asset_id=foreign.asset_id, type=T.ASSET_TYPE_FORM)]),
        spb.Asset(hub_id=hub, type=T.ASSET_TYPE_LIST, name="x", body_json="{}",
                  references=[spb.AssetReference(asset_id=str(uuid.uuid4()), type=T.ASSET_TYPE_FORM)]),
        spb.Asset(hub_id=other, type=T.ASSET_TYPE_EMAIL_REGULAR, name="x", body_json="{}",
                  references=[spb.AssetReference(asset_id=foreign.asset_id, type=T.ASSET_TYPE_LIST)]),
    ]
    for a in bad:
        with pytest.raises(grpc.RpcError) as e:
            w.assets.CreateAsset(spb.CreateAssetRequest(asset=a), metadata=om.as_user(u))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, a
    assert w.names(u, hub) == []                                      # nothing partial


def test_asset_01_requires_marketing_access_or_super_admin(w):
    owner, plain, marketer = w.user(), w.user(), w.user()
    hub = w.account(owner)
    w.member(hub, plain, [apb.ROLE_ACCOUNT_PERMISSIONS])
    w.member(hub, marketer, [apb.ROLE_MARKETING_ACCESS])
    a = w.create(marketer, hub, T.ASSET_TYPE_FORM, "Mine")
    for call in (lambda: w.create(plain, hub, T.ASSET_TYPE_FORM, "No"), lambda: w.get(plain, a.asset_id)):
        with pytest.raises(grpc.RpcError) as e:
            call()
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert w.get(owner, a.asset_id).name == "Mine"


def history(w, user, hub, asset_id="", page_size=0):
    """Every entry of ListAssetHistory, page by page; also the pages' sizes."""
    out, sizes, token = [], [], ""
    while True:
        r = w.assets.ListAssetHistory(spb.ListAssetHistoryRequest(hub_id=hub, asset_id=asset_id, page_size=page_size,
                                                                  page_token=token), metadata=om.as_user(user))
        out += list(r.entries)
        sizes.append(len(r.entries))
        token = r.next_page_token
        if not token:
            return out, sizes


def unpacked(any_msg):
    if not any_msg.type_url:
        return None
    assert any_msg.type_url == "type.googleapis.com/orgmesh.assets.v1.Asset", any_msg.type_url
    a = spb.Asset()
    assert any_msg.Unpack(a)
    return a


def test_asset_01_history_lists_create_update_delete_newest_first_paged(w):
    u, plain, stranger = w.user(), w.user(), w.user()
    hub = w.account(u)
    w.account(stranger)
    w.member(hub, plain, [apb.ROLE_ACCOUNT_PERMISSIONS])            # a member without marketing rights
    a = w.create(u, hub, T.ASSET_TYPE_FORM, "Hist", request_id="hist-create")
    b = w.create(u, hub, T.ASSET_TYPE_LIST, "Other")
    upd = w.assets.UpdateAsset(spb.UpdateAssetRequest(
        asset=spb.Asset(asset_id=a.asset_id, name="Hist 2"), update_mask=field_mask_pb2.FieldMask(paths=["name"]),
        etag=a.etag), metadata=om.as_user(u)).asset
    w.assets.DeleteAsset(spb.DeleteAssetRequest(asset_id=a.asset_id, etag=upd.etag, request_id="hist-delete"),
                         metadata=om.as_user(u))
    res_a, res_b = f"accounts/{hub}/assets/{a.asset_id}", f"accounts/{hub}/assets/{b.asset_id}"

    # the whole account, two entries a page, newest first
    entries, sizes = history(w, u, hub, page_size=2)
    assert sizes == [2, 2]
    assert [(e.action, e.resource) for e in entries] == [
        ("asset.delete", res_a), ("asset.update", res_a), ("asset.create", res_b), ("asset.create", res_a)]
    assert all(e.actor == f"user:{u}" and e.time.seconds > 0 and e.id for e in entries)
    assert len({e.id for e in entries}) == 4
    assert [int(e.id) for e in entries] == sorted((int(e.id) for e in entries), reverse=True)
    dele, upde, cb, ca = entries
    assert (unpacked(dele.before).name, unpacked(dele.before).version, unpacked(dele.after)) == ("Hist 2", 2, None)
    assert dele.request_id == "hist-delete"
    assert (unpacked(upde.before).name, unpacked(upde.after).name) == ("Hist", "Hist 2")
    assert (unpacked(ca.before), unpacked(ca.after).asset_id, unpacked(ca.after).name) == (None, a.asset_id, "Hist")
    assert ca.request_id == "hist-create" and unpacked(cb.after).asset_id == b.asset_id

    # one asset (also after it was deleted), the id in any case; one page of 50 by default
    only_a, sizes = history(w, u, hub, asset_id=a.asset_id.upper())
    assert sizes == [3] and [e.action for e in only_a] == ["asset.delete", "asset.update", "asset.create"]
    assert [e.id for e in only_a] == [dele.id, upde.id, ca.id]
    only_b, _ = history(w, u, hub, asset_id=b.asset_id)
    assert [e.id for e in only_b] == [cb.id]
    assert history(w, u, hub, asset_id=str(uuid.uuid4()))[0] == []

    # a page token is bound to its filter
    first = w.assets.ListAssetHistory(spb.ListAssetHistoryRequest(hub_id=hub, page_size=1), metadata=om.as_user(u))
    assert [e.id for e in first.entries] == [dele.id] and first.next_page_token
    with om.raises_rpc(grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN"):
        w.assets.ListAssetHistory(spb.ListAssetHistoryRequest(hub_id=hub, asset_id=a.asset_id, page_size=1,
                                                              page_token=first.next_page_token),
                                  metadata=om.as_user(u))
    for bad in (spb.ListAssetHistoryRequest(hub_id=hub, page_size=-1),
                spb.ListAssetHistoryRequest(hub_id=hub, asset_id="not-a-uuid"),
                spb.ListAssetHistoryRequest(hub_id=0)):
        with pytest.raises(grpc.RpcError) as e:
            w.assets.ListAssetHistory(bad, metadata=om.as_user(u))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, bad

    # viewing rights as the other asset reads: MARKETING_ACCESS or SUPER_ADMIN
    for who in (plain, stranger):
        for req in (spb.ListAssetHistoryRequest(hub_id=hub), spb.ListAssetHistoryRequest(hub_id=hub,
                                                                                         asset_id=a.asset_id)):
            with pytest.raises(grpc.RpcError) as e:
                w.assets.ListAssetHistory(req, metadata=om.as_user(who))
            assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    marketer = w.user()
    w.member(hub, marketer, [apb.ROLE_MARKETING_ACCESS])
    assert [e.id for e in history(w, marketer, hub)[0]] == [e.id for e in entries]


# ---- ASSET-02 ------------------------------------------------------------------------

def test_asset_02_forbidden_direction_is_copy_not_allowed(w):
    u = w.user()
    org, (a, b) = w.organization(u)
    w.conn.AddConnections(cpb.AddConnectionsRequest(organization_id=org, acting_hub_id=a, from_hub_id=a,
                                                    to_hub_ids=[b], all_features=fs(D.DIRECTION_ONE_WAY, a)),
                          metadata=om.as_user(u))
    fa = w.create(u, a, T.ASSET_TYPE_FORM, "A form")
    fb = w.create(u, b, T.ASSET_TYPE_FORM, "B form")
    with pytest.raises(grpc.RpcError) as e:
        w.copy(u, b, a, [fb.asset_id])                                  # b -> a: not allowed
    assert code_reason(e) == (grpc.StatusCode.FAILED_PRECONDITION, "COPY_NOT_ALLOWED")
    j = w.copy(u, a, b, [fa.asset_id])                                  # a -> b: allowed
    assert j.state == S.COPY_JOB_STATE_QUEUED and j.total == 1          # returned at once
    assert w.wait(u, j.job_id).state == S.COPY_JOB_STATE_SUCCEEDED


def test_asset_02_requires_rights_in_both_accounts(w):
    owner, m = w.user(), w.user()
    org, a, b = w.connected(owner)
    w.member(a, m, [apb.ROLE_MARKETING_ACCESS])
    w.member(b, m, [])                                                  # member of b without rights
    f = w.create(m, a, T.ASSET_TYPE_FORM, "F")
    with pytest.raises(grpc.RpcError) as e:
        w.copy(m, a, b, [f.asset_id])
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as e:
        w.copy(owner, a, b, [str(uuid.uuid4())])                        # not an asset of a
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert psql(f"SELECT count(*) FROM assets.copy_jobs WHERE source_hub_id = {a}") == ["0"]


# ---- ASSET-04 / ASSET-05 ----------------------------------------------------------------

def make_tree(w, u, hub, prefix=""):
    form = w.create(u, hub, T.ASSET_TYPE_FORM, f"{prefix}Form")
    lst = w.create(u, hub, T.ASSET_TYPE_LIST, f"{prefix}List", refs=[form])
    mail = w.create(u, hub, T.ASSET_TYPE_EMAIL_REGULAR, f"{prefix}Mail", refs=[lst, form])
    return form, lst, mail


def test_asset_04_with_dependencies_copies_them_and_rewrites_references(w):
    u = w.user()
    org, a, b = w.connected(u)
    form, lst, mail = make_tree(w, u, a)
    j = w.wait(u, w.copy(u, a, b, [mail.asset_id], deps=True).job_id)
    assert (j.state, j.total, j.done, j.copied_count) == (S.COPY_JOB_STATE_SUCCEEDED, 3, 3, 3)
    res = {r.source_asset_id: r for r in w.results(u, j.job_id)}
    assert {k: (v.outcome, v.dependency) for k, v in res.items()} == {
        form.asset_id: (O.COPY_OUTCOME_COPIED, True), lst.asset_id: (O.COPY_OUTCOME_COPIED, True),
        mail.asset_id: (O.COPY_OUTCOME_COPIED, False)}
    new = {k: w.get(u, v.new_asset_id) for k, v in res.items()}
    assert all(n.hub_id == b for n in new.values())
    nm = new[mail.asset_id]
    assert [r.asset_id for r in nm.references] == [new[lst.asset_id].asset_id, new[form.asset_id].asset_id]
    assert [r.asset_id for r in new[lst.asset_id].references] == [new[form.asset_id].asset_id]
    assert json.loads(nm.body_json) == json.loads(mail.body_json)
    # ASSET-05: provenance
    assert (nm.provenance.source_hub_id, nm.provenance.source_asset_id, nm.provenance.job_id) == (
        a, mail.asset_id, j.job_id)
    kinds = psql(f"SELECT type FROM assets.outbox WHERE subject = 'copy_jobs/{j.job_id}' ORDER BY id")
    assert kinds == ["orgmesh.assets.v1.CopyJobStarted", "orgmesh.assets.v1.CopyJobFinished"]
    # SPEC 8: the job's creation and end are in the target's history
    hist, _ = history(w, u, b)
    assert [(e.action, e.resource) for e in hist] == [("copy_job.finish", f"accounts/{b}/copy_jobs/{j.job_id}"),
                                                      ("copy_job.create", f"accounts/{b}/copy_jobs/{j.job_id}")]
    assert hist[0].actor == "rule:ASSET-03" and hist[1].actor == f"user:{u}"
    fin = spb.CopyJob()
    assert hist[0].after.Unpack(fin) and (fin.job_id, fin.state, fin.copied_count) == (
        j.job_id, S.COPY_JOB_STATE_SUCCEEDED, 3)


def test_asset_04_without_dependencies_missing_dependency(w):
    u = w.user()
    org, a, b = w.connected(u)
    form, lst, mail = make_tree(w, u, a)
    other = w.create(u, a, T.ASSET_TYPE_FORM, "Standalone")
    j = w.wait(u, w.copy(u, a, b, [mail.asset_id, lst.asset_id, other.asset_id]).job_id)
    assert (j.state, j.total, j.copied_count, j.failed_count) == (S.COPY_JOB_STATE_PARTIALLY_SUCCEEDED, 3, 1, 2)
    res = {r.source_asset_id: r for r in w.results(u, j.job_id)}
    assert res[other.asset_id].outcome == O.COPY_OUTCOME_COPIED
    for x in (lst, mail):          # the list's form is not copied; so the mail's list fails too
        assert (res[x.asset_id].outcome, res[x.asset_id].error.reason) == (O.COPY_OUTCOME_FAILED,
                                                                           "MISSING_DEPENDENCY")
    assert w.names(u, b) == ["Standalone"]


def test_asset_04_rename_policy_appends_copy(w):
    u = w.user()
    org, a, b = w.connected(u)
    src = w.create(u, a, T.ASSET_TYPE_FORM, "Contact")
    w.create(u, b, T.ASSET_TYPE_FORM, "contact")                       # ignoring case
    j1 = w.wait(u, w.copy(u, a, b, [src.asset_id]).job_id)
    j2 = w.wait(u, w.copy(u, a, b, [src.asset_id], policy=spb.CONFLICT_POLICY_RENAME).job_id)
    j3 = w.wait(u, w.copy(u, a, b, [src.asset_id]).job_id)
    assert [j.state for j in (j1, j2, j3)] == [S.COPY_JOB_STATE_SUCCEEDED] * 3
    assert [w.results(u, j.job_id)[0].new_name for j in (j1, j2, j3)] == [
        "Contact (copy)", "Contact (copy 2)", "Contact (copy 3)"]
    assert w.names(u, b) == ["Contact (copy 2)", "Contact (copy 3)", "Contact (copy)", "contact"]


def test_asset_04_skip_policy_points_references_at_existing_asset(w):
    u = w.user()
    org, a, b = w.connected(u)
    form, lst, mail = make_tree(w, u, a)
    existing = w.create(u, b, T.ASSET_TYPE_FORM, "Form")
    j = w.wait(u, w.copy(u, a, b, [mail.asset_id], deps=True, policy=spb.CONFLICT_POLICY_SKIP).job_id)
    assert (j.state, j.copied_count, j.skipped_count) == (S.COPY_JOB_STATE_SUCCEEDED, 2, 1)
    res = {r.source_asset_id: r for r in w.results(u, j.job_id)}
    assert (res[form.asset_id].outcome, res[form.asset_id].new_asset_id) == (O.COPY_OUTCOME_SKIPPED,
                                                                            existing.asset_id)
    new_list = w.get(u, res[lst.asset_id].new_asset_id)
    assert [r.asset_id for r in new_list.references] == [existing.asset_id]


def test_asset_04_fail_policy_fails_the_conflicting_asset(w):
    u = w.user()
    org, a, b = w.connected(u)
    f1 = w.create(u, a, T.ASSET_TYPE_FORM, "Taken")
    f2 = w.create(u, a, T.ASSET_TYPE_FORM, "Free")
    w.create(u, b, T.ASSET_TYPE_FORM, "Taken")
    j = w.wait(u, w.copy(u, a, b, [f1.asset_id, f2.asset_id], policy=spb.CONFLICT_POLICY_FAIL).job_id)
    assert (j.state, j.copied_count, j.failed_count) == (S.COPY_JOB_STATE_PARTIALLY_SUCCEEDED, 1, 1)
    res = {r.source_asset_id: r for r in w.results(u, j.job_id)}
    assert (res[f1.asset_id].outcome, res[f1.asset_id].error.reason) == (O.COPY_OUTCOME_FAILED, "NAME_CONFLICT")
    assert w.names(u, b) == ["Free", "Taken"]


# ---- ASSET-03 ------------------------------------------------------------------------

def many_forms(w, u, hub, n, prefix="F"):
    return [w.create(u, hub, T.ASSET_TYPE_FORM, f"{prefix}{i:03d}").asset_id for i in range(n)]


def test_asset_03_cancelled_job_stops_and_keeps_what_was_copied(w):
    u = w.user()
    org, a, b = w.connected(u)
    ids = many_forms(w, u, a, 60)
    j = w.copy(u, a, b, ids)
    w.wait(u, j.job_id, until=lambda x: x.done >= 5)
    c = w.assets.CancelCopyJob(spb.CancelCopyJobRequest(job_id=j.job_id), metadata=om.as_user(u)).job
    assert c.state == S.COPY_JOB_STATE_CANCELLED and c.end_time.seconds > 0
    again = w.assets.CancelCopyJob(spb.CancelCopyJobRequest(job_id=j.job_id), metadata=om.as_user(u)).job
    assert again.state == S.COPY_JOB_STATE_CANCELLED                     # unchanged
    time.sleep(0.6)                                                      # a batch under way commits first
    final = w.job(u, j.job_id)
    res = w.results(u, j.job_id)
    copied = [r for r in res if r.outcome == O.COPY_OUTCOME_COPIED]
    cancelled = [r for r in res if r.outcome == O.COPY_OUTCOME_CANCELLED]
    assert 5 <= len(copied) < 60 and len(copied) + len(cancelled) == 60
    assert int(psql(f"SELECT count(*) FROM assets.assets WHERE hub_id = {b}")[0]) == len(copied)
    assert final.state == S.COPY_JOB_STATE_CANCELLED
    listed = w.assets.ListCopyJobs(spb.ListCopyJobsRequest(hub_id=b), metadata=om.as_user(u)).jobs
    assert [x.job_id for x in listed] == [j.job_id]
    done = w.wait(u, w.copy(u, a, b, ids[:1]).job_id)
    with pytest.raises(grpc.RpcError) as e:
        w.assets.CancelCopyJob(spb.CancelCopyJobRequest(job_id=done.job_id), metadata=om.as_user(u))
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_asset_03_connection_switched_off_mid_job_stops_with_copy_not_allowed(w):
    u = w.user()
    org, a, b = w.connected(u)
    ids = many_forms(w, u, a, 60)
    j = w.copy(u, a, b, ids)
    w.wait(u, j.job_id, until=lambda x: x.done >= 5)
    w.set_copying(u, org, a, b, fs(D.DIRECTION_OFF))
    final = w.wait(u, j.job_id)
    assert (final.state, final.failure_reason) == (S.COPY_JOB_STATE_FAILED, "COPY_NOT_ALLOWED")
    res = w.results(u, j.job_id)
    stopped = [r for r in res if r.outcome == O.COPY_OUTCOME_CANCELLED]
    assert stopped and all(r.error.reason == "COPY_NOT_ALLOWED" for r in stopped)
    assert 5 <= sum(r.outcome == O.COPY_OUTCOME_COPIED for r in res) < 60


# ---- ASSET-06 ------------------------------------------------------------------------

def test_asset_06_killed_mid_job_resumes_and_copies_each_asset_once(w, suite):
    u = w.user()
    org, a, b = w.connected(u)
    forms = many_forms(w, u, a, 20, "K")
    lists = [w.create(u, a, T.ASSET_TYPE_LIST, f"L{i:03d}", refs=[spb.AssetReference(
        asset_id=forms[i], type=T.ASSET_TYPE_FORM)]).asset_id for i in range(20)]
    j = w.copy(u, a, b, lists, deps=True)
    assert j.total == 40
    w.wait(u, j.job_id, until=lambda x: x.done >= 10)
    suite["assets"].kill()                                               # SIGKILL mid-job
    mid = int(psql(f"SELECT count(*) FROM assets.copy_items WHERE job_id = '{j.job_id}' AND outcome <> 1")[0])
    assert 10 <= mid < 40
    suite["assets"].restart()
    w.reconnect()
    final = w.wait(u, j.job_id, timeout=60)
    assert (final.state, final.copied_count) == (S.COPY_JOB_STATE_SUCCEEDED, 40)
    # each source asset has exactly one copy in the target, and the copies'
    # references point at copies
    rows = psql(f"SELECT source_asset_id, count(*) FROM assets.assets WHERE hub_id = {b} GROUP BY 1")
    assert len(rows) == 40 and all(r.endswith("|1") for r in rows)
    bad = psql(f"SELECT count(*) FROM assets.asset_refs r JOIN assets.assets c ON c.asset_id = r.asset_id"
               f" JOIN assets.assets t ON t.asset_id = r.ref_id WHERE c.hub_id = {b} AND t.hub_id <> {b}")
    assert bad == ["0"]
    started = psql(f"SELECT count(*) FROM assets.outbox WHERE subject = 'copy_jobs/{j.job_id}'"
                   f" AND type = 'orgmesh.assets.v1.CopyJobStarted'")
    assert started == ["1"]                                              # not again on resume


def test_asset_06_restarted_replica_reclaims_its_own_dead_leases_at_once(w, suite):
    """With the default 30 s lease, a replica killed while holding a batch
    resumes the job as soon as it is back: its next incarnation (same
    ORGMESH_REPLICA_ID) frees the leases of the dead one at start. The lease
    of another replica is left alone."""
    u = w.user()
    org, a, b = w.connected(u)
    forms = many_forms(w, u, a, 30, "Q")
    main = suite["assets"]
    main.kill()                                          # only the replica under test copies
    env = {"ORGMESH_ASSETS_LEASE_MS": "30000", "ORGMESH_ASSETS_BATCH_DELAY_MS": "0",
           "ORGMESH_REPLICA_ID": f"crash-test-{uuid.uuid4().hex[:8]}"}
    # An uncommitted asset of the same name in the target: the batch that
    # copies Q017 waits on it, holding its lease, when the replica is killed.
    blocker = subprocess.Popen([PSQL, "-qAtX", "-d", os.environ["ORGMESH_PG_URL"]], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    blocker.stdin.write(f"BEGIN; INSERT INTO assets.assets (hub_id, type, name, body) VALUES"
                        f" ({b}, {int(T.ASSET_TYPE_FORM)}, 'Q017', '{{}}'); SELECT pg_backend_pid();\n")
    blocker.stdin.flush()
    blocker_pid = int(blocker.stdout.readline().strip())
    first = second = None
    try:
        first = main.replica("assets-crash-1.log", env=env)
        stub = first.stub(sgrpc.AssetsServiceStub)
        j = stub.CopyAssets(spb.CopyAssetsRequest(source_hub_id=a, target_hub_id=b, asset_ids=forms,
                                                  options=spb.CopyOptions(conflict_policy=spb.CONFLICT_POLICY_RENAME)),
                            metadata=om.as_user(u)).job
        om.eventually(lambda: psql(f"SELECT count(*) FROM pg_stat_activity"
                                   f" WHERE {blocker_pid} = ANY(pg_blocking_pids(pid))") != ["0"], timeout=20,
                      message="the batch copying Q017 never waited on the uncommitted row")
        first.kill()                                     # SIGKILL, holding that batch's lease
        held = psql(f"SELECT count(*) FROM assets.copy_batches WHERE job_id = '{j.job_id}'"
                    f" AND finish_time IS NULL AND lease_until > now() + interval '20 seconds'")
        assert held != ["0"]                             # without reclaiming, ~30 s to wait
        blocker.stdin.write("ROLLBACK;\n")
        blocker.stdin.close()
        blocker.wait(5)
        psql(f"INSERT INTO assets.copy_batches (job_id, batch_no, rank, seq_lo, seq_hi, owner, lease_until)"
             f" VALUES ('{j.job_id}', 9999, 0, 100000, 100001, 'another-replica/1.abc/1', now() + interval '1 hour')")
        t0 = time.monotonic()
        second = main.replica("assets-crash-2.log", env=env)
        stub = second.stub(sgrpc.AssetsServiceStub)

        def done():
            job = stub.GetCopyJob(spb.GetCopyJobRequest(job_id=j.job_id), metadata=om.as_user(u)).job
            return job if job.state in TERMINAL else None
        final = om.eventually(done, timeout=20, message="the job did not resume")
        took = time.monotonic() - t0
        assert (final.state, final.copied_count) == (S.COPY_JOB_STATE_SUCCEEDED, 30)
        print(f"job done {took:.1f} s after the restart was started")
        assert took < 10, f"resumed after {took:.1f} s"  # the lease was 30 s
        rows = psql(f"SELECT source_asset_id, count(*) FROM assets.assets WHERE hub_id = {b} GROUP BY 1")
        assert len(rows) == 30 and all(r.endswith("|1") for r in rows)   # each copied once
        assert psql(f"SELECT lease_until > now() FROM assets.copy_batches WHERE job_id = '{j.job_id}'"
                    f" AND batch_no = 9999") == ["t"]    # another replica's lease: untouched
    finally:
        if blocker.poll() is None:
            blocker.kill()
        for r in (first, second):
            if r is not None:
                r.stop()
        main.restart()
        w.reconnect()


def second_replica(suite):
    """Another assets process on the same database and Redis, with the same
    settings as the session's (small batches, short lease), on ports of its
    own. The caller stops it."""
    return suite["assets"].replica("assets-replica-2.log")


def test_asset_06_two_replicas_share_a_job_and_copy_each_asset_once(w, suite):
    u = w.user()
    org, a, b = w.connected(u)
    forms = many_forms(w, u, a, 40, "R")
    lists = [w.create(u, a, T.ASSET_TYPE_LIST, f"RL{i:03d}", refs=[spb.AssetReference(
        asset_id=forms[i], type=T.ASSET_TYPE_FORM)]).asset_id for i in range(20)]
    other = second_replica(suite)
    try:
        pids = {suite["assets"].proc.pid, other.proc.pid}
        j = w.copy(u, a, b, lists + forms[20:], deps=True)                  # 40 forms + 20 lists
        assert j.total == 60
        final = w.wait(u, j.job_id, timeout=60)
        assert (final.state, final.done, final.copied_count) == (S.COPY_JOB_STATE_SUCCEEDED, 60, 60)
        # which worker took which batch: "<replica>/<pid>.<random>/<worker>"
        batches = {}
        for row in psql(f"SELECT batch_no, seq_lo, seq_hi, owner, finish_time IS NOT NULL, copied"
                        f" FROM assets.copy_batches WHERE job_id = '{j.job_id}'"):
            no, lo, hi, owner, finished, copied = row.split("|")
            batches[int(no)] = (int(lo), int(hi), int(owner.split("/")[1].split(".")[0]), finished == "t",
                                int(copied))
        items = [tuple(int(x) if x else None for x in r.split("|")) for r in psql(
            f"SELECT seq, batch_no, outcome FROM assets.copy_items WHERE job_id = '{j.job_id}' ORDER BY seq")]
        assert len(items) == 60 and {o for _, _, o in items} == {O.COPY_OUTCOME_COPIED}
        by_batch = {}
        for seq, no, _ in items:                                           # settled by one batch, holding it
            assert no in batches, (seq, no)
            lo, hi, pid, finished, _ = batches[no]
            assert finished and lo <= seq <= hi, (seq, batches[no])
            by_batch.setdefault(no, []).append(seq)
        for no, seqs in by_batch.items():                                  # its own count says the same
            assert batches[no][4] == len(seqs)
        done = sorted((lo, hi) for lo, hi, _, finished, copied in batches.values() if finished and copied)
        assert all(h1 < l2 for (_, h1), (l2, _) in zip(done, done[1:])), done   # no range taken twice
        assert {batches[no][2] for no in by_batch} == pids                # both replicas took part
        assert all(sum(len(s) for n, s in by_batch.items() if batches[n][2] == pid) > 0 for pid in pids)
        # each source asset copied exactly once, each result once, references to copies
        rows = psql(f"SELECT source_asset_id, count(*) FROM assets.assets WHERE hub_id = {b} GROUP BY 1")
        assert len(rows) == 60 and all(r.endswith("|1") for r in rows)
        res = w.results(u, j.job_id)
        assert sorted(r.source_asset_id for r in res) == sorted(lists + forms)
        assert len({r.new_asset_id for r in res}) == 60
        assert all(r.outcome == O.COPY_OUTCOME_COPIED for r in res)
        bad = psql(f"SELECT count(*) FROM assets.asset_refs r JOIN assets.assets c ON c.asset_id = r.asset_id"
                   f" JOIN assets.assets t ON t.asset_id = r.ref_id WHERE c.hub_id = {b} AND t.hub_id <> {b}")
        assert bad == ["0"]
        assert psql(f"SELECT count(*) FROM assets.outbox WHERE subject = 'copy_jobs/{j.job_id}'") == ["2"]
    finally:
        problems = other.stop()
    assert not problems, problems

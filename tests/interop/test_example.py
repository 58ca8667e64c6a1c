"""The example of docs/testing.md ("Writing a test"), verbatim: the doc
points here, so the example is run and stays true."""
import grpc
import orgmesh_testlib as om
from orgmesh.accounts.v1 import accounts_pb2 as pb, accounts_pb2_grpc as pb_grpc

OM_SERVICES = ["accounts"]          # what the session starts (default: all six)

def test_unknown_account_is_not_found(suite):
    acc = suite.stub("accounts", pb_grpc.AccountsServiceStub)
    with om.raises_rpc(grpc.StatusCode.NOT_FOUND, "NOT_FOUND") as r:
        acc.GetAccount(pb.GetAccountRequest(hub_id=999), metadata=om.as_user(42))
    assert r.details.domain == "accounts"

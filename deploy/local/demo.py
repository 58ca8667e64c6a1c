"""demo.py — run by deploy/local/up once the suite is SERVING: shows each
service's health, then creates a small example (a user and an account) if the
accounts RPCs exist. Safe to run again (finds what an earlier run created).
Other engineers extend it with one scene per capability.

Environment: build/stack-local/suite.env (written by up); PYTHONPATH with
build/python and tests/interop.
"""

import os
import sys

import grpc

import orgmesh_testlib as om


def dev_secret():
    # ORGMESH_JWT_SIGNING_KEY is "kid:HS256:secret" for local runs.
    key = os.environ.get("ORGMESH_JWT_SIGNING_KEY", "dev:HS256:orgmesh-dev-secret")
    kid, _alg, secret = key.split(":", 2)
    return kid, secret


def token(sub, **kw):
    kid, secret = dev_secret()
    return om.mint_token(sub, kid=kid, secret=secret, **kw)


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


def scene_accounts():
    """A user, Alice, and an account she is SUPER_ADMIN of."""
    addr = os.environ.get("ORGMESH_ACCOUNTS_ADDR")
    if not addr:
        return
    from orgmesh.accounts.v1 import accounts_pb2 as pb, accounts_pb2_grpc as rpc
    print("\nAccounts:")
    with grpc.insecure_channel(addr) as ch:
        stub = rpc.AccountsServiceStub(ch)
        svc_md = om.bearer(token("service:demo"))
        try:
            try:
                alice = stub.CreateUser(pb.CreateUserRequest(user=pb.User(
                    email="alice@example.com", display_name="Alice Example", locale="en",
                    two_factor_enabled=True)), metadata=svc_md, timeout=5).user
                print(f"  created user {alice.user_id} <{alice.email}>")
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.ALREADY_EXISTS:
                    raise
                alice = stub.GetUserByEmail(pb.GetUserByEmailRequest(email="alice@example.com"),
                                            metadata=svc_md, timeout=5).user
                print(f"  found user {alice.user_id} <{alice.email}> (from an earlier run)")
            alice_md = om.bearer(token(alice.user_id))
            mine = stub.ListAccounts(pb.ListAccountsRequest(), metadata=alice_md, timeout=5)
            acct = next((a for a in mine.accounts if a.name == "Example Co"), None)
            if acct is None:
                acct = stub.CreateAccount(pb.CreateAccountRequest(account=pb.Account(
                    name="Example Co", kind=pb.ACCOUNT_KIND_STANDARD, hosting_location="na1")),
                    metadata=alice_md, timeout=5).account
                print(f"  created account {acct.hub_id} \"{acct.name}\" (Alice is SUPER_ADMIN)")
            else:
                print(f"  found account {acct.hub_id} \"{acct.name}\"")
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.UNIMPLEMENTED:
                print("  the accounts RPCs are not implemented yet: nothing created")
                return
            d = om.error_details(e)
            print(f"  accounts call failed: {d!r}")
            raise


def main():
    show_health()
    scene_accounts()
    return 0


if __name__ == "__main__":
    sys.exit(main())

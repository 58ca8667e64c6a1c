#!/usr/bin/env python3
"""demo_accounts.py — loads demo data into a running accounts service: users,
accounts of each kind (one with MARKETING ENTERPRISE, a STARTER-only one, two
PARTNER agencies, a SANDBOX) and memberships. deploy/local/demo.py loads it
(load()) and plays its scenes with these people.

Safe to run again: every item has a fixed id (the import range, below the
server's sequences) and a fixed request_id; an item that is already there is
found and kept as it is.
Partner-employee tags and partner links are the partners service's to make
(SPEC 1): its own demo does that through the partners API.

    python3 deploy/local/demo_accounts.py [--addr 127.0.0.1:50051]

Stubs come from <build>/python (ORGMESH_BUILD_DIR, default <repo>/build). The
service:demo-loader token is signed with the local key bound to it
("dev-demo-loader", deploy/local/lib.sh; ORGMESH_DEMO_SERVICE_KEY overrides),
with ORGMESH_JWT_ISSUER and ORGMESH_JWT_AUDIENCE.
Run it with /usr/bin/python3 (Debian's grpcio)."""

import argparse
import base64
import hashlib
import hmac
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(os.environ.get("ORGMESH_BUILD_DIR", REPO / "build")) / "python"))

import grpc  # noqa: E402
from orgmesh.accounts.v1 import accounts_pb2 as pb  # noqa: E402
from orgmesh.accounts.v1 import accounts_pb2_grpc as pb_grpc  # noqa: E402
from orgmesh.type.v1 import money_pb2  # noqa: E402

# (user_id, email, display name, locale, two-factor)
USERS = [
    (101, "ada@acme.example", "Ada Lovelace", "en", True),
    (102, "giulia@acme.example", "Giulia Rossi", "it", True),
    (103, "kenji@acme.example", "Kenji Sato", "ja", False),
    (104, "lucia@globex.example", "Lucía García", "es", True),
    (105, "paula@brightagency.example", "Paula Souza", "pt-BR", True),
    (106, "jan@brightagency.example", "Jan de Vries", "nl", False),
    (107, "ola@brightagency.example", "Ola Nowak", "pl", True),
    (108, "noor@novapartners.example", "Noor Haddad", "en", True),
]

# (hub_id, name, kind, hosting location, [(hub, tier)], sensitive data, MRR minor units, currency)
ACCOUNTS = [
    (1001, "Acme Global", pb.ACCOUNT_KIND_STANDARD, "eu1",
     [(pb.HUB_MARKETING, pb.TIER_ENTERPRISE), (pb.HUB_SALES, pb.TIER_PROFESSIONAL)], False, 3200000, "EUR"),
    (1002, "Acme Italia", pb.ACCOUNT_KIND_STANDARD, "eu1",
     [(pb.HUB_MARKETING, pb.TIER_PROFESSIONAL), (pb.HUB_SERVICE, pb.TIER_STARTER)], False, 89000, "EUR"),
    (1003, "Acme Japan", pb.ACCOUNT_KIND_STANDARD, "eu1",
     [(pb.HUB_SALES, pb.TIER_PROFESSIONAL)], True, 12000000, "JPY"),
    (1004, "Globex US", pb.ACCOUNT_KIND_STANDARD, "na1",
     [(pb.HUB_MARKETING, pb.TIER_STARTER), (pb.HUB_CMS, pb.TIER_FREE)], False, 4500, "USD"),
    (1005, "Bright Agency", pb.ACCOUNT_KIND_PARTNER, "eu1",
     [(pb.HUB_MARKETING, pb.TIER_PROFESSIONAL)], False, 36000, "EUR"),
    (1006, "Acme Sandbox", pb.ACCOUNT_KIND_SANDBOX, "eu1",
     [(pb.HUB_MARKETING, pb.TIER_ENTERPRISE)], False, 0, ""),
    (1007, "Acme Labs", pb.ACCOUNT_KIND_STANDARD, "eu1",
     [(pb.HUB_MARKETING, pb.TIER_STARTER)], False, 2000, "EUR"),
    (1008, "Nova Partners", pb.ACCOUNT_KIND_PARTNER, "eu1",
     [(pb.HUB_MARKETING, pb.TIER_PROFESSIONAL)], False, 24000, "EUR"),
]

SA, PA, AP, MA = pb.ROLE_SUPER_ADMIN, pb.ROLE_PARTNER_ADMIN, pb.ROLE_ACCOUNT_PERMISSIONS, pb.ROLE_MARKETING_ACCESS
SALES, SERVICE = pb.SEAT_SALES, pb.SEAT_SERVICE
# (hub_id, user_id, roles, seats)
MEMBERSHIPS = [
    (1001, 101, [SA], [SALES]),
    (1002, 101, [SA], []),
    (1003, 101, [SA], []),
    (1006, 101, [SA], []),
    (1007, 101, [SA], []),
    (1001, 102, [MA], [SALES]),
    (1002, 102, [SA, MA], [SALES, SERVICE]),
    (1001, 103, [MA], []),
    (1003, 103, [AP], [SERVICE]),
    (1004, 104, [SA], [SALES]),
    (1005, 105, [SA, AP], []),
    (1005, 106, [MA], []),
    (1005, 107, [MA], [SALES]),
    (1001, 105, [PA], []),
    (1008, 108, [SA], []),
    (1008, 106, [MA], []),   # Jan also works for a second agency (PART-06 in the demo)
]


def b64url(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def service_token(name):
    # SPEC 8: service:<name> is signed with the key bound to it; locally that
    # is "dev-<name>" (deploy/local/lib.sh), unless ORGMESH_DEMO_SERVICE_KEY says.
    key = os.environ.get("ORGMESH_DEMO_SERVICE_KEY", f"dev-{name}:HS256:orgmesh-dev-secret-{name}")
    kid, alg, secret = key.split(":", 2)
    if alg != "HS256":
        sys.exit("demo_accounts: ORGMESH_DEMO_SERVICE_KEY must be an HS256 key (local development)")
    now = int(time.time())
    claims = {"sub": f"service:{name}", "iss": os.environ.get("ORGMESH_JWT_ISSUER", "orgmesh-local"),
              "aud": os.environ.get("ORGMESH_JWT_AUDIENCE", "orgmesh"), "iat": now, "exp": now + 600}
    head = {"alg": "HS256", "typ": "JWT", "kid": kid}
    signing_input = b64url(json.dumps(head).encode()) + "." + b64url(json.dumps(claims).encode())
    sig = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64url(sig)


def create(call, req, md, fetch):
    """Finds an item, or creates it when it is not there yet."""
    try:
        return fetch(), "already there"
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.NOT_FOUND:
            raise
    try:
        return call(req, metadata=md, timeout=10), "ok"
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.ALREADY_EXISTS:
            raise
        return fetch(), "already there"


def load(ch, md=None, say=print):
    """Loads USERS, ACCOUNTS and MEMBERSHIPS through channel `ch`; returns
    {"users": (created, already there), "accounts": ..., "memberships": ...}."""
    md = md or (("authorization", "Bearer " + service_token("demo-loader")),)
    acc = pb_grpc.AccountsServiceStub(ch)
    counts = {"users": [0, 0], "accounts": [0, 0], "memberships": [0, 0]}

    def count(kind, how):
        counts[kind][0 if how == "ok" else 1] += 1

    for uid, email, name, locale, tfa in USERS:
        u = pb.User(user_id=uid, email=email, display_name=name, locale=locale, two_factor_enabled=tfa)
        got, how = create(acc.CreateUser, pb.CreateUserRequest(user=u, request_id=f"demo-user-{uid}"), md,
                          lambda: acc.GetUser(pb.GetUserRequest(user_id=uid), metadata=md).user)
        count("users", how)
        say(f"user {uid:>6} {email:<28} {how}")
    for hub, name, kind, loc, subs, sensitive, mrr, cur in ACCOUNTS:
        acct = pb.Account(hub_id=hub, name=name, kind=kind, hosting_location=loc,
                          subscriptions=[pb.Subscription(hub=h, tier=t) for h, t in subs],
                          sensitive_data_enabled=sensitive,
                          mrr=money_pb2.Money(amount_minor=mrr, currency_code=cur) if cur else None)
        got, how = create(acc.CreateAccount, pb.CreateAccountRequest(account=acct, request_id=f"demo-acct-{hub}"),
                          md, lambda: acc.GetAccount(pb.GetAccountRequest(hub_id=hub), metadata=md).account)
        count("accounts", how)
        say(f"account {hub:>6} {name:<24} {pb.AccountKind.Name(kind):<22} {how}")
    for hub, uid, roles, seats in MEMBERSHIPS:
        m = pb.Membership(hub_id=hub, user_id=uid, roles=roles, seats=seats)
        got, how = create(acc.CreateMembership,
                          pb.CreateMembershipRequest(membership=m, request_id=f"demo-member-{hub}-{uid}"), md,
                          lambda: acc.GetMembership(pb.GetMembershipRequest(hub_id=hub, user_id=uid),
                                                    metadata=md).membership)
        count("memberships", how)
        say(f"member {hub:>6} {uid:>6} {'+'.join(pb.Role.Name(r)[5:] for r in roles):<32} {how}")
    return {k: tuple(v) for k, v in counts.items()}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--addr", default=os.environ.get("ORGMESH_ACCOUNTS_ADDR", "127.0.0.1:50051"))
    a = p.parse_args()
    with grpc.insecure_channel(a.addr) as ch:
        load(ch)
    print("demo accounts loaded; mint a user token with sub=<user_id> to act as one of them")
    return 0


if __name__ == "__main__":
    sys.exit(main())

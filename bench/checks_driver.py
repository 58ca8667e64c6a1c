#!/usr/bin/python3
"""checks_driver.py — the parts of benchmark scenario 7 (docs/benchmarks.md,
issue 18) that h2load cannot do alone.

  checks_driver.py batch-body --out FILE --user U --source S --target T --items N
      writes a gRPC frame (h2load -d) of a BatchCheckMirrorAccessRequest of N
      copies of the item (U, S, T);
  checks_driver.py batch-probe --addr A --token JWT --user U --source S --target T --items N
      sends that batch once and exits 0 only if it answers N results, each OK
      and allowed (h2load does not read replies);
  checks_driver.py fresh --addr A --token JWT --manager-token JWT --org ORG
                         --user U --source S --target T --n N --json OUT
      N times: a BatchUpdateConnections by the organization's manager turns
      mirroring S->T off or on (alternately), keeps the consistency_token it
      returns, waits --age-ms (1) and asks CheckMirrorAccess with
      at_least_as_fresh = that token. Records each check's latency (as this
      client sees it, from the call to the reply) and whether its answer was
      the one the write made (allowed after "on", denied after "off"): a
      wrong answer is a broken token. Writes p50/p90/p99/max and the count of
      wrong answers to OUT;
  checks_driver.py fresh-seat --addr A --accounts A2 --token JWT --psql PSQL --pg-url URL --n N --json OUT
      the same with the token of an accounts write (a reader's seat in T
      taken and given back): the check waits for connections to apply the
      accounts event (see fresh_seat).

Run with Debian's /usr/bin/python3 (grpcio) and PYTHONPATH=<build>/python."""

import argparse
import json
import math
import struct
import sys
import time

import grpc

from orgmesh.connections.v1 import connections_pb2 as cpb, connections_pb2_grpc as cgrpc


def pct(xs, p):
    if not xs:
        return None
    k = max(0, min(len(xs) - 1, math.ceil(p / 100.0 * len(xs)) - 1))
    return xs[k]


def batch_request(a):
    return cpb.BatchCheckMirrorAccessRequest(items=[
        cpb.MirrorAccessItem(user_id=a.user, source_hub_id=a.source, target_hub_id=a.target)
        for _ in range(a.items)])


def batch_body(a):
    msg = batch_request(a).SerializeToString()
    with open(a.out, "wb") as f:
        f.write(b"\0" + struct.pack(">I", len(msg)) + msg)


def batch_probe(a):
    stub = cgrpc.ConnectionsServiceStub(grpc.insecure_channel(a.addr))
    r = stub.BatchCheckMirrorAccess(batch_request(a), metadata=[("authorization", "Bearer " + a.token)],
                                    timeout=10)
    bad = [i for i, x in enumerate(r.results) if x.status.code != 0 or not x.allowed]
    if len(r.results) != a.items or bad:
        sys.exit(f"batch probe: {len(r.results)} results for {a.items} items, "
                 f"{len(bad)} not OK/allowed (first: {r.results[bad[0]] if bad else '-'})")
    print(f"batch probe: {a.items} results, all allowed")


def fresh(a):
    ch = grpc.insecure_channel(a.addr)
    grpc.channel_ready_future(ch).result(timeout=10)
    stub = cgrpc.ConnectionsServiceStub(ch)
    svc = [("authorization", "Bearer " + a.token)]
    mgr = [("authorization", "Bearer " + a.manager_token)]
    on = cpb.FeatureSetting(direction=cpb.DIRECTION_ONE_WAY, source_hub_id=a.source)
    off = cpb.FeatureSetting(direction=cpb.DIRECTION_OFF)
    check = cpb.CheckMirrorAccessRequest(user_id=a.user, source_hub_id=a.source, target_hub_id=a.target)
    lat, write_ms, wrong, failed, stale_cached = [], [], 0, [], 0
    # warm both paths (the first calls set up the channel's streams and the worker's statements)
    for _ in range(3):
        stub.CheckMirrorAccess(check, metadata=svc, timeout=5)
    for i in range(a.n):
        allow = i % 2 == 1  # the connection starts ON: first turn it off
        ch_ = cpb.ConnectionChange(operation=cpb.ConnectionChange.OPERATION_UPDATE, account_a=a.source,
                                   account_b=a.target, mirroring=on if allow else off)
        t0 = time.perf_counter()
        w = stub.BatchUpdateConnections(cpb.BatchUpdateConnectionsRequest(
            organization_id=a.org, acting_hub_id=a.source, changes=[ch_]), metadata=mgr, timeout=10)
        t1 = time.perf_counter()
        write_ms.append((t1 - t0) * 1000)
        if not w.consistency_token:
            sys.exit(f"fresh: BatchUpdateConnections returned no consistency_token (iteration {i})")
        # the token is from a write a.age_ms old
        while time.perf_counter() - t1 < a.age_ms / 1000.0:
            pass
        req = cpb.CheckMirrorAccessRequest(user_id=a.user, source_hub_id=a.source, target_hub_id=a.target,
                                           consistency=cpb.Consistency(at_least_as_fresh=w.consistency_token))
        t2 = time.perf_counter()
        try:
            r = stub.CheckMirrorAccess(req, metadata=svc, timeout=5)
        except grpc.RpcError as e:
            failed.append(f"{e.code().name}: {e.details()}")
            continue
        lat.append((time.perf_counter() - t2) * 1000)
        if r.allowed != allow:
            wrong += 1
        # the default (minimize_latency) right after: how often the cache alone was behind
        if stub.CheckMirrorAccess(check, metadata=svc, timeout=5).allowed != allow:
            stale_cached += 1
    lat.sort()
    write_ms.sort()
    out = {"n": len(lat), "age_ms": a.age_ms, "wrong": wrong, "failed": len(failed), "failed_samples": failed[:5],
           "p50_ms": pct(lat, 50), "p90_ms": pct(lat, 90), "p99_ms": pct(lat, 99), "max_ms": lat[-1] if lat else None,
           "write_p50_ms": pct(write_ms, 50), "write_p99_ms": pct(write_ms, 99),
           "minimize_latency_behind": stale_cached,
           "note": f"token from a BatchUpdateConnections {a.age_ms:g} ms old (python client: latency includes "
                   "its own per-call overhead);"}
    with open(a.json, "w") as f:
        json.dump(out, f)
    print(json.dumps(out))
    if wrong or failed:
        sys.exit(1)


def fresh_seat(a):
    """The token of an accounts write: a reader's SALES seat in T taken and
    given back (UpdateMembership, accounts -> outbox -> Redis -> connections'
    copy), each followed a.age_ms later by CheckMirrorAccess with its token:
    the check waits until connections has applied that event. The accounts,
    user and membership are made through the accounts service; the
    organization and the connection S->T are written into connections' copies
    (as scenario 2 does)."""
    from google.protobuf import field_mask_pb2
    from orgmesh.accounts.v1 import accounts_pb2 as apb, accounts_pb2_grpc as agrpc
    import random
    import subprocess
    import uuid
    cch = grpc.insecure_channel(a.addr)
    ach = grpc.insecure_channel(a.accounts)
    for c in (cch, ach):
        grpc.channel_ready_future(c).result(timeout=10)
    conn, acc = cgrpc.ConnectionsServiceStub(cch), agrpc.AccountsServiceStub(ach)
    svc = [("authorization", "Bearer " + a.token)]
    rid = lambda: random.randint(10**9, 9 * 10**9)
    user = acc.CreateUser(apb.CreateUserRequest(user=apb.User(
        user_id=rid(), email=f"bench-{uuid.uuid4().hex[:12]}@example.com", display_name="bench", locale="en")),
        metadata=svc, timeout=10).user.user_id
    hubs, toks = [], []
    for _ in range(2):
        r = acc.CreateAccount(apb.CreateAccountRequest(account=apb.Account(
            hub_id=rid(), name=f"bench-{uuid.uuid4().hex[:8]}", kind=apb.ACCOUNT_KIND_STANDARD,
            hosting_location="na1")), metadata=svc, timeout=10)
        hubs.append(r.account.hub_id)
        toks.append(getattr(r, "consistency_token", ""))  # CreateAccount has none (a new account changes no check)
    s, t = hubs
    toks.append(acc.CreateMembership(apb.CreateMembershipRequest(membership=apb.Membership(
        hub_id=t, user_id=user, seats=[apb.SEAT_SALES])), metadata=svc, timeout=10).consistency_token)
    org = str(uuid.uuid4())
    sql = f"""INSERT INTO connections.orgs (organization_id, version) VALUES ('{org}', 1);
INSERT INTO connections.org_members (organization_id, hub_id) VALUES ('{org}', {s}), ('{org}', {t});
INSERT INTO connections.connections (organization_id, account_a, account_b, mirroring, mirroring_source, asset_copying)
  VALUES ('{org}', {min(s, t)}, {max(s, t)}, 3, {s}, 2);
SELECT pg_notify('connections_cache', '');"""
    subprocess.run([a.psql, "-qAtX", "-v", "ON_ERROR_STOP=1", "-d", a.pg_url, "-c", sql], check=True,
                   stdout=subprocess.DEVNULL)
    check = cpb.CheckMirrorAccessRequest(user_id=user, source_hub_id=s, target_hub_id=t)
    for tok in toks:  # connections has the accounts and the membership
        if tok:
            r = conn.CheckMirrorAccess(cpb.CheckMirrorAccessRequest(
                user_id=user, source_hub_id=s, target_hub_id=t,
                consistency=cpb.Consistency(at_least_as_fresh=tok)), metadata=svc, timeout=10)
    if not r.allowed:
        sys.exit(f"fresh-seat: the set-up check is not allowed ({r})")
    lat, write_ms, wrong, failed = [], [], 0, []
    for i in range(a.n):
        allow = i % 2 == 1  # first take the seat
        t0 = time.perf_counter()
        tok = acc.UpdateMembership(apb.UpdateMembershipRequest(
            membership=apb.Membership(hub_id=t, user_id=user, seats=[apb.SEAT_SALES] if allow else []),
            update_mask=field_mask_pb2.FieldMask(paths=["seats"])), metadata=svc, timeout=10).consistency_token
        t1 = time.perf_counter()
        write_ms.append((t1 - t0) * 1000)
        if not tok:
            sys.exit(f"fresh-seat: UpdateMembership returned no consistency_token (iteration {i})")
        while time.perf_counter() - t1 < a.age_ms / 1000.0:
            pass
        req = cpb.CheckMirrorAccessRequest(user_id=user, source_hub_id=s, target_hub_id=t,
                                           consistency=cpb.Consistency(at_least_as_fresh=tok))
        t2 = time.perf_counter()
        try:
            r = conn.CheckMirrorAccess(req, metadata=svc, timeout=10)
        except grpc.RpcError as e:
            failed.append(f"{e.code().name}: {e.details()}")
            continue
        lat.append((time.perf_counter() - t2) * 1000)
        if r.allowed != allow:
            wrong += 1
    lat.sort()
    write_ms.sort()
    out = {"n": len(lat), "age_ms": a.age_ms, "wrong": wrong, "failed": len(failed), "failed_samples": failed[:5],
           "p50_ms": pct(lat, 50), "p90_ms": pct(lat, 90), "p99_ms": pct(lat, 99), "max_ms": lat[-1] if lat else None,
           "write_p50_ms": pct(write_ms, 50), "write_p99_ms": pct(write_ms, 99),
           "note": f"token from an accounts UpdateMembership (a seat taken or given back) {a.age_ms:g} ms old, "
                   "the check waiting for connections to apply its event (python client);"}
    with open(a.json, "w") as f:
        json.dump(out, f)
    print(json.dumps(out))
    if wrong or failed:
        sys.exit(1)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["batch-body", "batch-probe", "fresh", "fresh-seat"])
    p.add_argument("--accounts")
    p.add_argument("--psql")
    p.add_argument("--pg-url")
    p.add_argument("--addr")
    p.add_argument("--token")
    p.add_argument("--manager-token")
    p.add_argument("--org")
    p.add_argument("--user", type=int)
    p.add_argument("--source", type=int)
    p.add_argument("--target", type=int)
    p.add_argument("--items", type=int, default=100)
    p.add_argument("--out")
    p.add_argument("--n", type=int, default=300)
    p.add_argument("--age-ms", type=float, default=1.0)
    p.add_argument("--json")
    a = p.parse_args()
    {"batch-body": batch_body, "batch-probe": batch_probe, "fresh": fresh, "fresh-seat": fresh_seat}[a.mode](a)


if __name__ == "__main__":
    main()

#!/usr/bin/python3
"""events_driver.py — benchmark scenario 5 (docs/benchmarks.md, SPEC 9: "an
event reaches the SMTP server within 500 ms (p99) at 200 events/s").

Given running accounts, partners and notifier services (the notifier mailing
bench/smtp_sink.py, with no per-client cap), it

1. sets up one PARTNER account with a manager, K tagged employees, and N
   client accounts each with exactly one SUPER_ADMIN (so one access request =
   one AccessRequested event = one email), all on the partner's client list;
2. sends AssignClientsToEmployee (one client per call, a fresh employee/client
   pair each time, so every call creates a PENDING request) at a fixed rate,
   open loop: call i is due at t0 + i/rate whatever the replies do;
3. waits until the SMTP server has every expected email (or nothing new came
   for --drain-timeout seconds), then joins, per email: the driver's RPC
   completion time, the event's Envelope.time (set by evt_emit in the
   request's transaction, just before COMMIT), the outbox relay time, the
   notifier's delivery row times (create_time = consumer transaction start,
   send_time = sender transaction start) and the SMTP acceptance time;
4. writes everything to --json (bench/report.py reads it).

Run with Debian's /usr/bin/python3 (grpcio) and PYTHONPATH=<build>/python.
Tokens: --service-token, and the manager's token is minted with --token-tool
(ORGMESH_JWT_SIGNING_KEY in the environment)."""

import argparse
import asyncio
import json
import math
import os
import random
import subprocess
import sys
import time

import grpc

from orgmesh.accounts.v1 import accounts_pb2 as apb, accounts_pb2_grpc as agrpc
from orgmesh.events.v1 import envelope_pb2
from orgmesh.partners.v1 import partners_pb2 as ppb, partners_pb2_grpc as pgrpc

REQUESTED = ppb.AssignmentOutcome.Value("ASSIGNMENT_OUTCOME_ACCESS_REQUESTED")


def log(msg):
    print(f"events: {msg}", file=sys.stderr, flush=True)


def pct(xs, p):
    """Nearest-rank percentile of a sorted list."""
    if not xs:
        return None
    k = max(0, min(len(xs) - 1, math.ceil(p / 100.0 * len(xs)) - 1))
    return xs[k]


def summary_ms(xs):
    xs = sorted(xs)
    if not xs:
        return None
    return {"n": len(xs), "p50_ms": round(pct(xs, 50) * 1000, 2), "p90_ms": round(pct(xs, 90) * 1000, 2),
            "p99_ms": round(pct(xs, 99) * 1000, 2), "max_ms": round(xs[-1] * 1000, 2),
            "min_ms": round(xs[0] * 1000, 2), "mean_ms": round(sum(xs) / len(xs) * 1000, 2)}


def psql(url, query):
    r = subprocess.run([os.environ.get("OM_PSQL", "/usr/lib/postgresql/15/bin/psql"), "-qAtX", "-F", "\t",
                        "-v", "ON_ERROR_STOP=1", "-d", url, "-c", query],
                       capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise RuntimeError(r.stderr.strip())
    return [line.split("\t") for line in r.stdout.splitlines() if line]


def in_batches(futures_fn, items, width=32):
    """Runs futures_fn(item) -> grpc future, `width` at a time; the results."""
    out = []
    for i in range(0, len(items), width):
        fs = [futures_fn(x) for x in items[i:i + width]]
        out += [f.result() for f in fs]
    return out


def setup(a, clients, employees, svc_md, token_tool, tag):
    acc = agrpc.AccountsServiceStub(grpc.insecure_channel(a.accounts))
    par = pgrpc.PartnersServiceStub(grpc.insecure_channel(a.partners))

    def user(name):
        return acc.CreateUser.future(apb.CreateUserRequest(user=apb.User(
            email=f"{name}.{tag}@bench.example", display_name=name.replace("-", " ").title(), locale="en")),
            metadata=svc_md, timeout=30)

    def account(name, kind):
        return acc.CreateAccount.future(apb.CreateAccountRequest(account=apb.Account(
            name=f"{name} {tag}", kind=kind, hosting_location="na1")), metadata=svc_md, timeout=30)

    def member(hub, uid, roles=()):
        return acc.CreateMembership.future(apb.CreateMembershipRequest(membership=apb.Membership(
            hub_id=hub, user_id=uid, roles=list(roles))), metadata=svc_md, timeout=30)

    M = user("mia-manager").result().user
    P = account("Bench Agency", apb.ACCOUNT_KIND_PARTNER).result().account
    member(P.hub_id, M.user_id, [apb.ROLE_SUPER_ADMIN]).result()
    env = dict(os.environ)
    mtok = subprocess.run([token_tool, "--sub", str(M.user_id), "--ttl", "7200"], capture_output=True, text=True,
                          env=env, check=True).stdout.strip()
    m_md = (("authorization", "Bearer " + mtok),)

    emps = [r.user for r in in_batches(lambda i: user(f"employee-{i}"), list(range(employees)))]
    in_batches(lambda e: member(P.hub_id, e.user_id), emps)
    for i in range(0, len(emps), 100):
        res = par.TagEmployees(ppb.TagEmployeesRequest(partner_hub_id=P.hub_id,
                                                       user_ids=[e.user_id for e in emps[i:i + 100]]),
                               metadata=m_md, timeout=60).results
        bad = [r for r in res if r.status != ppb.ITEM_STATUS_DONE]
        if bad:
            raise RuntimeError(f"TagEmployees: {bad[0]}")
    admins = [r.user for r in in_batches(lambda i: user(f"client-admin-{i}"), list(range(clients)))]
    accts = [r.account for r in in_batches(lambda i: account(f"Client {i}", apb.ACCOUNT_KIND_STANDARD),
                                            list(range(clients)))]
    in_batches(lambda i: member(accts[i].hub_id, admins[i].user_id, [apb.ROLE_SUPER_ADMIN]), list(range(clients)))
    for i in range(0, len(accts), 100):
        par.AddClients(ppb.AddClientsRequest(partner_hub_id=P.hub_id,
                                             client_hub_ids=[c.hub_id for c in accts[i:i + 100]]),
                       metadata=m_md, timeout=60)
    return P, m_md, [e.user_id for e in emps], [c.hub_id for c in accts]


async def drive(a, P, m_md, pairs):
    """Open loop: call i is due at t0 + i/rate. Returns one record per call."""
    recs = [None] * len(pairs)
    async with grpc.aio.insecure_channel(a.partners) as ch:
        stub = pgrpc.PartnersServiceStub(ch)
        await ch.channel_ready()

        async def one(i, due_wall):
            e, c = pairs[i]
            r = {"i": i, "due": due_wall, "employee": e, "client": c}
            try:
                resp = await stub.AssignClientsToEmployee(ppb.AssignClientsToEmployeeRequest(
                    partner_hub_id=P.hub_id, employee_user_id=e, client_hub_ids=[c]), metadata=m_md, timeout=30)
                r["done"] = time.time()
                res = resp.results[0]
                if res.outcome == REQUESTED and res.access_request.access_request_id:
                    r["ok"] = True
                    r["request"] = res.access_request.access_request_id
                else:
                    r["ok"] = False
                    r["error"] = f"outcome {ppb.AssignmentOutcome.Name(res.outcome)} {res.error.reason}"
            except grpc.RpcError as ex:
                r["done"] = time.time()
                r["ok"] = False
                r["error"] = f"{ex.code().name}: {ex.details()}"
            recs[i] = r

        loop = asyncio.get_running_loop()
        tasks = []
        t0 = loop.time() + 0.2
        w0 = time.time() + (t0 - loop.time())
        late = 0.0
        for i in range(len(pairs)):
            due = t0 + i / a.rate
            d = due - loop.time()
            if d > 0:
                await asyncio.sleep(d)
            else:
                late = max(late, -d)
            tasks.append(asyncio.ensure_future(one(i, w0 + i / a.rate)))
        sent_end = time.time()
        await asyncio.gather(*tasks)
    return recs, {"start": w0, "last_sent": sent_end, "max_send_lag_ms": round(late * 1000, 2)}


def read_sink(path):
    out = []
    try:
        with open(path) as f:
            for line in f:
                if line.endswith("\n"):
                    out.append(json.loads(line))
    except FileNotFoundError:
        pass
    return out


def backlog(redis):
    """Entries not yet acknowledged by some consumer group, over every
    orgmesh:events:* stream (XINFO GROUPS: lag + pending); None if unknown."""
    host, _, port = redis.rpartition(":")
    cli = ["redis-cli", "-h", host, "-p", port]
    try:
        keys = subprocess.run(cli + ["--scan", "--pattern", "orgmesh:events:*"], capture_output=True, text=True,
                              timeout=10, check=True).stdout.split()
        total = 0
        for k in keys:
            out = subprocess.run(cli + ["XINFO", "GROUPS", k], capture_output=True, text=True, timeout=10,
                                 check=True).stdout.split("\n")
            for i in range(0, len(out) - 1, 2):
                if out[i] in ("pending", "lag") and out[i + 1].strip().isdigit():
                    total += int(out[i + 1])
        return total
    except (OSError, subprocess.SubprocessError):
        return None


def measure(a, P, m_md, pairs, total, clients, employees, setup_s, settle):
    """One open-loop run of len(pairs) calls at a.rate; waits for the emails,
    joins them with the database and returns the result."""
    before = len(read_sink(a.sink_log))
    la0 = open("/proc/loadavg").read().split()[:3]
    log(f"set-up took {setup_s:.1f} s; {total} AssignClientsToEmployee at {a.rate:g}/s, open loop")
    recs, run = asyncio.run(drive(a, P, m_md, pairs))
    la1 = open("/proc/loadavg").read().split()[:3]
    ok = [r for r in recs if r.get("ok")]
    want = {r["request"]: r for r in ok}
    log(f"{len(ok)} of {total} calls created a request; waiting for the emails")
    last_n, last_change = -1, time.time()
    while True:
        mails = read_sink(a.sink_log)[before:]
        got = {m["request"] for m in mails if m.get("request") in want}
        if len(got) >= len(want):
            break
        if len(mails) != last_n:
            last_n, last_change = len(mails), time.time()
        elif time.time() - last_change > a.drain_timeout:
            log(f"nothing new for {a.drain_timeout:g} s: {len(got)} of {len(want)} emails")
            break
        time.sleep(0.25)
    drained = time.time()
    la2 = open("/proc/loadavg").read().split()[:3]
    mails = read_sink(a.sink_log)[before:]

    # The database side: the events (partners outbox) and the deliveries.
    outbox = {}
    for eid, hexenv, created, relayed in psql(
            a.pg_url, "SELECT event_id, encode(envelope, 'hex'), extract(epoch FROM created_at),"
                      " extract(epoch FROM relayed_at) FROM partners.outbox"
                      " WHERE type = 'orgmesh.partners.v1.AccessRequested'"
                      f" AND subject LIKE 'partners/{P.hub_id}/%'"):
        env = envelope_pb2.Envelope.FromString(bytes.fromhex(hexenv))
        outbox[eid] = {"env_time": env.time.seconds + env.time.nanos / 1e9, "tx_start": float(created),
                       "relayed": float(relayed) if relayed else None}
    deliveries = {}
    states = {}
    for eid, req, state, attempts, created, sent in psql(
            a.pg_url, "SELECT event_id, access_request_id, state, attempts, extract(epoch FROM create_time),"
                      " extract(epoch FROM send_time) FROM notifier.delivery"
                      " WHERE event_type = 'orgmesh.partners.v1.AccessRequested'"):
        if req not in want:
            continue
        deliveries[eid] = {"request": req, "state": int(state), "attempts": int(attempts),
                           "created": float(created), "send": float(sent) if sent else None}
        states[state] = states.get(state, 0) + 1

    # Join per email: the first acceptance of each (request, recipient).
    seen = {}
    dups = 0
    foreign = 0
    for m in mails:
        if m.get("request") not in want:
            foreign += 1
            continue
        key = (m["request"], m["rcpt"])
        if key in seen:
            dups += 1
            continue
        seen[key] = m
    lat_env, lat_rpc, lat_due = [], [], []
    st_relay, st_consume, st_queue, st_send, st_commit = [], [], [], [], []
    missing_db = 0
    per_second = {}
    for (req, _), m in seen.items():
        r = want[req]
        lat_rpc.append(m["t"] - r["done"])
        lat_due.append(m["t"] - r["due"])
        sec = int(r["due"] - run["start"])
        per_second.setdefault(sec, []).append(m["t"] - r["done"])
        ob = outbox.get(m["event_id"])
        dv = deliveries.get(m["event_id"])
        if ob is None:
            missing_db += 1
            continue
        lat_env.append(m["t"] - ob["env_time"])
        st_commit.append(r["done"] - ob["env_time"])
        if ob["relayed"] is not None:
            st_relay.append(ob["relayed"] - ob["env_time"])
            if dv:
                st_consume.append(dv["created"] - ob["relayed"])
        if dv and dv["send"] is not None:
            st_queue.append(dv["send"] - dv["created"])
            st_send.append(m["t"] - dv["send"])
    lost = len(want) - len({req for req, _ in seen})
    # Throughput of each stage over the run: rows per second between the
    # first and the last timestamp (a stage slower than the offered rate
    # builds a queue in front of it, and every later event waits in it).
    def rate_of(ts):
        ts = sorted(x for x in ts if x is not None)
        return round((len(ts) - 1) / (ts[-1] - ts[0]), 1) if len(ts) > 1 and ts[-1] > ts[0] else None
    # While events wait in the stream, the consumer starts one transaction
    # per event: the gap between consecutive delivery create_times is then
    # the time the consumer spends on one event (peer RPCs, SQL, commit, ack).
    queued = sorted(d["created"] for eid, d in deliveries.items()
                     if eid in outbox and outbox[eid]["relayed"] is not None
                     and d["created"] - outbox[eid]["relayed"] > 0.05)
    consumer_gap = summary_ms([b - a for a, b in zip(queued, queued[1:])])
    stage_rates = {
        "calls answered": rate_of([r["done"] for r in ok]),
        "events relayed (outbox relayed_at)": rate_of([o["relayed"] for o in outbox.values()]),
        "events consumed (delivery create_time)": rate_of([d["created"] for d in deliveries.values()]),
        "emails leased (send_time)": rate_of([d["send"] for d in deliveries.values()]),
        "emails accepted (SMTP)": rate_of([m["t"] for m in seen.values()]),
    }
    p99_by_sec = {s: summary_ms(v)["p99_ms"] for s, v in sorted(per_second.items())}
    # What the partners service answered in each second (its queue), and how
    # many emails the SMTP server accepted in each second from the start.
    rpc_by_sec, smtp_by_sec = {}, {}
    for r in recs:
        if "done" in r:
            rpc_by_sec.setdefault(int(r["due"] - run["start"]), []).append(r["done"] - r["due"])
    for m in seen.values():
        k = int(m["t"] - run["start"])
        smtp_by_sec[k] = smtp_by_sec.get(k, 0) + 1
    lat = summary_ms(lat_env)
    result = {
        "rate": a.rate, "seconds": a.seconds, "calls": total, "clients": clients, "employees": employees,
        "setup_s": round(setup_s, 1), "settle_before_calls": settle,
        "calls_ok": len(ok), "call_errors": total - len(ok),
        "call_error_samples": list({r["error"] for r in recs if not r.get("ok")})[:5],
        "rpc_latency_from_due": summary_ms([r["done"] - r["due"] for r in recs if "done" in r]),
        "achieved_rate": round(len(recs) / max(1e-9, run["last_sent"] - run["start"]), 1),
        "max_send_lag_ms": run["max_send_lag_ms"],
        "emails_expected": len(want), "emails_received": len(seen), "emails_lost": lost,
        "emails_duplicated": dups, "emails_foreign": foreign,
        "events_in_outbox": len(outbox), "deliveries": len(deliveries), "delivery_states": states,
        "emails_without_event_row": missing_db,
        "drain_s_after_last_call": round(drained - run["last_sent"], 1),
        "latency_event_to_smtp": lat,
        "latency_rpc_done_to_smtp": summary_ms(lat_rpc),
        "latency_due_to_smtp": summary_ms(lat_due),
        "stages": {
            "commit_and_reply (Envelope.time -> RPC reply at the driver)": summary_ms(st_commit),
            "relay (Envelope.time -> outbox relayed_at, relay tx start)": summary_ms(st_relay),
            "consume (relayed_at -> notifier delivery create_time, consumer tx start)": summary_ms(st_consume),
            # before issue 15 send_time was the sender's transaction start
            # (before the SMTP exchange); since, it is the outcome's record
            # (after it): "send" is then negative and handle+queue is all
            "handle+queue (delivery create_time -> send_time, sender tx start)": summary_ms(st_queue),
            "send (send_time -> SMTP accepted: token RPC, format, SMTP session)": summary_ms(st_send),
        },
        "stage_rates_per_s": stage_rates,
        "consumer_time_per_event_while_backlogged": consumer_gap,
        "p99_ms_by_second_of_run": p99_by_sec,
        "rpc_p99_ms_by_second_of_run": {k: summary_ms(v)["p99_ms"] for k, v in sorted(rpc_by_sec.items())},
        "emails_accepted_by_second": dict(sorted(smtp_by_sec.items())),
        "loadavg": {"before": la0, "after_calls": la1, "after_drain": la2},
        "target_p99_ms": 500.0,
    }
    result["met"] = bool(lat and lat["p99_ms"] <= 500.0 and lost == 0 and dups == 0 and len(ok) == total)
    result["met"] = bool(lat and lat["p99_ms"] <= 500.0 and lost == 0 and len(ok) == total)
    return result


def search(a, P, m_md, pairs, clients, employees):
    """The event capacity (issue 15): the highest open-loop rate at which
    event -> SMTP p99 <= 500 ms with every email received once. Short runs
    of --search-seconds: the rate doubles from --search-start while it
    passes, then the interval between the last pass and the first failure is
    bisected until it is within --search-precision (or the calls run out).
    Each step waits for its emails before the next starts."""
    steps, lo, hi = [], None, None
    rate = a.search_start
    used = 0
    while len(steps) < a.search_max_steps:
        n = int(round(rate * a.search_seconds))
        if used + n > len(pairs):
            log(f"search: {len(pairs) - used} calls left, a step at {rate:g}/s needs {n}: stopping")
            break
        a.rate, a.seconds = rate, a.search_seconds
        log(f"search step {len(steps) + 1}: {rate:g}/s for {a.search_seconds:g} s")
        r = measure(a, P, m_md, pairs[used:used + n], n, clients, employees, 0.0, None)
        used += n
        lat = r["latency_event_to_smtp"] or {}
        steps.append({"rate": rate, "met": r["met"], "p99_ms": lat.get("p99_ms"), "p50_ms": lat.get("p50_ms"),
                      "calls_ok": r["calls_ok"], "calls": n, "achieved_rate": r["achieved_rate"],
                      "emails_lost": r["emails_lost"], "emails_duplicated": r["emails_duplicated"],
                      "stage_rates_per_s": r["stage_rates_per_s"], "loadavg": r["loadavg"],
                      "stages_p50_p99_ms": {k: v and [v["p50_ms"], v["p99_ms"]] for k, v in r["stages"].items()}})
        log(f"search step {len(steps)}: {rate:g}/s -> {'pass' if r['met'] else 'FAIL'} (p99 {lat.get('p99_ms')} ms,"
            f" {r['emails_lost']} lost, {r['emails_duplicated']} duplicated, {r['call_errors']} call errors)")
        if r["met"]:
            lo = rate if lo is None else max(lo, rate)
        else:
            hi = rate if hi is None else min(hi, rate)
        if hi is None:
            rate = rate * 2
            if rate > a.search_max_rate:
                break
        elif lo is None:
            rate = rate / 2
            if rate < 1:
                break
        else:
            if hi - lo <= max(a.search_precision * lo, 1.0):
                break
            rate = round((lo + hi) / 2)
    log(f"search: capacity {lo}/s (first failure {hi}/s) after {len(steps)} steps")
    return {"capacity_per_s": lo, "first_failure_per_s": hi, "step_seconds": a.search_seconds,
            "precision": a.search_precision, "steps": steps}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--accounts", required=True)
    ap.add_argument("--partners", required=True)
    ap.add_argument("--pg-url", required=True)
    ap.add_argument("--sink-log", required=True)
    ap.add_argument("--service-token", required=True)
    ap.add_argument("--token-tool", required=True)
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--drain-timeout", type=float, default=30.0,
                    help="stop waiting for emails after this long without a new one")
    ap.add_argument("--redis", help="HOST:PORT: before the calls, wait until every consumer group has caught up"
                                     " (earlier scenarios leave thousands of accounts events to consume)")
    ap.add_argument("--settle-timeout", type=float, default=300.0)
    ap.add_argument("--json", required=True)
    ap.add_argument("--search", action="store_true",
                    help="after the run at --rate, search the event capacity (issue 15)")
    ap.add_argument("--search-start", type=float, default=250.0)
    ap.add_argument("--search-seconds", type=float, default=10.0)
    ap.add_argument("--search-max-rate", type=float, default=4000.0)
    ap.add_argument("--search-precision", type=float, default=0.1,
                    help="stop bisecting when (first failure - last pass) <= this share of the last pass")
    ap.add_argument("--search-max-steps", type=int, default=9)
    ap.add_argument("--search-budget", type=int, default=0,
                    help="calls set up for the search (0: enough for doubling to --search-max-rate and three"
                         " bisections)")
    a = ap.parse_args()

    total = int(round(a.rate * a.seconds))
    budget = 0
    if a.search:
        budget = a.search_budget or int(a.search_seconds * (2 * a.search_max_rate + 3 * a.search_max_rate))
    clients = max(1, min(a.clients, total + budget))
    employees = max(1, math.ceil((total + budget) / clients))
    svc_md = (("authorization", "Bearer " + a.service_token),)
    tag = f"{int(time.time())}{os.getpid()}"
    t = time.time()
    log(f"set-up: 1 partner, {employees} employees, {clients} clients (one super admin each)")
    P, m_md, emps, accts = setup(a, clients, employees, svc_md, a.token_tool, tag)
    setup_s = time.time() - t
    pairs = [(e, c) for e in emps for c in accts]
    random.Random(5).shuffle(pairs)
    pairs, pairs_left = pairs[:total], pairs[total:total + budget]
    time.sleep(2.0)  # let the set-up's events (accounts -> partners copies) settle
    t_settle, left = time.time(), None
    if a.redis:
        while True:
            left = backlog(a.redis)
            if not left or time.time() - t_settle > a.settle_timeout:
                break
            time.sleep(1.0)
        log(f"event backlog before the calls: {left} entries (waited {time.time() - t_settle:.1f} s)")
    settle = {"waited_s": round(time.time() - t_settle, 1), "backlog_left": left}
    result = measure(a, P, m_md, pairs, total, clients, employees, setup_s, settle)
    if a.search:
        result["search"] = search(a, P, m_md, pairs_left, clients, employees)
    with open(a.json, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    log(f"{result['emails_received']} of {result['emails_expected']} emails received ({result['emails_lost']} lost,"
        f" {result['emails_duplicated']} duplicated); event -> SMTP {result['latency_event_to_smtp']}")
    return 0 if result["met"] else 1


if __name__ == "__main__":
    sys.exit(main())

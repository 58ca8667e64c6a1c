"""Issue 12: no event is lost when Redis loses data (SPEC 2, 9; docs/common/evt.md
"Redis losing data"). The issue's reproduction with the real services: the
connections service is down, 20 users get a SALES seat in an organization
account through the accounts service, Redis is killed -9 and restarts empty,
connections starts again. Every membership event must be applied once by
connections, and CheckMirrorAccess must answer "allowed" for all 20 within the
CONN-09 bound (the 2 s cache TTL, plus the relay's 1 s check for a lost
stream) after Redis is back.

Kills Redis: ctest runs this file alone."""
import time

import pytest

import orgmesh_testlib as om
from orgmesh.accounts.v1 import accounts_pb2 as apb
from orgmesh.connections.v1 import connections_pb2 as cpb
from test_connections import TTL_S, World, psql

pytestmark = pytest.mark.exclusive_stack

OM_SERVICES = ["accounts", "organizations", "connections"]
OM_SERVICE_ENV = {"organizations": {"ORGMESH_EVT_CLAIM_IDLE_MS": "1000"},
                  "connections": {"ORGMESH_EVT_CLAIM_IDLE_MS": "1000"}}
USERS = 20
RELAY_CHECK_S = 1.0    # the relay looks for a lost stream every second
BOUND_S = TTL_S + RELAY_CHECK_S


@pytest.fixture
def w(suite):
    return World(suite)


def one(sql):
    rows = psql(sql)
    return rows[0] if rows else None


def connections_caught_up():
    """The accounts relay knows the connections group, and its watermark
    covers every accounts event so far."""
    return one("SELECT count(*) FROM accounts.evt_groups WHERE grp = 'connections' AND watermark >="
               " (SELECT coalesce(max(relay_seq), 0) FROM accounts.outbox)") == "1"


def allowed(w, user, s, t):
    return w.mirror(user, s, t) == (True, cpb.DenialReason.DENIAL_REASON_UNSPECIFIED)


def scenario(w, suite, lose):
    owner = w.user()
    org, (a, b, c) = w.organization(owner)
    w.quick(owner, org, a)                       # mirroring both ways between every pair
    om.eventually(connections_caught_up, timeout=15,
                  message="the accounts relay learns the connections group's watermark")
    suite["connections"].kill()                  # a rolling restart, say
    mark = int(one("SELECT coalesce(max(id), 0) FROM accounts.outbox"))
    users = [w.user() for _ in range(USERS)]
    for u in users:
        w.member(a, u, seats=[apb.SEAT_SALES])   # all return OK
    om.eventually(lambda: one(f"SELECT count(*) FROM accounts.outbox WHERE id > {mark}"
                              " AND relayed_at IS NULL") == "0", timeout=10,
                  message="the membership events are relayed (and then lost with Redis)")
    lose()
    back = time.monotonic()
    suite["connections"].restart()
    pending = set(users)
    while pending and time.monotonic() - back < BOUND_S + 10:
        pending = {u for u in pending if not allowed(w, u, c, a)}
        time.sleep(0.02)
    took = time.monotonic() - back
    print(f"every check right {took * 1000:.0f} ms after Redis was back ({len(pending)} still wrong)")
    assert not pending, f"{len(pending)} of {USERS} users still NOT_A_MEMBER {took:.1f} s after Redis was back"
    assert took <= BOUND_S, f"checks right only {took:.2f} s after Redis was back"
    # every event of the accounts outbox since the mark applied by connections, once
    missing = one("SELECT count(*) FROM accounts.outbox o WHERE o.id > "
                  f"{mark} AND NOT EXISTS (SELECT 1 FROM connections.applied_events e"
                  " WHERE e.event_id = o.event_id)")
    om.eventually(lambda: one("SELECT count(*) FROM accounts.outbox o WHERE o.id > "
                              f"{mark} AND NOT EXISTS (SELECT 1 FROM connections.applied_events e"
                              " WHERE e.event_id = o.event_id)") == "0", timeout=10,
                  message=f"connections applies every accounts event ({missing} missing at first)")


def test_evt_redis_killed_restarted_empty_while_connections_down_checks_right_within_bound(w, suite):
    def lose():
        om.redis_kill()
        om.redis_start()
    scenario(w, suite, lose)

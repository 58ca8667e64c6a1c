"""The accounts service through dependency outages (SPEC §2, §8, §9 reliability):
Redis stopped mid-test degrades nothing but the `redis` health entry, and the
events committed meanwhile reach the stream once Redis is back; a PostgreSQL
restart loses no committed change and the service reconnects by itself.
Stops and restarts the stack's servers, so ctest runs this file alone."""
import uuid

import grpc
import pytest

import orgmesh_testlib as om
from orgmesh.accounts.v1 import accounts_pb2 as pb
from test_accounts import IDENTITY, events_with_trace, new_account, new_user, traced

pytestmark = pytest.mark.exclusive_stack

OM_SERVICES = ["accounts"]
# Health follows the dependencies quickly, so the test need not wait long.
OM_SERVICE_ENV = {"accounts": {"ORGMESH_HEALTH_INTERVAL_MS": "100"}}


@pytest.fixture
def acc(suite):
    from orgmesh.accounts.v1 import accounts_pb2_grpc as pb_grpc
    return suite.stub("accounts", pb_grpc.AccountsServiceStub)


def created_hubs(trace):
    """hub ids of the AccountCreated events in the stream caused by `trace`."""
    return sorted(p.account.hub_id for (t, _env, p) in events_with_trace(trace)
                  if t == "AccountCreated")


def health(suite, name):
    return om.health(suite.channel("accounts"), name, timeout=2)


def test_redis_down_calls_succeed_health_degrades_and_events_arrive_later(suite, acc):
    owner = new_user(acc)
    trace = f"outage-{uuid.uuid4().hex[:8]}"
    with om.redis_down():
        om.eventually(lambda: health(suite, "redis") == "NOT_SERVING", timeout=5,
                      message="redis health NOT_SERVING while Redis is down")
        assert health(suite, "") == "SERVING"  # Redis does not take the service out of rotation
        names = [f"Outage {i} {trace}" for i in range(3)]
        created = []
        for n in names:
            a = pb.Account(name=n, kind=pb.ACCOUNT_KIND_STANDARD, hosting_location="eu1")
            created.append(acc.CreateAccount(pb.CreateAccountRequest(account=a),
                                             metadata=traced(om.as_user(owner.user_id), trace)).account)
        for a in created:  # read back from PostgreSQL
            got = acc.GetAccount(pb.GetAccountRequest(hub_id=a.hub_id),
                                 metadata=om.as_user(owner.user_id)).account
            assert got.name == a.name
    # Back: health recovers and the events written meanwhile were waiting in the outbox.
    om.eventually(lambda: health(suite, "redis") == "SERVING", timeout=10,
                  message="redis health SERVING again after Redis is back")
    want = sorted(a.hub_id for a in created)
    om.eventually(lambda: created_hubs(trace) == want, timeout=15,
                  message="the AccountCreated events written while Redis was down reach the stream")


def test_postgresql_restart_loses_nothing_and_the_service_reconnects(suite, acc):
    owner = new_user(acc)
    trace = f"pgrestart-{uuid.uuid4().hex[:8]}"
    before = new_account(acc, owner, metadata=traced(om.as_user(owner.user_id), trace))
    om.pg_restart()

    def read_back():
        return acc.GetAccount(pb.GetAccountRequest(hub_id=before.hub_id),
                              metadata=om.as_user(owner.user_id), timeout=3).account

    # Every worker's connection broke with the restart; calls heal by themselves.
    got = om.eventually(read_back, timeout=20, message="GetAccount after the PostgreSQL restart")
    assert got.name == before.name
    after = new_account(acc, owner, metadata=traced(om.as_user(owner.user_id), trace))
    assert after.hub_id != before.hub_id
    om.eventually(lambda: health(suite, "") == "SERVING", timeout=10)
    # Both committed changes have their event, none lost to the restart.
    om.eventually(lambda: created_hubs(trace) == sorted([before.hub_id, after.hub_id]), timeout=15,
                  message="both AccountCreated events reach the stream")


def test_postgresql_down_takes_the_service_out_of_rotation(suite, acc):
    owner = new_user(acc)
    om.pg_stop()
    try:
        om.eventually(lambda: health(suite, "") == "NOT_SERVING", timeout=10,
                      message="health '' NOT_SERVING while PostgreSQL is down")
        assert health(suite, "liveness") == "SERVING"  # the process itself is fine
        with pytest.raises(grpc.RpcError) as e:
            acc.GetUser(pb.GetUserRequest(user_id=owner.user_id), metadata=IDENTITY, timeout=5)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        om.pg_start()
    om.eventually(lambda: health(suite, "") == "SERVING", timeout=15)
    om.eventually(lambda: acc.GetUser(pb.GetUserRequest(user_id=owner.user_id), metadata=IDENTITY,
                                      timeout=3).user.user_id == owner.user_id, timeout=20)

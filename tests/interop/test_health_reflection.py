"""Every service binary that was built answers grpc.health.v1.Health and
gRPC server reflection (SPEC 8), so load balancers and generic tools
(grpcurl, buf curl) can use it without our stubs."""

import grpc
import pytest

import orgmesh_testlib as om

OM_SERVICES = "built"


def built():
    names = om.built_services()
    # A build with no service binary at all is broken, not "nothing to test".
    assert names, f"no service binary in {om.build_dir() / 'services'}"
    return names


@pytest.mark.parametrize("name", om.built_services() or ["(none built)"])
def test_health_whole_server_is_serving(suite, name):
    built()
    assert suite[name].health("") == "SERVING"


@pytest.mark.parametrize("name", om.built_services() or ["(none built)"])
def test_health_reports_redis_under_its_own_name(suite, name):
    # SPEC 8: Redis' state is reported under "redis"; the stack's Redis is up.
    built()
    om.eventually(lambda: suite[name].health("redis") == "SERVING", timeout=5)


@pytest.mark.parametrize("name", om.built_services() or ["(none built)"])
def test_health_unknown_service_is_not_found(suite, name):
    built()
    with om.raises_rpc(grpc.StatusCode.NOT_FOUND):
        suite[name].health("no.such.Service")


@pytest.mark.parametrize("name", om.built_services() or ["(none built)"])
def test_reflection_lists_own_services_and_health(suite, name):
    built()
    listed = om.reflection_list_services(suite.channel(name))
    declared = om.declared_services(name)
    assert declared, f"the contract declares no gRPC service in orgmesh.{name}.v1"
    for full in declared:
        assert full in listed, f"{name} does not list {full} (lists {listed})"
    assert "grpc.health.v1.Health" in listed


@pytest.mark.parametrize("name", om.built_services() or ["(none built)"])
def test_reflection_describes_own_services(suite, name):
    # A generic client needs the file that defines the service, not only its name.
    built()
    for full in om.declared_services(name):
        files = om.reflection_file_containing_symbol(suite.channel(name), full)
        short = full.rsplit(".", 1)[1]
        assert any(f.package == f"orgmesh.{name}.v1" and
                   short in [s.name for s in f.service] for f in files), \
            f"reflection has no descriptor declaring {full}"

"""pytest wiring for the interop tests (helpers live in orgmesh_testlib).

The session fixture `suite` starts the services the test modules ask for once
per pytest session (ctest runs one session per file), and stops them at the
end, failing the session if one does not exit cleanly within 5 s of SIGTERM.
A module says what it needs with module-level names:

    OM_SERVICES = ["accounts", "partners"]   # default: all six
    OM_SERVICES = "built"                    # every service whose binary exists
    OM_SERVICE_ENV = {"notifier": {...}}     # extra env per service (or a
                                             # callable returning such a dict)

When a test fails, the tail of every running service's log is attached to
its report. Files that stop Redis or restart PostgreSQL must say
`pytestmark = pytest.mark.exclusive_stack` (ctest then runs them alone).
"""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import orgmesh_testlib as om  # noqa: E402

# Make the generated stubs importable when pytest is run by hand.
_py = om.build_dir() / "python"
if str(_py) not in sys.path:
    sys.path.insert(0, str(_py))


_LOG_START = pytest.StashKey()


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "exclusive_stack: stops Redis or restarts PostgreSQL; ctest runs the file alone")


def _wanted(session):
    """The union of what the collected modules ask for."""
    names, env = [], {}
    modules = {item.module for item in session.items if getattr(item, "module", None)}
    declared = False
    for m in sorted(modules, key=lambda m: m.__name__):
        want = getattr(m, "OM_SERVICES", None)
        if want is not None:
            declared = True
            want = om.built_services() if want == "built" else list(want)
            names += [n for n in want if n not in names]
        extra = getattr(m, "OM_SERVICE_ENV", None)
        if callable(extra):
            extra = extra()
        for svc, kv in (extra or {}).items():
            env.setdefault(svc, {}).update(kv)
    if not declared:
        names = list(om.SERVICES)
    return names, env


@pytest.fixture(scope="session")
def suite(request):
    """The running services (orgmesh_testlib.Suite)."""
    names, env = _wanted(request.session)
    if not names:
        pytest.fail("no service binary was built: nothing to test "
                    f"(looked in {om.build_dir() / 'services'})", pytrace=False)
    s = om.Suite(names, service_env=env)
    try:
        s.start()
        err = None
    except om.HarnessError as e:
        err = str(e)
    if err:
        pytest.fail(f"could not start the suite: {err}", pytrace=False)
    yield s
    problems = s.stop()
    if problems:
        pytest.fail("services did not stop cleanly:\n" + "\n".join(problems), pytrace=False)


def _log_sizes():
    return {(id(s), svc.name): svc.log_size() for s in om.active_suites()
            for svc in s.services.values()}


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    item.stash[_LOG_START] = _log_sizes()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if not rep.failed:
        return
    # What each service logged during this test (all of it for a service
    # started by the test's own setup), at most the last 40 lines.
    start = item.stash.get(_LOG_START, {})
    for s in om.active_suites():
        for svc in s.services.values():
            text = svc.log_since(start.get((id(s), svc.name), 0), lines=40)
            if text:
                rep.sections.append((f"orgmesh-{svc.name} log {svc.log_path}", text))

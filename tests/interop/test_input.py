"""Malformed input is refused before any handler runs (issue 14 defects 1
and 3): strings that are not UTF-8 (or hold U+0000) and Timestamps outside
protobuf's range answer INVALID_ARGUMENT with a BadRequest violation naming
the field, never INTERNAL, and write nothing.

Python's protobuf will not build a str field holding invalid UTF-8, so the
requests are serialized first and the bad field appended as raw bytes, then
sent through a bytes-level unary call."""

import importlib
import os
import subprocess

import grpc
import pytest

import orgmesh_testlib as om

OM_SERVICES = list(om.SERVICES)

SVC = om.bearer(om.service_token("tests"))
PSQL = "/usr/lib/postgresql/15/bin/psql"
BAD = b"\xff\xfe\xc0\xaf"

# The methods and free-text fields issue 14 found answering INTERNAL.
REQUEST_ID_METHODS = ["CreateAccount", "UpdateAccount", "CreateUser", "CreateAsset",
                      "CreateOrganization", "QuickConnect", "TagEmployees", "ReplayDeadLetters"]
FILTERS = [("ListAssets", "name_contains"), ("SearchClients", "query"), ("ListUsers", "email"),
           ("ListDeliveries", "recipient_email")]


def _services():
    """{method name: (service name, path, method descriptor)} over the contract."""
    out = {}
    for s in om.SERVICES:
        mod = importlib.import_module(f"orgmesh.{s}.v1.{s}_pb2")
        for svc in mod.DESCRIPTOR.services_by_name.values():
            for m in svc.methods:
                out[m.name] = (s, f"/{svc.full_name}/{m.name}", m)
    return out


METHODS = _services()


def _varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _with_raw_string(field_number, raw):
    return _varint(field_number << 3 | 2) + _varint(len(raw)) + raw


def raw_call(suite, method, body):
    service, path, _ = METHODS[method]
    call = suite.channel(service).unary_unary(path, request_serializer=None,
                                              response_deserializer=None)
    return call(body, metadata=SVC, timeout=10)


def psql(sql):
    r = subprocess.run([PSQL, "-qAtX", "-v", "ON_ERROR_STOP=1", "-d", os.environ["ORGMESH_PG_URL"], "-c", sql],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, check=True)
    return [line for line in r.stdout.splitlines() if line]


def row_counts():
    """Rows of every table of the six services' schemas."""
    tables = psql("SELECT table_schema || '.' || table_name FROM information_schema.tables "
                  "WHERE table_type = 'BASE TABLE' AND table_schema IN "
                  "('accounts','organizations','connections','assets','partners','notifier') "
                  "ORDER BY 1")
    if not tables:
        return {}
    sql = " UNION ALL ".join(f"SELECT '{t}', count(*) FROM {t}" for t in tables)
    return dict(line.split("|") for line in psql(sql))


def assert_refused(suite, method, field, body, reason="INVALID_UTF8"):
    with om.raises_rpc(grpc.StatusCode.INVALID_ARGUMENT, reason) as r:
        raw_call(suite, method, body)
    assert field in r.details.violations, f"{method}: {r.details!r}"


def test_all_named_methods_exist():
    for m in REQUEST_ID_METHODS + [f for f, _ in FILTERS] + ["RecordActivities"]:
        assert m in METHODS, m


def test_invalid_utf8_request_id_refused_and_nothing_written(suite):
    before = row_counts()
    for method in REQUEST_ID_METHODS:
        desc = METHODS[method][2].input_type
        field = desc.fields_by_name["request_id"]
        assert_refused(suite, method, "request_id", _with_raw_string(field.number, BAD))
    assert row_counts() == before


def test_invalid_utf8_in_filters_refused(suite):
    for method, name in FILTERS:
        field = METHODS[method][2].input_type.fields_by_name[name]
        assert_refused(suite, method, name, _with_raw_string(field.number, BAD))


@pytest.mark.parametrize("raw", [b"\xc0\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"ok\xe2\x82",
                                 b"a\x00b"])
def test_other_invalid_strings_refused(suite, raw):
    field = METHODS["ListUsers"][2].input_type.fields_by_name["email"]
    assert_refused(suite, "ListUsers", "email", _with_raw_string(field.number, raw))


def test_valid_utf8_still_accepted(suite):
    field = METHODS["ListUsers"][2].input_type.fields_by_name["email"]
    raw_call(suite, "ListUsers", _with_raw_string(field.number, "zoë@例え.jp".encode()))


# ---- Timestamps (defect 3) -------------------------------------------------------------------

@pytest.mark.parametrize("seconds", [2**63 - 1, -2**63, 253402300800, -62135596801])
def test_record_activities_timestamp_out_of_range(suite, seconds):
    from orgmesh.partners.v1 import partners_pb2 as ppb
    req = ppb.RecordActivitiesRequest(request_id="ts-range", activities=[
        ppb.Activity(activity_id="a1", user_id=1, hub_id=1, kind="crm.contact.view"),
        ppb.Activity(activity_id="a2", user_id=1, hub_id=1, kind="crm.contact.view")])
    req.activities[1].time.seconds = seconds
    with om.raises_rpc(grpc.StatusCode.INVALID_ARGUMENT, "TIMESTAMP_OUT_OF_RANGE") as r:
        raw_call(suite, "RecordActivities", req.SerializeToString())
    assert "activities[1].time.seconds" in r.details.violations
    assert suite["partners"].health() == "SERVING"

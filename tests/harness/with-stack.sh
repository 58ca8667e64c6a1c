#!/usr/bin/env bash
# with-stack.sh <dir> <cmd...> — runs one test command against the stack that
# `stack.sh start <dir>` runs, in a database of its own: creates a fresh
# database, points ORGMESH_PG_URL at it, runs the command, drops the database
# afterwards (also when the command fails or is interrupted) and exits with
# the command's status. Tests running side by side never see each other's rows.
set -uo pipefail

if [ $# -lt 2 ]; then
    echo "usage: $0 <stack dir> <command> [args...]" >&2
    exit 2
fi
dir=$1
shift
if [ ! -f "$dir/env" ]; then
    echo "with-stack: no stack in $dir (run: tests/harness/stack.sh start $dir)" >&2
    exit 1
fi
. "$dir/env"

PSQL=${OM_PSQL:-/usr/lib/postgresql/15/bin/psql}
admin_url=$ORGMESH_PG_URL        # the stack's `orgmesh` database
db=om_t_$(date +%s)_$$_$RANDOM

sql() { "$PSQL" -qAtX -v ON_ERROR_STOP=1 -d "$admin_url" -c "$1"; }

if ! out=$(sql "CREATE DATABASE $db" 2>&1); then
    echo "with-stack: cannot create database $db on ${admin_url}: $out" >&2
    echo "with-stack: is the stack running? tests/harness/stack.sh status $dir" >&2
    exit 1
fi

drop_db() {
    # This suite's Redis keys go with its database.
    if [ -n "${ORGMESH_REDIS_PORT:-}" ] && command -v redis-cli >/dev/null; then
        redis-cli -h "${ORGMESH_REDIS_HOST:-127.0.0.1}" -p "$ORGMESH_REDIS_PORT" --scan \
            --pattern "$db:*" 2>/dev/null | xargs -r -n 100 redis-cli -h \
            "${ORGMESH_REDIS_HOST:-127.0.0.1}" -p "$ORGMESH_REDIS_PORT" DEL >/dev/null 2>&1
    fi
    # FORCE ends connections a killed service may have left behind.
    for _ in 1 2 3; do
        sql "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 && return 0
        sleep 1   # e.g. PostgreSQL being restarted by the test
    done
    echo "with-stack: warning: could not drop database $db" >&2
}
trap drop_db EXIT

export ORGMESH_PG_URL=${admin_url%/*}/$db
export OM_TEST_DB=$db
# Redis is shared by every suite of the run: give this one its own keys and
# streams, so a service started by another suite never consumes its events.
export ORGMESH_REDIS_NAMESPACE="$db:"

# The command runs as a child so that a SIGTERM/SIGINT sent to this script
# (ctest, Ctrl-C) reaches it, and the database is dropped once it has ended.
"$@" <&0 &
child=$!
trap 'kill -TERM $child 2>/dev/null' TERM INT HUP
while :; do
    wait "$child"
    rc=$?
    # A signal interrupted `wait`: wait again until the child is gone.
    if [ $rc -gt 128 ] && kill -0 "$child" 2>/dev/null; then continue; fi
    break
done
if [ $rc -gt 128 ]; then   # fetch the child's own status if it has one
    wait "$child" 2>/dev/null
    r=$?
    [ $r -ne 127 ] && rc=$r
fi
exit $rc

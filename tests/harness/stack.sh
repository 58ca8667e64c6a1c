#!/usr/bin/env bash
# stack.sh — a private PostgreSQL 15 and Redis for tests and local runs, on free
# loopback ports, everything (data, sockets, logs, pid files) inside one dir.
#
#   stack.sh start|stop|status|clean <dir>
#   stack.sh pg-stop|pg-start|pg-restart|redis-stop|redis-kill|redis-start <dir>
#
# start is idempotent (reuses what runs) and writes <dir>/env, the `export`
# lines the tests and services source. stop never fails and leaves nothing
# running; data stays for the next start (clean also removes it). Ports are
# kept across pg-restart and redis-stop/start so clients can reconnect.
# PostgreSQL refuses to run as root: as root it runs as the system user
# `orgmesh` (created if missing).
set -uo pipefail

PG_BIN=${OM_PG_BIN:-/usr/lib/postgresql/15/bin}
PG_USER=orgmesh          # OS user (when root) and database superuser
PG_DB=orgmesh

usage() {
    echo "usage: $0 start|stop|status|clean|pg-stop|pg-start|pg-restart|redis-stop|redis-kill|redis-start <dir>" >&2
    exit 2
}
[ $# -eq 2 ] || usage
cmd=$1
mkdir -p "$2" || exit 1
dir=$(cd "$2" && pwd -P)
pgdata=$dir/pg
say() { printf 'stack: %s\n' "$*"; }
die() { printf 'stack: %s\n' "$*" >&2; exit 1; }

# One stack.sh at a time per dir (ctest, deploy/local/up and a developer may
# race on the same dir). The servers must not inherit fd 9, or they would hold
# the lock for their whole life.
exec 9>"$dir/.lock"
flock -w 120 9 || die "another stack.sh holds $dir/.lock"

if [ "$(id -u)" -eq 0 ]; then
    as_pg() { runuser -u "$PG_USER" -- "$@"; }
else
    as_pg() { "$@"; }
fi

free_port() { # below the ephemeral range: no outgoing connection can take it meanwhile
    python3 -c '
import random, socket
hi = 32000
try:
    hi = min(hi, int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0]) - 1)
except Exception:
    pass
for _ in range(500):
    p = random.SystemRandom().randint(20000, hi)
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p))
        print(p)
        break
    except OSError:
        pass
    finally:
        s.close()
else:
    s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])
'
}
port_busy() { # <port>: something listens on 127.0.0.1:<port>
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Ports are chosen once per dir and remembered in <dir>/ports.
PG_PORT=
REDIS_PORT=
[ -f "$dir/ports" ] && . "$dir/ports"
save_ports() {
    printf 'PG_PORT=%s\nREDIS_PORT=%s\n' "$PG_PORT" "$REDIS_PORT" >"$dir/ports.tmp" &&
        mv "$dir/ports.tmp" "$dir/ports"
}

write_env() {
    cat >"$dir/env.tmp" <<EOF
# Written by tests/harness/stack.sh; source it.
export ORGMESH_PG_URL=postgresql://$PG_USER@127.0.0.1:$PG_PORT/$PG_DB
export ORGMESH_REDIS_HOST=127.0.0.1
export ORGMESH_REDIS_PORT=$REDIS_PORT
export OM_STACK_DIR=$dir
export OM_PG_PORT=$PG_PORT
export OM_REDIS_PORT=$REDIS_PORT
EOF
    mv "$dir/env.tmp" "$dir/env"
}

# ---- PostgreSQL ---------------------------------------------------------

pg_pid() { # pid of the postmaster, if it runs
    local pid
    [ -f "$pgdata/postmaster.pid" ] || return 1
    pid=$(head -n1 "$pgdata/postmaster.pid" 2>/dev/null) || return 1
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}
pg_running() { pg_pid >/dev/null; }
pg_ready() {
    "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" -d "$PG_DB" 2>/dev/null
}

# As root: the postgres OS user, owning <dir>, and every parent of <dir>
# traversable by it (a clone under /root, say, is not by default).
pg_prepare_owner() {
    [ "$(id -u)" -eq 0 ] || return 0
    if ! getent passwd "$PG_USER" >/dev/null; then
        useradd --system --user-group --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin "$PG_USER" 2>/dev/null ||
            getent passwd "$PG_USER" >/dev/null || die "cannot create user $PG_USER"
        say "created system user $PG_USER (PostgreSQL does not run as root)"
    fi
    chown "$PG_USER:" "$dir"
    local d=$dir mode
    while [ "$d" != / ]; do
        d=$(dirname "$d")
        mode=$(stat -c %A "$d")
        case $mode in
            *x|*t) ;;
            *) chmod o+x "$d" && say "made $d traversable (o+x) for $PG_USER" ;;
        esac
    done
    runuser -u "$PG_USER" -- test -w "$dir" || die "user $PG_USER cannot write to $dir"
}

pg_init() {
    [ -f "$pgdata/PG_VERSION" ] && return 0
    rm -rf "$pgdata"
    mkdir -m 700 "$pgdata"
    [ "$(id -u)" -eq 0 ] && chown "$PG_USER:" "$pgdata"
    as_pg "$PG_BIN/initdb" -D "$pgdata" -U "$PG_USER" --auth=trust -E UTF8 --locale=C.UTF-8 \
        >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; die "initdb failed"; }
    echo "include_if_exists = 'orgmesh.conf'" >>"$pgdata/postgresql.conf"
    say "initialised PostgreSQL in $pgdata"
}

pg_start() {
    pg_prepare_owner
    pg_init
    if pg_running; then
        pg_ready && { say "PostgreSQL already up on 127.0.0.1:$PG_PORT"; return 0; }
    else
        [ -n "$PG_PORT" ] && port_busy "$PG_PORT" && {
            say "port $PG_PORT is taken, choosing another for PostgreSQL"
            PG_PORT=
        }
        [ -n "$PG_PORT" ] || PG_PORT=$(free_port)
        save_ports
        # Settings for a throwaway test server: speed over durability.
        cat >"$pgdata/orgmesh.conf" <<EOF
port = $PG_PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir'
max_connections = 300
fsync = off
synchronous_commit = off
full_page_writes = off
max_locks_per_transaction = 128
log_min_messages = warning
log_line_prefix = '%m [%p] %d '
EOF
        [ "$(id -u)" -eq 0 ] && chown "$PG_USER:" "$pgdata/orgmesh.conf"
        touch "$dir/postgres.log"
        [ "$(id -u)" -eq 0 ] && chown "$PG_USER:" "$dir/postgres.log"
        # A postmaster.pid left by a killed server blocks the start.
        rm -f "$pgdata/postmaster.pid"
        if ! as_pg "$PG_BIN/pg_ctl" -D "$pgdata" -l "$dir/postgres.log" -w -t 60 -s start \
            >/dev/null 2>&1 9>&-; then
            tail -n 20 "$dir/postgres.log" >&2
            die "PostgreSQL did not start (log: $dir/postgres.log)"
        fi
    fi
    for _ in $(seq 1 100); do
        pg_ready && break
        sleep 0.1
    done
    pg_ready || die "PostgreSQL on port $PG_PORT does not accept connections"
    # The `orgmesh` database (initdb made only postgres/template*).
    if ! "$PG_BIN/psql" -qAtX -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" -d postgres \
        -c "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'" | grep -q 1; then
        "$PG_BIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" "$PG_DB" ||
            die "cannot create database $PG_DB"
    fi
    say "PostgreSQL ready on 127.0.0.1:$PG_PORT"
    pg_drop_stale
}

# with-stack.sh names its databases om_t_<epoch>_...; ones older than a few
# hours belong to runs that were killed before they could drop them.
pg_drop_stale() {
    local now db t
    now=$(date +%s)
    for db in $("$PG_BIN/psql" -qAtX -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" -d "$PG_DB" \
        -c "SELECT datname FROM pg_database WHERE datname ~ '^om_t_[0-9]+_'" 2>/dev/null); do
        t=${db#om_t_}
        t=${t%%_*}
        if [ $((now - t)) -gt 21600 ]; then
            "$PG_BIN/psql" -qAtX -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" -d "$PG_DB" \
                -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 &&
                say "dropped stale test database $db"
        fi
    done
}

pg_stop() { # fast shutdown, then kill whatever is left
    local pid
    pid=$(pg_pid) || return 0
    as_pg "$PG_BIN/pg_ctl" -D "$pgdata" -m fast -w -t 20 -s stop >/dev/null 2>&1
    for _ in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null
        pkill -KILL -P "$pid" 2>/dev/null
        say "PostgreSQL (pid $pid) killed"
    fi
    say "PostgreSQL stopped"
}

# ---- Redis ----------------------------------------------------------------

redis_pid() {
    local pid
    [ -f "$dir/redis.pid" ] || return 1
    pid=$(cat "$dir/redis.pid" 2>/dev/null) || return 1
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null &&
        grep -q redis "/proc/$pid/cmdline" 2>/dev/null && echo "$pid"
}
redis_running() { redis_pid >/dev/null; }
redis_ready() { [ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ]; }

redis_start() {
    if redis_running && redis_ready; then
        say "Redis already up on 127.0.0.1:$REDIS_PORT"
        return 0
    fi
    if ! redis_running; then
        [ -n "$REDIS_PORT" ] && port_busy "$REDIS_PORT" && {
            say "port $REDIS_PORT is taken, choosing another for Redis"
            REDIS_PORT=
        }
        [ -n "$REDIS_PORT" ] || REDIS_PORT=$(free_port)
        save_ports
        rm -f "$dir/redis.pid"
        # No persistence: a test Redis starts empty, like a fresh cache.
        redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --daemonize yes \
            --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" --dir "$dir" \
            --save '' --appendonly no --protected-mode no --maxclients 2000 </dev/null 9>&- ||
            die "redis-server did not start (log: $dir/redis.log)"
    fi
    for _ in $(seq 1 100); do
        redis_ready && break
        sleep 0.05
    done
    redis_ready || { tail -n 20 "$dir/redis.log" >&2; die "Redis on port $REDIS_PORT does not answer"; }
    say "Redis ready on 127.0.0.1:$REDIS_PORT"
}

redis_stop() {
    local pid
    pid=$(redis_pid) || { rm -f "$dir/redis.pid"; return 0; }
    redis-cli -h 127.0.0.1 -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 ||
        kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null && say "Redis (pid $pid) killed"
    rm -f "$dir/redis.pid"
    say "Redis stopped"
}

# ---- commands -------------------------------------------------------------

case $cmd in
start)
    pg_start || exit 1
    redis_start || exit 1
    write_env
    say "env written to $dir/env"
    ;;
stop)
    redis_stop
    pg_stop
    exit 0
    ;;
clean)
    redis_stop
    pg_stop
    rm -rf "$pgdata" "$dir/env" "$dir/ports" "$dir"/*.log
    say "removed data in $dir"
    exit 0
    ;;
status)
    rc=0
    if pg_running && pg_ready; then say "PostgreSQL up on 127.0.0.1:$PG_PORT"; else say "PostgreSQL down"; rc=1; fi
    if redis_running && redis_ready; then say "Redis up on 127.0.0.1:$REDIS_PORT"; else say "Redis down"; rc=1; fi
    exit $rc
    ;;
pg-stop) pg_stop ;;
pg-start)
    pg_start || exit 1
    write_env
    ;;
pg-restart)
    # Same port: clients reconnect to the address they were given.
    [ -n "$PG_PORT" ] || die "no PostgreSQL port recorded in $dir (start the stack first)"
    pg_stop
    port_busy "$PG_PORT" && die "port $PG_PORT was taken while PostgreSQL was down"
    pg_start || exit 1
    ;;
redis-stop) redis_stop ;;
redis-kill)
    # kill -9: no shutdown, no save (the next redis-start starts empty)
    if pid=$(redis_pid); then
        kill -KILL "$pid" 2>/dev/null
        for _ in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.05
        done
    fi
    rm -f "$dir/redis.pid"
    say "Redis killed (-9)"
    ;;
redis-start)
    redis_start || exit 1
    write_env
    ;;
*) usage ;;
esac

#!/usr/bin/env bash
# test_image.sh — builds the FROM scratch image with deploy/containers/build-buildah.sh
# from a local build and runs it the way the chart does, against a private
# PostgreSQL and Redis: for every service, `<image> <svc> --migrate-only` (the
# migrations Job), then `<image> <svc>` with the pod's environment and key files,
# checking grpc.health.v1 Check("") and ("redis") SERVING, GET /metrics, and
# that SIGTERM drains and exits 0 within 5 s (SPEC §9).
#
#   tests/deploy/test_image.sh [BUILD_DIR]       (default: <repo>/build)
#
# Exits 77 (skip) without buildah, without root, or without the six binaries.
# Uses the stack of $ORGMESH_PG_URL/$ORGMESH_REDIS_HOST/$ORGMESH_REDIS_PORT when
# set (tests/harness/with-stack.sh), otherwise starts and stops its own.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
build=${1:-$repo/build}
services=(accounts organizations connections assets partners notifier)
python=${OM_PYTHON:-/usr/bin/python3}

say() { printf 'test_image: %s\n' "$*"; }
skip() { say "SKIP: $*"; exit 77; }
command -v buildah >/dev/null || skip "buildah is not installed"
[ "$(id -u)" -eq 0 ] || skip "needs root (buildah run --isolation chroot)"
for s in "${services[@]}"; do
    [ -x "$build/services/$s/orgmesh-$s" ] || skip "$build/services/$s/orgmesh-$s is not built"
done
"$python" -c 'import grpc' 2>/dev/null || skip "$python has no grpc module (python3-grpcio)"

work=$(mktemp -d)
image=localhost/orgmesh/orgmesh:test-$$
ctr=""
own_stack=""
pid=""
cleanup() {
    if [ -n "$pid" ]; then kill -KILL "$pid" 2>/dev/null || true; fi
    if [ -n "$ctr" ]; then buildah rm "$ctr" >/dev/null 2>&1 || true; fi
    buildah rmi "$image" >/dev/null 2>&1 || true
    if [ -n "$own_stack" ]; then "$repo/tests/harness/stack.sh" stop "$own_stack" >/dev/null 2>&1 || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

failures=0
pass() { say "ok   $*"; }
fail() { say "FAIL $*"; failures=$((failures + 1)); }

if [ -z "${ORGMESH_PG_URL:-}" ] || [ -z "${ORGMESH_REDIS_HOST:-}" ] || [ -z "${ORGMESH_REDIS_PORT:-}" ]; then
    own_stack=$work/stack
    "$repo/tests/harness/stack.sh" start "$own_stack" >/dev/null
    # shellcheck disable=SC1091
    . "$own_stack/env"
fi

"$repo/deploy/containers/build-buildah.sh" --build-dir "$build" --image "$image" >"$work/build.log" 2>&1 ||
    { cat "$work/build.log"; say "image build failed"; exit 1; }
pass "image built: $(grep -o 'built .*' "$work/build.log")"

# Key files laid out as the chart mounts them (the projected volume).
mkdir -p "$work/jwt/public" "$work/jwt/signing"
keys=""
for s in "${services[@]}"; do
    openssl ecparam -name prime256v1 -genkey -noout -out "$work/jwt/signing/$s-1.pem" 2>/dev/null
    openssl ec -in "$work/jwt/signing/$s-1.pem" -pubout -out "$work/jwt/public/$s-1.pem" 2>/dev/null
    keys="$keys${keys:+;}$s-1:ES256:/etc/orgmesh/jwt/public/$s-1.pem"
    subjects="${subjects:-}${subjects:+;}$s-1=service:$s"   # SPEC 8: each key signs for its own service
done
chmod -R a+rX "$work/jwt"
# Deployments give these from Secrets; without them the services refuse to start.
page_key=$(openssl rand -hex 32)
link_key=$(openssl rand -hex 32)

free_port() { "$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
health() { # <port> <service name>: prints SERVING / NOT_SERVING / an error
    "$python" - "$1" "$2" <<'PY' 2>&1
import sys, grpc
port, name = sys.argv[1], sys.argv[2].encode()
req = b"\x0a" + bytes([len(name)]) + name if name else b""
ch = grpc.insecure_channel(f"127.0.0.1:{port}")
check = ch.unary_unary("/grpc.health.v1.Health/Check",
                       request_serializer=lambda b: b, response_deserializer=lambda b: b)
try:
    resp = check(req, timeout=1)
    print("SERVING" if resp == b"\x08\x01" else "NOT_SERVING")
except grpc.RpcError as e:
    print(e.code().name)
PY
}

ctr=$(buildah from "$image")
buildah copy "$ctr" "$work/jwt" /etc/orgmesh/jwt >/dev/null

for s in "${services[@]}"; do
    port=$(free_port)
    mport=$(free_port)
    # The pod's environment (helm/orgmesh/templates/_config.tpl), on loopback.
    buildah config \
        --env ORGMESH_PG_URL="$ORGMESH_PG_URL" \
        --env ORGMESH_REDIS_HOST="${ORGMESH_REDIS_HOST:?}" --env ORGMESH_REDIS_PORT="$ORGMESH_REDIS_PORT" \
        --env ORGMESH_LISTEN="127.0.0.1:$port" --env ORGMESH_METRICS_LISTEN="127.0.0.1:$mport" \
        --env ORGMESH_MIGRATE_ON_START=false \
        --env ORGMESH_JWT_KEYS="$keys" \
        --env ORGMESH_JWT_KEY_SUBJECTS="$subjects" \
        --env ORGMESH_PAGE_TOKEN_KEY="$page_key" --env ORGMESH_PARTNERS_TOKEN_KEY="$link_key" \
        --env ORGMESH_JWT_SIGNING_KEY="$s-1:ES256:/etc/orgmesh/jwt/signing/$s-1.pem" \
        "$ctr"

    if timeout 60 buildah run --isolation chroot "$ctr" -- /usr/local/bin/orgmesh "$s" --migrate-only \
            >"$work/$s-migrate.log" 2>&1; then
        pass "$s: --migrate-only"
    else
        tail -n 5 "$work/$s-migrate.log"; fail "$s: --migrate-only"
    fi

    buildah run --isolation chroot "$ctr" -- /usr/local/bin/orgmesh "$s" >"$work/$s.log" 2>&1 &
    runner=$!
    started=$(date +%s%N)
    state=""
    for _ in $(seq 1 100); do
        state=$(health "$port" "")
        [ "$state" = SERVING ] && break
        sleep 0.1
    done
    ready_ms=$(( ($(date +%s%N) - started) / 1000000 ))
    if [ "$state" = SERVING ]; then pass "$s: Check(\"\") SERVING after ${ready_ms} ms (includes buildah run)"
    else tail -n 5 "$work/$s.log"; fail "$s: Check(\"\") is $state"; fi
    state=$(health "$port" redis)
    if [ "$state" = SERVING ]; then pass "$s: Check(\"redis\") SERVING"; else fail "$s: Check(\"redis\") is $state"; fi
    metrics=$(curl -fsS "http://127.0.0.1:$mport/metrics" 2>&1 || true)
    if [[ $metrics == *"# TYPE "* ]]; then pass "$s: GET /metrics"
    else fail "$s: GET /metrics"; fi

    # The service process itself (buildah run is its parent): the one listening on $port.
    pid=$(ss -Hltnp "sport = :$port" | grep -o 'pid=[0-9]*' | head -n 1 | cut -d= -f2)
    if [ -n "$pid" ]; then
        t0=$(date +%s%N)
        kill -TERM "$pid"
        while kill -0 "$pid" 2>/dev/null && [ $(( ($(date +%s%N) - t0) / 1000000 )) -lt 6000 ]; do sleep 0.05; done
        drain_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
        rc=0
        wait "$runner" || rc=$?
        if [ "$drain_ms" -lt 5000 ] && [ "$rc" -eq 0 ]; then pass "$s: SIGTERM: exit 0 after ${drain_ms} ms"
        else fail "$s: SIGTERM: exit $rc after ${drain_ms} ms"; fi
    else
        fail "$s: no process listens on $port"
        kill "$runner" 2>/dev/null || true
        wait "$runner" 2>/dev/null || true
    fi
    pid=""
done

if [ $failures -ne 0 ]; then
    say "$failures check(s) failed (logs were in $work)"
    exit 1
fi
say "all checks passed"

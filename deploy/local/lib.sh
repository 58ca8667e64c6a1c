# shellcheck shell=bash disable=SC2034
# lib.sh — shared by deploy/local/{up,down,test}; source it, do not run it.
# Knows where things are, how to (re)build a build dir only as far as needed,
# and how to start and stop the local suite.

OM_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)
OM_PYTHON=/usr/bin/python3   # Debian's python3-grpcio lives here, not in pyenv's
OM_SERVICES=(accounts organizations connections assets partners notifier)
# The well-known dev keys of orgmesh-token: `orgmesh-token --sub 42` and
# `orgmesh-token --service partners` work against `up` with no setup. HS256 is
# for local development only (SPEC 8). Each key is bound to one identity, as in
# a deployment: "dev" signs users, "dev-<name>" only service:<name>.
OM_DEV_KEY=dev:HS256:orgmesh-dev-secret
OM_DEV_IDENTITIES=("${OM_SERVICES[@]}" demo demo-loader crm support)
om_dev_service_key() { echo "dev-$1:HS256:orgmesh-dev-secret-$1"; }
om_dev_keys() {
    local k=$OM_DEV_KEY s
    for s in "${OM_DEV_IDENTITIES[@]}"; do k="$k;$(om_dev_service_key "$s")"; done
    echo "$k"
}
om_dev_key_subjects() {
    local b="dev=users" s
    for s in "${OM_DEV_IDENTITIES[@]}"; do b="$b;dev-$s=service:$s"; done
    echo "$b"
}

om_say() { printf '%s: %s\n' "${OM_PROG:-orgmesh}" "$*"; }

# om_port <service> / om_metrics_port <service>: default local ports.
om_port() {
    local i
    for i in "${!OM_SERVICES[@]}"; do
        [ "${OM_SERVICES[$i]}" = "$1" ] && { echo $((50051 + i)); return; }
    done
    return 1
}
om_metrics_port() { echo $(($(om_port "$1") - 50051 + 9101)); }

om_port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# om_configure <build dir> [-DKEY=VALUE...]: configures only when the dir has
# no cache, belongs to another source tree, or a given option differs.
om_configure() {
    local dir=$1
    shift
    local cache=$dir/CMakeCache.txt need=0 opt key val home
    if [ ! -f "$cache" ]; then
        need=1
    else
        home=$(sed -n 's/^CMAKE_HOME_DIRECTORY:INTERNAL=//p' "$cache")
        if [ "$(realpath -q "$home")" != "$OM_REPO" ]; then
            # Configured for another source tree (a copied build dir): start over.
            rm -rf "$cache" "$dir/CMakeFiles"
            need=1
        fi
        for opt in "$@"; do
            key=${opt#-D}
            val=${key#*=}
            key=${key%%=*}
            key=${key%%:*}
            grep -qE "^$key(:[A-Z]+)?=$val\$" "$cache" || need=1
        done
    fi
    mkdir -p "$dir"
    [ $need -eq 1 ] || return 0
    om_say "configuring $dir ($*)"
    if ! cmake -S "$OM_REPO" -B "$dir" "$@" </dev/null >"$dir/configure.log" 2>&1; then
        tail -n 40 "$dir/configure.log" >&2
        om_say "configure of $dir failed (log: $dir/configure.log)"
        return 1
    fi
}

# om_compile <build dir> [targets...]: builds (default: everything) in
# parallel. Output goes to <dir>/build.log; the errors are shown on failure.
om_compile() {
    local dir=$1
    shift
    local targets=()
    [ $# -gt 0 ] && targets=(--target "$@")
    om_say "building $dir${1:+ (${*})} with -j$(nproc)"
    if ! cmake --build "$dir" -j"$(nproc)" "${targets[@]}" </dev/null >"$dir/build.log" 2>&1; then
        grep -E 'error|Error' "$dir/build.log" | head -n 30 >&2
        om_say "build of $dir failed (log: $dir/build.log)"
        return 1
    fi
}

# om_build <build dir> [-DKEY=VALUE...]: om_configure, then build everything.
om_build() {
    om_configure "$@" && om_compile "$1"
}

# om_targets <build dir> <regex>: the build's targets whose name matches.
om_targets() {
    cmake --build "$1" --target help 2>/dev/null | sed -n 's/^\.\.\. \([^ ]*\).*/\1/p' |
        grep -E "$2" || true
}

# om_suite_stop <stack dir>: SIGTERM every service started by `up` (pid files
# in <stack dir>/run), SIGKILL what is left after 5 s.
om_suite_stop() {
    local run=$1/run f pid name i
    [ -d "$run" ] || return 0
    for f in "$run"/*.pid; do
        [ -e "$f" ] || continue
        name=$(basename "$f" .pid)
        [ "$name" = up ] && continue
        pid=$(cat "$f" 2>/dev/null)
        if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null
        fi
    done
    for f in "$run"/*.pid; do
        [ -e "$f" ] || continue
        name=$(basename "$f" .pid)
        [ "$name" = up ] && continue
        pid=$(cat "$f" 2>/dev/null)
        if [ -n "$pid" ]; then
            for i in $(seq 1 50); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.1
            done
            if kill -0 "$pid" 2>/dev/null; then
                kill -KILL "$pid" 2>/dev/null
                om_say "$name did not stop within 5 s: killed"
            else
                om_say "$name stopped"
            fi
        fi
        rm -f "$f"
    done
}

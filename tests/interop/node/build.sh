#!/bin/sh
# Prepares the Node.js interop client:
#   1. installs @grpc/grpc-js, @grpc/proto-loader, @bufbuild/protobuf and
#      @bufbuild/protoc-gen-es into the git-ignored <repo>/.tools (npm, once:
#      skipped when they are there; none of them downloads anything at
#      install time);
#   2. generates static JavaScript for the contract and google.rpc with
#      Debian's protoc and protoc-gen-es into <out-dir>/gen (only when a
#      .proto is newer than the last run), and links <out-dir>/node_modules
#      to .tools/node_modules so that the generated code finds its runtime.
#
#   tests/interop/node/build.sh <out-dir>
set -eu
HERE=$(CDPATH= cd -- "$(dirname -- "$0")" && pwd)
ROOT=$(CDPATH= cd -- "$HERE/../../.." && pwd)
TOOLS=${OM_NODE_TOOLS:-$ROOT/.tools}
OUT=${1:?usage: build.sh <out-dir>}
mkdir -p "$OUT"
OUT=$(CDPATH= cd -- "$OUT" && pwd)

PKGS="@grpc/grpc-js @grpc/proto-loader @bufbuild/protobuf @bufbuild/protoc-gen-es"
need=""
for p in $PKGS; do
    [ -f "$TOOLS/node_modules/$p/package.json" ] || need="$need $p"
done
if [ -n "$need" ]; then
    command -v npm >/dev/null 2>&1 || { echo "node/build.sh: npm is missing" >&2; exit 2; }
    echo "node/build.sh: installing$need into $TOOLS" >&2
    mkdir -p "$TOOLS"
    (cd "$TOOLS" && npm install --no-audit --no-fund --silent $need >&2)
fi
command -v protoc >/dev/null 2>&1 || { echo "node/build.sh: protoc is missing" >&2; exit 2; }

GEN=$OUT/gen
STAMP=$OUT/.stamp
cd "$ROOT/proto"
PROTOS=$(find orgmesh -name '*.proto' | LC_ALL=C sort)
RPC="google/rpc/status.proto google/rpc/error_details.proto"
stale=0
[ -f "$STAMP" ] || stale=1
[ "$HERE/build.sh" -nt "$STAMP" ] && stale=1   # this script changed
if [ $stale -eq 0 ]; then
    for p in $PROTOS; do
        if [ "$p" -nt "$STAMP" ]; then stale=1; break; fi
    done
    for p in $RPC; do
        if [ "$ROOT/common/proto/$p" -nt "$STAMP" ]; then stale=1; break; fi
    done
fi
if [ $stale -eq 1 ]; then
    rm -rf "$GEN"
    mkdir -p "$GEN"
    protoc -I. -I"$ROOT/common/proto" \
        --plugin=protoc-gen-es="$TOOLS/node_modules/.bin/protoc-gen-es" \
        --es_out="$GEN" --es_opt=target=js,import_extension=js \
        $PROTOS $RPC
    touch "$STAMP"
fi
ln -sfn "$TOOLS/node_modules" "$OUT/node_modules"

#!/bin/sh
# Builds the Go interop client: Go stubs of the whole contract (protoc with
# Debian's protoc-gen-go 1.3 and protoc-gen-go-grpc), then the scenario
# binary, offline, in GOPATH mode against Debian's Go packages
# (/usr/share/gocode: google.golang.org/grpc, github.com/golang/protobuf,
# google.golang.org/genproto for google.rpc error details).
#
#   tests/interop/go/build.sh <out-dir>     -> <out-dir>/bin/orgmesh-go-scenario
#
# The protos declare no go_package, so every file is mapped with an M option
# to orgmesh/gen/<dir of the .proto> (package name: the last element, v1).
# Stubs are regenerated only when a .proto is newer than the stamp; the Go
# build cache lives in <out-dir>/cache, so a second build takes a second.
set -eu
HERE=$(CDPATH= cd -- "$(dirname -- "$0")" && pwd)
ROOT=$(CDPATH= cd -- "$HERE/../../.." && pwd)
OUT=${1:?usage: build.sh <out-dir>}
mkdir -p "$OUT"
OUT=$(CDPATH= cd -- "$OUT" && pwd)

for tool in go protoc protoc-gen-go protoc-gen-go-grpc; do
    command -v "$tool" >/dev/null 2>&1 || {
        echo "go/build.sh: $tool is missing (deploy/local/install-deps installs golang-go," \
             "golang-google-grpc-dev, golang-goprotobuf-dev, protoc-gen-go-grpc," \
             "golang-google-genproto-dev)" >&2; exit 2; }
done
[ -d /usr/share/gocode/src/google.golang.org/genproto/googleapis/rpc/errdetails ] || {
    echo "go/build.sh: golang-google-genproto-dev is missing" >&2; exit 2; }

GEN=$OUT/gopath/src/orgmesh/gen
STAMP=$OUT/gopath/.stamp
cd "$ROOT/proto"
PROTOS=$(find orgmesh -name '*.proto' | LC_ALL=C sort)

stale=0
[ -f "$STAMP" ] || stale=1
[ "$HERE/build.sh" -nt "$STAMP" ] && stale=1   # this script changed
if [ $stale -eq 0 ]; then
    for p in $PROTOS; do
        [ "$p" -nt "$STAMP" ] && { stale=1; break; }
    done
fi
if [ $stale -eq 1 ]; then
    M="Mgoogle/protobuf/field_mask.proto=google.golang.org/genproto/protobuf/field_mask"
    M="$M,Mgoogle/protobuf/timestamp.proto=github.com/golang/protobuf/ptypes/timestamp"
    M="$M,Mgoogle/protobuf/any.proto=github.com/golang/protobuf/ptypes/any"
    for p in $PROTOS; do
        M="$M,M$p=orgmesh/gen/$(dirname "$p")"
    done
    rm -rf "$GEN"
    mkdir -p "$GEN"
    # protoc-gen-go 1.3 takes one Go package per run: one run per directory.
    for d in $(for p in $PROTOS; do dirname "$p"; done | LC_ALL=C sort -u); do
        protoc -I. -I/usr/include \
            --go_out="paths=source_relative,$M:$GEN" \
            --go-grpc_out="paths=source_relative,$M:$GEN" \
            "$d"/*.proto
        # protoc-gen-go 1.3 names the package after the proto package
        # (orgmesh_partners_v1), protoc-gen-go-grpc after the import path
        # (v1): give the gRPC file the name of its message file.
        pkg=$(sed -n 's/^package //p' "$GEN/$d"/*.pb.go | grep -v '^v1$' | head -n1)
        for g in "$GEN/$d"/*_grpc.pb.go; do
            if [ -f "$g" ]; then sed -i "s/^package v1\$/package $pkg/" "$g"; fi
        done
    done
    touch "$STAMP"
fi

export GO111MODULE=off GOPROXY=off GOFLAGS= CGO_ENABLED=0
export GOPATH="$OUT/gopath:/usr/share/gocode"
export GOCACHE="$OUT/cache"
mkdir -p "$OUT/bin"
cd "$HERE/scenario"
go build -o "$OUT/bin/orgmesh-go-scenario" .

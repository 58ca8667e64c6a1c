#!/bin/sh
# Builds bench/run's grpc-go reference server, offline: GOPATH mode against
# Debian's Go packages (golang-go, golang-google-grpc-dev and what it depends
# on, in /usr/share/gocode), GOPROXY=off, no module download. The Go build
# cache lives in <out-dir>/cache, so a second build takes a second.
#
#   bench/grpcgo/build.sh <out-dir>     -> <out-dir>/orgmesh-bench-grpcgo
set -eu
HERE=$(CDPATH= cd -- "$(dirname -- "$0")" && pwd)
OUT=${1:?usage: build.sh <out-dir>}
mkdir -p "$OUT"
OUT=$(CDPATH= cd -- "$OUT" && pwd)
command -v go >/dev/null 2>&1 || {
    echo "grpcgo/build.sh: go is missing (deploy/local/install-deps: golang-go golang-google-grpc-dev)" >&2; exit 2; }
[ -d /usr/share/gocode/src/google.golang.org/grpc/health ] || {
    echo "grpcgo/build.sh: golang-google-grpc-dev is missing" >&2; exit 2; }
export GO111MODULE=off GOPROXY=off GOFLAGS= CGO_ENABLED=0
export GOPATH=/usr/share/gocode
export GOCACHE="$OUT/cache"
cd "$HERE"
go build -trimpath -o "$OUT/orgmesh-bench-grpcgo" .

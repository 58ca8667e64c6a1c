#!/usr/bin/env bash
# build-buildah.sh — builds a FROM scratch image of the six orgmesh services
# from a local CMake build, with buildah (no daemon, no Dockerfile, no network):
# the stripped binaries, the launcher (orgmesh-launch.c, the ENTRYPOINT), the
# shared libraries they load (found with ldd), CA certificates and /etc/passwd
# and /etc/group entries for uid/gid 10001. Same contract as the Containerfile's
# image: `<image> <service> [--migrate-only]`, user 10001, ports 8080/9090.
#
#   deploy/containers/build-buildah.sh [options]
#     --build-dir DIR   CMake build directory (default: build)
#     --image NAME      image name (default: localhost/orgmesh/orgmesh:<version>)
#     --archive FILE    also write the image as an OCI archive (e.g. for
#                       `kind load image-archive` or `skopeo copy`)
#     --no-smoke        skip running `orgmesh accounts --help` inside the image
#
# Runs as root, or rootless where buildah is set up for it. Where overlay
# mounts are not allowed (e.g. inside another container) set STORAGE_DRIVER=vfs.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
services=(accounts organizations connections assets partners notifier)
build_dir=$repo/build
version=$(git -C "$repo" describe --tags --always --dirty 2>/dev/null || echo dev)
image=""
archive=""
smoke=1

while [ $# -gt 0 ]; do
    case $1 in
        --build-dir) build_dir=$(cd "$2" && pwd); shift 2 ;;
        --image) image=$2; shift 2 ;;
        --archive) archive=$2; shift 2 ;;
        --no-smoke) smoke=0; shift ;;
        -h | --help) sed -n '2,18p' "$0"; exit 0 ;;
        *) echo "build-buildah: unknown option $1" >&2; exit 2 ;;
    esac
done
image=${image:-localhost/orgmesh/orgmesh:$version}

say() { printf 'build-buildah: %s\n' "$*"; }
die() { say "$*" >&2; exit 1; }

command -v buildah >/dev/null || die "buildah is not installed (Debian: apt-get install buildah)"
command -v ldd >/dev/null || die "ldd is needed"
for s in "${services[@]}"; do
    [ -x "$build_dir/services/$s/orgmesh-$s" ] ||
        die "$build_dir/services/$s/orgmesh-$s is missing: build first (cmake --build $build_dir)"
done

root=$(mktemp -d)
ctr=""
cleanup() {
    if [ -n "$ctr" ]; then buildah rm "$ctr" >/dev/null 2>&1 || true; fi
    rm -rf "$root"
}
trap cleanup EXIT

# ---- the root filesystem -------------------------------------------------------

mkdir -p "$root/usr/local/bin" "$root/etc/ssl/certs" "$root/tmp"
chmod 1777 "$root/tmp"
for s in "${services[@]}"; do
    cp "$build_dir/services/$s/orgmesh-$s" "$root/usr/local/bin/"
done
cc -O2 -Wall -Wextra -Werror -o "$root/usr/local/bin/orgmesh" "$repo/deploy/containers/orgmesh-launch.c"
strip --strip-unneeded "$root"/usr/local/bin/*

# Every library at the path the dynamic loader looks for it (the path ldd
# shows), plus the loader itself; the files are copied, not the symlinks.
libs=$(for b in "$root"/usr/local/bin/*; do ldd "$b"; done |
       awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | sort -u)
[ -n "$libs" ] || die "ldd found no libraries"
for lib in $libs; do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
done
say "$(echo "$libs" | wc -l) shared libraries"

ca=/etc/ssl/certs/ca-certificates.crt
[ -f "$ca" ] || die "$ca is missing (Debian: apt-get install ca-certificates)"
cp "$ca" "$root$ca"

cat >"$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
orgmesh:x:10001:10001:orgmesh:/nonexistent:/sbin/nologin
EOF
cat >"$root/etc/group" <<'EOF'
root:x:0:
orgmesh:x:10001:
EOF
# glibc's built-in defaults would do; spelt out so nobody has to know them.
printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$root/etc/nsswitch.conf"

if [ -d "$repo/services/notifier/templates" ]; then
    mkdir -p "$root/usr/local/share/orgmesh/notifier"
    cp -r "$repo/services/notifier/templates" "$root/usr/local/share/orgmesh/notifier/"
fi

# ---- the image ----------------------------------------------------------------------

ctr=$(buildah from --isolation chroot scratch)
buildah copy "$ctr" "$root" / >/dev/null
buildah config \
    --entrypoint '["/usr/local/bin/orgmesh"]' --cmd '--help' \
    --user 10001:10001 --workingdir / \
    --env ORGMESH_LISTEN=0.0.0.0:8080 --env ORGMESH_METRICS_LISTEN=0.0.0.0:9090 \
    --port 8080 --port 9090 \
    --label org.opencontainers.image.title=orgmesh \
    --label org.opencontainers.image.version="$version" \
    --label org.opencontainers.image.description="orgmesh gRPC services (FROM scratch)" \
    "$ctr"

if [ $smoke -eq 1 ]; then
    # Proves the loader finds every library: --help runs before any connection.
    out=$(buildah run --isolation chroot "$ctr" -- /usr/local/bin/orgmesh accounts --help 2>&1) ||
        die "smoke test failed: $out"
    say "smoke test: $(echo "$out" | head -n 1)"
fi

buildah commit --rm "$ctr" "$image" >/dev/null
ctr=""
say "built $image ($(buildah images --format '{{.Size}}' "$image" | head -n 1))"
if [ -n "$archive" ]; then
    buildah push "$image" "oci-archive:$archive:$image" >/dev/null
    say "wrote $archive"
fi

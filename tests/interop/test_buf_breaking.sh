#!/bin/sh
# Checks that the API contract did not change incompatibly by accident:
# `buf breaking` (rules: buf.yaml's `breaking` section, FILE) of proto/ as it
# is in the work tree against proto/ of the previous commit (HEAD~1), so both
# the last commit and uncommitted edits are covered. buf is installed from
# npm into the git-ignored .tools/ on first use (as for test_buf_lint.sh).
#
# Against what, in order: $OM_BUF_BREAKING_AGAINST when set (any buf input,
# e.g. '.git#subdir=proto,ref=v1.2.0'); HEAD~1 when it exists and holds
# proto/; else HEAD (a first commit, or a shallow clone of depth 1); else,
# with no git history at all, proto/ itself, so that the check still runs
# (and passes) on a fresh tree or a source tarball.
# Exit status: 0 when compatible, non-zero otherwise.
set -eu

ROOT=$(CDPATH= cd -- "$(dirname -- "$0")/../.." && pwd)
TOOLS="$ROOT/.tools"
BUF="$TOOLS/node_modules/.bin/buf"

if ! "$BUF" --version >/dev/null 2>&1; then
    if ! command -v npm >/dev/null 2>&1; then
        echo "test_buf_breaking: buf is not installed and npm is missing" >&2
        exit 2
    fi
    echo "test_buf_breaking: installing buf into $TOOLS" >&2
    mkdir -p "$TOOLS"
    (cd "$TOOLS" && npm install --no-audit --no-fund --silent @bufbuild/buf >&2)
    if ! "$BUF" --version >/dev/null 2>&1; then
        echo "test_buf_breaking: buf installation failed" >&2
        exit 2
    fi
fi

cd "$ROOT"
has_proto() { # <rev>: the commit exists and has a proto/ directory
    git rev-parse -q --verify "$1^{commit}" >/dev/null 2>&1 &&
        git cat-file -e "$1:proto" 2>/dev/null
}
if [ -n "${OM_BUF_BREAKING_AGAINST:-}" ]; then
    against=$OM_BUF_BREAKING_AGAINST
    what="$against (OM_BUF_BREAKING_AGAINST)"
elif ! git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    against=proto
    what="proto/ itself (not a git work tree: nothing to compare with)"
elif has_proto HEAD~1; then
    against='.git#subdir=proto,ref=HEAD~1'
    what="proto/ of HEAD~1 ($(git rev-parse --short HEAD~1))"
elif has_proto HEAD; then
    against='.git#subdir=proto,ref=HEAD'
    what="proto/ of HEAD ($(git rev-parse --short HEAD); no earlier commit with proto/)"
else
    against=proto
    what="proto/ itself (no commit holds proto/ yet)"
fi

echo "test_buf_breaking: buf $("$BUF" --version) breaking proto against $what"
if "$BUF" breaking proto --against "$against" --error-format=text; then
    echo "test_buf_breaking: OK"
else
    rc=$?
    echo "test_buf_breaking: FAILED (buf exit $rc): an incompatible change of the contract;" \
         "if it is intended, it needs a new package version (orgmesh.<service>.v2)" >&2
    exit "$rc"
fi

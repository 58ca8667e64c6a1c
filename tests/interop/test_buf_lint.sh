#!/bin/sh
# Checks the API contract with `buf lint` (SPEC 8: the suite passes buf's
# STANDARD rules; configuration in buf.yaml, module root proto/). buf is
# installed from npm into the git-ignored .tools/ on first use.
# Exit status: 0 when the contract is clean, non-zero otherwise.
set -eu

ROOT=$(CDPATH= cd -- "$(dirname -- "$0")/../.." && pwd)
TOOLS="$ROOT/.tools"
BUF="$TOOLS/node_modules/.bin/buf"

if ! "$BUF" --version >/dev/null 2>&1; then
    if ! command -v npm >/dev/null 2>&1; then
        echo "test_buf_lint: buf is not installed and npm is missing" >&2
        exit 2
    fi
    echo "test_buf_lint: installing buf into $TOOLS" >&2
    mkdir -p "$TOOLS"
    (cd "$TOOLS" && npm install --no-audit --no-fund --silent @bufbuild/buf >&2)
    if ! "$BUF" --version >/dev/null 2>&1; then
        echo "test_buf_lint: buf installation failed" >&2
        exit 2
    fi
fi

cd "$ROOT"
echo "test_buf_lint: buf $("$BUF" --version) lint ($ROOT/buf.yaml)"
# Prints one "file:line:column:message" per violation and exits non-zero on
# any; an unresolvable import or a syntax error fails the build step too.
if "$BUF" lint --error-format=text; then
    echo "test_buf_lint: OK"
else
    rc=$?
    echo "test_buf_lint: FAILED (buf exit $rc)" >&2
    exit "$rc"
fi

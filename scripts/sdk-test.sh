#!/usr/bin/env bash
# The SDKs' own checks, run by scripts/test.sh after the Go tests:
#   sdk/python      ruff check, ruff format --check, mypy --strict, pytest
#   sdk/typescript  tsc (typecheck and build), node --test
# Each runs when its tools are installed (CI installs them: .ci/run); without them it says what is
# missing and skips, unless TASKWORKER_REQUIRE_SDKS=1, which makes a missing tool a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
require=${TASKWORKER_REQUIRE_SDKS:-}
skip() {
  if [ -n "$require" ]; then
    echo "sdk-test: $1, and TASKWORKER_REQUIRE_SDKS is set" >&2
    exit 1
  fi
  echo "sdk-test: skipping $2: $1"
}

py=${TASKWORKER_PYTHON:-python3}
if ! command -v "$py" >/dev/null; then
  skip "no $py" "the Python SDK"
elif ! "$py" -c 'import pytest, mypy, ruff' 2>/dev/null; then
  skip "pytest, mypy or ruff is not installed for $py (pip install './sdk/python[dev]')" "the Python SDK"
else
  (
    cd sdk/python
    "$py" -m ruff check .
    "$py" -m ruff format --check .
    "$py" -m mypy --strict src tests
    "$py" -m pytest -q
  )
fi

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  skip "no node or npm" "the TypeScript SDK"
elif [ ! -d sdk/typescript/node_modules ]; then
  skip "sdk/typescript/node_modules is missing (cd sdk/typescript && npm ci)" "the TypeScript SDK"
else
  (
    cd sdk/typescript
    npm run --silent typecheck
    npm run --silent build
    npm test --silent
  )
fi

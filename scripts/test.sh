#!/usr/bin/env bash
# The test command: every package with the race detector, including the multi-process suites
# that build the taskworker binary and SIGKILL real processes; then the Python and TypeScript
# SDKs' own checks (scripts/sdk-test.sh), which skip when their tools are not installed.
set -euo pipefail
cd "$(dirname "$0")/.."
go test -race -count=1 -timeout 20m ./... "$@"
scripts/sdk-test.sh

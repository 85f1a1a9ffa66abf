#!/usr/bin/env bash
# The test command: every package with the race detector, including the multi-process suites
# that build the taskworker binary and SIGKILL real processes.
set -euo pipefail
cd "$(dirname "$0")/.."
exec go test -race -count=1 -timeout 20m ./... "$@"

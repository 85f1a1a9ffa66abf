#!/usr/bin/env bash
# Builds taskworker with its version stamped: `taskworker version` and `status` show
# `git describe --always --dirty` (a plain `go build` says "dev").
#   scripts/build.sh [OUT]   (default bin/taskworker; a relative OUT is relative to the repository root)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-bin/taskworker}
version=$(git describe --always --dirty 2>/dev/null || echo dev)
mkdir -p "$(dirname "$out")"
go build -ldflags "-X main.version=$version" -o "$out" .

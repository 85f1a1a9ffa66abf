#!/usr/bin/env bash
# Rebuilds the web console (ui/dist/, committed and embedded into the binary) from ui/src with
# the exact package versions of ui/package-lock.json. Needs Node.js 20+ and npm; `go build` does
# not. Run it after changing anything under ui/src, ui/build.mjs or the lockfile: ui's Go test
# fails while the committed build is stale.
set -euo pipefail
cd "$(dirname "$0")/../ui"
npm ci --no-audit --no-fund
node build.mjs

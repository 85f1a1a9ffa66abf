#!/usr/bin/env bash
# Runs every fuzz target for a short while (FUZZTIME, default 10s each). The committed seed corpora
# (testdata/fuzz/<Target>/) also run as plain tests in scripts/test.sh; this explores beyond them.
#   scripts/fuzz.sh               # every target, 10 s each
#   FUZZTIME=5m scripts/fuzz.sh   # longer
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/usr/local/go/bin:$PATH"
FUZZTIME=${FUZZTIME:-10s}
# Each target: package and function name, found in the test files so a new target is not forgotten.
grep -rl --include='*_test.go' '^func Fuzz' . | sort | while read -r file; do
  pkg=./$(dirname "${file#./}")
  for target in $(grep -o '^func Fuzz[A-Za-z0-9_]*' "$file" | sed 's/^func //'); do
    echo "== $pkg $target ($FUZZTIME)"
    go test -run '^$' -fuzz "^${target}\$" -fuzztime "$FUZZTIME" "$pkg"
  done
done

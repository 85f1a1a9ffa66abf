#!/usr/bin/env bash
# The benchmarks the README cites, on real taskworker processes on 127.0.0.1:
#   failover: SIGKILL a worker / the leader of a fresh 5-node cluster, time until its tasks run elsewhere
#   latency:  submit-to-result latency of echo on an idle 3-node cluster, and throughput with parallel submitters,
#             once per security mode (a fresh cluster each) in one table with the ratio to --insecure
#   scripts/bench.sh                          # defaults below
#   RUNS=10 COUNT=1000 scripts/bench.sh       # more samples
#   MODES=secure scripts/bench.sh             # one mode: its latency, throughput and memory tables
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/usr/local/go/bin:$PATH"
NODES=${NODES:-5}                 # failover cluster size
RUNS=${RUNS:-5}                   # failover runs per experiment
LAT_NODES=${LAT_NODES:-3}         # latency cluster size
COUNT=${COUNT:-100}               # serial echo tasks per target node
CONCURRENCY=${CONCURRENCY:-8,32,64} # parallel submitters for the throughput rows (serial latency is the table above)
TOTAL=${TOTAL:-2000}              # echo tasks per throughput row
MODES=${MODES:-insecure,secure,secure+acl} # --insecure; the default (mutual TLS, encrypted gossip); that and --acl with an echo-only token
ROUNDS=${ROUNDS:-1}                # rounds per mode, order rotated, medians reported (more rounds on a busy machine)

tmp=$(mktemp -d -t taskworker-bench-XXXX)
trap 'rm -rf "$tmp"' EXIT
scripts/build.sh "$tmp/taskworker"
go build -o "$tmp/failover" ./scripts/failover
go build -o "$tmp/latency" ./scripts/latency

echo "## taskworker benchmarks ($(date -u +%Y-%m-%d), $(go version | cut -d' ' -f3), $(nproc) CPUs, $(uname -sr))"
"$tmp/failover" -bin "$tmp/taskworker" -n "$NODES" -runs "$RUNS"
"$tmp/latency" -bin "$tmp/taskworker" -n "$LAT_NODES" -count "$COUNT" -concurrency "$CONCURRENCY" -total "$TOTAL" -modes "$MODES" -rounds "$ROUNDS"

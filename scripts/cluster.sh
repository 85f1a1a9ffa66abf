#!/usr/bin/env bash
# Builds taskworker and runs a local N-node cluster on 127.0.0.1 (default 3) until Ctrl-C.
#   scripts/cluster.sh [N]
# Node i listens on gossip 7946+10(i-1), raft 7947+10(i-1), HTTP 7948+10(i-1).
# Data and logs go to $TASKWORKER_CLUSTER_DIR (default: a new temporary directory).
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-3}
export PATH="/usr/local/go/bin:$PATH"
mkdir -p bin
go build -o bin/taskworker .
dir=${TASKWORKER_CLUSTER_DIR:-$(mktemp -d -t taskworker-cluster-XXXX)}
mkdir -p "$dir"
pids=()
stop() {
  echo "stopping: SIGTERM to every node (graceful leave)"
  kill -TERM "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
  exit 0
}
trap stop INT TERM
for i in $(seq 1 "$n"); do
  off=$(( (i - 1) * 10 ))
  args=(agent --name "n$i" --data-dir "$dir/n$i" --advertise 127.0.0.1
    --gossip-addr "127.0.0.1:$((7946 + off))" --raft-addr "127.0.0.1:$((7947 + off))"
    --http-addr "127.0.0.1:$((7948 + off))")
  [ "$i" -gt 1 ] && args+=(--join 127.0.0.1:7946)
  # setsid: Ctrl-C reaches the nodes once, through the trap, not twice (a second signal exits at once).
  setsid bin/taskworker "${args[@]}" >"$dir/n$i.log" 2>&1 &
  pids+=($!)
done
for _ in $(seq 1 150); do
  st=$(bin/taskworker status 2>/dev/null) || st=""
  if [ "$(grep -c ' alive ' <<<"$st")" -ge "$n" ] && ! grep -q ' none ' <<<"$st"; then
    break
  fi
  sleep 0.2
done
bin/taskworker status || true
cat <<TXT

$n nodes running (logs and data in $dir). Try, against any node:
  bin/taskworker exec calc-square 12
  bin/taskworker exec --addr http://127.0.0.1:7958 print '"hello"'
  bin/taskworker status
Ctrl-C stops the cluster (each node drains and leaves).
TXT
wait

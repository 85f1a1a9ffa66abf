#!/usr/bin/env bash
# Builds taskworker and runs a local N-node cluster on 127.0.0.1 (default 3) until Ctrl-C.
#   scripts/cluster.sh [N]
# Node i listens on gossip 7946+10(i-1), raft 7947+10(i-1), HTTP 7948+10(i-1).
# Data and logs go to $TASKWORKER_CLUSTER_DIR (default: a new temporary directory).
# The cluster is secure, as every cluster is by default: n1 makes the cluster CA and a join token
# (in $dir/n1/join-token); the others join with it, as a user would. TASKWORKER_CLUSTER_INSECURE=1
# starts it --insecure instead.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-3}
export PATH="/usr/local/go/bin:$PATH"
mkdir -p bin
scripts/build.sh bin/taskworker
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
insecure=${TASKWORKER_CLUSTER_INSECURE:-}
for i in $(seq 1 "$n"); do
  off=$(( (i - 1) * 10 ))
  args=(agent --name "n$i" --data-dir "$dir/n$i" --advertise 127.0.0.1
    --gossip-addr "127.0.0.1:$((7946 + off))" --raft-addr "127.0.0.1:$((7947 + off))"
    --http-addr "127.0.0.1:$((7948 + off))")
  [ -n "$insecure" ] && args+=(--insecure)
  [ "$i" -gt 1 ] && args+=(--join 127.0.0.1:7946)
  token=""
  if [ "$i" -gt 1 ] && [ -z "$insecure" ]; then
    # The first node writes its join token when it starts; wait for it (up to 30 s).
    for _ in $(seq 1 150); do
      [ -s "$dir/n1/join-token" ] && break
      sleep 0.2
    done
    token=$(cat "$dir/n1/join-token")
  fi
  # setsid: Ctrl-C reaches the nodes once, through the trap, not twice (a second signal exits at once).
  # The token goes in the environment, not argv, where every user of the machine could read it.
  TASKWORKER_JOIN_TOKEN="$token" setsid bin/taskworker "${args[@]}" >"$dir/n$i.log" 2>&1 &
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
TXT
if [ -z "$insecure" ]; then
  cat <<TXT
Gossip is encrypted and raft and node-to-node calls use mutual TLS (cluster CA in $dir/n1/tls).
Add another node with the join token (keep it secret):
  TASKWORKER_JOIN_TOKEN=\$(cat $dir/n1/join-token) bin/taskworker agent --name n$((n + 1)) \\
    --data-dir $dir/n$((n + 1)) --advertise 127.0.0.1 --gossip-addr 127.0.0.1:$((7946 + n * 10)) \\
    --raft-addr 127.0.0.1:$((7947 + n * 10)) --http-addr 127.0.0.1:$((7948 + n * 10)) --join 127.0.0.1:7946
TXT
fi
echo "Ctrl-C stops the cluster (each node drains and leaves)."
wait

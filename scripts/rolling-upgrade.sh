#!/usr/bin/env bash
# Rolling upgrade of a local cluster started by scripts/cluster.sh: one node at a time, drain it
# (`taskworker leave`, which waits until it has gone), start it again with the new binary on the
# same data dir and ports, joined to the others, and wait until it is alive with a raft role.
# The leader goes last, so leadership moves once. Tasks keep running throughout: a draining
# node finishes (or hands back) its tasks and gets no new ones.
#
#   scripts/rolling-upgrade.sh [CLUSTER_DIR [NEW_BINARY]]
#
# CLUSTER_DIR is the directory scripts/cluster.sh printed (default: $TASKWORKER_CLUSTER_DIR); it
# holds n1, n2, ... (data dirs) and n1.log, n2.log, ... NEW_BINARY defaults to building the
# current tree into bin/taskworker-new. Node i uses gossip B+10(i-1), raft +1, HTTP +2, where B is
# the port base cluster.sh wrote to CLUSTER_DIR/port-base (7946 if absent).
# Extra agent flags for the restarted nodes go in $TASKWORKER_UPGRADE_AGENT_ARGS
# (for example "--drain-timeout 10s"). The restarted nodes run detached (setsid), log to the
# same n<i>.log and write their PID to n<i>.pid; stop one with
#   bin/taskworker leave --addr http://127.0.0.1:<http port>
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/usr/local/go/bin:$PATH"

dir=${1:-${TASKWORKER_CLUSTER_DIR:-}}
if [ -z "$dir" ] || [ ! -d "$dir" ]; then
  echo "usage: $0 CLUSTER_DIR [NEW_BINARY]   (or set TASKWORKER_CLUSTER_DIR)" >&2
  exit 2
fi
dir=$(cd "$dir" && pwd)
new=${2:-}
if [ -z "$new" ]; then
  echo "building the current tree into bin/taskworker-new"
  mkdir -p bin
  scripts/build.sh bin/taskworker-new
  new=bin/taskworker-new
fi
[ -x "$new" ] || { echo "not an executable: $new" >&2; exit 2; }
# Run the nodes from a copy in the cluster dir, so rebuilding bin/ later does not touch them.
bin="$dir/taskworker-$(date +%Y%m%d-%H%M%S)"
cp "$new" "$bin"
echo "new binary: $bin ($("$bin" --version 2>/dev/null || echo unknown version))"

nodes=()
for d in "$dir"/n*/; do
  name=$(basename "$d")
  [[ $name =~ ^n[0-9]+$ ]] && nodes+=("${name#n}")
done
[ "${#nodes[@]}" -gt 0 ] || { echo "no node data dirs (n1, n2, ...) in $dir" >&2; exit 2; }
mapfile -t nodes < <(printf '%s\n' "${nodes[@]}" | sort -n)

base=$(cat "$dir/port-base" 2>/dev/null || echo 7946)
port() { echo $((base + 10 * ($1 - 1) + $2)); } # port I OFFSET: 0 gossip, 1 raft, 2 http
http() { echo "http://127.0.0.1:$(port "$1" 2)"; }

# row ADDR NAME prints NAME's row of `taskworker status` at ADDR: NAME GOSSIP RAFT HTTP STATE ROLE ...
row() { "$bin" status --addr "$1" 2>/dev/null | awk -v n="$2" '$1 == n' || true; }

# healthy I: node I is alive with a raft role, as seen by node I and by another node.
healthy() {
  local i=$1 j r
  for j in "${nodes[@]}"; do
    [ "$j" = "$i" ] && continue
    r=$(row "$(http "$j")" "n$i")
    [ -n "$r" ] || continue
    read -r _ _ _ _ state role _ <<<"$r"
    [ "$state" = alive ] && [ "$role" != none ] || return 1
    break
  done
  r=$(row "$(http "$i")" "n$i")
  read -r _ _ _ _ state role _ <<<"${r:-x x x x x none}"
  [ "$state" = alive ] && [ "$role" != none ]
}

# wait_for SECONDS WHAT CMD...: poll CMD every 0.2 s.
wait_for() {
  local secs=$1 what=$2 k
  shift 2
  for ((k = 0; k < secs * 5; k++)); do
    "$@" && return 0
    sleep 0.2
  done
  echo "timed out after ${secs}s waiting for $what" >&2
  return 1
}

# ports_free I: nothing listens on node I's TCP ports any more (the old process has exited).
ports_free() {
  local o
  for o in 0 1 2; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$(port "$1" "$o")") 2>/dev/null; then return 1; fi
  done
}

all_healthy() {
  local i
  for i in "${nodes[@]}"; do healthy "$i" || return 1; done
}

echo "cluster dir $dir, nodes: ${nodes[*]/#/n}"
wait_for 60 "every node alive with a raft role" all_healthy
leader=$("$bin" status --addr "$(http "${nodes[0]}")" | awk '/^Leader:/ {print $2}')
order=()
for i in "${nodes[@]}"; do [ "n$i" = "$leader" ] || order+=("$i"); done
for i in "${nodes[@]}"; do [ "n$i" = "$leader" ] && order+=("$i"); done
echo "leader is $leader; upgrade order: ${order[*]/#/n}"

for i in "${order[@]}"; do
  name="n$i"
  addr=$(http "$i")
  join=()
  for j in "${nodes[@]}"; do [ "$j" = "$i" ] || join+=("127.0.0.1:$(port "$j" 0)"); done
  join=$(IFS=,; echo "${join[*]}")
  started=$(date +%s)
  wait_for 60 "every node alive with a raft role" all_healthy

  echo "== $name: draining and leaving ($addr)"
  "$bin" leave --addr "$addr"
  wait_for 60 "$name's process to exit" ports_free "$i"

  echo "== $name: starting $bin on $dir/$name, joining $join"
  # An older release made data dirs 0755; this one refuses a data dir other users can read.
  chmod 700 "$dir/$name"
  # shellcheck disable=SC2086 # TASKWORKER_UPGRADE_AGENT_ARGS is a list of flags
  setsid nohup "$bin" agent --name "$name" --data-dir "$dir/$name" --advertise 127.0.0.1 \
    --gossip-addr "127.0.0.1:$(port "$i" 0)" --raft-addr "127.0.0.1:$(port "$i" 1)" \
    --http-addr "127.0.0.1:$(port "$i" 2)" --join "$join" ${TASKWORKER_UPGRADE_AGENT_ARGS:-} \
    >>"$dir/$name.log" 2>&1 </dev/null &
  echo $! >"$dir/$name.pid"
  echo "   pid $(cat "$dir/$name.pid"), log $dir/$name.log"

  if ! wait_for 90 "$name alive with a raft role" healthy "$i"; then
    echo "$name did not come back; last lines of its log:" >&2
    tail -n 20 "$dir/$name.log" >&2
    exit 1
  fi
  echo "== $name: upgraded in $(($(date +%s) - started))s"
  row "$addr" "$name"
done

echo
echo "rolling upgrade done; every node runs $bin"
"$bin" status --addr "$(http "${nodes[0]}")"

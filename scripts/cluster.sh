#!/usr/bin/env bash
# Builds taskworker into bin/taskworker and runs a local N-node cluster on 127.0.0.1 (default 3)
# until Ctrl-C.
#   scripts/cluster.sh [--port-base B] [N]
# Node i (1..N) listens on gossip B+10(i-1), raft B+10(i-1)+1, HTTP B+10(i-1)+2. B comes from
# --port-base, else $TASKWORKER_PORT_BASE, else 7946 (then n1's HTTP is 7948, the CLI's default
# --addr). 7946 is also Docker Swarm's gossip port: pick another base if Swarm runs here, or to
# run two clusters side by side.
# Data and logs go to $TASKWORKER_CLUSTER_DIR (default: a new temporary directory): n<i>/ (data),
# n<i>.log (appended to, each start marked by a "=== cluster.sh: starting" line), n<i>.pid, and
# port-base (read by scripts/rolling-upgrade.sh).
# The cluster is secure, as every cluster is by default: n1 makes the cluster CA and a join token
# (in $dir/n1/join-token); the others join with it, as a user would. TASKWORKER_CLUSTER_INSECURE=1
# starts it --insecure instead. $TASKWORKER_BIN runs that binary instead of building one.
#
# The script checks its own nodes, not whatever answers on the ports: each must still run and
# its own HTTP address must answer /v1/health with 200 within $TASKWORKER_CLUSTER_TIMEOUT seconds
# (default 60). Otherwise it prints the failing node's log tail, stops the nodes it started and
# exits 1. Ctrl-C (or SIGTERM) stops its nodes gracefully.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/usr/local/go/bin:$PATH"

usage() { echo "usage: $0 [--port-base B] [N]" >&2; exit 2; }
base=${TASKWORKER_PORT_BASE:-7946}
n=3
while [ $# -gt 0 ]; do
  case "$1" in
    --port-base) [ $# -ge 2 ] || usage; base=$2; shift 2 ;;
    --port-base=*) base=${1#*=}; shift ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    -*) usage ;;
    *) n=$1; shift ;;
  esac
done
[[ "$base" =~ ^[0-9]+$ ]] || { echo "cluster.sh: port base must be a number, got '$base'" >&2; exit 2; }
[[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "cluster.sh: node count must be a positive number, got '$n'" >&2; exit 2; }
if [ "$base" -lt 1024 ] || [ $((base + 10 * (n - 1) + 2)) -gt 65535 ]; then
  echo "cluster.sh: ports $base..$((base + 10 * (n - 1) + 2)) are not all within 1024..65535" >&2
  exit 2
fi
timeout=${TASKWORKER_CLUSTER_TIMEOUT:-60}

bin=${TASKWORKER_BIN:-}
if [ -z "$bin" ]; then
  mkdir -p bin
  scripts/build.sh bin/taskworker
  bin=bin/taskworker
fi
dir=${TASKWORKER_CLUSTER_DIR:-$(mktemp -d -t taskworker-cluster-XXXX)}
mkdir -p "$dir"
echo "$base" >"$dir/port-base"
insecure=${TASKWORKER_CLUSTER_INSECURE:-}

port() { echo $((base + 10 * ($1 - 1) + $2)); } # port I OFFSET: 0 gossip, 1 raft, 2 http

pids=()
declare -A names # pid -> node name
# stop_nodes: SIGTERM to the nodes this run started (graceful leave), SIGKILL to any still up
# after 30 s. Only these PIDs: another cluster on the machine is none of our business.
stop_nodes() {
  [ ${#pids[@]} -gt 0 ] || return 0
  echo "stopping: SIGTERM to every node of this run (graceful leave)"
  kill -TERM "${pids[@]}" 2>/dev/null || true
  for _ in $(seq 1 150); do
    alive=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.2
  done
  kill -KILL "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
  pids=()
}
trap 'stop_nodes; exit 130' INT
trap 'stop_nodes; exit 143' TERM
trap 'stop_nodes' EXIT

# run_log I: node I's log since this run started it (the log keeps earlier runs above the marker).
run_log() {
  awk '/^=== cluster.sh: starting /{buf=""} {buf=buf $0 "\n"} END{printf "%s", buf}' "$dir/n$1.log" 2>/dev/null
}

# fail NODE MESSAGE: says which node failed and why, with its log tail, then stops this run's nodes.
fail() {
  local i=$1
  shift
  {
    echo "cluster.sh: n$i failed: $*"
    if run_log "$i" | grep -q "address already in use"; then
      echo "cluster.sh: n$i: an address it binds is already in use (another cluster on ports" \
        "$(port "$i" 0)-$(port "$i" 2)? pass --port-base or TASKWORKER_PORT_BASE)"
    fi
    echo "--- last lines of $dir/n$i.log ---"
    run_log "$i" | tail -n 20 || true
    echo "---"
  } >&2
  stop_nodes
  exit 1
}

# healthy I: node I's own HTTP address answers /v1/health with 200 (bash's /dev/tcp: no curl needed).
healthy() {
  local status
  status=$( (exec 3<>"/dev/tcp/127.0.0.1/$(port "$1" 2)" &&
    printf 'GET /v1/health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3 && head -n 1 <&3) 2>/dev/null) || return 1
  [[ "$status" == *" 200 "* ]]
}

# check_alive I: node I's process still runs, else fail with its log.
check_alive() {
  kill -0 "${pids[$(($1 - 1))]}" 2>/dev/null || fail "$1" "its process exited"
}

deadline=$((SECONDS + timeout))
for i in $(seq 1 "$n"); do
  args=(agent --name "n$i" --data-dir "$dir/n$i" --advertise 127.0.0.1
    --gossip-addr "127.0.0.1:$(port "$i" 0)" --raft-addr "127.0.0.1:$(port "$i" 1)"
    --http-addr "127.0.0.1:$(port "$i" 2)")
  [ -n "$insecure" ] && args+=(--insecure)
  [ "$i" -gt 1 ] && args+=(--join "127.0.0.1:$(port 1 0)")
  if [ "$i" -gt 1 ] && [ -z "$insecure" ]; then
    # The first node writes its join token when it starts; wait for it while n1 runs.
    until [ -s "$dir/n1/join-token" ]; do
      check_alive 1
      [ "$SECONDS" -lt "$deadline" ] || fail 1 "no join token in $dir/n1/join-token after ${timeout}s"
      sleep 0.2
    done
    # The file's name, not the token, goes in argv, where every user of the machine could read it.
    args+=(--join-token-file "$dir/n1/join-token")
  fi
  # setsid: Ctrl-C reaches the nodes once, through the trap, not twice (a second signal exits at once).
  # Append, so a restart on the same TASKWORKER_CLUSTER_DIR keeps the previous run's log; the
  # marker line shows where each start begins.
  echo "=== cluster.sh: starting n$i at $(date -u +%Y-%m-%dT%H:%M:%SZ) ===" >>"$dir/n$i.log"
  setsid "$bin" "${args[@]}" >>"$dir/n$i.log" 2>&1 &
  pids+=($!)
  names[$!]=n$i
  echo $! >"$dir/n$i.pid"
done

# Every node of this run must be up and healthy on its own address.
for i in $(seq 1 "$n"); do
  until healthy "$i"; do
    check_alive "$i"
    [ "$SECONDS" -lt "$deadline" ] || fail "$i" "not healthy at http://127.0.0.1:$(port "$i" 2)/v1/health after ${timeout}s"
    sleep 0.2
  done
  check_alive "$i" # the answer came from this run's process, not one that had the port before
done

addr1="http://127.0.0.1:$(port 1 2)"
"$bin" status --addr "$addr1" || true
cat <<TXT

$n nodes running (logs and data in $dir).
Web console: $addr1/ui/   (every node serves it: http://127.0.0.1:<its HTTP port>/ui/)
Try, against any node:
  export TASKWORKER_ADDR=$addr1
  $bin exec calc-square 12
  $bin exec --addr http://127.0.0.1:$(port $((n > 1 ? 2 : 1)) 2) print '"hello"'
  $bin status
TXT
if [ -z "$insecure" ]; then
  m=$((n + 1))
  cat <<TXT
Gossip is encrypted and raft and node-to-node calls use mutual TLS (cluster CA in $dir/n1/tls).
Add another node with the join token (keep it secret):
  $bin agent --name n$m --join-token-file $dir/n1/join-token \\
    --data-dir $dir/n$m --advertise 127.0.0.1 --gossip-addr 127.0.0.1:$(port $m 0) \\
    --raft-addr 127.0.0.1:$(port $m 1) --http-addr 127.0.0.1:$(port $m 2) --join 127.0.0.1:$(port 1 0)
TXT
fi
echo "Ctrl-C stops the cluster (each node drains and leaves)."
# Runs until Ctrl-C; a node that exits on its own is reported, the others keep running.
while [ ${#pids[@]} -gt 0 ]; do
  wait -n "${pids[@]}" 2>/dev/null || true
  left=()
  for p in "${pids[@]}"; do
    if kill -0 "$p" 2>/dev/null; then
      left+=("$p")
    else
      echo "cluster.sh: ${names[$p]} (pid $p) exited; its log: $dir/${names[$p]}.log" >&2
    fi
  done
  pids=("${left[@]}")
  [ ${#pids[@]} -gt 0 ] || break
done

#!/usr/bin/env bash
# Mutation check: breaks the code on purpose in named ways, one at a time, and fails unless the
# tests of the package concerned fail for each (a mutation that survives is a behaviour no test
# holds). It never touches this checkout: the tracked files are copied to a temporary directory,
# each mutation is applied and undone there, and the copy is deleted at the end.
#
#   scripts/mutation.sh            every mutation
#   scripts/mutation.sh NAME...    only these (scripts/mutation.sh -l lists them)
#
# Each mutation is an exact text replacement that fails loudly when its target is not found exactly
# once, so a refactor cannot make a mutation silently vanish: update the target instead.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/usr/local/go/bin:$PATH"

# The mutations: name and what it breaks. apply_mutation sets pkg, the package whose tests run,
# run (optional), the tests of it to run, and want, the test that must be among those failing (another test failing alone may be a flake
# on a loaded machine, not a catch).
mutations=(
  membership-join-self       # Join counts the node's own address as a seed it reached
  membership-join-dns-self   # Join counts its own address, among those a seed name resolves to, as a seed
  limits-idle-timeout        # Apply forgets IdleTimeout: idle connections live as long as ReadTimeout
  fsm-fence-node-flipped     # a report is accepted only from a node that does not hold the task
  fsm-fence-stale-attempt    # a report of an earlier attempt is accepted
  fsm-no-requeue-on-death    # a dead node's tasks stay assigned to it instead of pending again
  fsm-halt-touches-state     # an entry that halts the FSM still changes a record
  fsm-snapshot-live-tasks    # a snapshot shares the live task index: Persist writes later state
  scheduler-ignore-capacity  # placement fills a node past its capacity
  api-submit-unauthorized    # the submit route forgets to check the caller's submit capability
  api-consistent-read-local  # a follower answers ?consistent from its own replica instead of the leader
  chaos-model-stale-terminal # the linearizability model lets a terminal task be read back as running
)

apply_mutation() {
  case "$1" in
  membership-join-self)
    replace membership/membership.go \
      'addrs = slices.DeleteFunc(slices.Clone(addrs), func(a string) bool { return a == self })' \
      '_ = self'
    pkg=./membership want=TestJoinSkipsOwnAddress ;;
  membership-join-dns-self)
    replace membership/membership.go $'\t\t\tif a != m.addr {\n' $'\t\t\tif true {\n'
    pkg=./membership want=TestJoinResolvesNameToEveryAddressEachRound ;;
  limits-idle-timeout)
    replace internal/limits/server.go $'\ts.IdleTimeout = t.IdleTimeout\n' ''
    pkg=./internal/limits want=TestIdleTimeoutClosesKeepAliveConnection ;;
  fsm-fence-node-flipped)
    replace fsm/fsm.go \
      'if !cur.State.Active() || cur.Node != r.Node || cur.BootID != r.BootID || cur.Attempt != r.Attempt {' \
      'if !cur.State.Active() || cur.Node == r.Node || cur.BootID != r.BootID || cur.Attempt != r.Attempt {'
    pkg=./fsm want=TestReportFencingRejectsStaleReports ;;
  fsm-fence-stale-attempt)
    replace fsm/fsm.go \
      'if !cur.State.Active() || cur.Node != r.Node || cur.BootID != r.BootID || cur.Attempt != r.Attempt {' \
      'if !cur.State.Active() || cur.Node != r.Node || cur.BootID != r.BootID || cur.Attempt < r.Attempt {'
    pkg=./fsm want=TestReportFencingRejectsStaleReports ;;
  fsm-no-requeue-on-death)
    # Only takeBack (a node down or gone) skips it; a reported interruption still requeues.
    replace fsm/fsm.go \
      $'\t\tf.noteFinish(KindInterrupted, t, name, prev == Running, now)\n\t\tf.interrupt(t, now)\n' \
      $'\t\tf.noteFinish(KindInterrupted, t, name, prev == Running, now)\n\t\tif t.CancelRequested {\n\t\t\tf.interrupt(t, now)\n\t\t}\n'
    pkg=./fsm want=TestRegister ;;
  fsm-halt-touches-state)
    replace fsm/batch.go \
      $'\t\t\tf.halt = newHaltError(l.Index, badErr)\n' \
      $'\t\t\tf.halt = newHaltError(l.Index, badErr)\n\t\t\tfor _, n := range f.nodes {\n\t\t\t\tn.Capacity++\n\t\t\t}\n'
    pkg=./fsm want=FuzzApply ;;
  fsm-snapshot-live-tasks)
    replace fsm/snapshot.go 's := &snapshot{index: f.index, tasks: f.tasks.all.Clone(),' 's := &snapshot{index: f.index, tasks: f.tasks.all,'
    pkg=./fsm want=TestPersistRunsBesideApply ;;
  scheduler-ignore-capacity)
    replace scheduler/place.go \
      'if n.Status == fsm.NodeUp && !n.Draining && n.Alive(alive) && v.Load[n.Name] < n.Capacity {' \
      'if n.Status == fsm.NodeUp && !n.Draining && n.Alive(alive) {'
    replace scheduler/place.go \
      $'\t\tif s.load >= s.node.Capacity {\n\t\t\tslots = append(slots[:best], slots[best+1:]...)\n' \
      $'\t\tif false {\n\t\t\tslots = append(slots[:best], slots[best+1:]...)\n'
    pkg=./scheduler want=TestPlace ;;
  api-submit-unauthorized)
    # Forwarded from a follower, the write must still meet the route's own check on the leader.
    replace internal/httpapi/httpapi.go \
      $'\t\tif err := authorize(r, acl.CapSubmit, req.Type); err != nil {\n\t\t\tWriteError(w, err)\n\t\t\treturn\n\t\t}\n\t}\n\tctx, cancel' \
      $'\t}\n\tctx, cancel'
    pkg=./node run=TestEveryForwardedWriteIsAuthorizedOnTheLeader want=TestEveryForwardedWriteIsAuthorizedOnTheLeader ;;
  api-consistent-read-local)
    replace internal/httpapi/routes.go \
      $'\t\t\t\tfwd.ServeRead(w, r, next)\n' \
      $'\t\t\t\tnext.ServeHTTP(w, r)\n'
    pkg=./node run=TestConsistentReadOnALaggingFollower want=TestConsistentReadOnALaggingFollower ;;
  chaos-model-stale-terminal)
    replace scripts/chaos/linear.go \
      $'\treturn s, s.Phase == phLive && s.CancelReq == out.CancelR\n' \
      $'\treturn s, s.Phase != phAbsent && s.CancelReq == out.CancelR\n'
    pkg=./scripts/chaos run=TestLinearizabilityModel want=TestLinearizabilityModel ;;
  *)
    echo "mutation: no mutation named $1 (scripts/mutation.sh -l lists them)" >&2
    return 1 ;;
  esac
}

if [ "${1:-}" = "-l" ]; then
  printf '%s\n' "${mutations[@]}"
  exit 0
fi
selected=("$@")
if [ ${#selected[@]} -eq 0 ]; then
  selected=("${mutations[@]}")
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/taskworker-mutation-XXXXXX")
trap 'rm -rf "$work"' EXIT
# The files as they are in the work tree, uncommitted edits and new files included, so a test
# being written can be checked before it is committed.
git ls-files -z --cached --others --exclude-standard |
  while IFS= read -r -d '' f; do if [ -e "$f" ]; then printf '%s\0' "$f"; fi; done |
  tar --null -T - -cf - | tar -C "$work" -xf -
cd "$work"

changed=()
# replace FILE OLD NEW: OLD must occur exactly once in FILE, or the whole run stops; the original
# is kept to undo it.
replace() {
  local file=$1 old=$2 new=$3 content rest
  if [ ! -f "$file" ]; then
    echo "mutation $name: $file does not exist" >&2
    exit 2
  fi
  content=$(cat "$file"; printf x)
  content=${content%x}
  if [[ $content != *"$old"* ]]; then
    echo "mutation $name: target not found in $file: $old" >&2
    exit 2
  fi
  rest=${content#*"$old"}
  if [[ $rest == *"$old"* ]]; then
    echo "mutation $name: target occurs more than once in $file: $old" >&2
    exit 2
  fi
  [ -f "$file.orig" ] || cp "$file" "$file.orig"
  changed+=("$file")
  printf '%s' "${content%%"$old"*}$new$rest" >"$file"
}

undo() {
  local f
  for f in "${changed[@]}"; do
    if [ -f "$f.orig" ]; then
      mv "$f.orig" "$f"
    fi
  done
  changed=()
}

# MUTATION_RUN narrows the tests run (go test -run), to see one test catch a mutation by itself.
gotest() {
  local only=${run:-${MUTATION_RUN:-}}
  go test -short -count=1 -timeout 5m ${only:+-run "$only"} "$1"
}

survived=()
start=$SECONDS
for name in "${selected[@]}"; do
  pkg= want= run=
  if ! apply_mutation "$name"; then
    echo "mutation $name: could not be applied" >&2
    exit 2
  fi
  undo
  # The test that must catch it passes unmutated, or its failure below would prove nothing.
  if ! go test -short -count=1 -timeout 5m -run "^$want\$" "$pkg" >"$work/out" 2>&1; then
    cat "$work/out" >&2
    echo "mutation $name: $want fails in $pkg without any mutation" >&2
    exit 2
  fi
  apply_mutation "$name"
  if ! go vet "$pkg" >"$work/out" 2>&1; then
    cat "$work/out" >&2
    undo
    echo "mutation $name: does not compile; fix the mutation" >&2
    exit 2
  fi
  echo "== $name ($pkg)"
  if gotest "$pkg" >"$work/out" 2>&1; then
    echo "   SURVIVED: the tests of $pkg pass with it"
    survived+=("$name")
  elif ! grep -qE "^--- FAIL: $want( |/)" "$work/out"; then
    grep -E '^--- FAIL' "$work/out" | sed 's/^/   /' || cat "$work/out"
    echo "   SURVIVED: $want passes with it (what failed is another test: a flake?)"
    survived+=("$name")
  else
    awk -v w="--- FAIL: $want" 'index($0, w) == 1 { p = 1 } /^(FAIL|ok)/ { exit } p && n < 4 { sub(/^[ \t]+/, ""); print "   caught: " $0; n++ }' "$work/out"
  fi
  undo
done
echo "mutation: ${#selected[@]} mutations in $((SECONDS - start)) s, ${#survived[@]} survived"
if [ ${#survived[@]} -gt 0 ]; then
  printf 'survived: %s\n' "${survived[@]}" >&2
  exit 1
fi

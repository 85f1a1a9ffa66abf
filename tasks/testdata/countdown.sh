#!/bin/sh
# countdown: the example command-backed task of example-tasks.yaml.
# Input on stdin: a JSON non-negative integer. Result: {"counted_from": N}.
set -eu
n=$(cat)
case $n in
'' | *[!0-9]*)
	echo "input must be a non-negative integer, got: $n" >&2
	exit 2
	;;
esac
left=$n
if [ -f "$TASKWORKER_CHECKPOINT_FILE" ]; then
	# The checkpoint is {"left": K}.
	left=$(tr -cd 0-9 <"$TASKWORKER_CHECKPOINT_FILE")
	echo "resuming with $left left"
fi
while [ "$left" -gt 0 ]; do
	echo "$left..."
	left=$((left - 1))
	echo "::checkpoint:: {\"left\": $left}"
	sleep "${COUNTDOWN_STEP:-0}"
done
printf '{"counted_from": %s}\n' "$n" >"$TASKWORKER_RESULT_FILE"

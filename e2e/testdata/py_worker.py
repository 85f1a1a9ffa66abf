"""A Python worker for e2e/worker_python_test.go, on the SDK in sdk/python.

Its tasks wait on gate files that the test creates, so the test decides when each one ends. It
prints what the test needs to see as JSON lines on stdout; the SDK logs on stderr.

Environment: WORKER_NAME, and TASKWORKER_ADDR and TASKWORKER_TOKEN as for any worker.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

import taskworker as tw

logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
NAME = os.environ["WORKER_NAME"]

# Task ID -> gate file: the outcome of that task waits for the file before it is sent.
held: dict[str, str] = {}


def say(**kv: Any) -> None:
    print(json.dumps(kv), flush=True)


def gate(ctx: tw.Context, path: str | None) -> None:
    """Returns once path exists (at once for None); a cancel ends the attempt."""
    while path and not os.path.exists(path):
        if ctx.wait_cancelled(0.005):
            ctx.raise_if_cancelled()


class E2EWorker(tw.Worker):
    """A worker whose outcome reports can be held back: the test freezes the process while one
    is held, and releases it after the cluster gave the task to another worker, so that the
    late report really reaches the host."""

    def _post_events(self, session: object, body: bytes) -> list[dict[str, Any]]:
        events = json.loads(body)["events"]
        mine = [e["task_id"] for e in events if e["kind"] == "succeeded" and e["task_id"] in held]
        if not mine:
            return super()._post_events(session, body)
        say(event="holding", tasks=mine)
        while not all(os.path.exists(held[t]) for t in mine):
            time.sleep(0.005)
        try:
            results = super()._post_events(session, body)
        except tw.APIError as err:
            say(event="sent", tasks=mine, status=err.status, code=err.code, error=err.message)
            raise
        say(event="sent", tasks=mine, status=200, results=results)
        return results


w = E2EWorker(name=NAME, capacity=4, drain_timeout=60)


@w.task("py-e2e-upper", description="upper-cases text once its gate opens", example_input={"text": "hi"})
def upper(ctx: tw.Context, spec: dict[str, Any]) -> dict[str, Any]:
    ctx.log(f"upper-casing {spec['text']} on {NAME}")
    say(event="start", task=ctx.task_id, attempt=ctx.attempt, t=time.time())
    if spec.get("hold_on") == NAME:
        held[ctx.task_id] = spec["hold_report"]
    gate(ctx, spec.get("gate"))
    return {"upper": spec["text"].upper(), "worker": NAME}


@w.task("py-e2e-long", description="checkpoints step 1, waits for its gate, then ends")
def long(ctx: tw.Context, spec: dict[str, Any]) -> dict[str, Any]:
    start = ctx.last_checkpoint
    say(event="start", task=ctx.task_id, attempt=ctx.attempt, checkpoint=start, t=time.time())
    if start is None:
        ctx.checkpoint({"step": 1, "by": NAME})
        ctx.log(f"step 1 on {NAME}")
    else:
        ctx.log(f"resuming after step {start['step']} of {start['by']} on {NAME}")
    gate(ctx, spec.get("gate"))
    ctx.checkpoint({"step": 2, "by": NAME})
    return {"worker": NAME, "resumed_from": start}


if __name__ == "__main__":
    w.run()
    say(event="stopped")

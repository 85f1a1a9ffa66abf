"""An example taskworker worker with two task types.

    pip install ./sdk/python
    TASKWORKER_ADDR=... TASKWORKER_TOKEN=... TASKWORKER_CA_FILE=... python3 examples/python-worker/worker.py

SIGTERM or Ctrl-C drains it (running tasks finish, then it leaves); a second one leaves at once.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import time
from typing import Any

from taskworker import Context, FinalError, PermissionDenied, Unauthorized, Worker

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
log = logging.getLogger("py-worker")

w = Worker(
    name=os.environ.get("WORKER_NAME"),
    capacity=int(os.environ.get("WORKER_CAPACITY", "4")),
)


@w.task("py-upper", version="1", description="upper-cases a string", example_input="hi")
def upper(ctx: Context, text: str) -> str:
    if not isinstance(text, str):
        raise FinalError("input must be a string")  # no retry can fix that
    ctx.log(f"upper-casing {len(text)} characters")
    return text.upper()


@w.task(
    "py-hash",
    version="1",
    description="SHA-256 of a string, hashed `rounds` times, one every `step_ms`; resumes from checkpoints",
    example_input={"text": "hi", "rounds": 5, "step_ms": 200},
)
def hash_rounds(ctx: Context, spec: dict[str, Any]) -> dict[str, Any]:
    start = ctx.last_checkpoint or {"round": 0, "digest": spec["text"]}
    digest, done = str(start["digest"]), int(start["round"])
    if done:
        ctx.log(f"resuming at round {done}")
    for i in range(done, int(spec.get("rounds", 5))):
        if ctx.wait_cancelled(spec.get("step_ms", 200) / 1000):
            ctx.raise_if_cancelled()
        digest = hashlib.sha256(digest.encode()).hexdigest()
        ctx.checkpoint({"round": i + 1, "digest": digest})
        ctx.log(f"round {i + 1}: {digest[:12]}")
    return {"digest": digest, "resumed_from": done}


if __name__ == "__main__":
    started = time.monotonic()
    try:
        w.run()
    except (PermissionDenied, Unauthorized) as err:
        # The SDK logged the refusal; say what the token needs and exit without a traceback.
        log.error("the cluster refused this worker (%s): its token needs work on its task types", err.code)
        sys.exit(1)
    log.info("worker %s stopped after %.1fs", w.name, time.monotonic() - started)

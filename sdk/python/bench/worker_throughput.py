"""Throughput and latency of a Python worker against a running cluster.

    TASKWORKER_ADDR=http://127.0.0.1:7948 python3 sdk/python/bench/worker_throughput.py [N] [CAPACITY]

Registers a worker offering `py-echo`, submits N tasks in batches, and reports tasks/s from
the first submit to the last acknowledged outcome; then the submit-to-succeeded p50 of 200
tasks one at a time, through the worker and through the built-in `echo`.
"""

from __future__ import annotations

import statistics
import sys
import threading
import time
from typing import Any

from taskworker import Client, Context, Worker


def p50_ms(c: Client, typ: str, n: int = 200) -> float:
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        t = c.submit(typ, i)
        c.wait(t.id, timeout=30)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    cap = int(sys.argv[2]) if len(sys.argv) > 2 else 64
    done = threading.Semaphore(0)
    w = Worker(name="bench-py", capacity=cap)

    @w.task("py-echo")
    def echo(ctx: Context, x: Any) -> Any:
        done.release()
        return x

    th = threading.Thread(target=w.run, daemon=True)
    th.start()
    c = Client()
    deadline = time.monotonic() + 30
    while not any(x.get("name") == "bench-py" and x.get("state") == "up" for x in c.workers()):
        if time.monotonic() > deadline:
            sys.exit("the worker did not come up")
        threading.Event().wait(0.05)
    t0 = time.perf_counter()
    res = c.submit_batch([{"type": "py-echo", "input": i} for i in range(n)])
    ids = [r.id for r in res if not isinstance(r, Exception)]
    for _ in ids:
        done.acquire()
    last = ids[-1]
    c.wait(last, timeout=60)
    while w.running:
        threading.Event().wait(0.001)
    dt = time.perf_counter() - t0
    print(f"{len(ids)} tasks through a Python worker (capacity {cap}): {len(ids) / dt:,.0f} tasks/s")
    via_worker, builtin = p50_ms(c, "py-echo"), p50_ms(c, "echo")
    print(f"submit -> succeeded p50: worker {via_worker:.2f} ms, built-in echo {builtin:.2f} ms")
    w.stop()
    th.join(30)


if __name__ == "__main__":
    main()

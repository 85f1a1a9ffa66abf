"""A worker offering `py-echo` (returns its input), for scripts/bench's worker figure.

    TASKWORKER_ADDR=http://127.0.0.1:7948,... python3 sdk/python/bench/echo_worker.py NAME CAPACITY

It runs until SIGTERM, which drains it.
"""

from __future__ import annotations

import sys
from typing import Any

from taskworker import Context, Worker


def main() -> None:
    name = sys.argv[1] if len(sys.argv) > 1 else "bench-py"
    capacity = int(sys.argv[2]) if len(sys.argv) > 2 else 64
    w = Worker(name=name, capacity=capacity)

    @w.task("py-echo", version="1", example_input={"i": 1})
    def echo(ctx: Context, x: Any) -> Any:
        return x

    w.run()


if __name__ == "__main__":
    main()

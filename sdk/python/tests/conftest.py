from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from fakehost import FakeHost

from taskworker import Worker


def eventually(pred: Callable[[], bool], timeout: float = 10.0) -> None:
    """Polls pred until it holds; fails after timeout (generous: CI machines are slow)."""
    deadline = time.monotonic() + timeout
    tick = threading.Event()
    while not pred():
        assert time.monotonic() < deadline, "condition not met in time"
        tick.wait(0.005)


@pytest.fixture
def host() -> Iterator[FakeHost]:
    h = FakeHost()
    yield h
    h.close()


class Running:
    """A worker's run() on a thread, stopped (drained) at the end of the test."""

    def __init__(self, w: Worker) -> None:
        self.worker = w
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.worker.run()
        except BaseException as e:
            self.error = e

    def stop(self, timeout: float = 30.0) -> None:
        self.worker.stop()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "run() did not return after stop()"


@pytest.fixture
def start() -> Iterator[Callable[[Worker], Running]]:
    started: list[Running] = []

    def go(w: Worker) -> Running:
        r = Running(w)
        started.append(r)
        return r

    yield go
    for r in started:
        if r.thread.is_alive():
            r.stop()

"""The worker's events sender: log lines, checkpoints and outcomes, in batches, in order.

One thread sends one call at a time, so a task's events reach the host in the order they were
made. Log lines and checkpoints wait at most flush_delay for company; an outcome is sent at
once, with whatever is queued before it. Events made while a call is in flight go in the next.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import APIError, BadRequest, ConnectionFailed, NotFound, PayloadTooLarge, PermissionDenied
from .errors import Unauthorized as _Unauthorized

log = logging.getLogger("taskworker")

# The result given to on_result for an event that was never answered by the host: its
# session ended first.
DROPPED: dict[str, Any] = {"ok": False, "code": "dropped", "error": "the worker's session ended"}


@dataclass
class Event:
    """One event, already encoded: data is its JSON object."""

    session: object
    key: tuple[str, int]
    kind: str
    data: bytes

    @property
    def outcome(self) -> bool:
        return self.kind in ("succeeded", "failed", "cancelled", "wait_children")


class EventSender:
    """Sends events through post(session, body) -> results, one entry per event.

    alive(session) says whether a session still holds: a batch of a session that has ended is
    dropped, not retried. on_lost is told of a 404 (the session is gone), on_fatal of a 401 or
    403 (the token no longer works). Every event gets exactly one on_result call: the host's
    answer, a refusal, or DROPPED.
    """

    def __init__(
        self,
        post: Callable[[object, bytes], list[dict[str, Any]]],
        on_result: Callable[[Event, dict[str, Any]], None],
        *,
        alive: Callable[[object], bool],
        on_lost: Callable[[object], None],
        on_fatal: Callable[[Exception], None],
        flush_delay: float = 0.01,
        max_events: int = 1000,
        max_bytes: int = 512 * 1024,
    ) -> None:
        self._post = post
        self._on_result = on_result
        self._alive = alive
        self._on_lost = on_lost
        self._on_fatal = on_fatal
        self.flush_delay = flush_delay
        self.max_events = max_events
        self.max_bytes = max_bytes
        self._cond = threading.Condition()
        self._queue: deque[tuple[float, Event]] = deque()
        self._outcomes = 0  # outcomes in the queue
        self._inflight = False
        self._closed = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="taskworker-events", daemon=True)
        self.calls = 0  # events calls made, for tests and stats

    def start(self) -> None:
        self._thread.start()

    def add(self, ev: Event) -> None:
        with self._cond:
            if self._closed:
                drop = True
            else:
                drop = False
                self._queue.append((time.monotonic(), ev))
                if ev.outcome:
                    self._outcomes += 1
                self._cond.notify_all()
        if drop:
            self._on_result(ev, DROPPED)

    def flush(self, timeout: float) -> bool:
        """Waits until every queued event has been answered; False when timeout came first."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._queue or self._inflight:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self) -> None:
        """Stops the thread; events still queued get DROPPED."""
        with self._cond:
            self._closed = True
            self._stop.set()
            rest = [ev for _, ev in self._queue]
            self._queue.clear()
            self._outcomes = 0
            self._cond.notify_all()
        for ev in rest:
            self._on_result(ev, DROPPED)

    def _take(self) -> list[Event] | None:
        """Waits for a batch: the events of the first session in the queue, up to the limits."""
        with self._cond:
            while True:
                if self._closed:
                    return None
                if not self._queue:
                    self._cond.wait()
                    continue
                if self._outcomes == 0 and len(self._queue) < self.max_events:
                    due = self._queue[0][0] + self.flush_delay - time.monotonic()
                    if due > 0:
                        self._cond.wait(due)
                        continue
                break
            session = self._queue[0][1].session
            batch: list[Event] = []
            size = 0
            while self._queue and len(batch) < self.max_events:
                ev = self._queue[0][1]
                if ev.session is not session or (batch and size + len(ev.data) > self.max_bytes):
                    break
                self._queue.popleft()
                if ev.outcome:
                    self._outcomes -= 1
                batch.append(ev)
                size += len(ev.data) + 1
            self._inflight = True
            return batch

    def _run(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            try:
                self._send(batch)
            except Exception:  # a bug in a callback must not stop the sender
                log.exception("taskworker: events sender")
            finally:
                with self._cond:
                    self._inflight = False
                    self._cond.notify_all()

    def _send(self, batch: list[Event]) -> None:
        session = batch[0].session
        pause = 0.02
        while True:
            if not self._alive(session) or self._is_closed():
                self._answer(batch, [DROPPED] * len(batch))
                return
            body = b'{"events":[' + b",".join(ev.data for ev in batch) + b"]}"
            try:
                self.calls += 1
                results = self._post(session, body)
            except NotFound:
                self._on_lost(session)
                self._answer(batch, [DROPPED] * len(batch))
                return
            except (_Unauthorized, PermissionDenied) as err:
                self._on_fatal(err)
                self._answer(batch, [DROPPED] * len(batch))
                return
            except (BadRequest, PayloadTooLarge) as err:
                if len(batch) > 1:
                    half = len(batch) // 2
                    self._send(batch[:half])
                    self._send(batch[half:])
                    return
                refused = {"ok": False, "code": err.code or "rejected", "error": err.message}
                self._answer(batch, [refused])
                return
            except (ConnectionFailed, APIError) as err:
                # Transient: a 503, a 429, a node restarting. Retry while the session holds;
                # the poll loop finds out if it does not.
                log.warning("taskworker: sending %d events failed, retrying: %s", len(batch), err)
                self._stop.wait(pause)
                pause = min(pause * 2, 1.0)
                continue
            if len(results) != len(batch):
                log.error("taskworker: %d results for %d events", len(results), len(batch))
                results = (results + [DROPPED] * len(batch))[: len(batch)]
            self._answer(batch, results)
            return

    def _answer(self, batch: list[Event], results: list[dict[str, Any]]) -> None:
        for ev, res in zip(batch, results, strict=True):
            self._on_result(ev, res)

    def _is_closed(self) -> bool:
        with self._cond:
            return self._closed

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest

import taskworker as tw
from taskworker._events import DROPPED, Event, EventSender


class Recorder:
    """post() double: records each call's events and answers them, or raises what it is told."""

    def __init__(self) -> None:
        self.calls: list[list[dict[str, Any]]] = []
        self.raises: list[Exception] = []
        self.results: list[tuple[Event, dict[str, Any]]] = []
        self.lost: list[object] = []
        self.fatal: list[Exception] = []
        self.cond = threading.Condition()
        self.alive = True

    def post(self, session: object, body: bytes) -> list[dict[str, Any]]:
        with self.cond:
            if self.raises:
                raise self.raises.pop(0)
            events = json.loads(body)["events"]
            self.calls.append(events)
            return [{"ok": True} for _ in events]

    def on_result(self, ev: Event, res: dict[str, Any]) -> None:
        with self.cond:
            self.results.append((ev, res))
            self.cond.notify_all()

    def wait_results(self, n: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.results) < n:
                left = deadline - time.monotonic()
                assert left > 0, f"{len(self.results)} of {n} results"
                self.cond.wait(left)

    def sender(self, **kw: Any) -> EventSender:
        s = EventSender(
            self.post,
            self.on_result,
            alive=lambda _s: self.alive,
            on_lost=self.lost.append,
            on_fatal=self.fatal.append,
            **kw,
        )
        s.start()
        return s


def ev(i: int, kind: str = "log", session: object = "S") -> Event:
    return Event(session, (f"T{i}", 1), kind, json.dumps({"task_id": f"T{i}", "kind": kind, "n": i}).encode())


def test_log_lines_made_together_go_in_one_call_in_order() -> None:
    r = Recorder()
    s = r.sender(flush_delay=0.5)
    for i in range(50):
        s.add(ev(i))
    r.wait_results(50)
    assert len(r.calls) == 1
    assert [e["n"] for e in r.calls[0]] == list(range(50))
    s.close()


def test_an_outcome_is_sent_at_once_with_what_is_queued() -> None:
    # With a flush delay far longer than the deadline, only "outcomes go at once" can pass.
    r = Recorder()
    s = r.sender(flush_delay=60.0)
    s.add(ev(1))
    s.add(ev(1, "succeeded"))
    r.wait_results(2, timeout=5.0)
    assert [e["kind"] for e in r.calls[0]] == ["log", "succeeded"]
    s.close()


def test_a_lone_log_line_is_flushed_after_the_delay() -> None:
    r = Recorder()
    s = r.sender(flush_delay=0.01)
    s.add(ev(1))
    r.wait_results(1)
    assert s.flush(5.0)
    s.close()


def test_batches_respect_max_events_and_max_bytes() -> None:
    r = Recorder()
    s = r.sender(flush_delay=0.2, max_events=10, max_bytes=300)
    for i in range(25):
        s.add(ev(i))
    r.wait_results(25)
    assert all(len(c) <= 10 for c in r.calls)
    assert all(len(json.dumps(c)) <= 400 for c in r.calls)
    assert [e["n"] for c in r.calls for e in c] == list(range(25))
    s.close()


def test_transient_errors_are_retried() -> None:
    r = Recorder()
    r.raises = [
        tw.ConnectionFailed("down"),
        tw.Unavailable("no leader", status=503, code="no_leader"),
        tw.RateLimited("slow", status=429, code="rate_limited"),
    ]
    s = r.sender()
    s.add(ev(1, "succeeded"))
    r.wait_results(1)
    assert r.results[0][1] == {"ok": True}
    assert len(r.calls) == 1
    s.close()


def test_unknown_worker_drops_the_batch_and_reports_the_loss() -> None:
    r = Recorder()
    r.raises = [tw.NotFound("gone", status=404, code="unknown_worker")]
    s = r.sender()
    s.add(ev(1, "failed"))
    r.wait_results(1)
    assert r.results[0][1] is DROPPED
    assert r.lost == ["S"]
    s.close()


def test_a_refused_token_is_fatal() -> None:
    r = Recorder()
    r.raises = [tw.PermissionDenied("no work", status=403, code="permission_denied")]
    s = r.sender()
    s.add(ev(1, "succeeded"))
    r.wait_results(1)
    assert r.results[0][1] is DROPPED and len(r.fatal) == 1
    s.close()


def test_a_too_large_batch_is_split_until_the_bad_event_stands_alone() -> None:
    r = Recorder()
    big = tw.PayloadTooLarge("too big", status=413, code="body_too_large")
    r.raises = [big, big, big]  # the batch of 4, its first half, then the first event alone
    s = r.sender(flush_delay=0.3)
    for i in range(4):
        s.add(ev(i))
    r.wait_results(4)
    res = {e.key[0]: x for e, x in r.results}
    assert res["T0"]["ok"] is False and res["T0"]["code"] == "body_too_large"
    assert all(res[f"T{i}"] == {"ok": True} for i in (1, 2, 3))
    s.close()


def test_events_of_an_ended_session_are_dropped_not_sent() -> None:
    r = Recorder()
    r.alive = False
    s = r.sender()
    s.add(ev(1, "succeeded"))
    r.wait_results(1)
    assert r.results[0][1] is DROPPED and r.calls == []
    s.close()


def test_sessions_are_never_mixed_in_one_call() -> None:
    r = Recorder()
    s = r.sender(flush_delay=0.3)
    s.add(ev(1, session="A"))
    s.add(ev(2, session="B"))
    s.add(ev(3, "succeeded", session="B"))
    r.wait_results(3)
    assert [[e["n"] for e in c] for c in r.calls] == [[1], [2, 3]]
    s.close()


@pytest.mark.parametrize("queued", [1, 3])
def test_close_drops_what_is_queued(queued: int) -> None:
    r = Recorder()
    s = r.sender(flush_delay=60.0)
    for i in range(queued):
        s.add(ev(i))
    s.close()
    r.wait_results(queued)
    assert all(x is DROPPED for _, x in r.results)
    s.add(ev(9))  # after close: dropped at once
    r.wait_results(queued + 1)

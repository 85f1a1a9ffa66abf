"""The worker against FakeHost, the protocol's test double: dispatch, outcomes, cancel, loss, drain."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest
from conftest import Running, eventually
from fakehost import FakeHost

import taskworker as tw


def make(host: FakeHost, **kw: Any) -> tw.Worker:
    kw.setdefault("name", "py1")
    kw.setdefault("capacity", 4)
    return tw.Worker(addr=host.addr, lease="1s", **kw)


def test_register_sends_types_labels_and_capacity(host: FakeHost, start: Callable[..., Running]) -> None:
    w = make(host, labels={"zone": "a"})

    @w.task("py-upper", version="2", description="upper-cases", example_input="hi")
    def upper(ctx: tw.Context, text: str) -> str:
        return text.upper()

    start(w)
    host.wait_for(lambda: len(host.live()) == 1)
    reg = host.registrations[0]
    assert reg["name"] == "py1" and reg["capacity"] == 4 and reg["lease"] == "1000ms"
    assert reg["labels"] == {"zone": "a"}
    assert reg["types"] == [
        {"type": "py-upper", "version": "2", "description": "upper-cases", "example_input": "hi"}
    ]


def test_tasks_run_with_logs_and_checkpoints(host: FakeHost, start: Callable[..., Running]) -> None:
    w = make(host)

    @w.task("py-upper")
    def upper(ctx: tw.Context, text: str) -> str:
        ctx.log("upper-casing")
        ctx.checkpoint({"done": 0})
        assert ctx.last_checkpoint == {"done": 0}
        return text.upper()

    start(w)
    host.wait_for(lambda: len(host.live()) == 1)
    c = tw.Client(host.addr)
    t = c.submit("py-upper", "hi")
    assert c.wait(t.id, timeout=10).result == "HI"
    assert [ln.line for ln in c.logs(t.id)] == ["upper-casing"]
    assert host.tasks[t.id]["checkpoint"] == {"done": 0}


def test_exec_streams_live_logs(host: FakeHost, start: Callable[..., Running]) -> None:
    w = make(host)
    release = threading.Event()

    @w.task("slow")
    def slow(ctx: tw.Context, n: int) -> int:
        ctx.log("first")
        release.wait(10)
        ctx.log("second")
        return n

    start(w)
    host.wait_for(lambda: len(host.live()) == 1)
    seen: list[str] = []

    def on_log(line: tw.LogLine) -> None:
        seen.append(line.line)
        if line.line == "first":
            release.set()  # only a live stream can get here before the task ends

    assert tw.Client(host.addr).exec("slow", 7, on_log=on_log) == 7
    assert seen == ["first", "second"]


def test_final_error_fails_at_once_other_errors_retry(host: FakeHost, start: Callable[..., Running]) -> None:
    w = make(host)
    attempts: list[int] = []

    @w.task("final")
    def final(ctx: tw.Context, _: Any) -> None:
        raise tw.FinalError("no way")

    @w.task("flaky")
    def flaky(ctx: tw.Context, _: Any) -> int:
        attempts.append(ctx.attempt)
        if ctx.attempt < 3:
            ctx.checkpoint({"at": ctx.attempt})
            raise ValueError(f"attempt {ctx.attempt}")
        assert ctx.last_checkpoint == {"at": 2}
        return ctx.attempt

    start(w)
    host.wait_for(lambda: len(host.live()) == 1)
    c = tw.Client(host.addr)
    with pytest.raises(tw.TaskFailed) as info:
        c.wait(c.submit("final").id, timeout=10)
    assert info.value.task.error == tw.TaskError("FinalError", "no way", True)
    assert info.value.task.attempt == 1

    t = c.submit("flaky")
    assert c.wait(t.id, timeout=10).result == 3
    assert attempts == [1, 2, 3]
    failed = [e for call in host.event_calls for e in call if e["kind"] == "failed" and e["task_id"] == t.id]
    assert [e["error"] for e in failed] == [
        {"type": "ValueError", "message": "attempt 1", "final": False},
        {"type": "ValueError", "message": "attempt 2", "final": False},
    ]


def test_a_result_that_is_not_json_fails_the_task(host: FakeHost, start: Callable[..., Running]) -> None:
    w = make(host)

    @w.task("bad")
    def bad(ctx: tw.Context, _: Any) -> object:
        return object()

    start(w)
    host.wait_for(lambda: len(host.live()) == 1)
    c = tw.Client(host.addr)
    with pytest.raises(tw.TaskFailed) as info:
        c.wait(c.submit("bad").id, timeout=10)
    assert info.value.task.error is not None and info.value.task.error.type == "TypeError"


def test_cancel_reaches_sync_and_async_handlers(host: FakeHost, start: Callable[..., Running]) -> None:
    w = make(host)
    started = threading.Event()

    @w.task("sync-wait")
    def sync_wait(ctx: tw.Context, _: Any) -> str:
        started.set()
        assert ctx.wait_cancelled(10)
        ctx.raise_if_cancelled()
        return "not reached"

    @w.task("async-wait")
    async def async_wait(ctx: tw.Context, _: Any) -> str:
        started.set()
        await asyncio.sleep(30)
        return "not reached"

    start(w)
    host.wait_for(lambda: len(host.live()) == 1)
    c = tw.Client(host.addr)
    for typ in ("sync-wait", "async-wait"):
        started.clear()
        t = c.submit(typ)
        assert started.wait(10)
        c.cancel(t.id)
        with pytest.raises(tw.TaskFailed) as info:
            c.wait(t.id, timeout=10)
        assert info.value.task.state == "cancelled"
    eventually(lambda: w.running == 0)


def test_async_handlers_run_concurrently_on_the_loop(host: FakeHost, start: Callable[..., Running]) -> None:
    w = make(host, capacity=8)
    both = threading.Barrier(2, timeout=10)

    @w.task("meet")
    async def meet(ctx: tw.Context, n: int) -> int:
        await asyncio.to_thread(both.wait)  # both tasks must be running at once
        return n * 2

    start(w)
    host.wait_for(lambda: len(host.live()) == 1)
    c = tw.Client(host.addr)
    ids = [c.submit("meet", n).id for n in (1, 2)]
    assert [c.wait(i, timeout=10).result for i in ids] == [2, 4]


def test_losing_the_session_registers_again_and_drops_the_attempt(
    host: FakeHost, start: Callable[..., Running]
) -> None:
    w = make(host)
    first = threading.Event()
    release = threading.Event()
    seen_cancel: list[bool] = []
    finished = threading.Event()

    @w.task("long")
    def long(ctx: tw.Context, _: Any) -> int:
        if ctx.attempt == 1:
            first.set()
            release.wait(10)
            seen_cancel.append(ctx.cancelled)
            finished.set()
        return ctx.attempt

    start(w)
    host.wait_for(lambda: len(host.live()) == 1)
    c = tw.Client(host.addr)
    t = c.submit("long")
    assert first.wait(10)
    host.expire("py1")  # the lease is gone: the task goes back to pending
    # The worker registers again (new session) and gets attempt 2 while attempt 1 still runs.
    assert c.wait(t.id, timeout=10).result == 2
    assert w.registrations == 2
    release.set()
    assert finished.wait(10)
    eventually(lambda: w.running == 0)
    assert seen_cancel == [True]
    # The old attempt's outcome was never sent: the session it belonged to had ended.
    outcomes = [e for call in host.event_calls for e in call if e["kind"] != "log"]
    assert [(e["attempt"], e["kind"]) for e in outcomes] == [(2, "succeeded")]


def test_a_stale_attempt_is_dropped(host: FakeHost, start: Callable[..., Running]) -> None:
    w = make(host)
    go = threading.Event()
    started = threading.Event()

    @w.task("x")
    def x(ctx: tw.Context, _: Any) -> int:
        started.set()
        go.wait(10)
        return 1

    start(w)
    host.wait_for(lambda: len(host.live()) == 1)
    t = tw.Client(host.addr).submit("x")
    assert started.wait(10)
    with host.cond:  # the host moves the attempt away without telling the worker
        for s in host.sessions.values():
            s.running.clear()
    go.set()
    eventually(lambda: w.running == 0)
    assert host.tasks[t.id]["state"] == "running"  # the stale report changed nothing


def test_an_outcome_not_recorded_in_time_is_reported_again(
    host: FakeHost, start: Callable[..., Running]
) -> None:
    w = make(host)

    @w.task("x")
    def x(ctx: tw.Context, _: Any) -> int:
        return 7

    start(w)
    host.wait_for(lambda: len(host.live()) == 1)
    host.event_fault("succeeded", "no_leader")
    c = tw.Client(host.addr)
    t = c.submit("x")
    assert c.wait(t.id, timeout=10).result == 7
    outcomes = [e["kind"] for call in host.event_calls for e in call if e["kind"] != "log"]
    assert outcomes == ["succeeded", "succeeded"]
    eventually(lambda: w.running == 0)


def test_a_checkpoint_over_the_cap_stops_the_handler(host: FakeHost, start: Callable[..., Running]) -> None:
    w = make(host)
    stopped = threading.Event()

    @w.task("x")
    def x(ctx: tw.Context, _: Any) -> int:
        ctx.checkpoint({"big": "x" * 100})
        if ctx.wait_cancelled(10):
            stopped.set()
        return 1

    start(w)
    host.wait_for(lambda: len(host.live()) == 1)
    host.event_fault("checkpoint", "checkpoint_too_large")
    tw.Client(host.addr).submit("x")
    # No cancel notice comes from this host: the refusal alone stops the handler.
    assert stopped.wait(10)
    eventually(lambda: w.running == 0)


def test_drain_waits_for_running_tasks_then_leaves(host: FakeHost, start: Callable[..., Running]) -> None:
    w = make(host)
    started = threading.Event()
    release = threading.Event()

    @w.task("x")
    def x(ctx: tw.Context, _: Any) -> str:
        started.set()
        release.wait(10)
        return "done"

    r = start(w)
    host.wait_for(lambda: len(host.live()) == 1)
    c = tw.Client(host.addr)
    t = c.submit("x")
    assert started.wait(10)
    w.stop()
    host.wait_for(lambda: host.live()[0].draining)
    assert r.thread.is_alive()  # still waiting for the task
    release.set()
    r.thread.join(10)
    assert not r.thread.is_alive() and r.error is None
    assert c.get(t.id).state == "succeeded"
    assert host.live() == []  # DELETE ended the session
    assert ("DELETE", f"/v1/workers/{next(iter(host.sessions))}") in host.calls


def test_drain_timeout_hands_the_rest_back(host: FakeHost, start: Callable[..., Running]) -> None:
    w = make(host, drain_timeout=0.2)
    started = threading.Event()
    release = threading.Event()

    @w.task("stuck")
    def stuck(ctx: tw.Context, _: Any) -> str:
        started.set()
        release.wait(30)
        return "late"

    r = start(w)
    host.wait_for(lambda: len(host.live()) == 1)
    t = tw.Client(host.addr).submit("stuck")
    assert started.wait(10)
    r.stop()
    assert host.tasks[t.id]["state"] == "pending"  # handed back by DELETE
    release.set()


def test_a_refused_token_ends_run(host: FakeHost, start: Callable[..., Running]) -> None:
    w = make(host)

    @w.task("x")
    def x(ctx: tw.Context, _: Any) -> None:
        return None

    r = start(w)
    host.wait_for(lambda: len(host.live()) == 1)
    host.fault("/poll", 403, "permission_denied")
    r.thread.join(10)
    assert isinstance(r.error, tw.PermissionDenied)


def test_a_refused_registration_ends_run(host: FakeHost, start: Callable[..., Running]) -> None:
    w = make(host)

    @w.task("x")
    def x(ctx: tw.Context, _: Any) -> None:
        return None

    host.fault("/v1/workers", 403, "permission_denied")
    r = start(w)
    r.thread.join(10)
    assert isinstance(r.error, tw.PermissionDenied)


def test_registration_waits_out_a_name_still_held(host: FakeHost, start: Callable[..., Running]) -> None:
    w = make(host)

    @w.task("x")
    def x(ctx: tw.Context, _: Any) -> None:
        return None

    for _ in range(3):
        host.fault("/v1/workers", 409, "worker_exists")
    start(w)
    host.wait_for(lambda: len(host.live()) == 1)
    assert w.registrations == 1


def test_transient_poll_errors_do_not_end_the_session(host: FakeHost, start: Callable[..., Running]) -> None:
    w = make(host)

    @w.task("x")
    def x(ctx: tw.Context, n: int) -> int:
        return n

    start(w)
    host.wait_for(lambda: len(host.live()) == 1)
    host.fault("/poll", 503, "shutting_down")
    host.fault("/poll", 500, "internal")
    c = tw.Client(host.addr)
    assert c.wait(c.submit("x", 5).id, timeout=10).result == 5
    assert w.registrations == 1


def test_many_tasks_share_polls_and_events_calls(host: FakeHost, start: Callable[..., Running]) -> None:
    w = make(host, capacity=64)

    @w.task("echo-py")
    def echo(ctx: tw.Context, n: int) -> int:
        return n

    start(w)
    host.wait_for(lambda: len(host.live()) == 1)
    c = tw.Client(host.addr)
    ids = [c.submit("echo-py", i).id for i in range(300)]
    assert [c.wait(i, timeout=30).result for i in ids] == list(range(300))
    outcomes = sum(len(call) for call in host.event_calls)
    assert outcomes == 300
    # Every call carried outcomes; none was sent empty.
    assert all(host.event_calls)


def test_connection_error_moves_to_the_next_address(start: Callable[..., Running]) -> None:
    dead = FakeHost()
    dead_addr = dead.addr
    dead.close()  # nothing listens there now
    host = FakeHost()
    try:
        w = tw.Worker(name="py1", capacity=2, addr=f"{dead_addr},{host.addr}")

        @w.task("x")
        def x(ctx: tw.Context, n: int) -> int:
            return n + 1

        start(w)
        host.wait_for(lambda: len(host.live()) == 1)
        c = tw.Client([dead_addr, host.addr])
        assert c.wait(c.submit("x", 1).id, timeout=10).result == 2
    finally:
        host.close()


def test_worker_defaults_and_validation() -> None:
    w = tw.Worker(addr="127.0.0.1:1")
    assert w.name.endswith(f"-{__import__('os').getpid()}") and len(w.name) <= 64
    with pytest.raises(ValueError):
        tw.Worker(capacity=0, addr="127.0.0.1:1")
    with pytest.raises(ValueError, match="no task types"):
        w.run()

    @w.task("a")
    def a(ctx: tw.Context, _: Any) -> None:
        return None

    with pytest.raises(ValueError, match="twice"):
        w.task("a")(a)


def test_wait_children_ends_the_attempt_and_the_resumed_one_gets_the_outcomes(
    host: FakeHost, start: Callable[..., Running]
) -> None:
    w = make(host)
    resumed: list[bool] = []

    @w.task("py-sum")
    def total(ctx: tw.Context, n: int) -> dict[str, Any]:
        for i in range(n):
            ctx.submit("nowhere", i, idempotency_key=f"{ctx.task_id}/{i}")
        ctx.checkpoint({"submitted": n})
        try:
            res = ctx.wait_children()
        except Exception:  # a WaitingForChildren is no Exception: it ends the attempt
            raise AssertionError("wait_children raised an Exception") from None
        resumed.append(ctx.resumed)
        return {
            "sum": sum(r.result for r in res.values() if r.succeeded),
            "failed": [i for i, r in res.items() if not r.succeeded],
        }

    start(w)
    host.wait_for(lambda: len(host.live()) == 1)
    c = tw.Client(host.addr)
    t = c.submit("py-sum", 2)
    host.wait_for(lambda: host.tasks[t.id]["state"] == "waiting")
    kids = host.tasks[t.id]["wait_for"]
    assert len(kids) == 2 and kids == sorted(kids)
    for k in kids:
        sub = host.tasks[k]["submitted"]
        assert sub["parent_id"] == t.id and sub["execution_id"] == t.id
        assert sub["idempotency_key"].startswith(t.id + "/")
    assert host.tasks[t.id]["checkpoint"] == {"submitted": 2}
    eventually(lambda: w.running == 0)  # the slot is free while it waits
    host.resume(
        t.id,
        [
            {"id": kids[0], "state": "succeeded", "result": 9},
            {"id": kids[1], "state": "failed", "error": {"type": "task_error", "message": "boom"}},
        ],
    )
    done = c.wait(t.id, timeout=10)
    assert done.result == {"sum": 9, "failed": [kids[1]]}
    assert resumed == [True]
    assert len([x for x in host.tasks.values() if x["type"] == "nowhere"]) == 2  # no second children


def test_wait_children_without_children_returns_at_once(
    host: FakeHost, start: Callable[..., Running]
) -> None:
    w = make(host)

    @w.task("py-none")
    def none(ctx: tw.Context, _: Any) -> int:
        assert not ctx.resumed and ctx.child_results == {}
        return len(ctx.wait_children())

    start(w)
    host.wait_for(lambda: len(host.live()) == 1)
    c = tw.Client(host.addr)
    assert c.wait(c.submit("py-none", None).id, timeout=10).result == 0


def test_an_async_handler_waits_for_children(host: FakeHost, start: Callable[..., Running]) -> None:
    w = make(host)

    @w.task("py-async")
    async def run(ctx: tw.Context, _: Any) -> Any:
        child = ctx.submit("nowhere", 1, idempotency_key=ctx.task_id + "/0")
        await asyncio.sleep(0)
        return ctx.wait_children([child])[child].result

    start(w)
    host.wait_for(lambda: len(host.live()) == 1)
    c = tw.Client(host.addr)
    t = c.submit("py-async", None)
    host.wait_for(lambda: host.tasks[t.id]["state"] == "waiting")
    kid = host.tasks[t.id]["wait_for"][0]
    host.resume(t.id, [{"id": kid, "state": "succeeded", "result": "one"}])
    assert c.wait(t.id, timeout=10).result == "one"

"""The client against FakeHost: connections, addresses, errors, blocking waits."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest
from conftest import Running
from fakehost import FakeHost

import taskworker as tw


def test_requests_reuse_one_keep_alive_connection(host: FakeHost) -> None:
    c = tw.Client(host.addr)
    t = c.submit("nowhere", {"a": 1})
    for _ in range(20):
        assert c.get(t.id).id == t.id
    assert len(host.peers) == 1


def test_submit_sends_the_options(host: FakeHost) -> None:
    c = tw.Client(host.addr)
    t = c.submit(
        "nowhere",
        [1],
        version="2",
        idempotency_key="k",
        max_attempts=5,
        timeout=1.5,
        queue="q",
        priority=3,
        custom="x",
    )
    assert host.tasks[t.id]["submitted"] == {
        "type": "nowhere", "input": [1], "version": "2", "idempotency_key": "k", "max_attempts": 5,
        "timeout": "1500ms", "queue": "q", "priority": 3, "custom": "x",
    }  # fmt: skip


def test_the_token_is_sent(host: FakeHost) -> None:
    host.token = "s3cret"
    with pytest.raises(tw.Unauthorized):
        tw.Client(host.addr).submit("nowhere")
    assert tw.Client(host.addr, "s3cret").submit("nowhere").state == "pending"


def test_errors_are_typed(host: FakeHost) -> None:
    c = tw.Client(host.addr)
    with pytest.raises(tw.NotFound) as nf:
        c.get("T9999")
    assert nf.value.code == "not_found" and nf.value.status == 404
    with pytest.raises(tw.UnknownTaskType):
        c.submit("no-such-type")
    host.fault("/v1/tasks", 429, "queue_full", {"Retry-After": "2"})
    with pytest.raises(tw.RateLimited) as rl:
        c.submit("nowhere")
    assert rl.value.retry_after == 2.0


def test_wait_times_out_with_the_last_record(host: FakeHost) -> None:
    c = tw.Client(host.addr)
    t = c.submit("nowhere")
    with pytest.raises(tw.WaitTimeout) as info:
        c.wait(t.id, timeout=0.3)
    assert info.value.task.state == "pending"
    assert isinstance(info.value, TimeoutError)


def test_wait_rides_out_a_503(host: FakeHost) -> None:
    c = tw.Client(host.addr)
    t = c.submit("nowhere")
    host.fault(f"/v1/tasks/{t.id}", 503, "no_leader")
    c.cancel(t.id)  # pending: cancelled at once
    with pytest.raises(tw.TaskFailed) as info:
        c.wait(t.id, timeout=10)
    assert info.value.task.state == "cancelled"


def test_a_dead_address_is_skipped(host: FakeHost) -> None:
    dead = FakeHost()
    dead_addr = dead.addr
    dead.close()
    c = tw.Client(f"{dead_addr},{host.addr}")
    assert c.submit("nowhere").state == "pending"
    with pytest.raises(tw.ConnectionFailed, match="no address answered"):
        tw.Client(dead_addr).submit("nowhere")


def test_a_stale_pooled_connection_is_replaced(host: FakeHost) -> None:
    c = tw.Client(host.addr)
    t = c.submit("nowhere")
    # Close the pooled connection under the client, as a server's idle timeout does.
    for conns in c._t._idle.values():
        for conn in conns:
            assert conn.sock is not None
            conn.sock.close()
            conn.sock = None
    assert c.get(t.id).id == t.id


def test_workers(host: FakeHost, start: Callable[[tw.Worker], Running]) -> None:
    c = tw.Client(host.addr)
    assert c.workers() == []
    w = tw.Worker(name="w1", addr=host.addr)

    @w.task("x")
    def x(ctx: tw.Context, n: int) -> int:
        return n

    start(w)
    host.wait_for(lambda: len(host.live()) == 1)
    assert [(d["name"], d["state"]) for d in c.workers()] == [("w1", "up")]


def test_async_client(host: FakeHost, start: Callable[[tw.Worker], Running]) -> None:
    w = tw.Worker(name="w", addr=host.addr)

    @w.task("greet")
    def greet(ctx: tw.Context, who: str) -> str:
        ctx.log(f"greeting {who}")
        return f"hello {who}"

    start(w)
    host.wait_for(lambda: len(host.live()) == 1)

    async def main() -> tuple[Any, list[str], list[str]]:
        async with tw.AsyncClient(host.addr) as ac:
            t = await ac.submit("greet", "ann")
            done = await ac.wait(t.id, timeout=10)
            lines = [ln.line async for ln in ac.logs(t.id)]
            seen: list[str] = []
            res = await ac.exec("greet", "bob", on_log=lambda ln: seen.append(ln.line))
            return (done.result, lines, [res, *seen])

    result, lines, ex = asyncio.run(main())
    assert result == "hello ann" and lines == ["greeting ann"]
    assert ex[0] == "hello bob"


def test_exec_raises_task_failed(host: FakeHost, start: Callable[[tw.Worker], Running]) -> None:
    w = tw.Worker(name="w", addr=host.addr)

    @w.task("boom")
    def boom(ctx: tw.Context, _: Any) -> None:
        raise tw.FinalError("boom", error_type="Boom")

    start(w)
    host.wait_for(lambda: len(host.live()) == 1)
    with pytest.raises(tw.TaskFailed) as info:
        tw.Client(host.addr).exec("boom")
    assert info.value.task.error == tw.TaskError("Boom", "boom", True)


def test_client_is_safe_across_threads(host: FakeHost) -> None:
    c = tw.Client(host.addr)
    errors: list[BaseException] = []

    def hammer() -> None:
        try:
            for _ in range(20):
                c.get(c.submit("nowhere").id)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == [] and len(host.tasks) == 160
    assert len(host.peers) <= 8  # pooled: at most one connection per thread

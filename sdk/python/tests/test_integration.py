"""The SDK against a REAL taskworker node (`taskworker agent --dev`), built from this repository
with `go build` or taken from TASKWORKER_BIN. Skipped when go is missing, and the worker tests
when the node does not know /v1/workers yet, unless TASKWORKER_REQUIRE_SDKS=1."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import taskworker as tw

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[3]
REQUIRED = os.environ.get("TASKWORKER_REQUIRE_SDKS") == "1"


def _skip(why: str) -> None:
    if REQUIRED:
        pytest.fail(f"{why} (TASKWORKER_REQUIRE_SDKS=1)")
    pytest.skip(why)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if os.environ.get("TASKWORKER_BIN"):
        return Path(os.environ["TASKWORKER_BIN"])
    go = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None)
    if go is None:
        _skip("go is missing and TASKWORKER_BIN is not set")
    assert go is not None
    out = tmp_path_factory.mktemp("bin") / "taskworker"
    subprocess.run([go, "build", "-o", str(out), "."], cwd=REPO, check=True)
    return out


@pytest.fixture(scope="session")
def node(binary: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    http, gossip, raft = _free_port(), _free_port(), _free_port()
    log = (tmp_path_factory.mktemp("node") / "node.log").open("wb")
    proc = subprocess.Popen(
        [str(binary), "agent", "--dev", "--name", "py-it", "--http-addr", f"127.0.0.1:{http}",
         "--gossip-addr", f"127.0.0.1:{gossip}", "--raft-addr", f"127.0.0.1:{raft}"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    addr = f"http://127.0.0.1:{http}"
    c = tw.Client(addr, timeout=2)
    deadline = time.monotonic() + 60
    while True:
        try:
            c.health()
            break
        except (tw.ConnectionFailed, tw.Unavailable):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"the node did not become healthy; log in {log.name}")
            time.sleep(0.1)
    yield addr
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def test_builtin_tasks_through_the_client(node: str) -> None:
    c = tw.Client(node)
    t = c.submit("echo", {"a": [1, 2]})
    assert c.wait(t.id, timeout=30).result == {"a": [1, 2]}
    lines: list[str] = []
    assert c.exec("calc-square", 12, on_log=lambda ln: lines.append(ln.line)) == 144
    assert "Calculating square of 12" in lines
    assert t.id in {x.id for x in c.list(type="echo")}
    got = c.submit_batch([{"type": "echo", "input": 1}, {"type": "no-such-type"}])
    assert isinstance(got[0], tw.Task) and c.wait(got[0].id, timeout=30).result == 1
    assert isinstance(got[1], tw.UnknownTaskType)


def test_errors_of_a_real_node(node: str) -> None:
    c = tw.Client(node)
    with pytest.raises(tw.UnknownTaskType) as ut:
        c.submit("no-such-type")
    assert ut.value.code == "unknown_task_type"
    with pytest.raises(tw.InvalidInput):
        c.submit("calc-square", "not a number")
    with pytest.raises(tw.NotFound):
        c.get("01J0000000000000000000000")
    with pytest.raises(tw.TaskFailed) as tf:
        c.exec("fail", "on purpose", max_attempts=1)
    assert tf.value.task.state == "failed" and tf.value.task.error is not None
    assert tf.value.task.error.message == "on purpose"


def test_cancel_and_follow(node: str) -> None:
    c = tw.Client(node)
    t = c.submit("sleep", {"ms": 20000})
    c.cancel(t.id)
    with pytest.raises(tw.TaskFailed) as info:
        c.wait(t.id, timeout=30)
    assert info.value.task.state == "cancelled"


@pytest.fixture
def workers_route(node: str) -> str:
    try:
        tw.Client(node).workers()
    except tw.NotFound:
        _skip("this node does not serve /v1/workers yet")
    return node


def _run_until_up(w: tw.Worker, addr: str) -> tuple[threading.Thread, list[BaseException]]:
    """Runs w on a thread until the node lists it up; returns the thread and run()'s errors."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            w.run()
        except BaseException as e:
            errors.append(e)

    th = threading.Thread(target=run, daemon=True)
    th.start()
    c = tw.Client(addr)
    deadline = time.monotonic() + 30
    while not any(x.get("name") == w.name and x.get("state") == "up" for x in c.workers()):
        assert time.monotonic() < deadline and not errors, errors
        time.sleep(0.05)
    return th, errors


def test_a_python_worker_runs_tasks_with_live_logs(workers_route: str) -> None:
    w = tw.Worker(name="py-it-1", capacity=4, addr=workers_route)
    release = threading.Event()

    @w.task("py-upper", version="1", example_input="hi")
    def upper(ctx: tw.Context, text: str) -> str:
        ctx.log("upper-casing")
        release.wait(10)
        ctx.checkpoint({"done": 0})
        return text.upper()

    @w.task("py-final")
    def final(ctx: tw.Context, _: Any) -> None:
        raise tw.FinalError("never")

    th, errors = _run_until_up(w, workers_route)
    c = tw.Client(workers_route)
    seen: list[str] = []

    def on_log(line: tw.LogLine) -> None:
        seen.append(line.line)
        release.set()  # the line arrived while the task still ran: live

    assert c.exec("py-upper", "hi", on_log=on_log) == "HI"
    assert seen == ["upper-casing"]
    with pytest.raises(tw.TaskFailed) as info:
        c.exec("py-final", None, max_attempts=3)
    assert info.value.task.attempt == 1
    w.stop()
    th.join(30)
    assert not th.is_alive() and errors == []
    assert any(x.get("name") == "py-it-1" and x.get("state") == "left" for x in c.workers())


def test_a_python_worker_waits_for_its_children(workers_route: str) -> None:
    w = tw.Worker(name="py-it-2", capacity=1, addr=workers_route)

    @w.task("py-sum-squares")
    def sum_squares(ctx: tw.Context, n: int) -> int:
        for i in range(1, n + 1):
            ctx.submit("calc-square", i, idempotency_key=f"{ctx.task_id}/{i}", max_attempts=1)
        results = ctx.wait_children()
        return sum(r.result for r in results.values())

    th, errors = _run_until_up(w, workers_route)
    c = tw.Client(workers_route)
    t = c.submit("py-sum-squares", 4, max_attempts=1)
    done = c.wait(t.id, timeout=60)
    assert done.result == 1 + 4 + 9 + 16
    events = [h.get("event") for h in done.history]
    assert "waiting" in events and "resumed" in events and events.count("succeeded") == 1
    assert len(done.raw.get("wait_for") or []) == 4
    w.stop()
    th.join(30)
    assert not th.is_alive() and errors == []

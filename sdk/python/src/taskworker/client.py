"""The task API as typed calls: submit, wait, cancel, logs, exec."""

from __future__ import annotations

import builtins
import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import quote

from ._config import format_duration, resolve
from ._http import Transport
from .errors import APIError, ConnectionFailed, TaskFailed, Unavailable, WaitTimeout, error_from_response
from .types import LogLine, Task

# How long one blocking query of wait lasts, and the pause after a 503 (an election, say).
_WAIT_CHUNK = 60.0
_RETRY_PAUSE = 0.25
_MAX_BATCH = 1000  # tasks in one batch request, the API's limit


def _task_path(task_id: str) -> str:
    return "/v1/tasks/" + quote(task_id, safe="")


class Client:
    """Calls the HTTP API of a taskworker cluster. Safe for use from many threads.

    addr is one node's address or several (a comma-separated string or a sequence): a request
    that cannot reach one moves on to the next (see the transport's rules). Not passed, addr,
    token and ca_file come from TASKWORKER_ADDR, TASKWORKER_TOKEN (or TASKWORKER_TOKEN_FILE) and
    TASKWORKER_CA_FILE; the address defaults to http://127.0.0.1:7948. A CA file makes bare
    host:port addresses https and verifies the nodes' certificates against it only.
    timeout bounds each request that does not block on purpose.
    """

    def __init__(
        self,
        addr: str | Sequence[str] | None = None,
        token: str | None = None,
        *,
        ca_file: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        self._t = Transport(resolve(addr, token, ca_file), timeout)

    def close(self) -> None:
        """Closes idle connections."""
        self._t.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def submit(
        self,
        type: str,
        input: Any = None,
        *,
        version: str | None = None,
        idempotency_key: str | None = None,
        max_attempts: int | None = None,
        timeout: float | str | None = None,
        queue: str | None = None,
        priority: int | None = None,
        delay: float | str | None = None,
        run_at: datetime | str | None = None,
        unique_key: str | None = None,
        unique_for: float | str | None = None,
        **extra: Any,
    ) -> Task:
        """Submits a task and returns its record. timeout, delay and unique_for take seconds or
        Go duration text ("30s"); extra fields go into the body as they are. With an
        idempotency_key seen before, the earlier task's record is returned."""
        body: dict[str, Any] = {"type": type, "input": input}
        for key, value in (
            ("version", version),
            ("idempotency_key", idempotency_key),
            ("max_attempts", max_attempts),
            ("queue", queue),
            ("priority", priority),
            ("unique_key", unique_key),
        ):
            if value is not None:
                body[key] = value
        for key, dur in (("timeout", timeout), ("delay", delay), ("unique_for", unique_for)):
            if dur is not None:
                body[key] = dur if isinstance(dur, str) else format_duration(dur)
        if run_at is not None:
            body["run_at"] = run_at.isoformat() if isinstance(run_at, datetime) else run_at
        body.update(extra)
        return Task.from_json(self._t.request("POST", "/v1/tasks", body).json())

    def submit_batch(self, tasks: Sequence[Mapping[str, Any]]) -> builtins.list[Task | APIError]:
        """Submits many tasks with few requests (POST /v1/tasks/batch, 1,000 a request). Each
        item is a submit body ({"type": ..., "input": ..., ...}); each result is the task's
        record, or the APIError that refused that task alone."""
        out: builtins.list[Task | APIError] = []
        for i in range(0, len(tasks), _MAX_BATCH):
            chunk = builtins.list(tasks[i : i + _MAX_BATCH])
            doc = self._t.request("POST", "/v1/tasks/batch", {"tasks": chunk}).json()
            for r in doc.get("results") or []:
                if isinstance(r.get("task"), dict):
                    out.append(Task.from_json(r["task"]))
                else:
                    e = r.get("error") or {}
                    body = json.dumps(e).encode()
                    out.append(error_from_response(int(r.get("status") or 500), body))
        return out

    def get(self, task_id: str) -> Task:
        """Returns a task's record; NotFound when there is no such task."""
        return Task.from_json(self._t.request("GET", _task_path(task_id)).json())

    def _wait_done(self, task_id: str, timeout: float | None) -> Task:
        deadline = None if timeout is None else time.monotonic() + timeout
        index = 0
        task: Task | None = None
        while True:
            chunk = _WAIT_CHUNK
            if deadline is not None:
                chunk = min(chunk, deadline - time.monotonic())
                if chunk < 0.001:
                    if task is None:
                        task = self.get(task_id)
                    if task.done:
                        return task
                    raise WaitTimeout(task)
            query = {"wait": format_duration(round(chunk, 3)), "index": str(index)}
            try:
                resp = self._t.request("GET", _task_path(task_id), query=query, timeout=chunk + 10)
            except Unavailable:
                time.sleep(_RETRY_PAUSE)  # back off from a node without a leader
                continue
            task = Task.from_json(resp.json())
            if task.done:
                return task
            index = max(index, task.modify_index)

    def wait(self, task_id: str, timeout: float | None = None) -> Task:
        """Blocks until the task ends and returns its record. Raises TaskFailed when it failed
        or was cancelled, and WaitTimeout when timeout seconds pass first."""
        task = self._wait_done(task_id, timeout)
        if task.state != "succeeded":
            raise TaskFailed(task)
        return task

    def cancel(self, task_id: str) -> None:
        """Cancels a task: a pending one never runs, a running one is told to stop."""
        self._t.request("POST", _task_path(task_id) + "/cancel")

    def logs(self, task_id: str, follow: bool = False, *, timeout: float | None = None) -> Iterator[LogLine]:
        """Yields a task's output lines. With follow, the stream lasts until the task ends;
        timeout (none by default) bounds the wait for each line."""
        query = {"follow": "true"} if follow else None
        t = timeout if timeout is not None else (None if follow else self._t.timeout)
        for raw in self._t.stream_lines("GET", _task_path(task_id) + "/logs", query=query, timeout=t):
            doc = json.loads(raw)
            if isinstance(doc, dict):
                yield LogLine.from_json(doc)

    def exec(
        self,
        type: str,
        input: Any = None,
        on_log: Callable[[LogLine], object] | None = None,
        *,
        wait_timeout: float | None = None,
        **options: Any,
    ) -> Any:
        """Submits a task, passes its output lines to on_log as they happen, and returns its
        result once it has succeeded. Raises TaskFailed when it failed or was cancelled.
        options are submit's. on_log runs on another thread, one line at a time, each line
        once; every line has been passed when exec returns."""
        task = self.submit(type, input, **options)
        shown = 0
        broke: list[BaseException] = []

        def follow() -> None:
            nonlocal shown
            try:
                for line in self.logs(task.id, follow=True):
                    shown += 1
                    assert on_log is not None
                    on_log(line)
            except (ConnectionFailed, OSError, ValueError) as err:
                broke.append(err)

        follower: threading.Thread | None = None
        if on_log is not None:
            follower = threading.Thread(target=follow, name=f"taskworker-logs-{task.id}", daemon=True)
            follower.start()
        done = self._wait_done(task.id, wait_timeout)
        if follower is not None and on_log is not None:
            follower.join(30.0)
            if broke and not follower.is_alive():
                # The stream broke: fetch what it missed now that the task has ended.
                for i, line in enumerate(self.logs(task.id)):
                    if i >= shown:
                        on_log(line)
        if done.state != "succeeded":
            raise TaskFailed(done)
        return done.result

    def list(
        self,
        *,
        state: str | None = None,
        type: str | None = None,
        node: str | None = None,
        queue: str | None = None,
        limit: int | None = None,
        after: str | None = None,
    ) -> list[Task]:
        """Returns tasks, newest first, filtered by the arguments given."""
        query = {
            k: str(v)
            for k, v in (
                ("state", state),
                ("type", type),
                ("node", node),
                ("queue", queue),
                ("limit", limit),
                ("after", after),
            )
            if v is not None
        }
        doc = self._t.request("GET", "/v1/tasks", query=query).json()
        if isinstance(doc, dict):
            doc = doc.get("tasks") or []
        return [Task.from_json(t) for t in doc if isinstance(t, dict)]

    def workers(self) -> builtins.list[dict[str, Any]]:
        """Returns the cluster's workers, up and recently down (GET /v1/workers)."""
        doc = self._t.request("GET", "/v1/workers").json()
        return [w for w in doc if isinstance(w, dict)] if isinstance(doc, list) else []

    def cluster(self) -> dict[str, Any]:
        """Returns the leader, the nodes, the workers and the task counts (GET /v1/cluster)."""
        doc = self._t.request("GET", "/v1/cluster").json()
        return doc if isinstance(doc, dict) else {}

    def types(self) -> builtins.list[dict[str, Any]]:
        """Returns the task types the cluster can run (GET /v1/types)."""
        doc = self._t.request("GET", "/v1/types").json()
        return [t for t in doc if isinstance(t, dict)] if isinstance(doc, list) else []

    def health(self) -> str:
        """Returns the leader's name; Unavailable when the node knows no leader."""
        doc = self._t.request("GET", "/v1/health").json()
        return str(doc.get("leader", "")) if isinstance(doc, dict) else ""

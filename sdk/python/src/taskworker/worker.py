"""Worker: runs task types written in Python for a taskworker cluster (docs/workers.md).

Threads, and what each owns:
- the poll thread holds a long poll open at all times: it renews the lease whatever the
  handlers do, takes assignments and cancels, and registers again when the session is lost;
- the events thread sends log lines, checkpoints and outcomes in batches (see _events);
- a pool of `capacity` threads runs sync handlers; one asyncio loop thread runs async ones;
- the thread that called run() waits for a stop, then drains and leaves.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import json
import logging
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any, TypeVar
from urllib.parse import quote

from ._config import Address, format_duration, parse_duration, resolve
from ._events import Event, EventSender
from ._http import Transport
from .errors import (
    APIError,
    Cancelled,
    Conflict,
    ConnectionFailed,
    FinalError,
    NotFound,
    PermissionDenied,
    RateLimited,
    ServerError,
    Unauthorized,
    Unavailable,
    WaitingForChildren,
)
from .types import ChildResult

log = logging.getLogger("taskworker")

F = TypeVar("F", bound=Callable[..., Any])

_MAX_LINE = 64 * 1024  # a longer log line is cut
_NAME_OK = re.compile(r"[^A-Za-z0-9._-]")


def default_name() -> str:
    """HOSTNAME-PID, cut to the 64 characters of [A-Za-z0-9._-] a worker name may have."""
    host = _NAME_OK.sub("-", socket.gethostname()) or "worker"
    suffix = f"-{os.getpid()}"
    return host[: 64 - len(suffix)] + suffix


@dataclass
class _Session:
    """One registration: its ID (a secret, never logged) and the host it lives on."""

    id: str
    addr: Address
    node: str
    poll_wait: float

    def path(self, suffix: str = "") -> str:
        return "/v1/workers/" + quote(self.id, safe="") + suffix


@dataclass
class _TaskType:
    type: str
    version: str
    description: str | None
    example_input: Any
    fn: Callable[..., Any]
    is_async: bool


class Context:
    """What a handler gets besides its input: who it is, live output, checkpoints and
    cancellation. Safe to use from any thread."""

    def __init__(
        self,
        worker: Worker,
        session: _Session,
        task_id: str,
        attempt: int,
        type: str,
        version: str,
        checkpoint: Any,
        timeout: float | None,
        execution_id: str,
        resumed: bool = False,
        children: Sequence[ChildResult] = (),
    ) -> None:
        self._worker = worker
        self._session = session
        self.task_id = task_id
        self.attempt = attempt
        self.type = type
        self.version = version
        self.execution_id = execution_id
        self.last_checkpoint: Any = checkpoint
        """The attempt's last checkpoint: the one it started from (a retry's or a moved task's),
        or the last one this attempt saved; None when there is none."""
        self.timeout = timeout
        self.deadline = None if timeout is None else time.monotonic() + timeout
        """time.monotonic() by which the host ends the attempt, or None without a timeout."""
        self.resumed = resumed
        """True on an attempt that follows a wait for child tasks (wait_children)."""
        self.child_results: dict[str, ChildResult] = {c.id: c for c in children}
        """On a resumed attempt, the children its wait named, by ID, with how each ended."""
        self._submitted: list[str] = []
        self._cancelled = threading.Event()
        self._dropped = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._async_cancel: asyncio.Event | None = None
        self._future: concurrent.futures.Future[Any] | None = None

    @property
    def key(self) -> tuple[str, int]:
        return (self.task_id, self.attempt)

    @property
    def cancelled(self) -> bool:
        """True once the task was cancelled, or the attempt taken away from this worker; the
        handler should then stop (its result is no longer wanted)."""
        return self._cancelled.is_set()

    def raise_if_cancelled(self) -> None:
        """Raises Cancelled when cancelled is true, which ends the attempt as cancelled."""
        if self._cancelled.is_set():
            raise Cancelled(f"task {self.task_id} was cancelled")

    def wait_cancelled(self, timeout: float | None = None) -> bool:
        """Blocks until the attempt is cancelled or timeout passes; returns cancelled."""
        return self._cancelled.wait(timeout)

    async def until_cancelled(self) -> None:
        """Returns once the attempt is cancelled; for async handlers, say in asyncio.wait."""
        if self._async_cancel is None:
            self._async_cancel = asyncio.Event()
            self._loop = asyncio.get_running_loop()
            if self._cancelled.is_set():
                self._async_cancel.set()
        await self._async_cancel.wait()

    def log(self, msg: str, level: str = "info") -> None:
        """Writes a line to the task's log, where `task logs --follow` and exec show it within
        milliseconds. A message with line breaks becomes several lines."""
        for line in str(msg).splitlines() or [""]:
            self._emit({"kind": "log", "stream": "log", "level": level, "line": line[:_MAX_LINE]})

    def print(self, msg: str, stream: str = "stdout") -> None:
        """Writes lines to the task's stdout (or stderr)."""
        for line in str(msg).splitlines() or [""]:
            self._emit({"kind": "log", "stream": stream, "line": line[:_MAX_LINE]})

    def checkpoint(self, obj: Any) -> None:
        """Saves obj (JSON) as the attempt's checkpoint: a retry, or a run elsewhere after this
        worker is lost, starts with it in last_checkpoint."""
        self._emit({"kind": "checkpoint", "checkpoint": obj})
        self.last_checkpoint = obj

    def submit(
        self,
        type: str,
        input: Any = None,
        *,
        idempotency_key: str | None = None,
        version: str | None = None,
        max_attempts: int | None = None,
        timeout: str | None = None,
    ) -> str:
        """Submits a child task into this task's execution (its parent_id is this task) and
        returns its ID. Give it an idempotency_key derived from task_id (f"{ctx.task_id}/{i}"):
        a resumed or retried run then gets the same child instead of a second one. Blocking; with
        --acl the worker's token needs submit on the child's type and read on this one's."""
        body: dict[str, Any] = {
            "type": type,
            "input": input,
            "parent_id": self.task_id,
            "execution_id": self.execution_id or self.task_id,
        }
        for k, v in (
            ("idempotency_key", idempotency_key),
            ("version", version),
            ("max_attempts", max_attempts),
            ("timeout", timeout),
        ):
            if v is not None:
                body[k] = v
        doc = self._worker._t.request("POST", "/v1/tasks", body).json()
        child = str(doc["id"])
        self._submitted.append(child)
        return child

    def wait_children(self, ids: Sequence[str] | None = None) -> dict[str, ChildResult]:
        """Waits, durably, for child tasks of this task: ids, or without them every child this
        run submitted and every child of the wait it follows. When they have all finished (on a
        resumed attempt) it returns their outcomes by ID, failures included: the handler
        decides. Otherwise it raises WaitingForChildren, which ends the attempt without failing
        it (let it propagate): the worker's slot is free while they run, and the task runs
        again, here or on any worker or node offering its type, once the last has finished, with
        resumed set, child_results and its last checkpoint. A wait uses up none of max_attempts;
        cancelling the task cancels the children it waits for."""
        want = list(ids) if ids is not None else self._submitted + list(self.child_results)
        want = sorted(set(want))
        if all(i in self.child_results and self.child_results[i].finished for i in want):
            return {i: self.child_results[i] for i in want}
        raise WaitingForChildren(want)

    def _emit(self, doc: dict[str, Any]) -> None:
        if not self._dropped:
            self._worker._enqueue(self, doc)

    def _cancel(self) -> None:
        self._cancelled.set()
        loop, ev = self._loop, self._async_cancel
        if loop is not None and ev is not None:
            loop.call_soon_threadsafe(ev.set)
        fut = self._future
        if fut is not None:
            fut.cancel()


class Worker:
    """A worker process's connection to the cluster.

    Register handlers with task(), then call run(). name defaults to HOSTNAME-PID; addr, token
    and ca_file to TASKWORKER_ADDR (a comma-separated list: on connection errors the worker
    registers again through the next), TASKWORKER_TOKEN and TASKWORKER_CA_FILE. capacity is how
    many tasks run at once; lease how long the host keeps the worker's tasks without hearing
    from it (Go duration text or seconds, 0.5 to 60 s); drain_timeout how long a drain waits for
    running tasks before handing them back.
    """

    def __init__(
        self,
        name: str | None = None,
        capacity: int = 4,
        *,
        addr: str | Sequence[str] | None = None,
        token: str | None = None,
        ca_file: str | None = None,
        labels: Mapping[str, str] | None = None,
        lease: str | float = "1s",
        drain_timeout: float = 30.0,
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.name = name or default_name()
        self.capacity = capacity
        self.labels = dict(labels or {})
        self.lease = parse_duration(lease)
        self.drain_timeout = drain_timeout
        self._t = Transport(resolve(addr, token, ca_file), timeout=max(10.0, 3 * self.lease))
        self._types: dict[str, _TaskType] = {}
        self._lock = threading.Condition()
        self._session: _Session | None = None
        self._running: dict[tuple[str, int], Context] = {}
        self._stop = threading.Event()  # stop() or a first signal: drain
        self._wake = threading.Event()  # the run() thread has something to look at
        self._closing = threading.Event()  # the poll loop ends
        self._fatal: BaseException | None = None
        self._draining = False
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sender = EventSender(
            self._post_events,
            self._on_result,
            alive=self._is_current,
            on_lost=self._lost,
            on_fatal=self._set_fatal,
        )
        self.registrations = 0  # sessions opened, for tests and stats
        self.node: str = ""  # the host of the current session

    # Registration of handlers.

    def task(
        self,
        type: str,
        version: str = "1",
        description: str | None = None,
        example_input: Any = None,
    ) -> Callable[[F], F]:
        """Registers the decorated function as the handler of a task type: fn(ctx, input)
        returns the result (JSON). async def handlers run on the worker's asyncio loop; sync
        ones in its thread pool. Raising FinalError fails the task without retries; any other
        exception fails the attempt, retried as max_attempts allows, with the exception's class
        name as error type."""

        def register(fn: F) -> F:
            if type in self._types:
                raise ValueError(f"task type {type!r} is registered twice")
            self._types[type] = _TaskType(
                type, version, description, example_input, fn, inspect.iscoroutinefunction(fn)
            )
            return fn

        return register

    # Running.

    def run(self) -> None:
        """Registers and runs tasks until stop() or a signal; blocks.

        On the main thread it handles SIGTERM and SIGINT: the first drains (no new tasks,
        running ones get drain_timeout to finish, then the worker leaves and the host hands
        the rest back), the second leaves at once and exits the process. Raises
        PermissionDenied or Unauthorized when the token is refused, and BadRequest when the
        registration is (a name or field out of range).
        """
        if not self._types:
            raise ValueError("no task types: register handlers with @worker.task(...) first")
        handlers: list[tuple[signal.Signals, Any]] = []
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                handlers.append((sig, signal.signal(sig, self._on_signal)))
        self._pool = concurrent.futures.ThreadPoolExecutor(
            self.capacity, thread_name_prefix="taskworker-task"
        )
        loop_thread: threading.Thread | None = None
        if any(t.is_async for t in self._types.values()):
            self._loop = asyncio.new_event_loop()
            loop_thread = threading.Thread(
                target=self._loop.run_forever, name="taskworker-asyncio", daemon=True
            )
            loop_thread.start()
        self._sender.start()
        poller = threading.Thread(target=self._poll_loop, name="taskworker-poll", daemon=True)
        poller.start()
        try:
            while not (self._stop.is_set() or self._fatal is not None):
                self._wake.wait()
                self._wake.clear()
            if self._fatal is None:
                self._drain()
        finally:
            self._closing.set()
            poller.join(timeout=self._poll_timeout() + 1)
            self._sender.close()
            self._pool.shutdown(wait=False, cancel_futures=True)
            if self._loop is not None and loop_thread is not None:
                self._loop.call_soon_threadsafe(self._loop.stop)
                loop_thread.join(timeout=1)
            self._t.close()
            for sig, old in handlers:
                signal.signal(sig, old)
        if self._fatal is not None:
            raise self._fatal

    def stop(self) -> None:
        """Drains: run() takes no new tasks, waits up to drain_timeout for the running ones,
        leaves and returns. Safe from any thread and from signal handlers."""
        self._stop.set()
        self._wake.set()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if not self._stop.is_set():
            self.stop()
            return
        # A second signal: hand the tasks back now, so they run elsewhere at once, and exit.
        s = self._session
        if s is not None:
            # Exiting anyway: if this fails, the host takes the tasks back when the lease runs out.
            with contextlib.suppress(Exception):
                self._t.request("DELETE", s.path(), addr=s.addr, timeout=2.0)
        os._exit(128 + signum)

    def _drain(self) -> None:
        with self._lock:
            self._draining = True
            s = self._session
        if s is not None:
            try:
                self._t.request("POST", s.path("/drain"), {}, addr=s.addr)
            except (APIError, ConnectionFailed) as err:
                log.warning("taskworker: drain call failed: %s", err)
        deadline = time.monotonic() + self.drain_timeout
        with self._lock:
            while self._running and self._fatal is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    log.warning(
                        "taskworker: %d tasks still running after the drain timeout", len(self._running)
                    )
                    break
                self._lock.wait(left)
            s = self._session
        self._sender.flush(timeout=5.0)
        if s is not None:
            try:
                self._t.request("DELETE", s.path(), addr=s.addr)
            except (APIError, ConnectionFailed) as err:
                log.warning("taskworker: leave failed: %s", err)
        with self._lock:
            if self._session is s:
                self._session = None
            self._drop_all(s)

    # Sessions.

    def _poll_timeout(self) -> float:
        s = self._session
        return (s.poll_wait if s else self.lease / 2) + 5.0

    def _register(self) -> _Session | None:
        body = {
            "name": self.name,
            "capacity": self.capacity,
            "lease": format_duration(self.lease),
            "labels": self.labels,
            "types": [
                {
                    k: v
                    for k, v in {
                        "type": t.type,
                        "version": t.version,
                        "description": t.description,
                        "example_input": t.example_input,
                    }.items()
                    if v is not None
                }
                for t in self._types.values()
            ],
        }
        pause = 0.05
        conflict_until: float | None = None
        while not self._closing.is_set() and not self._stop.is_set():
            try:
                resp = self._t.request("POST", "/v1/workers", body)
            except Conflict as err:
                # The previous session of this name may still hold its lease: it ends within
                # the lease and a little, so wait that long before giving up.
                now = time.monotonic()
                if conflict_until is None:
                    conflict_until = now + 3 * self.lease + 2
                if now > conflict_until:
                    raise err
            except (ConnectionFailed, Unavailable, RateLimited, ServerError) as err:
                log.warning("taskworker: register failed, retrying: %s", err)
            else:
                doc = resp.json()
                wait = doc.get("poll_wait") or format_duration(self.lease / 2)
                s = _Session(str(doc["id"]), resp.addr, str(doc.get("node", "")), parse_duration(wait))
                with self._lock:
                    self._session = s
                    self.registrations += 1
                    self.node = s.node
                log.info("taskworker: worker %s registered at %s (node %s)", self.name, s.addr.url, s.node)
                return s
            self._closing.wait(pause)
            pause = min(pause * 2, 2.0)
        return None

    def _is_current(self, session: object) -> bool:
        return session is self._session

    def _lost(self, session: object, move: bool = False) -> None:
        """The host no longer knows the session (lease lost, host restarted): drop its attempts;
        the poll loop registers again."""
        with self._lock:
            if self._session is not session:
                return
            self._session = None
            assert isinstance(session, _Session)
            self._drop_all(session)
        if move:
            self._t.advance(session.addr)
        if not self._draining:
            log.warning("taskworker: session at %s lost; its running tasks are dropped", session.addr.url)

    def _drop_all(self, session: _Session | None) -> None:
        # Called with self._lock held.
        for key, ctx in list(self._running.items()):
            if ctx._session is session:
                ctx._dropped = True
                ctx._cancel()
                del self._running[key]
        self._lock.notify_all()

    def _set_fatal(self, err: Exception) -> None:
        with self._lock:
            if self._fatal is None:
                self._fatal = err
            self._lock.notify_all()
        log.error("taskworker: the cluster refused the worker's token: %s", err)
        self._wake.set()

    # The poll loop.

    def _poll_loop(self) -> None:
        pause = 0.05
        while not self._closing.is_set() and self._fatal is None:
            s = self._session
            if s is None:
                if self._draining:
                    return
                try:
                    s = self._register()
                except Exception as err:  # a refused registration ends run()
                    self._set_fatal(err)
                    return
                if s is None:
                    return
            try:
                resp = self._t.request(
                    "POST",
                    s.path("/poll"),
                    {"wait": format_duration(s.poll_wait)},
                    addr=s.addr,
                    timeout=s.poll_wait + 5.0,
                )
            except NotFound:
                self._lost(s)
                continue
            except ConnectionFailed:
                self._lost(s, move=True)
                continue
            except (Unauthorized, PermissionDenied) as err:
                self._lost(s)
                self._set_fatal(err)
                return
            except (Unavailable, RateLimited, ServerError) as err:
                log.warning("taskworker: poll failed, retrying: %s", err)
                self._closing.wait(pause)
                pause = min(pause * 2, s.poll_wait)
                continue
            except Exception as err:
                log.exception("taskworker: poll failed: %s", err)
                self._closing.wait(pause)
                pause = min(pause * 2, s.poll_wait)
                continue
            pause = 0.05
            doc = resp.json()
            if isinstance(doc, dict):
                self._handle_poll(s, doc)

    def _handle_poll(self, s: _Session, doc: Mapping[str, Any]) -> None:
        for c in doc.get("cancel") or []:
            with self._lock:
                ctx = self._running.get((str(c.get("task_id")), int(c.get("attempt", 0))))
            if ctx is not None:
                ctx._cancel()
        for a in doc.get("assignments") or []:
            self._start(s, a)

    def _start(self, s: _Session, a: Mapping[str, Any]) -> None:
        timeout = a.get("timeout") or ""
        ctx = Context(
            self,
            s,
            task_id=str(a["task_id"]),
            attempt=int(a["attempt"]),
            type=str(a.get("type", "")),
            version=str(a.get("version") or "1"),
            checkpoint=a.get("checkpoint"),
            timeout=parse_duration(timeout) if timeout else None,
            execution_id=str(a.get("execution_id") or ""),
            resumed=bool(a.get("resumed")),
            children=[ChildResult.from_json(c) for c in a.get("children") or [] if isinstance(c, Mapping)],
        )
        with self._lock:
            if s is not self._session:
                return
            self._running[ctx.key] = ctx
        spec = self._types.get(ctx.type)
        if spec is None:
            self._finish(
                ctx, _failed("UnknownTaskType", f"this worker has no handler for {ctx.type!r}", True)
            )
            return
        if spec.is_async:
            assert self._loop is not None
            fut = asyncio.run_coroutine_threadsafe(self._run_async(spec, ctx, a.get("input")), self._loop)
            ctx._future = fut
            if ctx.cancelled:
                fut.cancel()
            fut.add_done_callback(lambda f: self._async_done(ctx, f))
        else:
            assert self._pool is not None
            self._pool.submit(self._run_sync, spec, ctx, a.get("input"))

    def _run_sync(self, spec: _TaskType, ctx: Context, input: Any) -> None:
        if ctx._dropped:
            return
        try:
            result = spec.fn(ctx, input)
        except BaseException as err:
            self._finish(ctx, _outcome_of(ctx, err))
            if not isinstance(err, (Exception, WaitingForChildren)):
                raise
            return
        self._finish(ctx, _succeeded(ctx, result))

    async def _run_async(self, spec: _TaskType, ctx: Context, input: Any) -> Any:
        ctx._loop = asyncio.get_running_loop()
        if ctx._async_cancel is None:
            ctx._async_cancel = asyncio.Event()
            if ctx.cancelled:
                ctx._async_cancel.set()
        coro = spec.fn(ctx, input)
        if ctx.timeout is not None:
            return await asyncio.wait_for(coro, ctx.timeout)
        return await coro

    def _async_done(self, ctx: Context, fut: concurrent.futures.Future[Any]) -> None:
        if fut.cancelled():
            self._finish(ctx, {"kind": "cancelled"})
            return
        err = fut.exception()
        if err is not None:
            self._finish(ctx, _outcome_of(ctx, err))
        else:
            self._finish(ctx, _succeeded(ctx, fut.result()))

    def _finish(self, ctx: Context, outcome: dict[str, Any]) -> None:
        if ctx._dropped:
            return
        self._enqueue(ctx, outcome)

    # Events.

    def _enqueue(self, ctx: Context, doc: dict[str, Any]) -> None:
        doc = {"task_id": ctx.task_id, "attempt": ctx.attempt, **doc}
        try:
            data = json.dumps(doc, separators=(",", ":")).encode()
        except (TypeError, ValueError) as err:
            if doc["kind"] != "checkpoint":
                raise
            raise TypeError(f"checkpoint is not JSON: {err}") from None
        self._sender.add(Event(ctx._session, ctx.key, str(doc["kind"]), data))

    def _post_events(self, session: object, body: bytes) -> list[dict[str, Any]]:
        assert isinstance(session, _Session)
        doc = self._t.request("POST", session.path("/events"), body, addr=session.addr).json()
        results = doc.get("results") if isinstance(doc, dict) else None
        return [r if isinstance(r, dict) else {} for r in results] if isinstance(results, list) else []

    def _on_result(self, ev: Event, res: dict[str, Any]) -> None:
        ok = bool(res.get("ok"))
        code = str(res.get("code") or "")
        if ok and not ev.outcome:
            return
        with self._lock:
            ctx = self._running.get(ev.key)
            if ctx is None or ctx._session is not ev.session:
                return
            if ok or code in ("stale_attempt", "dropped"):
                if not ok:
                    ctx._dropped = True
                    ctx._cancel()
                del self._running[ev.key]
                self._lock.notify_all()
                return
        if code == "no_leader":
            # The cluster did not record the outcome in time: report it again, as it was.
            self._sender.add(ev)
            return
        if code == "checkpoint_too_large":
            # The host fails the attempt: stop the handler now (a cancel notice follows).
            ctx._cancel()
        # The host refused the event itself (say, a result over its size cap).
        log.warning(
            "taskworker: task %s attempt %d: %s event refused: %s", ev.key[0], ev.key[1], ev.kind, code
        )
        if ev.kind == "succeeded":
            msg = str(res.get("error") or code)
            self._enqueue(ctx, _failed(code or "ResultRefused", msg, code == "result_too_large"))
        elif ev.outcome:
            with self._lock:
                self._running.pop(ev.key, None)
                self._lock.notify_all()

    @property
    def running(self) -> int:
        """How many attempts this worker is running (outcome not yet acknowledged)."""
        with self._lock:
            return len(self._running)


def _failed(type: str, message: str, final: bool) -> dict[str, Any]:
    return {"kind": "failed", "error": {"type": type, "message": message, "final": final}}


def _succeeded(ctx: Context, result: Any) -> dict[str, Any]:
    if ctx.cancelled:
        return {"kind": "cancelled"}
    try:
        json.dumps(result)
    except (TypeError, ValueError) as err:
        return _failed("TypeError", f"the result is not JSON: {err}", True)
    return {"kind": "succeeded", "result": result}


def _outcome_of(ctx: Context, err: BaseException) -> dict[str, Any]:
    if isinstance(err, WaitingForChildren) and not ctx.cancelled:
        return {"kind": "wait_children", "children": err.children}
    if isinstance(err, FinalError):
        return _failed(err.error_type or type(err).__name__, str(err), True)
    if isinstance(err, (Cancelled, asyncio.CancelledError)) or ctx.cancelled:
        return {"kind": "cancelled"}
    if isinstance(err, asyncio.TimeoutError):
        return _failed("TimeoutError", f"the task ran past its timeout of {ctx.timeout}s", False)
    return _failed(type(err).__name__, str(err), False)

"""FakeHost: a TEST DOUBLE of one taskworker node, for the SDK's protocol-level tests only.

It speaks the worker protocol of docs/workers.md and the task calls the client uses, on
127.0.0.1, with in-memory state and one simple placement rule (oldest pending task to the first
worker offering its type with a free slot). It is not the server: the integration tests run
the real binary.
"""

from __future__ import annotations

import itertools
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

TERMINAL = ("succeeded", "failed", "cancelled")


def _dur(text: str) -> float:
    from taskworker._config import parse_duration

    return parse_duration(text)


@dataclass
class FakeSession:
    id: str
    name: str
    capacity: int
    types: list[dict[str, Any]]
    labels: dict[str, str]
    lease: float
    running: set[tuple[str, int]] = field(default_factory=set)
    assignments: list[dict[str, Any]] = field(default_factory=list)
    cancels: list[dict[str, Any]] = field(default_factory=list)
    draining: bool = False
    gone: bool = False
    polls: int = 0


class FakeHost:
    """The node double. Tests read and steer it through its attributes and methods."""

    def __init__(self, token: str | None = None, max_attempts: int = 3) -> None:
        self.token = token
        self.max_attempts = max_attempts
        self.cond = threading.Condition()
        self.sessions: dict[str, FakeSession] = {}
        self.tasks: dict[str, dict[str, Any]] = {}
        self.order: list[str] = []
        self.idem: dict[str, str] = {}  # idempotency key -> task ID
        self.index = 0
        self.event_calls: list[list[dict[str, Any]]] = []
        self.registrations: list[dict[str, Any]] = []
        self.calls: list[tuple[str, str]] = []
        self.peers: set[tuple[str, int]] = set()  # client addresses seen: one per connection
        # Path suffix -> answers to give instead of the real ones, first first.
        self.faults: dict[str, list[tuple[int, dict[str, Any], dict[str, str]]]] = {}
        # Event kind -> result codes to answer the next events of that kind with (unapplied).
        self.event_faults: dict[str, list[str]] = {}
        self._ids = itertools.count(1)
        host = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                host._serve(self, "GET")

            def do_POST(self) -> None:
                host._serve(self, "POST")

            def do_DELETE(self) -> None:
                host._serve(self, "DELETE")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def addr(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # Steering from tests.

    def fault(self, suffix: str, status: int, code: str, headers: dict[str, str] | None = None) -> None:
        with self.cond:
            self.faults.setdefault(suffix, []).append(
                (status, {"error": "injected", "code": code}, headers or {})
            )

    def event_fault(self, kind: str, code: str) -> None:
        """The next event of kind is refused with code, and not applied."""
        with self.cond:
            self.event_faults.setdefault(kind, []).append(code)

    def expire(self, name: str) -> None:
        """Takes the named worker's session away, as a lost lease does: its tasks go back."""
        with self.cond:
            for s in self.sessions.values():
                if s.name == name and not s.gone:
                    self._end(s)
            self.cond.notify_all()

    def wait_for(self, pred: Any, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not pred():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("condition not met in time")
                self.cond.wait(left)

    def live(self) -> list[FakeSession]:
        with self.cond:
            return [s for s in self.sessions.values() if not s.gone]

    # State changes; called with self.cond held.

    def _bump(self, t: dict[str, Any]) -> None:
        self.index += 1
        t["modify_index"] = self.index
        self.cond.notify_all()

    def _end(self, s: FakeSession) -> None:
        s.gone = True
        for key in list(s.running):
            t = self.tasks[key[0]]
            t["state"] = "pending"
            t["history"].append({"attempt": key[1], "event": "interrupted"})
            self._bump(t)
        s.running.clear()
        self._place()
        self.cond.notify_all()

    def _place(self) -> None:
        for tid in self.order:
            t = self.tasks[tid]
            if t["state"] != "pending":
                continue
            for s in self.sessions.values():
                if s.gone or s.draining or len(s.running) >= s.capacity:
                    continue
                if not any(x["type"] == t["type"] and x.get("version", "1") == t["version"] for x in s.types):
                    continue
                t["attempt"] += 1
                t["state"] = "running"
                t["node"] = s.name
                s.running.add((tid, t["attempt"]))
                s.assignments.append(
                    {
                        "task_id": tid,
                        "attempt": t["attempt"],
                        "type": t["type"],
                        "version": t["version"],
                        "input": t["input"],
                        "checkpoint": t.get("checkpoint"),
                        "timeout": t.get("timeout", ""),
                        "execution_id": tid,
                        **(
                            {"resumed": True, "children": t["resume_children"]}
                            if "resume_children" in t
                            else {}
                        ),
                    }
                )
                self._bump(t)
                break

    # HTTP.

    def _serve(self, h: BaseHTTPRequestHandler, method: str) -> None:
        u = urlsplit(h.path)
        q = {k: v[0] for k, v in parse_qs(u.query).items()}
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else None
        parts = u.path.strip("/").split("/")
        with self.cond:
            self.calls.append((method, u.path))
            self.peers.add(h.client_address[:2])
            for suffix, answers in self.faults.items():
                if u.path.endswith(suffix) and answers:
                    status, doc, headers = answers.pop(0)
                    self._reply(h, status, doc, headers)
                    return
        if self.token is not None and h.headers.get("Authorization") != f"Bearer {self.token}":
            self._reply(h, 401, {"error": "no token", "code": "unauthorized"})
            return
        try:
            if parts[:2] == ["v1", "tasks"] and len(parts) == 4 and parts[3] == "logs":
                self._logs(h, parts[2], q.get("follow") == "true")
                return
            status, doc = self._route(method, parts, q, body)
        except KeyError as e:
            status, doc = 400, {"error": f"missing {e}", "code": "invalid_request"}
        self._reply(h, status, doc)

    def _reply(
        self, h: BaseHTTPRequestHandler, status: int, doc: Any, headers: dict[str, str] | None = None
    ) -> None:
        data = json.dumps(doc).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)

    def _route(self, method: str, p: list[str], q: dict[str, str], body: Any) -> tuple[int, Any]:
        if p[:2] == ["v1", "tasks"]:
            if method == "POST" and len(p) == 2:
                return self._submit(body)
            if method == "GET" and len(p) == 3:
                return self._get(p[2], q)
            if method == "POST" and len(p) == 4 and p[3] == "cancel":
                return self._cancel(p[2])
        if p[:2] == ["v1", "workers"]:
            if len(p) == 2 and method == "POST":
                return self._register(body)
            if len(p) == 2 and method == "GET":
                with self.cond:
                    return 200, [
                        {"name": s.name, "state": "down" if s.gone else "up", "capacity": s.capacity}
                        for s in self.sessions.values()
                    ]
            with self.cond:
                s = self.sessions.get(p[2])
                if s is None or s.gone:
                    return 404, {"error": "unknown worker", "code": "unknown_worker"}
            if len(p) == 3 and method == "DELETE":
                with self.cond:
                    self._end(s)
                return 200, {"left": True}
            if len(p) == 4 and p[3] == "poll":
                return self._poll(s, body or {})
            if len(p) == 4 and p[3] == "events":
                return self._events(s, body)
            if len(p) == 4 and p[3] == "drain":
                with self.cond:
                    s.draining = True
                return 200, {"draining": True}
        return 404, {"error": "no such route", "code": "not_found"}

    def _register(self, body: dict[str, Any]) -> tuple[int, Any]:
        with self.cond:
            self.registrations.append(body)
            cap = body.get("capacity", 0)
            if not isinstance(cap, int) or not 1 <= cap <= 1024 or not body.get("types"):
                return 400, {"error": "capacity out of range", "code": "invalid_worker"}
            if any(s.name == body["name"] and not s.gone for s in self.sessions.values()):
                return 409, {"error": "worker exists", "code": "worker_exists"}
            s = FakeSession(
                secrets.token_hex(16),
                body["name"],
                cap,
                body["types"],
                body.get("labels") or {},
                _dur(body.get("lease", "1s")),
            )
            self.sessions[s.id] = s
            self._place()
            wait = s.lease / 2
            return 201, {
                "id": s.id,
                "name": s.name,
                "node": "fake",
                "lease": body.get("lease", "1s"),
                "poll_wait": f"{int(wait * 1000)}ms",
            }

    def _poll(self, s: FakeSession, body: dict[str, Any]) -> tuple[int, Any]:
        wait = min(_dur(body.get("wait", "500ms")), s.lease / 2)
        deadline = time.monotonic() + wait
        with self.cond:
            s.polls += 1
            self.cond.notify_all()
            while not (s.assignments or s.cancels or s.gone):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(left)
            if s.gone:
                return 404, {"error": "unknown worker", "code": "unknown_worker"}
            out = {"assignments": s.assignments, "cancel": s.cancels, "draining": s.draining}
            s.assignments, s.cancels = [], []
            return 200, out

    def _events(self, s: FakeSession, body: dict[str, Any]) -> tuple[int, Any]:
        events = body["events"]
        results = []
        with self.cond:
            self.event_calls.append(events)
            for ev in events:
                key = (ev["task_id"], ev["attempt"])
                if key not in s.running:
                    results.append({"ok": False, "code": "stale_attempt", "error": "not this worker's"})
                    continue
                t = self.tasks[key[0]]
                kind = ev["kind"]
                if self.event_faults.get(kind):
                    code = self.event_faults[kind].pop(0)
                    results.append({"ok": False, "code": code, "error": "injected"})
                    continue
                if kind == "log":
                    t["logs"].append(
                        {
                            "attempt": key[1],
                            "node": s.name,
                            "stream": ev.get("stream", "log"),
                            "level": ev.get("level", ""),
                            "line": ev["line"],
                        }
                    )
                elif kind == "checkpoint":
                    t["checkpoint"] = ev["checkpoint"]
                elif kind == "wait_children":
                    s.running.discard(key)
                    t["history"].append({"attempt": key[1], "event": "waiting"})
                    t["state"], t["wait_for"] = "waiting", ev["children"]
                else:
                    s.running.discard(key)
                    t["history"].append({"attempt": key[1], "event": kind})
                    if kind == "succeeded":
                        t["state"], t["result"] = "succeeded", ev.get("result")
                    elif kind == "cancelled":
                        t["state"] = "cancelled"
                    else:
                        t["error"] = ev["error"]
                        final = ev["error"].get("final") or t["attempt"] >= t["max_attempts"]
                        t["state"] = "failed" if final else "pending"
                    self._place()
                self._bump(t)
                results.append({"ok": True})
        return 200, {"results": results}

    def resume(self, tid: str, children: list[dict[str, Any]]) -> None:
        """Makes a waiting task pending again, its next assignment resumed with children (the
        server does this when the last child finishes)."""
        with self.cond:
            t = self.tasks[tid]
            assert t["state"] == "waiting", t["state"]
            t["state"], t["resume_children"] = "pending", children
            t["history"].append({"attempt": t["attempt"], "event": "resumed"})
            self._bump(t)
            self._place()
            self.cond.notify_all()

    def _submit(self, body: dict[str, Any]) -> tuple[int, Any]:
        with self.cond:
            key = body.get("idempotency_key")
            if key and key in self.idem:
                return 200, self._record(self.tasks[self.idem[key]])
            offered = any(x["type"] == body["type"] for s in self.sessions.values() for x in s.types)
            if not offered and body["type"] != "nowhere":
                return 400, {"error": f"unknown type {body['type']}", "code": "unknown_task_type"}
            tid = f"T{next(self._ids):04d}"
            t = {
                "id": tid,
                "type": body["type"],
                "version": body.get("version") or "1",
                "input": body.get("input"),
                "state": "pending",
                "attempt": 0,
                "max_attempts": body.get("max_attempts") or self.max_attempts,
                "timeout": body.get("timeout", ""),
                "result": None,
                "error": None,
                "history": [],
                "logs": [],
                "node": "",
                "submitted": body,
            }
            self.tasks[tid] = t
            if key:
                self.idem[key] = tid
            self.order.append(tid)
            self._bump(t)
            self._place()
            return 201, self._record(t)

    def _record(self, t: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in t.items() if k not in ("logs", "submitted", "resume_children")}

    def _get(self, tid: str, q: dict[str, str]) -> tuple[int, Any]:
        with self.cond:
            t = self.tasks.get(tid)
            if t is None:
                return 404, {"error": "no such task", "code": "not_found"}
            if "wait" in q:
                deadline = time.monotonic() + _dur(q["wait"])
                index = int(q.get("index", "0"))
                while t["modify_index"] <= index:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self.cond.wait(left)
            return 200, self._record(t)

    def _cancel(self, tid: str) -> tuple[int, Any]:
        with self.cond:
            t = self.tasks.get(tid)
            if t is None:
                return 404, {"error": "no such task", "code": "not_found"}
            if t["state"] == "pending":
                t["state"] = "cancelled"
                self._bump(t)
            elif t["state"] == "running":
                for s in self.sessions.values():
                    if (tid, t["attempt"]) in s.running:
                        s.cancels.append({"task_id": tid, "attempt": t["attempt"]})
                self.cond.notify_all()
            return 202, {}

    def _logs(self, h: BaseHTTPRequestHandler, tid: str, follow: bool) -> None:
        with self.cond:
            t = self.tasks.get(tid)
        if t is None:
            self._reply(h, 404, {"error": "no such task", "code": "not_found"})
            return
        h.send_response(200)
        h.send_header("Content-Type", "application/x-ndjson")
        h.send_header("Connection", "close")
        h.end_headers()
        h.close_connection = True
        sent = 0
        while True:
            with self.cond:
                while follow and sent == len(t["logs"]) and t["state"] not in TERMINAL:
                    self.cond.wait(1.0)
                lines = t["logs"][sent:]
                ended = t["state"] in TERMINAL
            for line in lines:
                h.wfile.write(json.dumps(line).encode() + b"\n")
            h.wfile.flush()
            sent += len(lines)
            if not follow or (ended and sent == len(t["logs"])):
                return

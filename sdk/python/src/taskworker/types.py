"""The API's records as typed Python objects. Each keeps the JSON it came from in raw, so
fields this version does not name are still there."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

TERMINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})


@dataclass(frozen=True)
class TaskError:
    """Why an attempt or a task failed. final: no retry followed it."""

    type: str
    message: str
    final: bool = False

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> TaskError:
        return cls(str(doc.get("type", "")), str(doc.get("message", "")), bool(doc.get("final", False)))


@dataclass(frozen=True)
class Task:
    """A task record (GET /v1/tasks/{id})."""

    id: str
    type: str
    state: str
    version: str = "1"
    input: Any = None
    result: Any = None
    error: TaskError | None = None
    node: str = ""
    attempt: int = 0
    max_attempts: int = 0
    timeout: str = ""
    queue: str = ""
    priority: int = 0
    pending_reason: str = ""
    modify_index: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def done(self) -> bool:
        """The task has ended and will not change any more."""
        return self.state in TERMINAL_STATES

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Task:
        err = doc.get("error")
        hist = doc.get("history")
        return cls(
            id=str(doc.get("id", "")),
            type=str(doc.get("type", "")),
            state=str(doc.get("state", "")),
            version=str(doc.get("version") or "1"),
            input=doc.get("input"),
            result=doc.get("result"),
            error=TaskError.from_json(err) if isinstance(err, Mapping) else None,
            node=str(doc.get("node") or ""),
            attempt=int(doc.get("attempt") or 0),
            max_attempts=int(doc.get("max_attempts") or 0),
            timeout=str(doc.get("timeout") or ""),
            queue=str(doc.get("queue") or ""),
            priority=int(doc.get("priority") or 0),
            pending_reason=str(doc.get("pending_reason") or ""),
            modify_index=int(doc.get("modify_index") or 0),
            history=[h for h in hist if isinstance(h, dict)] if isinstance(hist, list) else [],
            raw=dict(doc),
        )


@dataclass(frozen=True)
class LogLine:
    """One line of a task's output."""

    line: str
    stream: str = "log"  # stdout, stderr or log
    level: str = ""
    attempt: int = 0
    node: str = ""
    ts: str = ""

    def __str__(self) -> str:
        return self.line

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> LogLine:
        return cls(
            line=str(doc.get("line", "")),
            stream=str(doc.get("stream") or "log"),
            level=str(doc.get("level") or ""),
            attempt=int(doc.get("attempt") or 0),
            node=str(doc.get("node") or ""),
            ts=str(doc.get("ts") or ""),
        )


@dataclass(frozen=True)
class ChildResult:
    """How a child task a resumed attempt waited for ended: state is succeeded, failed or
    cancelled ("" when it was removed before its parent resumed); result when it succeeded,
    error otherwise."""

    id: str
    state: str
    result: Any = None
    error: TaskError | None = None

    @property
    def succeeded(self) -> bool:
        return self.state == "succeeded"

    @property
    def finished(self) -> bool:
        """The child will not change any more (it ended, or it is gone)."""
        return self.state in TERMINAL_STATES or self.state == ""

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> ChildResult:
        err = doc.get("error")
        return cls(
            id=str(doc.get("id", "")),
            state=str(doc.get("state", "")),
            result=doc.get("result"),
            error=TaskError.from_json(err) if isinstance(err, Mapping) else None,
        )

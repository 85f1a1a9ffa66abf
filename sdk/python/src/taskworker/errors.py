"""Typed exceptions: the API's errors by status, a failed task, and what handlers raise."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .types import Task


class TaskworkerError(Exception):
    """Base of every error the SDK raises."""


class ConnectionFailed(TaskworkerError):
    """No address answered: refused, reset, timed out or a TLS failure."""


class APIError(TaskworkerError):
    """A non-2xx answer from the API: its status, code (snake_case, "" when the body had none)
    and message. Subclasses name the common statuses; catch APIError for any."""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        code: str = "",
        retry_after: float | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.retry_after = retry_after
        self.body: Mapping[str, Any] = body or {}

    def __str__(self) -> str:
        if self.code:
            return f"{self.message} ({self.status} {self.code})"
        return f"{self.message} ({self.status})"


class BadRequest(APIError):
    """400: the request is wrong (a field out of range, an unknown type, ...)."""


class InvalidInput(BadRequest):
    """400 invalid_input: the input does not fit the task type."""


class UnknownTaskType(BadRequest):
    """400 unknown_task_type: no node or worker has ever offered the type."""


class Unauthorized(APIError):
    """401: the cluster needs a token and got none, or an unknown one."""


class PermissionDenied(APIError):
    """403: the token may not do this."""


class NotFound(APIError):
    """404: an unknown task, or (code unknown_worker) a worker session that is gone."""


class Conflict(APIError):
    """409: a conflict, such as a worker name in use or a task that already ended."""


class PayloadTooLarge(APIError):
    """413: the body is over the node's limit."""


class RateLimited(APIError):
    """429: over a rate, a quota or the pending-task limit; retry_after holds the seconds to wait."""


class Unavailable(APIError):
    """503: no leader yet, or the node is shutting down. Retrying later is safe."""


class ServerError(APIError):
    """Another 5xx: the node failed."""


_BY_CODE: dict[str, type[APIError]] = {
    "invalid_input": InvalidInput,
    "unknown_task_type": UnknownTaskType,
}
_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: PermissionDenied,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    429: RateLimited,
    503: Unavailable,
}


def error_from_response(status: int, body: bytes, retry_after: str | None = None) -> APIError:
    """Makes the exception for a non-2xx answer. A body that is not the API's JSON error is
    kept, cut short, as the message."""
    message, code = "", ""
    parsed: dict[str, Any] = {}
    try:
        doc = json.loads(body)
        if isinstance(doc, dict):
            parsed = doc
            message = str(doc.get("error") or "")
            code = str(doc.get("code") or "")
    except ValueError:
        pass
    if not message:
        text = body.decode("utf-8", "replace").strip()
        message = text[:200] if text else f"HTTP {status}"
    after: float | None = None
    if retry_after:
        try:
            after = max(0.0, float(retry_after))
        except ValueError:
            after = None
    cls = _BY_CODE.get(code) if status == 400 else None
    if cls is None:
        cls = _BY_STATUS.get(status, ServerError if status >= 500 else APIError)
    return cls(message, status=status, code=code, retry_after=after, body=parsed)


class TaskFailed(TaskworkerError):
    """A task ended failed or cancelled; task is its record."""

    def __init__(self, task: Task) -> None:
        self.task = task
        err = task.error
        why = f": {err.type}: {err.message}" if err is not None else ""
        super().__init__(f"task {task.id} ({task.type}) {task.state}{why}")


class WaitTimeout(TaskworkerError, TimeoutError):
    """wait gave up before the task ended; task is the record as last seen."""

    def __init__(self, task: Task) -> None:
        self.task = task
        super().__init__(f"task {task.id} still {task.state}")


class FinalError(Exception):
    """Raised in a handler, fails the task at once, with no retries.

    The task's error type is the exception's class name (subclass it to name the error), or
    error_type when given.
    """

    def __init__(self, message: str, *, error_type: str | None = None) -> None:
        super().__init__(message)
        self.error_type = error_type


class Cancelled(Exception):
    """Raised in a handler (see Context.raise_if_cancelled) to end the attempt as cancelled."""


class WaitingForChildren(BaseException):
    """Raised by Context.wait_children while the children have not all finished: it ends the
    attempt (let it propagate), and the task runs again once they have, with their outcomes.
    A BaseException, like asyncio.CancelledError, so that `except Exception` does not swallow it."""

    def __init__(self, children: list[str]) -> None:
        super().__init__(f"waiting for {len(children)} child tasks")
        self.children = children

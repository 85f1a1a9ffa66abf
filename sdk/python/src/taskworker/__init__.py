"""taskworker: the Python client and worker SDK of taskworker clusters.

Client submits tasks and waits for them; Worker runs task types written in Python. Both read
TASKWORKER_ADDR, TASKWORKER_TOKEN and TASKWORKER_CA_FILE for what is not passed.
"""

from ._config import ConfigError
from ._version import __version__
from .aio import AsyncClient
from .client import Client
from .errors import (
    APIError,
    BadRequest,
    Cancelled,
    Conflict,
    ConnectionFailed,
    FinalError,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    RateLimited,
    ServerError,
    TaskFailed,
    TaskworkerError,
    Unauthorized,
    Unavailable,
    UnknownTaskType,
    WaitingForChildren,
    WaitTimeout,
)
from .types import ChildResult, LogLine, Task, TaskError
from .worker import Context, Worker

__all__ = [
    "APIError",
    "AsyncClient",
    "BadRequest",
    "Cancelled",
    "ChildResult",
    "Client",
    "ConfigError",
    "Conflict",
    "ConnectionFailed",
    "Context",
    "FinalError",
    "InvalidInput",
    "LogLine",
    "NotFound",
    "PayloadTooLarge",
    "PermissionDenied",
    "RateLimited",
    "ServerError",
    "Task",
    "TaskError",
    "TaskFailed",
    "TaskworkerError",
    "Unauthorized",
    "Unavailable",
    "UnknownTaskType",
    "WaitTimeout",
    "WaitingForChildren",
    "Worker",
    "__version__",
]

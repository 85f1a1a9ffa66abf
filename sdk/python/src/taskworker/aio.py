"""AsyncClient: the Client's calls as coroutines.

Each call runs the sync client's in a thread (asyncio.to_thread), over the same pool of
keep-alive connections, so the event loop never blocks on the network. Blocking calls such as
wait and exec hold one thread of the loop's default executor each while they wait.
"""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from .client import Client
from .types import LogLine, Task


class AsyncClient:
    """Client for asyncio code; takes Client's arguments."""

    def __init__(
        self,
        addr: str | Sequence[str] | None = None,
        token: str | None = None,
        *,
        ca_file: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.sync = Client(addr, token, ca_file=ca_file, timeout=timeout)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.sync.close()

    async def submit(self, type: str, input: Any = None, **options: Any) -> Task:
        return await asyncio.to_thread(self.sync.submit, type, input, **options)

    async def get(self, task_id: str) -> Task:
        return await asyncio.to_thread(self.sync.get, task_id)

    async def wait(self, task_id: str, timeout: float | None = None) -> Task:
        return await asyncio.to_thread(self.sync.wait, task_id, timeout)

    async def cancel(self, task_id: str) -> None:
        await asyncio.to_thread(self.sync.cancel, task_id)

    async def exec(
        self,
        type: str,
        input: Any = None,
        on_log: Callable[[LogLine], object] | None = None,
        **options: Any,
    ) -> Any:
        """Client.exec; on_log is called on the event loop's thread."""
        loop = asyncio.get_running_loop()
        hook: Callable[[LogLine], object] | None = None
        if on_log is not None:
            cb = on_log

            def hook(line: LogLine) -> None:
                loop.call_soon_threadsafe(cb, line)

        return await asyncio.to_thread(self.sync.exec, type, input, hook, **options)

    async def logs(self, task_id: str, follow: bool = False) -> AsyncIterator[LogLine]:
        it = self.sync.logs(task_id, follow)
        end = object()
        while True:
            line = await asyncio.to_thread(next, it, end)
            if line is end:
                return
            assert isinstance(line, LogLine)
            yield line

    async def list(self, **filters: Any) -> builtins.list[Task]:
        return await asyncio.to_thread(self.sync.list, **filters)

    async def workers(self) -> builtins.list[dict[str, Any]]:
        return await asyncio.to_thread(self.sync.workers)

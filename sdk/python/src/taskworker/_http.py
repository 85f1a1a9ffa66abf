"""HTTP over keep-alive connections (http.client), to one of several addresses.

Connections are pooled per address and reused: a request costs no TCP or TLS handshake once
the pool is warm. A request is tried on the next address only when it cannot have reached the
node (the connection was refused) or when it is safe to repeat (GET, DELETE).
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import threading
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlencode

from ._config import Address, Settings
from ._version import __version__
from .errors import ConnectionFailed, error_from_response

_IDEMPOTENT = frozenset({"GET", "HEAD", "DELETE", "PUT"})
# Errors of a reused connection that the server closed while it sat idle in the pool.
_STALE = (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected, http.client.BadStatusLine)
_MAX_IDLE = 64  # idle connections kept per address


class Response:
    """A 2xx answer, read whole."""

    def __init__(self, status: int, body: bytes, headers: http.client.HTTPMessage, addr: Address) -> None:
        self.addr = addr  # the address that answered
        self.status = status
        self.body = body
        self.headers = headers

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


class Transport:
    """Sends requests to the addresses of a Settings; safe for use from many threads."""

    def __init__(self, settings: Settings, timeout: float = 30.0) -> None:
        self.settings = settings
        self.timeout = timeout
        self._lock = threading.Lock()
        self._idle: dict[Address, list[http.client.HTTPConnection]] = {}
        self._current = 0  # index of the address that answered last
        self._closed = False

    @property
    def addrs(self) -> list[Address]:
        return self.settings.addrs

    def current(self) -> Address:
        with self._lock:
            return self.settings.addrs[self._current]

    def advance(self, failed: Address) -> None:
        """Makes the address after failed the first to try, unless another call did already."""
        self._advance(failed)

    def _advance(self, failed: Address) -> None:
        with self._lock:
            if self.settings.addrs[self._current] == failed:
                self._current = (self._current + 1) % len(self.settings.addrs)

    def _new_conn(self, addr: Address, timeout: float) -> http.client.HTTPConnection:
        if addr.scheme == "https":
            ctx = self.settings.ssl_context or ssl.create_default_context()
            return http.client.HTTPSConnection(addr.host, addr.port, timeout=timeout, context=ctx)
        return http.client.HTTPConnection(addr.host, addr.port, timeout=timeout)

    def _take(self, addr: Address, timeout: float) -> tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            idle = self._idle.get(addr)
            conn = idle.pop() if idle else None
        if conn is None:
            return self._new_conn(addr, timeout), False
        conn.timeout = timeout
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
        return conn, True

    def _give_back(self, addr: Address, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            idle = self._idle.setdefault(addr, [])
            if not self._closed and len(idle) < _MAX_IDLE:
                idle.append(conn)
                return
        conn.close()

    def _drop_idle(self, addr: Address) -> None:
        with self._lock:
            conns = self._idle.pop(addr, [])
        for c in conns:
            c.close()

    def close(self) -> None:
        """Closes the idle connections; requests after it still work, each on a connection
        of its own."""
        with self._lock:
            self._closed = True
            conns = [c for idle in self._idle.values() for c in idle]
            self._idle.clear()
        for c in conns:
            c.close()

    def _headers(self, has_body: bool) -> dict[str, str]:
        h = {"Accept": "application/json", "User-Agent": f"taskworker-python/{__version__}"}
        if has_body:
            h["Content-Type"] = "application/json"
        if self.settings.token:
            h["Authorization"] = "Bearer " + self.settings.token
        return h

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        query: Mapping[str, str] | None = None,
        timeout: float | None = None,
        addr: Address | None = None,
    ) -> Response:
        """Sends a request (body: JSON-able, or bytes already encoded) and returns its 2xx answer;
        raises an APIError for another status and ConnectionFailed when no address could be
        reached. addr pins the request to one address (a worker's calls go to its host);
        otherwise a connection error moves on to the next address as described in the module
        doc."""
        resp, conn, target = self._open(method, path, body, query, timeout, addr)
        try:
            data = resp.read()
        except (OSError, http.client.HTTPException) as err:
            conn.close()
            raise ConnectionFailed(f"{method} {path} at {target.url}: {err}") from err
        if resp.will_close:
            conn.close()
        else:
            self._give_back(target, conn)
        if resp.status // 100 != 2:
            raise error_from_response(resp.status, data, resp.getheader("Retry-After"))
        return Response(resp.status, data, resp.headers, target)

    def stream_lines(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> Iterator[bytes]:
        """Yields the lines of a 2xx answer as they arrive, on a connection of its own that is
        closed at the end (a stream is rarely read to a point where reuse is safe)."""
        resp, conn, _ = self._open(method, path, None, query, timeout, None)
        try:
            if resp.status // 100 != 2:
                raise error_from_response(resp.status, resp.read(), resp.getheader("Retry-After"))
            while True:
                try:
                    line = resp.readline()
                except (OSError, http.client.HTTPException) as err:
                    raise ConnectionFailed(f"{method} {path}: stream broke: {err}") from err
                if not line:
                    return
                if line.strip():
                    yield line
        finally:
            conn.close()

    def _open(
        self,
        method: str,
        path: str,
        body: Any,
        query: Mapping[str, str] | None,
        timeout: float | None,
        addr: Address | None,
    ) -> tuple[http.client.HTTPResponse, http.client.HTTPConnection, Address]:
        t = self.timeout if timeout is None else timeout
        url = path + ("?" + urlencode(dict(query)) if query else "")
        if body is None or isinstance(body, bytes):
            payload = body
        else:
            payload = json.dumps(body, separators=(",", ":")).encode()
        headers = self._headers(payload is not None)
        targets = [addr] if addr is not None else self._rotation()
        last: BaseException | None = None
        for target in targets:
            stale_retry = True
            while True:
                conn, reused = self._take(target, t)
                try:
                    if conn.sock is None:
                        conn.connect()
                        # Small requests and answers: do not let Nagle hold them back.
                        if conn.sock is not None:
                            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                except (OSError, http.client.HTTPException) as err:
                    conn.close()
                    last = err
                    self._advance(target)
                    break  # nothing was sent: the next address is safe
                try:
                    conn.request(method, url, body=payload, headers=headers)
                    return conn.getresponse(), conn, target
                except _STALE as err:
                    conn.close()
                    last = err
                    if reused and stale_retry:
                        # The server closed it while idle, and likely its idle siblings too;
                        # the request never ran. Try once more on a new connection.
                        stale_retry = False
                        self._drop_idle(target)
                        continue
                    if method in _IDEMPOTENT:
                        self._advance(target)
                        break
                    raise ConnectionFailed(f"{method} {path} at {target.url}: {err}") from err
                except (OSError, http.client.HTTPException) as err:
                    conn.close()
                    last = err
                    if method in _IDEMPOTENT:
                        self._advance(target)
                        break
                    raise ConnectionFailed(f"{method} {path} at {target.url}: {_describe(err)}") from err
        where = ", ".join(a.url for a in targets)
        raise ConnectionFailed(f"{method} {path}: no address answered ({where}): {_describe(last)}") from last

    def _rotation(self) -> list[Address]:
        with self._lock:
            n = len(self.settings.addrs)
            return [self.settings.addrs[(self._current + i) % n] for i in range(n)]


def _describe(err: BaseException | None) -> str:
    if isinstance(err, socket.timeout):
        return "timed out"
    return str(err) if err is not None else "unknown error"

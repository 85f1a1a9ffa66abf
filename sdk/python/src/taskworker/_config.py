"""Connection settings: addresses, token and TLS, from arguments or the environment."""

from __future__ import annotations

import os
import re
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

DEFAULT_ADDR = "http://127.0.0.1:7948"

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass(frozen=True)
class Address:
    """One node's HTTP address."""

    scheme: str  # "http" or "https"
    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


class ConfigError(ValueError):
    """A setting that cannot work: a malformed address, TLS options with http://, ..."""


def parse_duration(value: str | float | int) -> float:
    """Returns seconds from a number of seconds or Go duration text ("500ms", "1m30s")."""
    if isinstance(value, bool):
        raise ConfigError(f"not a duration: {value!r}")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ConfigError(f"negative duration: {value!r}")
        return float(value)
    text = value.strip()
    if text == "0":
        return 0.0
    pos, total = 0, 0.0
    while pos < len(text):
        m = _DURATION_PART.match(text, pos)
        if m is None:
            raise ConfigError(f"not a duration: {value!r} (want text like 500ms, 1s or 1m30s)")
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if not text:
        raise ConfigError("empty duration")
    return total


def format_duration(seconds: float) -> str:
    """Returns Go duration text for seconds, in whole milliseconds when that is exact."""
    if seconds < 0:
        raise ConfigError(f"negative duration: {seconds!r}")
    ms = seconds * 1000
    if abs(ms - round(ms)) < 1e-6:
        return f"{round(ms)}ms"
    return f"{seconds:.9f}".rstrip("0") + "s"


def parse_addrs(value: str | Sequence[str] | None, *, tls: bool = False) -> list[Address]:
    """Parses one address, a comma-separated list or a sequence of them.

    A bare host:port is https when tls is set (a CA file was given), http otherwise. TLS
    options with an http:// address are refused: they ask for a verified connection, and
    sending the token in the clear instead would defeat them.
    """
    if value is None:
        value = DEFAULT_ADDR
    parts = value.split(",") if isinstance(value, str) else list(value)
    out: list[Address] = []
    for raw in parts:
        text = raw.strip()
        if not text:
            continue
        if "://" not in text:
            text = ("https://" if tls else "http://") + text
        u = urlsplit(text)
        scheme = u.scheme.lower()
        if scheme not in ("http", "https"):
            raise ConfigError(f"address {raw.strip()!r}: scheme must be http or https")
        if tls and scheme == "http":
            raise ConfigError(f"address {raw.strip()!r}: a CA file was given but the address is http://")
        if not u.hostname:
            raise ConfigError(f"address {raw.strip()!r} has no host")
        try:
            port = u.port
        except ValueError as e:
            raise ConfigError(f"address {raw.strip()!r}: {e}") from None
        if port is None:
            port = 443 if scheme == "https" else 80
        out.append(Address(scheme, u.hostname, port))
    if not out:
        raise ConfigError("no address given")
    return out


@dataclass(frozen=True)
class Settings:
    """Where and how to reach the cluster."""

    addrs: list[Address]
    token: str | None
    ssl_context: ssl.SSLContext | None


def resolve(
    addr: str | Sequence[str] | None = None,
    token: str | None = None,
    ca_file: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """Fills what is not passed from TASKWORKER_ADDR, TASKWORKER_TOKEN (or TASKWORKER_TOKEN_FILE)
    and TASKWORKER_CA_FILE. An argument always wins over its variable."""
    e = os.environ if env is None else env
    if addr is None:
        addr = e.get("TASKWORKER_ADDR") or None
    if token is None:
        token = e.get("TASKWORKER_TOKEN") or None
        if token is None and e.get("TASKWORKER_TOKEN_FILE"):
            token = read_token_file(e["TASKWORKER_TOKEN_FILE"])
    if ca_file is None:
        ca_file = e.get("TASKWORKER_CA_FILE") or None
    addrs = parse_addrs(addr, tls=ca_file is not None)
    ctx: ssl.SSLContext | None = None
    if ca_file is not None:
        try:
            ctx = ssl.create_default_context(cafile=ca_file)
        except (OSError, ssl.SSLError) as err:
            raise ConfigError(f"CA file {ca_file}: {err}") from None
    elif any(a.scheme == "https" for a in addrs):
        ctx = ssl.create_default_context()
    if token is not None and any(c in token for c in "\r\n"):
        raise ConfigError("the token holds a line break")
    return Settings(addrs, token, ctx)


def read_token_file(path: str) -> str:
    """Returns the first non-blank line of a token file, stripped."""
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    return line.strip()
    except OSError as err:
        raise ConfigError(f"token file {path}: {err.strerror}") from None
    raise ConfigError(f"token file {path} is empty")

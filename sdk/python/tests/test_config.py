from __future__ import annotations

from pathlib import Path

import pytest

from taskworker._config import Address, ConfigError, format_duration, parse_addrs, parse_duration, resolve


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1s", 1.0), ("500ms", 0.5), ("1m30s", 90.0), ("1.5s", 1.5), ("2h", 7200.0), ("0", 0.0), (3, 3.0)],
)
def test_parse_duration_reads_go_text_and_numbers(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["", "1", "1x", "s", "-1s", -1, True])
def test_parse_duration_refuses_malformed(bad: str | int) -> None:
    with pytest.raises(ConfigError):
        parse_duration(bad)


def test_format_duration_round_trips() -> None:
    assert format_duration(0.5) == "500ms"
    assert format_duration(30) == "30000ms"
    assert parse_duration(format_duration(0.0001234)) == pytest.approx(0.0001234)


def test_addrs_comma_list_and_bare_hosts() -> None:
    got = parse_addrs(" 127.0.0.1:1, http://n2:2 ,https://n3:3,")
    assert got == [Address("http", "127.0.0.1", 1), Address("http", "n2", 2), Address("https", "n3", 3)]
    assert parse_addrs(["h:1"], tls=True) == [Address("https", "h", 1)]
    assert parse_addrs("[::1]:9").pop().url == "http://[::1]:9"


@pytest.mark.parametrize("bad", ["ftp://h:1", "http://:1", "http://h:99999", ","])
def test_addrs_refuse_malformed(bad: str) -> None:
    with pytest.raises(ConfigError):
        parse_addrs(bad)


def test_ca_file_with_http_address_is_refused(tmp_path: Path) -> None:
    # A CA file asks for a verified connection: sending the token in the clear would defeat it.
    with pytest.raises(ConfigError, match="http://"):
        parse_addrs("http://h:1", tls=True)


def test_resolve_reads_the_environment_and_arguments_win(tmp_path: Path) -> None:
    env = {"TASKWORKER_ADDR": "a:1,b:2", "TASKWORKER_TOKEN": "s3cret"}
    s = resolve(env=env)
    assert [a.host for a in s.addrs] == ["a", "b"]
    assert s.token == "s3cret"
    assert s.ssl_context is None
    s = resolve("c:3", "other", env=env)
    assert [a.host for a in s.addrs] == ["c"] and s.token == "other"
    assert resolve(env={}).addrs == [Address("http", "127.0.0.1", 7948)]


def test_resolve_token_file(tmp_path: Path) -> None:
    f = tmp_path / "tok"
    f.write_text("\n  from-file  \nsecond\n")
    assert resolve(env={"TASKWORKER_TOKEN_FILE": str(f)}).token == "from-file"
    with pytest.raises(ConfigError, match="token file"):
        resolve(env={"TASKWORKER_TOKEN_FILE": str(tmp_path / "missing")})


def test_resolve_refuses_a_token_with_a_line_break() -> None:
    # A header injection: a token must not smuggle a second header into the request.
    with pytest.raises(ConfigError):
        resolve(token="abc\r\nX-Evil: 1", env={})


def test_resolve_ca_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="CA file"):
        resolve("h:1", env={"TASKWORKER_CA_FILE": str(tmp_path / "nope.pem")})
    s = resolve("https://h:1", env={})
    assert s.ssl_context is not None

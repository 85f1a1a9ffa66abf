from __future__ import annotations

import pytest

import taskworker as tw
from taskworker.errors import error_from_response


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [
        (400, "invalid_input", tw.InvalidInput),
        (400, "unknown_task_type", tw.UnknownTaskType),
        (400, "invalid_timeout", tw.BadRequest),
        (401, "unauthorized", tw.Unauthorized),
        (403, "permission_denied", tw.PermissionDenied),
        (404, "unknown_worker", tw.NotFound),
        (409, "worker_exists", tw.Conflict),
        (413, "body_too_large", tw.PayloadTooLarge),
        (429, "queue_full", tw.RateLimited),
        (503, "no_leader", tw.Unavailable),
        (500, "internal", tw.ServerError),
        (418, "", tw.APIError),
    ],
)
def test_status_and_code_pick_the_exception(status: int, code: str, cls: type[tw.APIError]) -> None:
    err = error_from_response(status, f'{{"error": "why", "code": "{code}"}}'.encode())
    assert type(err) is cls
    assert (err.status, err.code, err.message) == (status, code, "why")
    assert isinstance(err, tw.TaskworkerError)


def test_invalid_input_is_a_bad_request() -> None:
    assert isinstance(error_from_response(400, b'{"error":"x","code":"invalid_input"}'), tw.BadRequest)


def test_retry_after_is_read() -> None:
    err = error_from_response(429, b'{"error":"full","code":"queue_full"}', "3")
    assert isinstance(err, tw.RateLimited) and err.retry_after == 3.0
    assert error_from_response(429, b"{}", "soon").retry_after is None


def test_a_body_that_is_not_json_becomes_the_message() -> None:
    err = error_from_response(502, b"<html>bad gateway</html>")
    assert isinstance(err, tw.ServerError)
    assert "bad gateway" in err.message and err.code == ""
    assert error_from_response(500, b"").message == "HTTP 500"
    assert str(error_from_response(404, b'{"error":"gone","code":"not_found"}')) == "gone (404 not_found)"


def test_task_failed_carries_the_record() -> None:
    t = tw.Task.from_json(
        {"id": "T1", "type": "x", "state": "failed", "error": {"type": "ValueError", "message": "bad"}}
    )
    e = tw.TaskFailed(t)
    assert e.task is t
    assert "ValueError: bad" in str(e)

import { test } from "node:test";
import assert from "node:assert/strict";
import {
  ConflictError,
  errorFromResponse,
  FinalError,
  InvalidInputError,
  NotFoundError,
  PermissionDeniedError,
  RateLimitedError,
  TaskFailedError,
  TaskworkerError,
  UnavailableError,
  ConnectionError,
} from "../src/errors.js";
import { describeError } from "../src/worker.js";
import type { Task } from "../src/types.js";

test("maps statuses to typed errors carrying the API's code and status", () => {
  const cases: [number, string, new (...a: never[]) => TaskworkerError][] = [
    [400, "invalid_input", InvalidInputError],
    [401, "unauthorized", PermissionDeniedError],
    [403, "forbidden", PermissionDeniedError],
    [404, "unknown_worker", NotFoundError],
    [409, "worker_exists", ConflictError],
    [413, "body_too_large", InvalidInputError],
    [429, "queue_full", RateLimitedError],
    [503, "no_leader", UnavailableError],
  ];
  for (const [status, code, cls] of cases) {
    const e = errorFromResponse("POST /v1/x", status, JSON.stringify({ error: "why", code }), null, "http://n1:1");
    assert.ok(e instanceof cls, `${status} is ${cls.name}`);
    assert.ok(e instanceof TaskworkerError);
    assert.equal(e.code, code);
    assert.equal(e.status, status);
    assert.equal(e.name, cls.name);
    assert.match(e.message, /^POST \/v1\/x: why/);
  }
  const other = errorFromResponse("GET /", 500, "{}", null, "http://n1:1");
  assert.equal(other.constructor, TaskworkerError);
  assert.equal(other.code, "http_500");
});

test("reads Retry-After and survives a body that is not JSON", () => {
  const e = errorFromResponse("POST /v1/tasks", 429, "<html>busy</html>", "3", "http://n1:1");
  assert.ok(e instanceof RateLimitedError);
  assert.equal(e.retryAfter, 3);
  assert.equal(e.code, "rate_limited");
  assert.match(e.message, /HTTP 429/);
});

test("says to use https when plain HTTP reached an HTTPS node", () => {
  const e = errorFromResponse("GET /v1/tasks/x", 400, "Client sent an HTTP request to an HTTPS server.\n", null, "http://n1:7948");
  assert.match(e.message, /serves HTTPS: use https:\/\/n1:7948/);
});

test("a connection error is an UnavailableError with status 0", () => {
  const e = new ConnectionError("refused");
  assert.ok(e instanceof UnavailableError);
  assert.equal(e.status, 0);
  assert.equal(e.code, "connection_failed");
});

test("TaskFailedError carries the record", () => {
  const t = { id: "t1", type: "x", state: "failed", error: { type: "ValueError", message: "bad" } } as unknown as Task;
  const e = new TaskFailedError(t);
  assert.equal(e.task, t);
  assert.equal(e.code, "task_failed");
  assert.match(e.message, /ValueError: bad/);
  assert.equal(new TaskFailedError({ ...t, state: "cancelled" }).code, "task_cancelled");
});

test("a handler's error becomes the task's error: name as type, FinalError final", () => {
  class QuotaError extends FinalError {}
  class Flaky extends Error {
    override name = "Flaky";
  }
  assert.deepEqual(describeError(new FinalError("no")), { type: "FinalError", message: "no", final: true });
  assert.deepEqual(describeError(new QuotaError("over")), { type: "QuotaError", message: "over", final: true });
  assert.deepEqual(describeError(new TypeError("t")), { type: "TypeError", message: "t", final: false });
  assert.deepEqual(describeError(new Flaky("f")), { type: "Flaky", message: "f", final: false });
  assert.deepEqual(describeError("plain"), { type: "Error", message: "plain", final: false });
  assert.deepEqual(describeError({ a: 1 }), { type: "Error", message: '{"a":1}', final: false });
  assert.equal(describeError(new Error("x".repeat(20000))).message.length, 8192);
});

import type { Task } from "./types.js";

/**
 * An error of the taskworker API or of the connection to it. `code` is the API's snake_case code
 * (`not_found`, `queue_full`, ...) and `status` its HTTP status; errors that never reached a node
 * have status 0.
 */
export class TaskworkerError extends Error {
  readonly code: string;
  readonly status: number;
  /** Seconds the server asked to wait before trying again (Retry-After), when it said. */
  readonly retryAfter: number | undefined;

  constructor(message: string, code: string, status: number, options?: { cause?: unknown; retryAfter?: number }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.code = code;
    this.status = status;
    this.retryAfter = options?.retryAfter;
  }
}

/** 404: no such task, worker session or route. */
export class NotFoundError extends TaskworkerError {}
/** 401 or 403: no token, a wrong one, or one without the capability the call needs. */
export class PermissionDeniedError extends TaskworkerError {}
/** 409: a conflict, such as a worker name already in use or a task that has already finished. */
export class ConflictError extends TaskworkerError {}
/** 400, 413 or 415: the request was refused as it is and sending it again will not help. */
export class InvalidInputError extends TaskworkerError {}
/** 429: over a rate, quota or queue limit; `retryAfter` says when to try again when the server said. */
export class RateLimitedError extends TaskworkerError {}
/** 503 (no leader, or the node is shutting down), or another 5xx that says the node cannot serve now. */
export class UnavailableError extends TaskworkerError {}

/**
 * The node could not be reached, or the connection broke before an answer: status 0, code
 * `connection_failed`. It is an UnavailableError, so one catch covers both.
 */
export class ConnectionError extends UnavailableError {
  constructor(message: string, cause?: unknown) {
    super(message, "connection_failed", 0, { cause });
  }
}

/** A bad option or environment variable; found before any request is sent. */
export class ConfigError extends TaskworkerError {
  constructor(message: string) {
    super(message, "invalid_config", 0);
  }
}

/**
 * The task ended without succeeding: it failed (its last error is `task.error`) or was
 * cancelled. `code` is `task_failed` or `task_cancelled`.
 */
export class TaskFailedError extends TaskworkerError {
  readonly task: Task;

  constructor(task: Task) {
    const why = task.state === "cancelled" ? "was cancelled" : `failed: ${task.error ? `${task.error.type}: ${task.error.message}` : "no error recorded"}`;
    super(`task ${task.id} (${task.type}) ${why}`, task.state === "cancelled" ? "task_cancelled" : "task_failed", 0);
    this.task = task;
  }
}

/**
 * Thrown by a task handler, fails the task at once, without retries. Any other error is a
 * retryable failure. The task's `error.type` is the error's `name` (a subclass may set its own).
 */
export class FinalError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
  }
}

/**
 * Thrown by TaskContext.waitChildren while the children have not all finished: it ends the
 * attempt without failing it (let it propagate out of the handler), and the task runs again once
 * they have, with their outcomes.
 */
export class WaitingForChildren extends Error {
  constructor(readonly children: string[]) {
    super(`waiting for ${children.length} child tasks`);
    this.name = new.target.name;
  }
}

/**
 * Rejects a checkpoint whose attempt is no longer this worker's: the cluster moved the task on
 * (the worker was presumed lost, or the task was cancelled or timed out). The attempt's signal is
 * aborted too; whatever the handler returns is dropped.
 */
export class AttemptLostError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "AttemptLostError";
  }
}

/** What Go's HTTPS server answers, with a 400, to plain HTTP. */
const plainToTLS = "Client sent an HTTP request to an HTTPS server";

/**
 * The typed error for a non-2xx answer. `body` is the answer's text (at most a few KiB is read);
 * `what` names the request ("POST /v1/tasks") and starts the message.
 */
export function errorFromResponse(what: string, status: number, body: string, retryAfterHeader: string | null, base: string): TaskworkerError {
  let message = "";
  let code = "";
  try {
    const parsed: unknown = JSON.parse(body);
    if (parsed !== null && typeof parsed === "object") {
      const o = parsed as Record<string, unknown>;
      if (typeof o["error"] === "string") message = o["error"];
      if (typeof o["code"] === "string") code = o["code"];
    }
  } catch {
    // Not JSON (a proxy's page, say): the status says enough.
  }
  if (status === 400 && body.includes(plainToTLS)) {
    message = `${base} serves HTTPS: use ${base.replace(/^http:\/\//, "https://")}`;
    code = code || "plain_http_to_https";
  }
  if (message === "") message = `HTTP ${status}`;
  if (code === "") code = defaultCode(status);
  let retryAfter: number | undefined;
  if (retryAfterHeader !== null && /^\d+$/.test(retryAfterHeader.trim())) retryAfter = Number(retryAfterHeader.trim());
  const text = `${what}: ${message} (${status} ${code})`;
  const opts = retryAfter === undefined ? undefined : { retryAfter };
  switch (true) {
    case status === 404:
      return new NotFoundError(text, code, status, opts);
    case status === 401 || status === 403:
      return new PermissionDeniedError(text, code, status, opts);
    case status === 409:
      return new ConflictError(text, code, status, opts);
    case status === 400 || status === 413 || status === 415 || status === 422:
      return new InvalidInputError(text, code, status, opts);
    case status === 429:
      return new RateLimitedError(text, code, status, opts);
    case status === 502 || status === 503 || status === 504:
      return new UnavailableError(text, code, status, opts);
    default:
      return new TaskworkerError(text, code, status, opts);
  }
}

function defaultCode(status: number): string {
  switch (status) {
    case 400:
      return "invalid_request";
    case 401:
      return "unauthorized";
    case 403:
      return "forbidden";
    case 404:
      return "not_found";
    case 409:
      return "conflict";
    case 413:
      return "body_too_large";
    case 415:
      return "unsupported_media_type";
    case 429:
      return "rate_limited";
    case 503:
      return "unavailable";
    default:
      return "http_" + String(status);
  }
}

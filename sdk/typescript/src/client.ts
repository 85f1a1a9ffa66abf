import type { ConnectionOptions } from "./config.js";
import { ConnectionError, TaskFailedError, TaskworkerError, UnavailableError } from "./errors.js";
import { anySignal, Conn, formatDuration, readJSON, readJSONLines, sleep } from "./http.js";
import { isTerminal, type LogLine, type Task, type TaskTypeInfo, type WorkerInfo } from "./types.js";

/** Options of a submit; all optional. Durations are Go duration text ("30s") or milliseconds. */
export interface SubmitOptions {
  version?: string;
  /** A submit with a key seen before returns the earlier task instead of a new one. */
  idempotencyKey?: string;
  maxAttempts?: number;
  timeout?: string | number;
  priority?: number;
  queue?: string;
  /** Run no sooner than this long after the submit. */
  delay?: string | number;
  /** Run no sooner than this time. */
  runAt?: Date | string;
  uniqueKey?: string;
  uniqueFor?: string | number;
  /** Further fields of the submit body, sent as they are (the API's snake_case names). */
  extra?: Record<string, unknown>;
  signal?: AbortSignal;
}

/** Options of a call that only needs a way to give up. */
export interface SignalOptions {
  signal?: AbortSignal;
}

/** Filters and paging of list; empty fields are left out. */
export interface ListOptions extends SignalOptions {
  state?: string;
  type?: string;
  node?: string;
  queue?: string;
  limit?: number;
  after?: string;
  /** The cursor of the next page, from a previous page. */
  next?: string;
}

/** One page of a list. */
export interface TaskPage {
  tasks: Task[];
  /** The cursor of the next page; "" on the last one. */
  next: string;
}

/** Options of exec: a submit's, plus what to tell while the task runs. */
export interface ExecOptions extends SubmitOptions {
  /** Each line of the task's output, in order, each once, while it runs. */
  onLog?: (line: LogLine) => void;
  /** The record the submit returned, before anything waits. */
  onSubmit?: (task: Task) => void;
}

/** How long one blocking query lasts, and the pause after a 503 (no leader during an election). */
const waitChunk = "60s";
const retryPause = 250;

/**
 * Calls the taskworker HTTP API. Any node answers every request; given several addresses it
 * moves to the next one when a node cannot be reached, and resends a request only when that is
 * safe (it reads, or it was never sent, or it carries an idempotency key).
 */
export class Client {
  /** @internal */
  readonly conn: Conn;

  constructor(opts: ConnectionOptions = {}) {
    this.conn = new Conn(opts);
  }

  /** Submits a task; resolves with its record (the earlier task's for a known idempotency key). */
  async submit(type: string, input: unknown = null, opts: SubmitOptions = {}): Promise<Task> {
    return await this.conn.json<Task>("POST", "/v1/tasks", {
      body: submitBody(type, input, opts),
      signal: opts.signal,
      idempotent: (opts.idempotencyKey ?? "") !== "",
    });
  }

  /** The task's record now. */
  async get(id: string, opts: SignalOptions = {}): Promise<Task> {
    return await this.conn.json<Task>("GET", taskPath(id), { signal: opts.signal, idempotent: true });
  }

  /**
   * Waits until the task has ended and resolves with its final record, whatever the outcome. It
   * holds blocking queries (the record's modify_index) and rides out elections; bound it with
   * a signal (`AbortSignal.timeout(ms)`).
   */
  async wait(id: string, opts: SignalOptions = {}): Promise<Task> {
    let index = 0;
    for (;;) {
      let task: Task;
      try {
        task = await this.conn.json<Task>("GET", taskPath(id), {
          query: { wait: waitChunk, index },
          signal: opts.signal,
          idempotent: true,
        });
      } catch (e) {
        if (!passing(e) || opts.signal?.aborted) throw e;
        await sleep(retryPause, opts.signal);
        continue;
      }
      if (isTerminal(task.state)) return task;
      index = Math.max(index, task.modify_index);
    }
  }

  /** Cancels a task: a pending one never runs, a running one is told to stop. */
  async cancel(id: string, opts: SignalOptions = {}): Promise<void> {
    const res = await this.conn.call("POST", taskPath(id) + "/cancel", { signal: opts.signal, idempotent: true });
    await readJSON(res, "POST cancel").catch(() => null);
  }

  /**
   * The task's output lines. With `follow` it keeps streaming until the task ends, carrying on
   * (without repeating a line) when the stream breaks or moves to another node.
   */
  async *logs(id: string, opts: SignalOptions & { follow?: boolean } = {}): AsyncGenerator<LogLine> {
    const path = taskPath(id) + "/logs";
    if (!opts.follow) {
      const res = await this.conn.call("GET", path, { signal: opts.signal, idempotent: true });
      for await (const l of readJSONLines(res, "GET " + path)) yield l as LogLine;
      return;
    }
    const seen = new Set<string>();
    for (;;) {
      try {
        const res = await this.conn.call("GET", path, { query: { follow: "true" }, signal: opts.signal, idempotent: true });
        for await (const raw of readJSONLines(res, "GET " + path)) {
          const l = raw as LogLine;
          const key = logKey(l);
          if (seen.has(key)) continue;
          seen.add(key);
          yield l;
        }
      } catch (e) {
        // A broken stream is picked up again below; a 503 (an election) passes.
        if (!(passing(e) || e instanceof ConnectionError) || opts.signal?.aborted) throw e;
      }
      // The stream ended: the task did, or its node let go of the follow.
      const t = await this.get(id, opts);
      if (isTerminal(t.state)) return;
      await sleep(retryPause, opts.signal);
    }
  }

  /**
   * Submits a task, passes its output to onLog as it runs, and resolves with its result once it
   * has succeeded. A task that fails or is cancelled rejects with a TaskFailedError holding the
   * record.
   */
  async exec(type: string, input: unknown = null, opts: ExecOptions = {}): Promise<unknown> {
    const task = await this.submit(type, input, opts);
    opts.onSubmit?.(task);
    const onLog = opts.onLog;
    const seen = new Set<string>();
    const emit = (l: LogLine) => {
      const key = logKey(l);
      if (seen.has(key) || !onLog) return;
      seen.add(key);
      onLog(l);
    };
    let followFailed = false;
    const stop = new AbortController();
    const sig = anySignal([opts.signal, stop.signal]);
    const follow = onLog
      ? (async () => {
          for await (const l of this.logs(task.id, { follow: true, signal: sig.signal })) emit(l);
        })().catch(() => {
          followFailed = true;
        })
      : Promise.resolve();
    let done: Task;
    try {
      done = await this.wait(task.id, opts);
    } catch (e) {
      stop.abort();
      await follow;
      sig.dispose();
      if (e instanceof TaskworkerError) throw new TaskworkerError(`task ${task.id}: ${e.message}`, e.code, e.status, { cause: e });
      throw e;
    }
    await follow;
    sig.dispose();
    if (onLog && followFailed) {
      // Best effort: the result is what exec returns. The lines the stream missed are fetched
      // once the task has ended; those already shown are skipped.
      try {
        for await (const l of this.logs(task.id, opts)) emit(l);
      } catch {
        // The output could not be fetched; the outcome stands.
      }
    }
    if (done.state !== "succeeded") throw new TaskFailedError(done);
    return done.result;
  }

  /** One page of tasks, newest first, and the cursor of the next. */
  async listPage(opts: ListOptions = {}): Promise<TaskPage> {
    const { signal, ...filters } = opts;
    const res = await this.conn.call("GET", "/v1/tasks", { query: { ...filters }, signal, idempotent: true });
    const next = res.header("X-Taskworker-Next") ?? "";
    const body = await readJSON(res, "GET /v1/tasks");
    const tasks = Array.isArray(body) ? (body as Task[]) : ((body as { tasks?: Task[] } | null)?.tasks ?? []);
    return { tasks, next };
  }

  /** Tasks, newest first: one page (`limit`, default 100). */
  async list(opts: ListOptions = {}): Promise<Task[]> {
    return (await this.listPage(opts)).tasks;
  }

  /** Every task matching the filters, newest first, a page at a time. */
  async *listAll(opts: ListOptions = {}): AsyncGenerator<Task> {
    let o = { ...opts };
    for (;;) {
      const page = await this.listPage(o);
      yield* page.tasks;
      if (page.next === "" || page.tasks.length === 0) return;
      o = { ...o, next: page.next, after: undefined };
    }
  }

  /** The cluster's workers, up and recently down, by name. */
  async workers(opts: SignalOptions = {}): Promise<WorkerInfo[]> {
    return (await this.conn.json<WorkerInfo[] | null>("GET", "/v1/workers", { signal: opts.signal, idempotent: true })) ?? [];
  }

  /** The task types the cluster can run, with the nodes and workers that offer each. */
  async types(opts: SignalOptions = {}): Promise<(TaskTypeInfo & { nodes?: string[] })[]> {
    return (await this.conn.json<(TaskTypeInfo & { nodes?: string[] })[] | null>("GET", "/v1/types", { signal: opts.signal, idempotent: true })) ?? [];
  }

  /** The cluster at a glance: leader, nodes, workers, task counts. */
  async cluster(opts: SignalOptions = {}): Promise<Record<string, unknown>> {
    return await this.conn.json<Record<string, unknown>>("GET", "/v1/cluster", { signal: opts.signal, idempotent: true });
  }
}

/** A 503 that passes: no leader during an election. */
function passing(e: unknown): boolean {
  return e instanceof UnavailableError && !(e instanceof ConnectionError);
}

function logKey(l: LogLine): string {
  return `${l.ts}\u0000${l.attempt}\u0000${l.node}\u0000${l.stream}\u0000${l.line}`;
}

/** The API path of a task; the ID is escaped, so it cannot name another route. */
export function taskPath(id: string): string {
  if (id === "") throw new TypeError("a task ID is required");
  return "/v1/tasks/" + encodeURIComponent(id);
}

/** The body of POST /v1/tasks. */
export function submitBody(type: string, input: unknown, opts: SubmitOptions): Record<string, unknown> {
  if (typeof type !== "string" || type === "") throw new TypeError("a task type is required");
  const b: Record<string, unknown> = { ...(opts.extra ?? {}), type, input: input === undefined ? null : input };
  if (opts.version) b["version"] = opts.version;
  if (opts.idempotencyKey) b["idempotency_key"] = opts.idempotencyKey;
  if (opts.maxAttempts !== undefined) b["max_attempts"] = opts.maxAttempts;
  if (opts.timeout !== undefined) b["timeout"] = formatDuration(opts.timeout);
  if (opts.priority !== undefined) b["priority"] = opts.priority;
  if (opts.queue) b["queue"] = opts.queue;
  if (opts.delay !== undefined) b["delay"] = formatDuration(opts.delay);
  if (opts.runAt !== undefined) b["run_at"] = opts.runAt instanceof Date ? opts.runAt.toISOString() : opts.runAt;
  if (opts.uniqueKey) b["unique_key"] = opts.uniqueKey;
  if (opts.uniqueFor !== undefined) b["unique_for"] = formatDuration(opts.uniqueFor);
  return b;
}

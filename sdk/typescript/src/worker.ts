import { hostname, availableParallelism } from "node:os";
import type { ConnectionOptions } from "./config.js";
import {
  AttemptLostError,
  ConfigError,
  ConflictError,
  ConnectionError,
  FinalError,
  InvalidInputError,
  NotFoundError,
  PermissionDeniedError,
  RateLimitedError,
  TaskworkerError,
  UnavailableError,
  WaitingForChildren,
} from "./errors.js";
import type { ChildResult } from "./types.js";
import { anySignal, Conn, formatDuration, parseDuration, readJSON, sleep } from "./http.js";

/** What a handler gets besides its input. */
export interface TaskContext {
  readonly taskId: string;
  /** Which execution of the task this is, from 1. */
  readonly attempt: number;
  readonly type: string;
  readonly version: string;
  /** The task's timeout as Go duration text, or "" when it has none. */
  readonly timeout: string;
  /** The last checkpoint an earlier attempt (or this one) saved, or null. */
  readonly lastCheckpoint: unknown;
  /**
   * Aborted when the attempt should stop: the task was cancelled, timed out, was taken from this
   * worker, or a drain ran out of time. Pass it to fetch and the like.
   */
  readonly signal: AbortSignal;
  /** True once the signal has aborted. */
  readonly cancelled: boolean;
  /** Writes a log line to the task's output, live; `level` defaults to info. */
  log(message: string, level?: "debug" | "info" | "warn" | "error"): void;
  /** Writes to the task's stdout stream. */
  stdout(text: string): void;
  /** Writes to the task's stderr stream. */
  stderr(text: string): void;
  /**
   * Saves a checkpoint (any JSON value) that a later attempt of the task gets as lastCheckpoint.
   * It resolves once the cluster has stored it, and rejects with an AttemptLostError when the
   * attempt is no longer this worker's.
   */
  checkpoint(value: unknown): Promise<void>;
  /** True on an attempt that follows a wait for child tasks (waitChildren). */
  readonly resumed: boolean;
  /** On a resumed attempt, the children its wait named, by ID, with how each ended. */
  readonly childResults: Readonly<Record<string, ChildResult>>;
  /**
   * Submits a child task into this task's execution (its parent_id is this task) and resolves
   * with its ID. Give it an idempotencyKey derived from taskId (`${ctx.taskId}/${i}`): a resumed
   * or retried run then gets the same child instead of a second one. With --acl the worker's
   * token needs submit on the child's type and read on this one's.
   */
  submit(type: string, input?: unknown, opts?: ChildOptions): Promise<string>;
  /**
   * Waits, durably, for child tasks of this task: ids, or without them every child this run
   * submitted and every child of the wait it follows. When they have all finished (on a resumed
   * attempt) it returns their outcomes by ID, failures included: the handler decides. Otherwise
   * it throws WaitingForChildren, which ends the attempt without failing it (let it propagate):
   * the slot is free while they run, and the task runs again, on any worker or node offering
   * its type, once the last has finished, with resumed, childResults and its last checkpoint. A
   * wait uses up none of max_attempts; cancelling the task cancels the children it waits for.
   */
  waitChildren(ids?: string[]): Record<string, ChildResult>;
}

/** Options of a child task (TaskContext.submit). */
export interface ChildOptions {
  idempotencyKey?: string;
  version?: string;
  maxAttempts?: number;
  /** Go duration text, "30s". */
  timeout?: string;
}

/** A task handler. It may be async; its resolved value (JSON) is the task's result. */
export type Handler<I = any, R = unknown> = (ctx: TaskContext, input: I) => R | Promise<R>;

/** How a task type is registered. */
export interface TaskOptions {
  /** Default "1". */
  version?: string;
  description?: string;
  /** An input shown by `taskworker types` and the console. */
  exampleInput?: unknown;
}

/** A worker's options; the connection's fall back to TASKWORKER_ADDR, TASKWORKER_TOKEN and TASKWORKER_CA_FILE. */
export interface WorkerOptions extends ConnectionOptions {
  /** 1–64 characters of [A-Za-z0-9._-]; default HOSTNAME-PID. */
  name?: string;
  /** How many tasks run at once, 1–1024; default the number of CPUs. */
  capacity?: number;
  /** The lease: how long the worker may go without a poll before the cluster presumes it lost. Default "1s". */
  lease?: string | number;
  /** At most 32 labels. */
  labels?: Record<string, string>;
  /** How long a drain waits for running tasks before handing them back, in ms; default 30000. */
  drainTimeout?: number;
  /** SIGTERM and SIGINT drain the worker, a second one leaves at once and exits; default true. */
  handleSignals?: boolean;
  /** Where the worker's own messages go; default stderr. Never given tokens or session IDs. */
  logger?: (level: "info" | "warn" | "error", message: string) => void;
}

/** An assignment as the poll delivers it. */
interface Assignment {
  task_id: string;
  attempt: number;
  type: string;
  version: string;
  input: unknown;
  checkpoint: unknown;
  timeout: string;
  execution_id?: string;
  resumed?: boolean;
  children?: ChildResult[] | null;
}

interface PollReply {
  assignments?: Assignment[] | null;
  cancel?: { task_id: string; attempt: number }[] | null;
  draining?: boolean;
}

interface RegisterReply {
  id: string;
  name: string;
  node: string;
  lease: string;
  poll_wait: string;
}

/** An event of POST /v1/workers/{id}/events. */
export interface WorkerEvent {
  task_id: string;
  attempt: number;
  kind: "log" | "checkpoint" | "succeeded" | "failed" | "cancelled" | "wait_children";
  stream?: "stdout" | "stderr" | "log";
  level?: string;
  line?: string;
  checkpoint?: unknown;
  result?: unknown;
  error?: { type: string; message: string; final: boolean };
  children?: string[];
}

interface EventResult {
  ok: boolean;
  code?: string;
  error?: string;
}

/** Limits of one events call: the API's, with room to spare under its 1 MiB body cap. */
export const maxEventsPerCall = 1000;
export const maxEventsBytes = 900 << 10;
/** A log line longer than this is cut (a worker's output is for people). */
export const maxLogLine = 64 << 10;
/** How long log lines wait to travel together; outcomes and checkpoints go at once. */
export const logBatchDelay = 10;
/** How long an outcome the cluster has not recorded yet (`no_leader`) waits to be reported again. */
export const reportAgainDelay = 1000;

/** The attempt of a task running on this worker. */
class Attempt {
  readonly key: string;
  readonly ctl = new AbortController();
  /** Cancel asked by the user (poll), so the outcome is `cancelled`. */
  cancelRequested = false;
  timedOut = false;
  /** Taken from this worker: nothing more about it is sent. */
  dropped = false;
  /** The outcome is queued: later logs and checkpoints are ignored. */
  finished = false;
  deadline = 0;

  constructor(
    readonly a: Assignment,
    readonly session: Session,
  ) {
    this.key = attemptKey(a.task_id, a.attempt);
  }
}

function attemptKey(taskId: string, attempt: number): string {
  return `${taskId}\u0000${attempt}`;
}

interface Queued {
  ev: WorkerEvent;
  size: number;
  done?: (r: EventResult | Error) => void;
}

/** One registration: its ID and host, and what runs under it. */
class Session {
  readonly running = new Map<string, Attempt>();
  ended = false;
  draining = false;
  /** The host answered draining: no more assignments will come. */
  hostDraining = false;
  /** Aborts the poll in flight when the session ends. */
  pollCtl = new AbortController();
  /** Resolves when the session ends, with why. */
  readonly end: Promise<"left" | "lost" | "fatal">;
  endWith!: (why: "left" | "lost" | "fatal") => void;
  readonly leaseMs: number;
  readonly pollWaitMs: number;

  constructor(
    readonly id: string,
    readonly base: string,
    readonly node: string,
    lease: string,
    pollWait: string,
  ) {
    this.leaseMs = validMs(parseDuration(lease), 1000);
    this.pollWaitMs = validMs(parseDuration(pollWait), this.leaseMs / 2);
    this.end = new Promise((resolve) => {
      this.endWith = resolve;
    });
  }

  get path(): string {
    return "/v1/workers/" + encodeURIComponent(this.id);
  }
}

function validMs(ms: number, fallback: number): number {
  return Number.isFinite(ms) && ms > 0 ? ms : fallback;
}

const namePattern = /^[A-Za-z0-9._-]{1,64}$/;

/** The default worker name: HOSTNAME-PID, cut to the characters and length a name allows. */
export function defaultWorkerName(): string {
  const host = hostname().replace(/[^A-Za-z0-9._-]/g, "-") || "worker";
  const pid = String(process.pid);
  return `${host.slice(0, 63 - pid.length)}-${pid}`;
}

/**
 * Runs task types for a taskworker cluster. It registers with a node, long-polls it for
 * assignments (one poll carries many) and reports logs, checkpoints and outcomes in batches
 * (one call carries many). The poll loop renews the lease whatever handlers do, as long as they
 * let the event loop run: a CPU-bound handler blocks it and loses the lease, so such work belongs
 * in worker_threads (or a child process), awaited from the handler.
 */
export class Worker {
  readonly name: string;
  readonly capacity: number;
  private readonly conn: Conn;
  private readonly lease: string;
  private readonly labels: Record<string, string>;
  private readonly drainTimeout: number;
  private readonly handleSignals: boolean;
  private readonly logger: (level: "info" | "warn" | "error", message: string) => void;
  private readonly handlers = new Map<string, { type: string; opts: TaskOptions & { version: string }; fn: Handler }>();

  private state: "idle" | "running" | "stopped" = "idle";
  private session: Session | undefined;
  private draining = false;
  private drainDeadline = 0;
  private leaving = false;
  /** A second signal: the process exits once the worker has left, and run() never resolves. */
  private exiting = false;
  private readonly stopCtl = new AbortController();
  private fatal: Error | undefined;

  private queue: Queued[] = [];
  private sending = false;
  private flushTimer: NodeJS.Timeout | undefined;
  private flushSoon = false;
  private sweepTimer: NodeJS.Timeout | undefined;
  private signalHandler: ((sig: NodeJS.Signals) => void) | undefined;

  constructor(opts: WorkerOptions = {}) {
    this.name = opts.name ?? defaultWorkerName();
    if (!namePattern.test(this.name)) throw new ConfigError(`worker name ${JSON.stringify(this.name)}: 1 to 64 characters of A-Z a-z 0-9 . _ -`);
    this.capacity = opts.capacity ?? availableParallelism();
    if (!Number.isInteger(this.capacity) || this.capacity < 1 || this.capacity > 1024) throw new ConfigError(`capacity ${this.capacity}: a whole number from 1 to 1024`);
    this.lease = formatDuration(opts.lease ?? "1s");
    const leaseMs = parseDuration(this.lease);
    if (!(leaseMs >= 500 && leaseMs <= 60000)) throw new ConfigError(`lease ${this.lease}: from 500ms to 60s`);
    this.labels = { ...(opts.labels ?? {}) };
    this.drainTimeout = opts.drainTimeout ?? 30000;
    if (!(this.drainTimeout >= 0)) throw new ConfigError(`drainTimeout ${this.drainTimeout}: milliseconds, 0 or more`);
    this.handleSignals = opts.handleSignals ?? true;
    this.logger =
      opts.logger ??
      ((level, message) => {
        process.stderr.write(`taskworker worker ${this.name}: ${level}: ${message}\n`);
      });
    this.conn = new Conn(opts);
  }

  /**
   * Registers a task type. The handler gets a context and the task's input; what it resolves to
   * is the result. Throwing a FinalError fails the task at once; any other error is retried
   * (up to the task's max_attempts), its `name` the task's `error.type`.
   */
  task<I = any, R = unknown>(type: string, handler: Handler<I, R>): this;
  task<I = any, R = unknown>(type: string, opts: TaskOptions, handler: Handler<I, R>): this;
  task<I = any, R = unknown>(type: string, a: TaskOptions | Handler<I, R>, b?: Handler<I, R>): this {
    const [opts, fn] = typeof a === "function" ? [{}, a] : [a, b];
    if (typeof fn !== "function") throw new TypeError(`task ${type}: a handler function is required`);
    if (typeof type !== "string" || type === "") throw new TypeError("a task type name is required");
    if (this.state !== "idle") throw new Error(`task ${type}: register task types before run()`);
    const version = opts.version ?? "1";
    const key = `${type}\u0000${version}`;
    if (this.handlers.has(key)) throw new Error(`task ${type} version ${version} is registered twice`);
    this.handlers.set(key, { type, opts: { ...opts, version }, fn: fn as Handler });
    return this;
  }

  /** The node the worker is registered with now, or "" between sessions. */
  get node(): string {
    return this.session?.node ?? "";
  }

  /**
   * Runs the worker until it has drained and left (drain(), or SIGTERM), or left at once
   * (close()). It registers again, through the next address when the host went away, whenever
   * the session is lost. It rejects when the cluster refuses the worker for good: a bad
   * registration, or a token without `work` on its types.
   */
  async run(): Promise<void> {
    if (this.state !== "idle") throw new Error("run() was called before");
    if (this.handlers.size === 0) throw new ConfigError("register at least one task type before run()");
    this.state = "running";
    this.installSignals();
    try {
      while (!this.stopped()) {
        const s = await this.register();
        if (s === undefined) break;
        this.session = s;
        void this.pollLoop(s);
        const why = await s.end;
        this.session = undefined;
        if (why !== "lost" || this.draining) break;
        // The host may be the one that went: the next registration starts at the next address.
        this.conn.advance();
      }
    } finally {
      this.state = "stopped";
      this.removeSignals();
      clearTimeout(this.flushTimer);
      clearInterval(this.sweepTimer);
    }
    if (this.exiting) await new Promise<never>(() => {});
    if (this.fatal) throw this.fatal;
  }

  /**
   * Starts a drain: no new tasks; running ones finish within drainTimeout, the rest are handed
   * back; then the worker leaves and run() resolves.
   */
  drain(): void {
    if (this.draining || this.state === "stopped") return;
    this.draining = true;
    this.drainDeadline = Date.now() + this.drainTimeout;
    this.logger("info", `draining: no new tasks; waiting up to ${this.drainTimeout} ms for ${this.session?.running.size ?? 0} running`);
    const s = this.session;
    if (s === undefined) {
      this.stopCtl.abort();
      return;
    }
    this.startDrain(s);
  }

  /** Leaves at once: running tasks are handed back (they run again elsewhere) and aborted here. */
  async close(): Promise<void> {
    this.leaving = true;
    this.stopCtl.abort();
    const s = this.session;
    if (s !== undefined && !s.ended) await this.leave(s, "closed");
  }

  private stopped(): boolean {
    return this.stopCtl.signal.aborted || this.leaving;
  }

  private installSignals(): void {
    if (!this.handleSignals) return;
    let seen = 0;
    this.signalHandler = (sig) => {
      seen++;
      if (seen === 1) {
        this.logger("info", `${sig}: draining (a second signal leaves at once)`);
        this.drain();
        return;
      }
      this.logger("warn", `${sig} again: leaving at once`);
      this.exiting = true;
      const code = 128 + (sig === "SIGINT" ? 2 : 15);
      const bound = setTimeout(() => process.exit(code), 2000);
      void this.close().finally(() => {
        clearTimeout(bound);
        process.exit(code);
      });
    };
    process.on("SIGTERM", this.signalHandler);
    process.on("SIGINT", this.signalHandler);
  }

  private removeSignals(): void {
    if (this.signalHandler) {
      process.off("SIGTERM", this.signalHandler);
      process.off("SIGINT", this.signalHandler);
      this.signalHandler = undefined;
    }
  }

  /** Registers, trying the addresses in turn; undefined when the worker stopped meanwhile. */
  private async register(): Promise<Session | undefined> {
    const types = [...this.handlers.values()].map((h) => {
      const t: Record<string, unknown> = { type: h.type, version: h.opts.version };
      if (h.opts.description !== undefined) t["description"] = h.opts.description;
      if (h.opts.exampleInput !== undefined) t["example_input"] = h.opts.exampleInput;
      return t;
    });
    const body = { name: this.name, capacity: this.capacity, lease: this.lease, labels: this.labels, types };
    let pause = 100;
    let warned = 0;
    const n = this.conn.cfg.addrs.length;
    while (!this.stopped()) {
      const base = this.conn.addr;
      try {
        const res = await this.conn.once(base, "POST", "/v1/workers", { body, signal: this.stopCtl.signal });
        const r = (await readJSON(res, "POST /v1/workers")) as RegisterReply;
        if (typeof r?.id !== "string" || r.id === "") throw new TaskworkerError("POST /v1/workers: the answer has no session ID", "invalid_answer", res.status);
        const s = new Session(r.id, base, r.node ?? "", r.lease ?? this.lease, r.poll_wait ?? "");
        this.logger("info", `registered with node ${s.node || "?"} at ${base}: ${this.handlers.size} task type(s), capacity ${this.capacity}`);
        return s;
      } catch (e) {
        if (this.stopped()) return undefined;
        if (e instanceof InvalidInputError || e instanceof PermissionDeniedError || e instanceof NotFoundError) {
          // Sending it again, anywhere, gets the same answer.
          this.fatal = e;
          return undefined;
        }
        let wait = pause;
        if (e instanceof RateLimitedError && e.retryAfter !== undefined) wait = e.retryAfter * 1000;
        if (e instanceof ConnectionError || e instanceof UnavailableError) {
          if (n > 1) this.conn.advance();
        } else if (!(e instanceof ConflictError || e instanceof RateLimitedError)) {
          this.fatal = e as Error;
          return undefined;
        }
        // A conflict is the name's earlier session, whose lease is still running out.
        if (Date.now() - warned > 5000) {
          this.logger("warn", `register: ${(e as Error).message}; trying again`);
          warned = Date.now();
        }
        try {
          await sleep(wait, this.stopCtl.signal);
        } catch {
          return undefined;
        }
        pause = Math.min(pause * 2, 2000);
      }
    }
    return undefined;
  }

  /** Polls the host until the session ends; every poll renews the lease. */
  private async pollLoop(s: Session): Promise<void> {
    if (this.draining) this.startDrain(s);
    let lastOk = Date.now();
    let pause = 20;
    // lastOk is also when the poll below was sent: a poll goes out right after the last answer.
    while (!s.ended) {
      if (s.draining && this.drainDone(s)) {
        await this.leave(s, s.running.size === 0 ? "drained" : "drain timed out");
        return;
      }
      const ctl = new AbortController();
      s.pollCtl = ctl;
      // A poll is held at most poll_wait; one that takes much longer than the lease is dead.
      const timeout = AbortSignal.timeout(s.pollWaitMs + s.leaseMs + 1000);
      const sig = anySignal([ctl.signal, timeout]);
      try {
        const res = await this.conn.once(s.base, "POST", s.path + "/poll", { body: { wait: formatDuration(s.pollWaitMs) }, signal: sig.signal });
        const reply = (await readJSON(res, "POST poll")) as PollReply | null;
        const took = Date.now() - lastOk;
        lastOk = Date.now();
        pause = 20;
        const r = reply ?? {};
        if (!s.ended) this.handlePoll(s, r);
        // A host that answers empty polls at once (while draining, say) is not polled in a tight loop.
        if (took < 10 && !r.assignments?.length && !r.cancel?.length) await sleep(Math.min(50, s.leaseMs / 10));
      } catch (e) {
        if (s.ended) return;
        if (e instanceof NotFoundError) {
          this.lose(s, "the host no longer knows this session (lease lost, or the host restarted)");
          return;
        }
        if (e instanceof PermissionDeniedError) {
          this.fatal = e;
          this.lose(s, "the token may no longer work on these task types", "fatal");
          return;
        }
        if (Date.now() - lastOk > s.leaseMs) {
          this.lose(s, `no poll answered within the lease: ${(e as Error).message}`);
          return;
        }
        await sleep(pause).catch(() => undefined);
        pause = Math.min(pause * 2, 200);
      } finally {
        sig.dispose();
      }
    }
  }

  private handlePoll(s: Session, reply: PollReply): void {
    for (const c of reply.cancel ?? []) {
      const at = s.running.get(attemptKey(c.task_id, c.attempt));
      if (at && !at.finished) {
        at.cancelRequested = true;
        at.ctl.abort(new DOMException("the task was cancelled", "AbortError"));
      }
    }
    if (reply.draining) s.hostDraining = true;
    for (const a of reply.assignments ?? []) this.start(s, a);
  }

  private startDrain(s: Session): void {
    if (s.draining) return;
    s.draining = true;
    void this.conn
      .once(s.base, "POST", s.path + "/drain", { body: {} })
      .then((res) => readJSON(res, "POST drain"))
      .catch((e: unknown) => {
        if (!s.ended) this.logger("warn", `drain: ${(e as Error).message}`);
      });
    if (s.running.size === 0) void this.leave(s, "drained");
  }

  private drainDone(s: Session): boolean {
    if (s.running.size === 0) return true;
    if (Date.now() < this.drainDeadline) return false;
    for (const at of s.running.values()) at.ctl.abort(new DOMException("the worker's drain ran out of time", "AbortError"));
    return true;
  }

  /** Ends the session at the host: what still runs is handed back. */
  private async leave(s: Session, why: string): Promise<void> {
    if (s.ended) return;
    const handedBack = s.running.size;
    this.dropAll(s, new AttemptLostError("the worker left"));
    s.ended = true;
    s.pollCtl.abort();
    try {
      const res = await this.conn.once(s.base, "DELETE", s.path, { signal: AbortSignal.timeout(5000) });
      await readJSON(res, "DELETE worker");
    } catch (e) {
      if (!(e instanceof NotFoundError)) this.logger("warn", `leave: ${(e as Error).message}`);
    }
    this.logger("info", `left (${why}${handedBack > 0 ? `, ${handedBack} task(s) handed back` : ""})`);
    s.endWith("left");
  }

  /** The session is gone: its attempts are dropped and nothing more about them is sent. */
  private lose(s: Session, why: string, how: "lost" | "fatal" = "lost"): void {
    if (s.ended) return;
    s.ended = true;
    this.dropAll(s, new AttemptLostError(`the worker's session ended: ${why}`));
    this.logger(how === "fatal" ? "error" : "warn", `session lost: ${why}${how === "lost" && !this.stopped() ? "; registering again" : ""}`);
    s.endWith(how);
  }

  private dropAll(s: Session, reason: Error): void {
    for (const at of s.running.values()) this.drop(at, reason);
    s.running.clear();
    this.queue = this.queue.filter((q) => {
      if (q.ev.kind === "log") return false;
      q.done?.(reason);
      return false;
    });
  }

  private drop(at: Attempt, reason: Error): void {
    at.dropped = true;
    at.session.running.delete(at.key);
    if (!at.ctl.signal.aborted) at.ctl.abort(reason);
  }

  /** Starts an assignment's handler. */
  private start(s: Session, a: Assignment): void {
    const at = new Attempt(a, s);
    if (s.running.has(at.key)) return; // delivered once; a repeat changes nothing
    s.running.set(at.key, at);
    const h = this.handlers.get(`${a.type}\u0000${a.version || "1"}`);
    if (h === undefined) {
      this.finish(at, { kind: "failed", error: { type: "UnknownTaskType", message: `this worker has no handler for ${a.type} version ${a.version}`, final: true } });
      return;
    }
    const timeoutMs = a.timeout ? parseDuration(a.timeout) : 0;
    if (timeoutMs > 0) {
      at.deadline = Date.now() + timeoutMs;
      this.ensureSweep();
    }
    const ctx = this.context(at);
    let out: Promise<unknown>;
    try {
      out = Promise.resolve(h.fn(ctx, a.input));
    } catch (e) {
      out = Promise.reject(e);
    }
    out.then(
      (result) => this.settle(at, { ok: true, result }),
      (err: unknown) => this.settle(at, { ok: false, err }),
    );
  }

  private context(at: Attempt): TaskContext {
    const a = at.a;
    const write = (stream: "stdout" | "stderr" | "log", text: string, level?: string) => {
      if (at.finished || at.dropped) return;
      const lines = String(text).split(/\r?\n/);
      if (lines.length > 1 && lines[lines.length - 1] === "") lines.pop();
      for (let line of lines) {
        if (line.length > maxLogLine) line = line.slice(0, maxLogLine) + "…";
        const ev: WorkerEvent = { task_id: a.task_id, attempt: a.attempt, kind: "log", stream, line };
        if (level !== undefined) ev.level = level;
        this.enqueue(ev, false);
      }
    };
    let last: unknown = a.checkpoint ?? null;
    const children: Record<string, ChildResult> = {};
    for (const c of a.children ?? []) children[c.id] = c;
    const submitted: string[] = [];
    const finishedChild = (c: ChildResult | undefined) =>
      c !== undefined && (c.state === "succeeded" || c.state === "failed" || c.state === "cancelled" || c.state === "");
    return {
      resumed: a.resumed === true,
      childResults: children,
      submit: async (type, input = null, opts = {}) => {
        const body: Record<string, unknown> = { type, input: input === undefined ? null : input, parent_id: a.task_id, execution_id: a.execution_id || a.task_id };
        if (opts.idempotencyKey) body["idempotency_key"] = opts.idempotencyKey;
        if (opts.version) body["version"] = opts.version;
        if (opts.maxAttempts !== undefined) body["max_attempts"] = opts.maxAttempts;
        if (opts.timeout) body["timeout"] = opts.timeout;
        const t = await this.conn.json<{ id: string }>("POST", "/v1/tasks", { body, idempotent: (opts.idempotencyKey ?? "") !== "" });
        submitted.push(t.id);
        return t.id;
      },
      waitChildren: (ids) => {
        const want = [...new Set(ids ?? [...submitted, ...Object.keys(children)])].sort();
        if (!want.every((id) => finishedChild(children[id]))) throw new WaitingForChildren(want);
        const out: Record<string, ChildResult> = {};
        for (const id of want) out[id] = children[id] as ChildResult;
        return out;
      },
      taskId: a.task_id,
      attempt: a.attempt,
      type: a.type,
      version: a.version,
      timeout: a.timeout ?? "",
      get lastCheckpoint() {
        return last;
      },
      signal: at.ctl.signal,
      get cancelled() {
        return at.ctl.signal.aborted;
      },
      log: (message, level = "info") => write("log", message, level),
      stdout: (text) => write("stdout", text),
      stderr: (text) => write("stderr", text),
      checkpoint: (value) =>
        new Promise<void>((resolve, reject) => {
          if (at.dropped) return reject(new AttemptLostError(`attempt ${a.attempt} of ${a.task_id} is no longer this worker's`));
          if (at.finished) return reject(new Error("checkpoint after the task's outcome"));
          const ev: WorkerEvent = { task_id: a.task_id, attempt: a.attempt, kind: "checkpoint", checkpoint: value === undefined ? null : value };
          const size = eventSize(ev);
          if (size > maxEventsBytes) return reject(new RangeError(`checkpoint of ${size} bytes is over the ${maxEventsBytes}-byte limit`));
          this.enqueue(ev, true, (r) => {
            if (r instanceof Error) reject(r);
            else if (r.ok) {
              last = ev.checkpoint;
              resolve();
            } else if (r.code === "stale_attempt") reject(new AttemptLostError(r.error ?? "stale attempt"));
            else reject(new TaskworkerError(`checkpoint refused: ${r.error ?? ""}`, r.code ?? "refused", 200));
          });
        }),
    };
  }

  /** A handler has returned or thrown: its outcome is reported at once. */
  private settle(at: Attempt, out: { ok: true; result: unknown } | { ok: false; err: unknown }): void {
    if (at.dropped || at.finished) return;
    if (at.cancelRequested) {
      this.finish(at, { kind: "cancelled" });
      return;
    }
    if (out.ok) {
      const result = out.result === undefined ? null : out.result;
      let size: number;
      try {
        size = eventSize({ task_id: at.a.task_id, attempt: at.a.attempt, kind: "succeeded", result });
      } catch (e) {
        this.finish(at, { kind: "failed", error: { type: "ResultNotJSON", message: `the result cannot be sent as JSON: ${(e as Error).message}`, final: true } });
        return;
      }
      if (size > maxEventsBytes) {
        this.finish(at, { kind: "failed", error: { type: "ResultTooLarge", message: `the result is ${size} bytes, over the ${maxEventsBytes}-byte limit`, final: true } });
        return;
      }
      this.finish(at, { kind: "succeeded", result });
      return;
    }
    if (out.err instanceof WaitingForChildren && !at.ctl.signal.aborted) {
      this.finish(at, { kind: "wait_children", children: out.err.children });
      return;
    }
    this.finish(at, { kind: "failed", error: describeError(out.err, at) });
  }

  /** Queues an attempt's outcome; the attempt stays counted until the cluster has it. */
  private finish(at: Attempt, o: Pick<WorkerEvent, "kind" | "result" | "error" | "children">): void {
    at.finished = true;
    const ev: WorkerEvent = { task_id: at.a.task_id, attempt: at.a.attempt, ...o };
    this.enqueue(ev, true, () => {
      const s = at.session;
      s.running.delete(at.key);
      // A drain ends with the last outcome; the poll in flight is left alone, as it may carry
      // assignments, which leaving hands back.
      if (s.draining && s.running.size === 0) void this.leave(s, "drained");
    });
  }

  private ensureSweep(): void {
    if (this.sweepTimer !== undefined) return;
    // One timer for every attempt with a deadline, only while there are such attempts.
    this.sweepTimer = setInterval(() => {
      const s = this.session;
      const now = Date.now();
      let any = false;
      for (const at of s?.running.values() ?? []) {
        if (at.deadline === 0 || at.finished) continue;
        any = true;
        if (now >= at.deadline && !at.timedOut) {
          at.timedOut = true;
          at.ctl.abort(new DOMException(`the task timed out after ${at.a.timeout}`, "TimeoutError"));
        }
      }
      if (!any) {
        clearInterval(this.sweepTimer);
        this.sweepTimer = undefined;
      }
    }, 100);
    this.sweepTimer.unref();
  }

  /** Queues an event: logs travel within logBatchDelay, the rest at once. */
  private enqueue(ev: WorkerEvent, urgent: boolean, done?: (r: EventResult | Error) => void): void {
    const q: Queued = { ev, size: eventSize(ev) };
    if (done) q.done = done;
    this.queue.push(q);
    if (urgent) {
      if (!this.flushSoon) {
        this.flushSoon = true;
        // Outcomes of the same turn of the event loop travel together.
        setImmediate(() => {
          this.flushSoon = false;
          void this.flush();
        });
      }
    } else if (this.flushTimer === undefined && !this.flushSoon) {
      this.flushTimer = setTimeout(() => {
        this.flushTimer = undefined;
        void this.flush();
      }, logBatchDelay);
    }
  }

  /** Sends queued events, one call at a time so a task's events apply in order. */
  private async flush(): Promise<void> {
    if (this.sending) return;
    this.sending = true;
    clearTimeout(this.flushTimer);
    this.flushTimer = undefined;
    try {
      while (this.queue.length > 0) {
        const s = this.session;
        if (s === undefined || s.ended) return; // dropped with the session
        let bytes = 0;
        let n = 0;
        while (n < this.queue.length && n < maxEventsPerCall) {
          const size = this.queue[n]?.size ?? 0;
          if (n > 0 && bytes + size > maxEventsBytes) break;
          bytes += size;
          n++;
        }
        const batch = this.queue.slice(0, n);
        let results: EventResult[];
        try {
          results = await this.post(s, batch.map((q) => q.ev));
        } catch (e) {
          if (s.ended) return;
          if (e instanceof NotFoundError) {
            this.lose(s, "the host no longer knows this session");
            return;
          }
          if (e instanceof PermissionDeniedError) {
            this.fatal = e;
            this.lose(s, "the token may no longer work on these task types", "fatal");
            return;
          }
          if (e instanceof InvalidInputError) {
            // Sending the batch again gets the same answer: its events are given up.
            this.logger("error", `events refused: ${e.message}`);
            this.queue.splice(0, n);
            for (const q of batch) q.done?.(e);
            continue;
          }
          // The host is unreachable or busy: the poll loop finds out whether it is gone.
          await sleep(50);
          continue;
        }
        this.queue.splice(0, n);
        const again: Queued[] = [];
        for (let i = 0; i < batch.length; i++) {
          const q = batch[i];
          if (q === undefined) continue;
          const r = results[i] ?? { ok: false, code: "no_result", error: "the host sent no result for this event" };
          if (!r.ok && r.code === "no_leader" && isOutcome(q.ev)) {
            // Not recorded yet (the cluster has no leader): the attempt keeps its slot and its
            // outcome is reported again.
            again.push(q);
            continue;
          }
          if (!r.ok && r.code === "stale_attempt") {
            const at = s.running.get(attemptKey(q.ev.task_id, q.ev.attempt));
            if (at) this.drop(at, new AttemptLostError(r.error ?? "stale attempt"));
            this.queue = this.queue.filter((x) => x.ev.task_id !== q.ev.task_id || x.ev.attempt !== q.ev.attempt || (x.done?.(new AttemptLostError("stale attempt")), false));
          } else if (!r.ok && q.ev.kind !== "log") {
            this.logger("warn", `${q.ev.kind} of ${q.ev.task_id} attempt ${q.ev.attempt} refused: ${r.code ?? ""} ${r.error ?? ""}`);
          }
          q.done?.(r);
        }
        if (again.length > 0) this.reportAgain(s, again);
      }
    } finally {
      this.sending = false;
    }
  }

  /** Queues outcomes again after reportAgainDelay, unless their session has ended by then. */
  private reportAgain(s: Session, again: Queued[]): void {
    this.logger("warn", `${again.length} outcome(s) not recorded yet (no leader): reporting again in ${reportAgainDelay} ms`);
    setTimeout(() => {
      if (s.ended || this.session !== s) {
        for (const q of again) q.done?.(new AttemptLostError("the worker's session ended before its outcome was recorded"));
        return;
      }
      this.queue.unshift(...again);
      void this.flush();
    }, reportAgainDelay);
  }

  private async post(s: Session, events: WorkerEvent[]): Promise<EventResult[]> {
    const res = await this.conn.once(s.base, "POST", s.path + "/events", { body: { events }, signal: AbortSignal.timeout(s.leaseMs * 10 + 10000) });
    const body = (await readJSON(res, "POST events")) as { results?: EventResult[] } | null;
    return body?.results ?? [];
  }
}

function isOutcome(ev: WorkerEvent): boolean {
  return ev.kind === "succeeded" || ev.kind === "failed" || ev.kind === "cancelled" || ev.kind === "wait_children";
}

/** The byte size of an event as JSON; it throws for a value JSON cannot carry. */
function eventSize(ev: WorkerEvent): number {
  const s = JSON.stringify(ev);
  if (s === undefined) throw new TypeError("not JSON");
  return Buffer.byteLength(s, "utf8");
}

/** A handler's error as the task's error: its name is the type; FinalError (or a subclass) is final. */
export function describeError(err: unknown, at?: { timedOut: boolean; a: { timeout: string } }): { type: string; message: string; final: boolean } {
  if (at?.timedOut) return { type: "TimeoutError", message: `the task timed out after ${at.a.timeout}`, final: false };
  if (err instanceof Error) {
    return { type: err.name || "Error", message: err.message.slice(0, 8192), final: err instanceof FinalError };
  }
  let message: string;
  try {
    message = typeof err === "string" ? err : JSON.stringify(err) ?? String(err);
  } catch {
    message = String(err);
  }
  return { type: "Error", message: message.slice(0, 8192), final: false };
}

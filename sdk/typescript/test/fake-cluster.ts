/**
 * TEST DOUBLE: a small in-process HTTP server on 127.0.0.1 that speaks the task API and the worker
 * protocol of docs/workers.md, for the SDK's protocol tests. It is not taskworker: one process,
 * no raft, placement by first free worker. The integration tests run the real binary.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";

export interface FakeTask {
  id: string;
  type: string;
  version: string;
  input: unknown;
  state: string;
  node: string;
  attempt: number;
  max_attempts: number;
  timeout: string;
  result: unknown;
  error: { type: string; message: string; final?: boolean } | null;
  idempotency_key: string;
  created_at: string;
  started_at: string | null;
  finished_at: string | null;
  modify_index: number;
  history: { attempt: number; node: string; event: string; at: string; error?: string }[];
  checkpoint: unknown;
  pending_reason?: string;
  worker?: string; // session id running it
  parent_id?: string;
  execution_id?: string;
  wait_for?: string[];
  resume_children?: unknown[]; // the children its next assignment resumes with
}

interface Session {
  id: string;
  name: string;
  capacity: number;
  leaseMs: number;
  types: { type: string; version: string }[];
  running: Set<string>; // task ids
  assignments: unknown[];
  cancels: { task_id: string; attempt: number }[];
  draining: boolean;
  pollsInFlight: number;
  lastSeen: number;
  wake?: () => void;
  gone: boolean;
}

export interface Recorded {
  method: string;
  path: string;
  body: unknown;
  auth: string | undefined;
}

/** Hooks a test sets to make the double misbehave: return a status for a request, or undefined. */
export type Fault = (method: string, path: string, body: unknown) => { status: number; body: unknown } | undefined;

export class FakeCluster {
  readonly tasks = new Map<string, FakeTask>();
  readonly logs = new Map<string, { ts: string; attempt: number; node: string; stream: string; level: string; line: string }[]>();
  readonly sessions = new Map<string, Session>();
  readonly requests: Recorded[] = [];
  fault: Fault | undefined;
  /** When set, every request must carry this bearer token. */
  token = "";
  private server: Server;
  private seq = 0;
  private index = 1;
  private changed: (() => void)[] = [];
  private sweeper: NodeJS.Timeout;
  url = "";

  constructor() {
    this.server = createServer((req, res) => void this.handle(req, res));
    this.sweeper = setInterval(() => this.expireLeases(), 50);
  }

  async start(): Promise<string> {
    await new Promise<void>((r) => this.server.listen(0, "127.0.0.1", r));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
    return this.url;
  }

  async stop(): Promise<void> {
    clearInterval(this.sweeper);
    for (const s of this.sessions.values()) s.wake?.();
    this.server.closeAllConnections();
    await new Promise<void>((r) => this.server.close(() => r()));
  }

  /** Requests whose path matches. */
  calls(method: string, pathPart: string): Recorded[] {
    return this.requests.filter((r) => r.method === method && r.path.includes(pathPart));
  }

  /** Waits until cond holds, polling; throws after the deadline. */
  async until(cond: () => boolean, what: string, ms = 10000): Promise<void> {
    const end = Date.now() + ms;
    while (!cond()) {
      if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
      await new Promise((r) => setTimeout(r, 5));
    }
  }

  submit(type: string, input: unknown, opts: { version?: string; max_attempts?: number; timeout?: string; idempotency_key?: string } = {}): FakeTask {
    const id = `t${String(++this.seq).padStart(4, "0")}`;
    const t: FakeTask = {
      id,
      type,
      version: opts.version ?? "1",
      input,
      state: "pending",
      node: "",
      attempt: 0,
      max_attempts: opts.max_attempts ?? 3,
      timeout: opts.timeout ?? "",
      result: null,
      error: null,
      idempotency_key: opts.idempotency_key ?? "",
      created_at: new Date().toISOString(),
      started_at: null,
      finished_at: null,
      modify_index: 0,
      history: [],
      checkpoint: null,
    };
    this.tasks.set(id, t);
    this.logs.set(id, []);
    this.touch(t);
    this.place();
    return t;
  }

  private touch(t: FakeTask): void {
    t.modify_index = ++this.index;
    const w = this.changed;
    this.changed = [];
    for (const f of w) f();
  }

  private place(): void {
    for (const t of this.tasks.values()) {
      if (t.state !== "pending") continue;
      const s = [...this.sessions.values()].find(
        (s) => !s.gone && !s.draining && s.running.size < s.capacity && s.types.some((x) => x.type === t.type && x.version === t.version),
      );
      if (!s) {
        t.pending_reason = `no node or worker offers "${t.type}" version "${t.version}"`;
        continue;
      }
      delete t.pending_reason;
      t.attempt++;
      t.state = "running";
      t.node = s.name;
      t.worker = s.id;
      t.started_at = new Date().toISOString();
      t.history.push({ attempt: t.attempt, node: s.name, event: "started", at: t.started_at });
      s.running.add(t.id);
      s.assignments.push({
        task_id: t.id,
        attempt: t.attempt,
        type: t.type,
        version: t.version,
        input: t.input,
        checkpoint: t.checkpoint,
        timeout: t.timeout,
        execution_id: "e" + t.id,
        ...(t.resume_children ? { resumed: true, children: t.resume_children } : {}),
      });
      this.touch(t);
      s.wake?.();
    }
  }

  private interrupt(s: Session): void {
    for (const id of s.running) {
      const t = this.tasks.get(id);
      if (!t) continue;
      t.state = "pending";
      t.worker = undefined;
      t.history.push({ attempt: t.attempt, node: s.name, event: "interrupted", at: new Date().toISOString() });
      this.touch(t);
    }
    s.running.clear();
  }

  /** Makes a waiting task pending again, its next assignment resumed with children (the server does this when the last child finishes). */
  resume(id: string, children: unknown[]): void {
    const t = this.tasks.get(id);
    if (!t || t.state !== "waiting") throw new Error(`task ${id} is not waiting`);
    t.state = "pending";
    t.resume_children = children;
    t.history.push({ attempt: t.attempt, node: "", event: "resumed", at: new Date().toISOString() });
    this.touch(t);
    this.place();
  }

  /** Takes a session down as a lost lease does: its tasks go back to pending and are placed again. */
  loseSession(id: string): void {
    const s = this.sessions.get(id);
    if (!s || s.gone) return;
    s.gone = true;
    this.interrupt(s);
    s.wake?.();
    this.place();
  }

  private expireLeases(): void {
    const now = Date.now();
    for (const s of this.sessions.values()) {
      if (!s.gone && s.pollsInFlight === 0 && now - s.lastSeen > s.leaseMs) this.loseSession(s.id);
    }
  }

  cancel(id: string): void {
    const t = this.tasks.get(id);
    if (!t) return;
    if (t.state === "pending") {
      t.state = "cancelled";
      t.finished_at = new Date().toISOString();
      this.touch(t);
      return;
    }
    if (t.state === "running" && t.worker) {
      const s = this.sessions.get(t.worker);
      s?.cancels.push({ task_id: t.id, attempt: t.attempt });
      s?.wake?.();
    }
  }

  private applyEvent(s: Session, ev: Record<string, unknown>): { ok: boolean; code?: string; error?: string } {
    const t = this.tasks.get(String(ev["task_id"]));
    if (!t || t.worker !== s.id || t.attempt !== ev["attempt"] || t.state !== "running") {
      return { ok: false, code: "stale_attempt", error: `attempt ${String(ev["attempt"])} of ${String(ev["task_id"])} is no longer this worker's` };
    }
    const now = new Date().toISOString();
    const end = (state: string) => {
      t.state = state;
      t.finished_at = now;
      t.worker = undefined;
      s.running.delete(t.id);
    };
    switch (ev["kind"]) {
      case "log":
        this.logs.get(t.id)?.push({ ts: now, attempt: t.attempt, node: s.name, stream: String(ev["stream"]), level: String(ev["level"] ?? ""), line: String(ev["line"]) });
        break;
      case "checkpoint":
        t.checkpoint = ev["checkpoint"];
        break;
      case "succeeded":
        t.result = ev["result"] ?? null;
        end("succeeded");
        t.history.push({ attempt: t.attempt, node: s.name, event: "succeeded", at: now });
        break;
      case "failed": {
        const e = ev["error"] as { type: string; message: string; final?: boolean };
        t.error = e;
        t.history.push({ attempt: t.attempt, node: s.name, event: "failed", at: now, error: e.message });
        if (e.final || t.attempt >= t.max_attempts) end("failed");
        else {
          t.state = "pending";
          t.worker = undefined;
          s.running.delete(t.id);
        }
        break;
      }
      case "cancelled":
        end("cancelled");
        break;
      case "wait_children":
        t.state = "waiting";
        t.worker = undefined;
        t.wait_for = ev["children"] as string[];
        s.running.delete(t.id);
        t.history.push({ attempt: t.attempt, node: s.name, event: "waiting", at: now });
        break;
      default:
        return { ok: false, code: "invalid_event", error: "unknown kind" };
    }
    this.touch(t);
    return { ok: true };
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const text = Buffer.concat(chunks).toString("utf8");
    let body: unknown = null;
    if (text !== "") {
      try {
        body = JSON.parse(text);
      } catch {
        return send(res, 400, { error: "bad JSON", code: "invalid_request" });
      }
    }
    const u = new URL(req.url ?? "/", "http://x");
    const method = req.method ?? "GET";
    this.requests.push({ method, path: u.pathname + u.search, body, auth: req.headers.authorization });
    const f = this.fault?.(method, u.pathname, body);
    if (f) return send(res, f.status, f.body);
    if (this.token !== "" && req.headers.authorization !== `Bearer ${this.token}`) return send(res, 401, { error: "token needed", code: "unauthorized" });
    const parts = u.pathname.split("/").filter((p) => p !== "").map(decodeURIComponent);

    if (method === "POST" && u.pathname === "/v1/tasks") {
      const b = body as Record<string, unknown>;
      if (typeof b["type"] !== "string" || b["type"] === "") return send(res, 400, { error: "type is required", code: "missing_type" });
      const key = typeof b["idempotency_key"] === "string" ? b["idempotency_key"] : "";
      if (key !== "") {
        const old = [...this.tasks.values()].find((t) => t.idempotency_key === key);
        if (old) return send(res, 200, old);
      }
      const t = this.submit(b["type"], b["input"] ?? null, {
        version: (b["version"] as string) || "1",
        max_attempts: (b["max_attempts"] as number) || 3,
        timeout: (b["timeout"] as string) || "",
        idempotency_key: key,
      });
      if (typeof b["parent_id"] === "string") t.parent_id = b["parent_id"];
      if (typeof b["execution_id"] === "string") t.execution_id = b["execution_id"];
      return send(res, 201, t);
    }
    if (parts[0] === "v1" && parts[1] === "tasks" && parts.length >= 3) {
      const t = this.tasks.get(parts[2] ?? "");
      if (!t) return send(res, 404, { error: `task ${parts[2]} not found`, code: "not_found" });
      if (method === "GET" && parts.length === 3) {
        const wait = u.searchParams.get("wait");
        const index = Number(u.searchParams.get("index") ?? "0");
        if (wait && t.modify_index <= index) {
          await new Promise<void>((r) => {
            const timer = setTimeout(r, 2000);
            this.changed.push(() => {
              clearTimeout(timer);
              r();
            });
          });
        }
        return send(res, 200, t);
      }
      if (method === "POST" && parts[3] === "cancel") {
        this.cancel(t.id);
        return send(res, 202, { cancelled: true });
      }
      if (method === "GET" && parts[3] === "logs") {
        res.writeHead(200, { "Content-Type": "application/x-ndjson" });
        let sent = 0;
        const follow = u.searchParams.get("follow") === "true";
        for (;;) {
          const lines = this.logs.get(t.id) ?? [];
          for (; sent < lines.length; sent++) res.write(JSON.stringify(lines[sent]) + "\n");
          if (!follow || ["succeeded", "failed", "cancelled"].includes(t.state)) break;
          await new Promise<void>((r) => {
            const timer = setTimeout(r, 50);
            this.changed.push(() => {
              clearTimeout(timer);
              r();
            });
          });
        }
        res.end();
        return;
      }
    }
    if (method === "GET" && u.pathname === "/v1/tasks") {
      res.setHeader("X-Taskworker-Next", "");
      return send(res, 200, [...this.tasks.values()].reverse());
    }
    if (method === "GET" && u.pathname === "/v1/workers") {
      return send(
        res,
        200,
        [...this.sessions.values()].map((s) => ({ name: s.name, state: s.gone ? "down" : "up", capacity: s.capacity, running: s.running.size })),
      );
    }
    if (method === "POST" && u.pathname === "/v1/workers") {
      const b = body as Record<string, unknown>;
      const name = String(b["name"] ?? "");
      if (!/^[A-Za-z0-9._-]{1,64}$/.test(name)) return send(res, 400, { error: "bad name", code: "invalid_worker" });
      if ([...this.sessions.values()].some((s) => s.name === name && !s.gone)) return send(res, 409, { error: `worker ${name} exists`, code: "worker_exists" });
      const id = `sess-${++this.seq}-${Math.random().toString(36).slice(2)}`;
      const leaseMs = b["lease"] === "500ms" ? 500 : 1000;
      this.sessions.set(id, {
        id,
        name,
        capacity: Number(b["capacity"]),
        leaseMs,
        types: (b["types"] as { type: string; version?: string }[]).map((t) => ({ type: t.type, version: t.version ?? "1" })),
        running: new Set(),
        assignments: [],
        cancels: [],
        draining: false,
        pollsInFlight: 0,
        lastSeen: Date.now(),
        gone: false,
      });
      setImmediate(() => this.place());
      return send(res, 201, { id, name, node: "fake1", lease: b["lease"] ?? "1s", poll_wait: `${leaseMs / 2}ms` });
    }
    if (parts[0] === "v1" && parts[1] === "workers" && parts.length >= 3) {
      const s = this.sessions.get(parts[2] ?? "");
      if (!s || s.gone) return send(res, 404, { error: "unknown worker", code: "unknown_worker" });
      s.lastSeen = Date.now();
      if (method === "POST" && parts[3] === "poll") {
        s.pollsInFlight++;
        try {
          if (s.assignments.length === 0 && s.cancels.length === 0 && !s.draining) {
            await new Promise<void>((r) => {
              const timer = setTimeout(r, s.leaseMs / 2);
              s.wake = () => {
                clearTimeout(timer);
                r();
              };
            });
          }
        } finally {
          s.pollsInFlight--;
          s.lastSeen = Date.now();
          s.wake = undefined;
        }
        if (s.gone) return send(res, 404, { error: "unknown worker", code: "unknown_worker" });
        const reply = { assignments: s.assignments, cancel: s.cancels, draining: s.draining };
        s.assignments = [];
        s.cancels = [];
        return send(res, 200, reply);
      }
      if (method === "POST" && parts[3] === "events") {
        const evs = (body as { events: Record<string, unknown>[] }).events;
        const results = evs.map((ev) => this.applyEvent(s, ev));
        this.place();
        return send(res, 200, { results });
      }
      if (method === "POST" && parts[3] === "drain") {
        s.draining = true;
        s.wake?.();
        return send(res, 200, { draining: true });
      }
      if (method === "DELETE" && parts.length === 3) {
        s.gone = true;
        this.interrupt(s);
        this.place();
        return send(res, 200, { left: true });
      }
    }
    return send(res, 404, { error: `no route ${method} ${u.pathname}`, code: "not_found" });
  }
}

function send(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(text) });
  res.end(text);
}

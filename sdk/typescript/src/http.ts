import { resolveConfig, type ConnectionOptions, type ResolvedConfig } from "./config.js";
import { ConnectionError, errorFromResponse, TaskworkerError, UnavailableError } from "./errors.js";
import { FetchTransport, HttpsCATransport, TransportError, type RawResponse, type Transport } from "./transport.js";

export const userAgent = "taskworker-ts/0.1.0";

/** How much of an error answer is read: error bodies are one short JSON object. */
const maxErrorBody = 64 << 10;

/** Options of one request. */
export interface CallOptions {
  query?: Record<string, string | number | undefined>;
  body?: unknown;
  signal?: AbortSignal | undefined;
  /**
   * The request may be sent again to another node after a broken connection: it reads, or it
   * changes nothing a second time (an idempotency key, a cancel).
   */
  idempotent?: boolean;
}

/**
 * The connection to a cluster: its addresses, token and transport. It moves to the next address
 * when a node cannot be reached and stays there while that one answers.
 */
export class Conn {
  readonly cfg: ResolvedConfig;
  private readonly transport: Transport;
  private current = 0;

  constructor(opts: ConnectionOptions | ResolvedConfig = {}, transport?: Transport) {
    this.cfg = "addrs" in opts && Array.isArray(opts.addrs) ? (opts as ResolvedConfig) : resolveConfig(opts as ConnectionOptions);
    this.transport = transport ?? (this.cfg.ca !== "" ? new HttpsCATransport(this.cfg.ca) : new FetchTransport());
  }

  /** The address in use now. */
  get addr(): string {
    return this.cfg.addrs[this.current] ?? "";
  }

  /** The index of the address in use now. */
  get index(): number {
    return this.current;
  }

  /** Moves to the next address (after the node in use went away). */
  advance(): void {
    this.current = (this.current + 1) % this.cfg.addrs.length;
  }

  /**
   * Sends a request to the address in use, and to the next ones while a node cannot be reached
   * and resending is safe. It resolves with a 2xx answer and throws a TaskworkerError otherwise.
   */
  async call(method: string, path: string, opts: CallOptions = {}): Promise<RawResponse> {
    const n = this.cfg.addrs.length;
    let last: unknown;
    for (let i = 0; i < n; i++) {
      const idx = (this.current + i) % n;
      try {
        const res = await this.once(this.cfg.addrs[idx] ?? "", method, path, opts);
        this.current = idx;
        return res;
      } catch (e) {
        if (opts.signal?.aborted || n === 1 || !nodeGone(e, opts.idempotent ?? false)) throw e;
        last = e;
      }
    }
    throw last;
  }

  /** call, then the answer's body as JSON (null when empty). */
  async json<T>(method: string, path: string, opts: CallOptions = {}): Promise<T> {
    const res = await this.call(method, path, opts);
    return (await readJSON(res, `${method} ${path}`)) as T;
  }

  /** Sends one request to the node at base. */
  async once(base: string, method: string, path: string, opts: CallOptions = {}): Promise<RawResponse> {
    const what = `${method} ${path}`;
    let url = base + path;
    if (opts.query) {
      const q = new URLSearchParams();
      for (const [k, v] of Object.entries(opts.query)) if (v !== undefined && v !== "") q.set(k, String(v));
      const s = q.toString();
      if (s !== "") url += "?" + s;
    }
    const headers: Record<string, string> = { Accept: "application/json", "User-Agent": userAgent };
    let body: string | undefined;
    if (opts.body !== undefined) {
      body = JSON.stringify(opts.body);
      headers["Content-Type"] = "application/json";
    }
    if (this.cfg.token !== "") headers["Authorization"] = "Bearer " + this.cfg.token;
    let res: RawResponse;
    try {
      res = await this.transport.request({ method, url, headers, body, signal: opts.signal });
    } catch (e) {
      if (e instanceof TransportError) throw new ConnectionError(`${what} at ${base}: ${e.message}`, e);
      throw e;
    }
    if (res.status >= 200 && res.status < 300) return res;
    let text = "";
    try {
      text = await readText(res, maxErrorBody);
    } catch {
      // The status alone still says what happened.
    }
    throw errorFromResponse(what, res.status, text, res.header("Retry-After"), base);
  }
}

/**
 * Whether err says the node itself is gone, so another may take the request: it could not be
 * reached (and the request was not sent, or may be sent again), or it is shutting down.
 */
export function nodeGone(err: unknown, idempotent: boolean): boolean {
  if (err instanceof ConnectionError) {
    const cause = err.cause;
    return idempotent || (cause instanceof TransportError && cause.notSent);
  }
  return err instanceof UnavailableError && (err.code === "shutting_down" || err.code === "draining");
}

/** Reads at most limit bytes of a body as text; the rest is left unread. */
export async function readText(res: RawResponse, limit = Infinity): Promise<string> {
  const parts: Uint8Array[] = [];
  let size = 0;
  for await (const chunk of res.chunks()) {
    parts.push(chunk);
    size += chunk.byteLength;
    if (size >= limit) break;
  }
  return Buffer.concat(parts).toString("utf8");
}

/** Reads a body as JSON; an empty body is null. */
export async function readJSON(res: RawResponse, what: string): Promise<unknown> {
  let text: string;
  try {
    text = await readText(res);
  } catch (e) {
    throw new ConnectionError(`${what}: read answer: ${(e as Error).message}`, e);
  }
  if (text.trim() === "") return null;
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new TaskworkerError(`${what}: the answer is not JSON: ${(e as Error).message}`, "invalid_answer", res.status);
  }
}

/** Reads a body of JSON lines, yielding each parsed line as it arrives. */
export async function* readJSONLines(res: RawResponse, what: string): AsyncGenerator<unknown> {
  const dec = new TextDecoder();
  let buf = "";
  try {
    for await (const chunk of res.chunks()) {
      buf += dec.decode(chunk, { stream: true });
      let nl: number;
      while ((nl = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, nl).trim();
        buf = buf.slice(nl + 1);
        if (line !== "") yield parseLine(line, what);
      }
    }
  } catch (e) {
    if (e instanceof TaskworkerError) throw e;
    throw new ConnectionError(`${what}: stream broke: ${(e as Error).message}`, e);
  }
  buf += dec.decode();
  if (buf.trim() !== "") yield parseLine(buf.trim(), what);
}

function parseLine(line: string, what: string): unknown {
  try {
    return JSON.parse(line);
  } catch (e) {
    throw new TaskworkerError(`${what}: a line is not JSON: ${(e as Error).message}`, "invalid_answer", 200);
  }
}

/** A signal aborted when any of the given ones is; dispose() stops listening. */
export function anySignal(signals: (AbortSignal | undefined)[]): { signal: AbortSignal; dispose: () => void } {
  const ctl = new AbortController();
  const live = signals.filter((s): s is AbortSignal => s !== undefined);
  const onAbort = (s: AbortSignal) => () => ctl.abort(s.reason);
  const hooks: [AbortSignal, () => void][] = [];
  for (const s of live) {
    if (s.aborted) {
      ctl.abort(s.reason);
      break;
    }
    const h = onAbort(s);
    s.addEventListener("abort", h, { once: true });
    hooks.push([s, h]);
  }
  return {
    signal: ctl.signal,
    dispose: () => {
      for (const [s, h] of hooks) s.removeEventListener("abort", h);
    },
  };
}

/** Resolves after ms, or rejects with the signal's reason when it aborts first. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason);
      return;
    }
    const onAbort = () => {
      clearTimeout(t);
      reject(signal?.reason);
    };
    const t = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/** Go duration text ("1.5s", "1m30s", "500ms") as milliseconds; NaN when it is not one. */
export function parseDuration(s: string): number {
  const units: Record<string, number> = { ns: 1e-6, us: 1e-3, "µs": 1e-3, ms: 1, s: 1000, m: 60000, h: 3600000 };
  if (s === "0") return 0;
  const re = /(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)/gy;
  let total = 0;
  let pos = 0;
  let m: RegExpExecArray | null;
  while ((m = re.exec(s)) !== null) {
    total += Number(m[1]) * (units[m[2] ?? ""] ?? NaN);
    pos = re.lastIndex;
  }
  return pos === s.length && pos > 0 ? total : NaN;
}

/** Milliseconds as Go duration text; a string passes through unchanged. */
export function formatDuration(d: number | string): string {
  if (typeof d === "string") return d;
  if (!Number.isFinite(d) || d < 0) throw new RangeError(`a duration must be a non-negative number of milliseconds, not ${d}`);
  return `${Math.round(d)}ms`;
}

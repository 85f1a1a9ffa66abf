import * as https from "node:https";
import type { IncomingMessage } from "node:http";

/** One HTTP request as the SDK sends it. */
export interface RawRequest {
  method: string;
  url: string;
  headers: Record<string, string>;
  body?: string;
  signal?: AbortSignal;
}

/** An answer whose body has not been read yet. */
export interface RawResponse {
  status: number;
  header(name: string): string | null;
  /** The body's chunks as they arrive. */
  chunks(): AsyncIterable<Uint8Array>;
}

/**
 * A request that got no answer. `notSent` is true when the request certainly did not reach the
 * server (the connection was refused, the name did not resolve, or a pooled connection was
 * found closed before the request went out): sending it again, anywhere, is then safe.
 */
export class TransportError extends Error {
  readonly notSent: boolean;
  constructor(message: string, cause: unknown, notSent: boolean) {
    super(message, { cause });
    this.name = "TransportError";
    this.notSent = notSent;
  }
}

/** Sends requests; keeps connections alive between them. */
export interface Transport {
  request(req: RawRequest): Promise<RawResponse>;
}

/** Error codes that say a connection was never made, so nothing was sent. */
const connectCodes = new Set([
  "ECONNREFUSED",
  "ENOTFOUND",
  "EAI_AGAIN",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "EADDRNOTAVAIL",
  "UND_ERR_CONNECT_TIMEOUT",
]);

function errorCode(e: unknown): string {
  let cur: unknown = e;
  for (let i = 0; i < 4 && cur !== null && typeof cur === "object"; i++) {
    const code = (cur as { code?: unknown }).code;
    if (typeof code === "string") return code;
    cur = (cur as { cause?: unknown }).cause;
  }
  return "";
}

function describe(e: unknown): string {
  const code = errorCode(e);
  let msg = e instanceof Error ? e.message : String(e);
  const cause = e instanceof Error ? e.cause : undefined;
  if (cause instanceof Error && cause.message !== "" && !msg.includes(cause.message)) msg += `: ${cause.message}`;
  return code !== "" && !msg.includes(code) ? `${msg} (${code})` : msg;
}

/** Node's built-in fetch; it keeps connections alive and verifies HTTPS against Node's trust. */
export class FetchTransport implements Transport {
  async request(req: RawRequest): Promise<RawResponse> {
    let res: Response;
    try {
      res = await fetch(req.url, { method: req.method, headers: req.headers, body: req.body, signal: req.signal });
    } catch (e) {
      if (req.signal?.aborted) throw req.signal.reason;
      throw new TransportError(describe(e), e, connectCodes.has(errorCode(e)));
    }
    const body = res.body;
    return {
      status: res.status,
      header: (name) => res.headers.get(name),
      chunks: () => body ?? emptyBody(),
    };
  }
}

/**
 * node:https with a keep-alive Agent that trusts only the given CA. Node's fetch cannot take a CA
 * without the undici package, which the SDK does not depend on.
 */
export class HttpsCATransport implements Transport {
  private readonly agent: https.Agent;

  constructor(ca: string) {
    this.agent = new https.Agent({ ca, keepAlive: true, minVersion: "TLSv1.2" });
  }

  request(req: RawRequest): Promise<RawResponse> {
    return new Promise<RawResponse>((resolve, reject) => {
      let r: ReturnType<typeof https.request>;
      try {
        r = https.request(req.url, { method: req.method, headers: req.headers, agent: this.agent, signal: req.signal });
      } catch (e) {
        reject(new TransportError(describe(e), e, true));
        return;
      }
      r.on("response", (res: IncomingMessage) => {
        resolve({
          status: res.statusCode ?? 0,
          header: (name) => {
            const v = res.headers[name.toLowerCase()];
            return v === undefined ? null : Array.isArray(v) ? v.join(", ") : v;
          },
          chunks: () => res,
        });
      });
      r.on("error", (e) => {
        if (req.signal?.aborted) {
          reject(req.signal.reason);
          return;
        }
        const code = errorCode(e);
        // A pooled connection the server closed while idle fails at once with a reset; the
        // request never reached it.
        const notSent = connectCodes.has(code) || (r.reusedSocket && code === "ECONNRESET");
        reject(new TransportError(describe(e), e, notSent));
      });
      r.end(req.body);
    });
  }

  close(): void {
    this.agent.destroy();
  }
}

async function* emptyBody(): AsyncIterable<Uint8Array> {
  // No body.
}

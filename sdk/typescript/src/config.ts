import { readFileSync } from "node:fs";
import { ConfigError } from "./errors.js";

/** Where the SDK connects and with what. Every field falls back to the environment. */
export interface ConnectionOptions {
  /**
   * One node's HTTP address, or several: a URL (`http://127.0.0.1:7948`, `https://n1:7948`), a
   * bare `host:port`, a comma-separated list, or an array. The next address is tried when one
   * cannot be reached. Default: `TASKWORKER_ADDR`, else `http://127.0.0.1:7948`.
   */
  addr?: string | readonly string[];
  /** Bearer token. Default: `TASKWORKER_TOKEN`, else the first line of `TASKWORKER_TOKEN_FILE`. */
  token?: string;
  /**
   * PEM file of the CA that signed the nodes' HTTPS certificates; only those CAs are trusted.
   * Default: `TASKWORKER_CA_FILE`. Bare `host:port` addresses then mean HTTPS.
   */
  caFile?: string;
  /** The environment to read instead of `process.env` (for tests). */
  env?: Readonly<Record<string, string | undefined>>;
}

/** Options resolved against the environment and checked. */
export interface ResolvedConfig {
  /** Base URLs without a trailing slash, in the order to try them. */
  addrs: string[];
  token: string;
  /** The CA file's PEM text, or "" to use Node's default trust. */
  ca: string;
  caFile: string;
}

export const defaultAddr = "http://127.0.0.1:7948";

/**
 * Resolves options against the environment. It throws a ConfigError for an address that is not
 * http(s), a token that could not be sent as a header, an unreadable token or CA file, or a CA
 * file with an http:// address (the token would travel in the clear although verification was
 * asked for).
 */
export function resolveConfig(opts: ConnectionOptions = {}): ResolvedConfig {
  const env = opts.env ?? process.env;
  const caFile = (opts.caFile ?? env["TASKWORKER_CA_FILE"] ?? "").trim();
  let raw: string[];
  if (opts.addr === undefined) raw = splitAddrs(env["TASKWORKER_ADDR"] ?? "");
  else if (typeof opts.addr === "string") raw = splitAddrs(opts.addr);
  else raw = opts.addr.flatMap((a) => splitAddrs(a));
  if (raw.length === 0) raw = [caFile ? defaultAddr.replace("http://", "https://") : defaultAddr];
  const addrs = raw.map((a) => normalizeAddr(a, caFile !== ""));
  if (caFile !== "") {
    const plain = addrs.find((a) => a.startsWith("http://"));
    if (plain !== undefined) throw new ConfigError(`a CA file is given but ${plain} is http://; use https://`);
  }

  let token = opts.token;
  if (token === undefined) {
    token = env["TASKWORKER_TOKEN"] ?? "";
    const file = env["TASKWORKER_TOKEN_FILE"] ?? "";
    if (token === "" && file !== "") token = readFirstLine(file, "TASKWORKER_TOKEN_FILE");
  }
  token = token.trim();
  // A token is sent as a header: anything but visible ASCII would break the request or forge
  // another header. The message never shows the token.
  if (!/^[\x21-\x7e]*$/.test(token)) throw new ConfigError("the token holds characters a header cannot carry (spaces, line breaks or non-ASCII)");

  let ca = "";
  if (caFile !== "") {
    try {
      ca = readFileSync(caFile, "utf8");
    } catch (e) {
      throw new ConfigError(`read CA file ${caFile}: ${(e as Error).message}`);
    }
    if (!ca.includes("-----BEGIN CERTIFICATE-----")) throw new ConfigError(`CA file ${caFile} holds no PEM certificate`);
  }
  return { addrs, token, ca, caFile };
}

function splitAddrs(s: string): string[] {
  return s
    .split(",")
    .map((a) => a.trim())
    .filter((a) => a !== "");
}

/** A base URL from a URL or a bare host:port; the path, query and credentials are refused. */
export function normalizeAddr(addr: string, tls: boolean): string {
  const withScheme = addr.includes("://") ? addr : (tls ? "https://" : "http://") + addr;
  let u: URL;
  try {
    u = new URL(withScheme);
  } catch {
    throw new ConfigError(`address ${JSON.stringify(addr)} is not a URL or host:port`);
  }
  if (u.protocol !== "http:" && u.protocol !== "https:") throw new ConfigError(`address ${addr}: only http:// and https:// are supported`);
  if (u.username !== "" || u.password !== "") throw new ConfigError("an address must not carry credentials: pass the token instead");
  if ((u.pathname !== "/" && u.pathname !== "") || u.search !== "" || u.hash !== "") throw new ConfigError(`address ${addr}: give only scheme, host and port`);
  return `${u.protocol}//${u.host}`;
}

function readFirstLine(path: string, what: string): string {
  try {
    return (readFileSync(path, "utf8").split(/\r?\n/)[0] ?? "").trim();
  } catch (e) {
    throw new ConfigError(`read ${what} ${path}: ${(e as Error).message}`);
  }
}

import { test, after, before } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:net";
import { FakeCluster } from "./fake-cluster.js";
import { Client, ConnectionError, NotFoundError, PermissionDeniedError, TaskFailedError, Worker, FinalError, InvalidInputError } from "../src/index.js";

let fake: FakeCluster;
let url: string;
before(async () => {
  fake = new FakeCluster();
  url = await fake.start();
});
after(async () => {
  await fake.stop();
});

/** A port nothing listens on. */
async function deadPort(): Promise<string> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, "127.0.0.1", r));
  const port = (s.address() as { port: number }).port;
  await new Promise<void>((r) => s.close(() => r()));
  return `127.0.0.1:${port}`;
}

function quietWorker(name: string, extra: Partial<ConstructorParameters<typeof Worker>[0]> = {}): Worker {
  return new Worker({ name, capacity: 4, addr: url, handleSignals: false, logger: () => {}, env: {}, ...extra });
}

test("submit sends the body the API expects, with the token", async () => {
  const c = new Client({ addr: url, token: "tok123", env: {} });
  const t = await c.submit("nobody-runs-this", { n: 1 }, { maxAttempts: 2, timeout: 1500, idempotencyKey: "k1", version: "2" });
  assert.equal(t.state, "pending");
  const r = fake.calls("POST", "/v1/tasks").at(-1);
  assert.deepEqual(r?.body, { type: "nobody-runs-this", input: { n: 1 }, version: "2", idempotency_key: "k1", max_attempts: 2, timeout: "1500ms" });
  assert.equal(r?.auth, "Bearer tok123");
  assert.equal((await c.get(t.id)).id, t.id);
  assert.equal(t.pending_reason, 'no node or worker offers "nobody-runs-this" version "2"');
});

test("a missing task is a NotFoundError; an ID cannot reach another route", async () => {
  const c = new Client({ addr: url, env: {} });
  await assert.rejects(c.get("nope"), NotFoundError);
  await assert.rejects(c.get("../workers"), (e: Error) => e instanceof NotFoundError && /tasks/.test(fake.requests.at(-1)?.path ?? ""));
  assert.equal(fake.requests.at(-1)?.path, "/v1/tasks/..%2Fworkers");
});

test("a refused token is a PermissionDeniedError that does not show the token", async () => {
  fake.token = "right";
  try {
    const c = new Client({ addr: url, token: "wrong-secret", env: {} });
    await assert.rejects(c.submit("x"), (e: Error) => e instanceof PermissionDeniedError && (e as PermissionDeniedError).status === 401 && !e.message.includes("wrong-secret"));
  } finally {
    fake.token = "";
  }
});

test("moves to the next address when a node cannot be reached, and stays there", async () => {
  const dead = await deadPort();
  const c = new Client({ addr: `${dead},${url}`, env: {} });
  const t = await c.submit("nobody-runs-this", null); // refused: never sent, so safe to send on
  assert.equal(c.conn.addr, url);
  await c.get(t.id);
  const only = new Client({ addr: dead, env: {} });
  await assert.rejects(only.get(t.id), (e: Error) => e instanceof ConnectionError && /ECONNREFUSED/.test(e.message));
});

test("moves on from a node that answers 503 shutting_down", async () => {
  let refused = 0;
  fake.fault = (m, p) => (p === "/v1/tasks" && m === "POST" && refused++ === 0 ? { status: 503, body: { error: "leaving", code: "shutting_down" } } : undefined);
  try {
    // The same node twice in the list stands in for two nodes.
    const c = new Client({ addr: [url, url.replace("127.0.0.1", "localhost")], env: {} });
    const t = await c.submit("nobody-runs-this", 1);
    assert.equal(t.input, 1);
    assert.equal(refused, 2);
  } finally {
    fake.fault = undefined;
  }
});

test("exec streams live logs and resolves with the result; a failure rejects with the record", async () => {
  const w = quietWorker("exec-w");
  w.task("ts-upper", { exampleInput: "hi" }, async (ctx, text: string) => {
    ctx.log("upper-casing");
    ctx.stdout("line1\nline2\n");
    return text.toUpperCase();
  });
  w.task("ts-fail", async () => {
    throw new FinalError("no way");
  });
  const running = w.run();
  try {
    const c = new Client({ addr: url, env: {} });
    const lines: string[] = [];
    const result = await c.exec("ts-upper", "hi", { onLog: (l) => lines.push(`${l.stream}:${l.line}`) });
    assert.equal(result, "HI");
    assert.deepEqual(lines, ["log:upper-casing", "stdout:line1", "stdout:line2"]);
    const t = await c.submit("ts-upper", "abc", { maxAttempts: 3 });
    assert.equal((await c.wait(t.id)).result, "ABC");
    const all: string[] = [];
    for await (const l of c.logs(t.id)) all.push(l.line);
    assert.deepEqual(all, ["upper-casing", "line1", "line2"]);
    await assert.rejects(c.exec("ts-fail", null), (e: Error) => {
      assert.ok(e instanceof TaskFailedError);
      assert.equal(e.task.state, "failed");
      assert.deepEqual(e.task.error, { type: "FinalError", message: "no way", final: true });
      assert.equal(e.task.attempt, 1);
      return true;
    });
    const listed = await c.list();
    assert.ok(listed.some((x) => x.id === t.id));
    const workers = await c.workers();
    assert.ok(workers.some((x) => x.name === "exec-w"));
  } finally {
    w.drain();
    await running;
  }
});

test("a wait gives up with its signal", async () => {
  const c = new Client({ addr: url, env: {} });
  const t = await c.submit("nobody-runs-this", null);
  await assert.rejects(c.wait(t.id, { signal: AbortSignal.timeout(100) }), (e: Error) => e.name === "TimeoutError");
  await c.cancel(t.id);
  assert.equal((await c.wait(t.id)).state, "cancelled");
});

test("a bad submit is an InvalidInputError with the API's code; extra fields cannot replace the type", async () => {
  const c = new Client({ addr: url, env: {} });
  fake.fault = (m, p) => (m === "POST" && p === "/v1/tasks" ? { status: 400, body: { error: "input must be an integer", code: "invalid_input" } } : undefined);
  try {
    await assert.rejects(c.submit("calc-square", "x"), (e: Error) => e instanceof InvalidInputError && e.code === "invalid_input" && e.status === 400);
  } finally {
    fake.fault = undefined;
  }
  await c.submit("nobody-runs-this", null, { extra: { type: "other", priority: 5 } });
  assert.deepEqual(fake.calls("POST", "/v1/tasks").at(-1)?.body, { type: "nobody-runs-this", input: null, priority: 5 });
  await assert.rejects(c.submit(""), TypeError);
});

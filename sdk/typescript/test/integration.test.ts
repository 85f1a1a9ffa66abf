/**
 * Against a real node: builds the taskworker binary (or takes TASKWORKER_BIN), starts
 * `taskworker agent --dev` on 127.0.0.1, and runs a Worker and a Client against it. Skips when go
 * is missing or the node does not know /v1/workers, unless TASKWORKER_REQUIRE_SDKS=1.
 */
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { Client, FinalError, TaskFailedError, TaskworkerError, Worker } from "../src/index.js";

const require_ = process.env["TASKWORKER_REQUIRE_SDKS"] === "1";
const repo = resolve(fileURLToPath(import.meta.url), "../../../../..");
let agent: ChildProcess | undefined;
let addr = "";
let skip: string | false = false;
let agentLog = "";

function findGo(): string {
  for (const g of ["go", "/usr/local/go/bin/go"]) {
    try {
      execFileSync(g, ["version"], { stdio: "ignore" });
      return g;
    } catch {
      // try the next
    }
  }
  return "";
}

async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, "127.0.0.1", r));
  const port = (s.address() as { port: number }).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

async function waitHealthy(url: string, ms: number): Promise<void> {
  const end = Date.now() + ms;
  for (;;) {
    try {
      const r = await fetch(url + "/v1/health");
      if (r.status === 200) return;
    } catch {
      // not up yet
    }
    if (agent?.exitCode !== null && agent?.exitCode !== undefined) throw new Error(`the agent exited: ${agentLog}`);
    if (Date.now() > end) throw new Error(`the agent was not healthy within ${ms} ms: ${agentLog}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

before(async () => {
  let bin = process.env["TASKWORKER_BIN"] ?? "";
  if (bin === "") {
    const go = findGo();
    if (go === "") {
      if (require_) throw new Error("go is missing and TASKWORKER_REQUIRE_SDKS=1");
      skip = "go is not installed (set TASKWORKER_BIN to a built taskworker)";
      return;
    }
    bin = join(mkdtempSync(join(tmpdir(), "tw-bin-")), "taskworker");
    execFileSync(go, ["build", "-o", bin, "."], { cwd: repo, stdio: ["ignore", "ignore", "inherit"] });
  }
  if (!existsSync(bin)) throw new Error(`no taskworker binary at ${bin}`);
  const port = await freePort();
  addr = `http://127.0.0.1:${port}`;
  agent = spawn(bin, ["agent", "--dev", "--name", "ts-it", "--http-addr", `127.0.0.1:${port}`, "--capacity", "2"], { stdio: ["ignore", "ignore", "pipe"] });
  agent.stderr?.on("data", (d: Buffer) => (agentLog = (agentLog + d.toString()).slice(-4000)));
  await waitHealthy(addr, 60000);
  const probe = await fetch(addr + "/v1/workers", { method: "POST", headers: { "Content-Type": "application/json" }, body: "{}" });
  await probe.text();
  if (probe.status === 404) {
    if (require_) throw new Error("the node has no POST /v1/workers and TASKWORKER_REQUIRE_SDKS=1");
    skip = "the node does not know /v1/workers yet";
  }
});

after(async () => {
  if (agent && agent.exitCode === null) {
    const done = new Promise((r) => agent?.on("exit", r));
    agent.kill("SIGTERM");
    const t = setTimeout(() => agent?.kill("SIGKILL"), 15000);
    await done;
    clearTimeout(t);
  }
});

test("a Node worker runs tasks for a real node, with live logs, failures, cancel and drain", async (t) => {
  if (skip) return t.skip(skip);
  const w = new Worker({ name: "ts-it-worker", capacity: 4, addr, handleSignals: false, logger: () => {}, env: {} });
  w.task("ts-upper", { version: "1", description: "upper-cases text", exampleInput: "hi" }, async (ctx, text: string) => {
    ctx.log("upper-casing");
    await ctx.checkpoint({ done: 0 });
    return text.toUpperCase();
  });
  w.task("ts-final", async () => {
    throw new FinalError("cannot be done");
  });
  let bigCheckpoint: unknown;
  w.task("ts-bigcp", async (ctx) => {
    try {
      await ctx.checkpoint({ blob: "x".repeat(100_000) }); // over the cluster's 64 KiB cap
    } catch (e) {
      bigCheckpoint = e;
      throw e;
    }
    return "not reached";
  });
  w.task("ts-wait", (ctx) => new Promise((_, reject) => ctx.signal.addEventListener("abort", () => reject(ctx.signal.reason))));
  const running = w.run();
  try {
    const c = new Client({ addr, env: {} });
    await waitFor(async () => (await c.workers()).some((x) => x.name === "ts-it-worker" && x.state === "up"), "the worker to show as up");
    const lines: string[] = [];
    assert.equal(await c.exec("ts-upper", "hi", { onLog: (l) => lines.push(l.line) }), "HI");
    assert.deepEqual(lines, ["upper-casing"]);
    const task = await c.submit("ts-upper", "abc", { maxAttempts: 3 });
    const done = await c.wait(task.id);
    assert.equal(done.result, "ABC");
    assert.equal(done.node, "ts-it-worker");

    await assert.rejects(c.exec("ts-final", null, { maxAttempts: 3 }), (e: Error) => {
      assert.ok(e instanceof TaskFailedError);
      assert.equal(e.task.attempt, 1);
      assert.equal(e.task.error?.type, "FinalError");
      return true;
    });

    await assert.rejects(c.exec("ts-bigcp", null, { maxAttempts: 1 }), (e: Error) => {
      assert.ok(e instanceof TaskFailedError);
      assert.equal(e.task.error?.type, "checkpoint_too_large");
      return true;
    });
    assert.ok(bigCheckpoint instanceof TaskworkerError && bigCheckpoint.code === "checkpoint_too_large", `checkpoint rejected with ${String(bigCheckpoint)}`);

    const waiting = await c.submit("ts-wait", null);
    await waitFor(async () => (await c.get(waiting.id)).state === "running", "ts-wait to run");
    await c.cancel(waiting.id);
    assert.equal((await c.wait(waiting.id, { signal: AbortSignal.timeout(10000) })).state, "cancelled");

    const other = await c.submit("ts-upper", "v2", { version: "2" });
    await waitFor(async () => ((await c.get(other.id)).pending_reason ?? "") !== "", "a pending reason");
    assert.match((await c.get(other.id)).pending_reason ?? "", /ts-upper/);
    await c.cancel(other.id);
  } finally {
    w.drain();
    await running;
  }
  const c = new Client({ addr, env: {} });
  await waitFor(async () => (await c.workers()).some((x) => x.name === "ts-it-worker" && x.state === "left"), "the worker to show as left");
});

test("a Node worker waits for its children on a real node", async (t) => {
  if (skip) return t.skip(skip);
  const w = new Worker({ name: "ts-it-waiter", capacity: 1, addr, handleSignals: false, logger: () => {}, env: {} });
  w.task("ts-sum-squares", async (ctx, n: number) => {
    for (let i = 1; i <= n; i++) await ctx.submit("calc-square", i, { idempotencyKey: `${ctx.taskId}/${i}`, maxAttempts: 1 });
    const results = ctx.waitChildren();
    return Object.values(results).reduce((a, r) => a + Number(r.result), 0);
  });
  const running = w.run();
  try {
    const c = new Client({ addr, env: {} });
    await waitFor(async () => (await c.workers()).some((x) => x.name === "ts-it-waiter" && x.state === "up"), "the worker to show as up");
    const task = await c.submit("ts-sum-squares", 4, { maxAttempts: 1 });
    const done = await c.wait(task.id, { signal: AbortSignal.timeout(60000) });
    assert.equal(done.state, "succeeded");
    assert.equal(done.result, 1 + 4 + 9 + 16);
    const events = done.history.map((h) => h.event);
    assert.ok(events.includes("waiting") && events.includes("resumed"), `history ${events.join(",")}`);
    assert.equal(events.filter((e) => e === "succeeded").length, 1);
  } finally {
    w.drain();
    await running;
  }
});

async function waitFor(cond: () => Promise<boolean>, what: string, ms = 15000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

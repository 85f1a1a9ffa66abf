import { test, after, before } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { FakeCluster } from "./fake-cluster.js";
import { AttemptLostError, FinalError, PermissionDeniedError, WaitingForChildren, Worker, type WorkerOptions } from "../src/index.js";

let fake: FakeCluster;
let url: string;
before(async () => {
  fake = new FakeCluster();
  url = await fake.start();
});
after(async () => {
  await fake.stop();
});

const messages: string[] = [];
function worker(name: string, opts: Partial<WorkerOptions> = {}): Worker {
  return new Worker({ name, capacity: 4, addr: url, handleSignals: false, logger: (l, m) => messages.push(`${l} ${m}`), env: {}, ...opts });
}

function state(id: string): string {
  return fake.tasks.get(id)?.state ?? "";
}

async function stopWorker(w: Worker, running: Promise<void>): Promise<void> {
  w.drain();
  await running;
}

test("one poll carries many assignments and one events call many outcomes", async () => {
  const ids = Array.from({ length: 50 }, (_, i) => fake.submit("batch", i).id);
  const before = fake.requests.length;
  const w = worker("batcher", { capacity: 64 });
  w.task("batch", async (ctx, n: number) => {
    ctx.log(`a ${n}`);
    ctx.log(`b ${n}`);
    return n * 2;
  });
  const running = w.run();
  await fake.until(() => ids.every((id) => state(id) === "succeeded"), "50 tasks to succeed");
  await stopWorker(w, running);
  const reqs = fake.requests.slice(before);
  const polls = reqs.filter((r) => r.path.endsWith("/poll"));
  const carrying = polls.filter((r) => r !== undefined);
  assert.ok(carrying.length >= 1);
  const events = reqs.filter((r) => r.path.endsWith("/events"));
  const outcomes = events.map((r) => (r.body as { events: { kind: string }[] }).events.filter((e) => e.kind === "succeeded").length);
  assert.equal(outcomes.reduce((a, b) => a + b, 0), 50);
  assert.ok(events.length <= 5, `${events.length} events calls for 50 tasks and 100 log lines`);
  assert.ok(Math.max(...outcomes) >= 10, `largest batch ${Math.max(...outcomes)} outcomes`);
  for (const id of ids) assert.equal(fake.tasks.get(id)?.result, Number(fake.tasks.get(id)?.input) * 2);
  assert.equal(fake.logs.get(ids[7] ?? "")?.map((l) => l.line).join(","), "a 7,b 7");
});

test("an error is retried with its name as the type; a FinalError is not", async () => {
  class QuotaExceeded extends Error {
    override name = "QuotaExceeded";
  }
  const w = worker("retrier");
  w.task("flaky-ts", async (ctx) => {
    if (ctx.attempt < 3) throw new QuotaExceeded(`attempt ${ctx.attempt}`);
    return { attempt: ctx.attempt };
  });
  w.task("final-ts", async () => {
    throw new FinalError("bad input, no retry helps");
  });
  const running = w.run();
  const a = fake.submit("flaky-ts", null, { max_attempts: 3 });
  const b = fake.submit("final-ts", null, { max_attempts: 3 });
  await fake.until(() => state(a.id) === "succeeded" && state(b.id) === "failed", "both tasks to end");
  await stopWorker(w, running);
  assert.deepEqual(a.result, { attempt: 3 });
  assert.deepEqual(
    a.history.filter((h) => h.event === "failed").map((h) => h.error),
    ["attempt 1", "attempt 2"],
  );
  const failedEvents = fake.calls("POST", "/events").flatMap((r) => (r.body as { events: { task_id: string; kind: string; error?: unknown }[] }).events.filter((e) => e.task_id === a.id && e.kind === "failed"));
  assert.deepEqual(failedEvents[0]?.error, { type: "QuotaExceeded", message: "attempt 1", final: false });
  assert.equal(b.attempt, 1);
  assert.deepEqual(b.error, { type: "FinalError", message: "bad input, no retry helps", final: true });
});

test("a checkpoint reaches the next attempt as lastCheckpoint", async () => {
  const seen: unknown[] = [];
  const w = worker("checkpointer");
  w.task("resume", async (ctx) => {
    seen.push(ctx.lastCheckpoint);
    await ctx.checkpoint({ done: ctx.attempt });
    assert.deepEqual(ctx.lastCheckpoint, { done: ctx.attempt });
    if (ctx.attempt === 1) throw new Error("crash after the checkpoint");
    return "resumed";
  });
  const running = w.run();
  const t = fake.submit("resume", null);
  await fake.until(() => state(t.id) === "succeeded", "the task to succeed");
  await stopWorker(w, running);
  assert.deepEqual(seen, [null, { done: 1 }]);
});

test("a cancel aborts the handler's signal and is reported as cancelled", async () => {
  let sawCancelled = false;
  const w = worker("canceller");
  w.task("wait-forever", (ctx) => {
    ctx.log("started");
    return new Promise((_, reject) => {
      ctx.signal.addEventListener("abort", () => {
        sawCancelled = ctx.cancelled;
        reject(ctx.signal.reason);
      });
    });
  });
  const running = w.run();
  const t = fake.submit("wait-forever", null);
  await fake.until(() => (fake.logs.get(t.id)?.length ?? 0) > 0, "the task to start");
  fake.cancel(t.id);
  await fake.until(() => state(t.id) === "cancelled", "the task to be cancelled");
  await stopWorker(w, running);
  assert.ok(sawCancelled);
});

test("a task's timeout aborts its signal with a TimeoutError", async () => {
  let reason = "";
  const w = worker("timer");
  w.task("slow", (ctx) => new Promise((_, reject) => ctx.signal.addEventListener("abort", () => ((reason = (ctx.signal.reason as Error).name), reject(ctx.signal.reason)))));
  const running = w.run();
  const t = fake.submit("slow", null, { timeout: "150ms", max_attempts: 1 });
  await fake.until(() => state(t.id) === "failed", "the task to time out");
  await stopWorker(w, running);
  assert.equal(reason, "TimeoutError");
  assert.equal(t.error?.type, "TimeoutError");
});

test("the lease holds while a handler awaits longer than the lease", async () => {
  const regs = fake.requests.filter((r) => r.method === "POST" && r.path === "/v1/workers").length;
  const w = worker("patient", { lease: "500ms" });
  w.task("long", async () => {
    await new Promise((r) => setTimeout(r, 1600));
    return "done";
  });
  const running = w.run();
  const t = fake.submit("long", null);
  await fake.until(() => state(t.id) === "succeeded", "the long task");
  await stopWorker(w, running);
  assert.equal(fake.requests.filter((r) => r.method === "POST" && r.path === "/v1/workers").length - regs, 1, "registered once");
  assert.equal(t.attempt, 1);
});

test("a lost session drops its attempts, registers again, and the late outcome is never sent", async () => {
  let release: () => void = () => {};
  let started = false;
  const gate = new Promise<void>((r) => (release = r));
  const reasons: string[] = [];
  const w = worker("loser");
  w.task("held", async (ctx) => {
    ctx.signal.addEventListener("abort", () => reasons.push((ctx.signal.reason as Error).name));
    if (ctx.attempt === 1) {
      started = true;
      await gate;
    }
    return `attempt ${ctx.attempt}`;
  });
  const running = w.run();
  const t = fake.submit("held", null);
  await fake.until(() => started, "attempt 1 to run");
  const first = t.worker ?? "";
  fake.loseSession(first); // as when the host presumes the worker lost
  await fake.until(() => state(t.id) === "succeeded", "attempt 2 to succeed after registering again");
  release();
  await new Promise((r) => setTimeout(r, 50));
  await stopWorker(w, running);
  assert.equal(t.result, "attempt 2");
  assert.deepEqual(reasons, ["AttemptLostError"]);
  const lateReports = fake.requests.filter((r) => r.path.includes(encodeURIComponent(first)) && r.path.endsWith("/events"));
  assert.equal(lateReports.length, 0, "nothing was reported for the lost session");
  assert.ok(!messages.some((m) => m.includes(first)), "the session ID is never logged");
});

test("a stale_attempt answer drops the attempt and frees its slot", async () => {
  let staleOnce = true;
  fake.fault = (m, p, body) => {
    const evs = (body as { events?: { kind: string; attempt: number; task_id: string }[] } | null)?.events;
    if (m === "POST" && p.endsWith("/events") && staleOnce && evs?.some((e) => e.kind === "checkpoint")) {
      staleOnce = false;
      return { status: 200, body: { results: evs.map(() => ({ ok: false, code: "stale_attempt", error: "moved on" })) } };
    }
    return undefined;
  };
  let caught: unknown;
  const w = worker("stale", { capacity: 1 });
  w.task("cp", async (ctx) => {
    try {
      await ctx.checkpoint({ step: 1 });
    } catch (e) {
      caught = e;
      throw e;
    }
    return "ok";
  });
  const running = w.run();
  try {
    const t = fake.submit("cp", null);
    await fake.until(() => caught !== undefined, "the checkpoint to be refused");
    assert.ok(caught instanceof AttemptLostError);
    fake.fault = undefined;
    // The fake still counts attempt 1 as running; take it back as the host would have.
    fake.loseSession(t.worker ?? "");
    await fake.until(() => state(t.id) === "succeeded", "the task to run again");
    const t2 = fake.submit("cp", null); // capacity 1: runs only if the dropped attempt freed its slot
    await fake.until(() => state(t2.id) === "succeeded", "the next task");
  } finally {
    fake.fault = undefined;
    await stopWorker(w, running);
  }
});

test("an outcome answered no_leader keeps its slot and is reported again", async () => {
  let refusals = 1;
  fake.fault = (m, p, body) => {
    const evs = (body as { events?: { kind: string }[] } | null)?.events;
    if (m === "POST" && p.endsWith("/events") && refusals > 0 && evs?.some((e) => e.kind === "succeeded")) {
      refusals--;
      return { status: 200, body: { results: evs.map((e) => (e.kind === "succeeded" ? { ok: false, code: "no_leader", error: "not recorded yet" } : { ok: true })) } };
    }
    return undefined;
  };
  const w = worker("no-leader", { capacity: 1 });
  const started: number[] = [];
  w.task("nl", async (_ctx, n: number) => {
    started.push(n);
    return n;
  });
  const running = w.run();
  try {
    const t = fake.submit("nl", 1);
    await fake.until(() => refusals === 0, "the outcome to be refused once");
    const t2 = fake.submit("nl", 2);
    await fake.until(() => state(t.id) === "succeeded", "the outcome reported again");
    // Capacity 1: the second task could start only once the first outcome was recorded.
    await fake.until(() => state(t2.id) === "succeeded", "the second task");
    assert.deepEqual(started, [1, 2]);
    const reports = fake.requests.filter((r) => r.path.endsWith("/events") && (r.body as { events: { kind: string; task_id: string }[] }).events.some((e) => e.kind === "succeeded" && e.task_id === t.id));
    assert.equal(reports.length, 2);
  } finally {
    fake.fault = undefined;
    await stopWorker(w, running);
  }
});

test("drain waits for running tasks, then leaves", async () => {
  const w = worker("drainer");
  let started = false;
  w.task("drain-me", async () => {
    started = true;
    await new Promise((r) => setTimeout(r, 300));
    return "finished";
  });
  const running = w.run();
  const t = fake.submit("drain-me", null);
  await fake.until(() => started, "the task to start");
  const before = fake.requests.length;
  w.drain();
  await running;
  assert.equal(state(t.id), "succeeded");
  const after = fake.requests.slice(before).map((r) => `${r.method} ${r.path.split("/").slice(4).join("/")}`);
  assert.ok(after.indexOf("POST drain") >= 0, after.join(" | "));
  assert.ok(after.indexOf("POST events") > after.indexOf("POST drain"));
  assert.equal(after.at(-1), "DELETE ");
});

test("a drain that runs out of time aborts the handlers and hands their tasks back", async () => {
  const w = worker("impatient", { drainTimeout: 200 });
  let aborted = false;
  let started = false;
  w.task("stuck", (ctx) => new Promise((_, reject) => ((started = true), ctx.signal.addEventListener("abort", () => ((aborted = true), reject(new Error("stopped")))))));
  const running = w.run();
  const t = fake.submit("stuck", null);
  await fake.until(() => started, "the task to start");
  const t0 = Date.now();
  w.drain();
  await running;
  assert.ok(aborted);
  assert.ok(Date.now() - t0 >= 200);
  assert.equal(state(t.id), "pending", "handed back");
  assert.equal(t.history.at(-1)?.event, "interrupted");
  fake.cancel(t.id);
});

test("registration waits out a name conflict; a refused token stops the worker", async () => {
  let conflicts = 2;
  fake.fault = (m, p) => (m === "POST" && p === "/v1/workers" && conflicts-- > 0 ? { status: 409, body: { error: "worker exists", code: "worker_exists" } } : undefined);
  const w = worker("conflicted");
  w.task("noop", () => null);
  const running = w.run();
  await fake.until(() => [...fake.sessions.values()].some((s) => s.name === "conflicted" && !s.gone), "the worker to register");
  fake.fault = undefined;
  await stopWorker(w, running);

  fake.fault = (m, p) => (m === "POST" && p === "/v1/workers" ? { status: 403, body: { error: "no work on noop", code: "forbidden" } } : undefined);
  try {
    const w2 = worker("refused");
    w2.task("noop", () => null);
    await assert.rejects(w2.run(), (e: Error) => e instanceof PermissionDeniedError && e.code === "forbidden");
  } finally {
    fake.fault = undefined;
  }
});

test("a token revoked mid-session ends the worker", async () => {
  const w = worker("revoked");
  w.task("noop", () => null);
  const running = w.run();
  await fake.until(() => [...fake.sessions.values()].some((s) => s.name === "revoked" && !s.gone), "the worker to register");
  fake.fault = (m, p) => (p.endsWith("/poll") ? { status: 403, body: { error: "token revoked", code: "forbidden" } } : undefined);
  try {
    await assert.rejects(running, PermissionDeniedError);
  } finally {
    fake.fault = undefined;
  }
});

test("a result too large to report fails the task at once instead of a refused call", async () => {
  const w = worker("big");
  w.task("huge", () => "x".repeat(2 << 20));
  const running = w.run();
  const t = fake.submit("huge", null);
  await fake.until(() => state(t.id) === "failed", "the task to fail");
  await stopWorker(w, running);
  assert.equal(t.error?.type, "ResultTooLarge");
  assert.equal(t.attempt, 1);
});

test("options are checked before anything is sent", () => {
  assert.throws(() => worker("bad name!"), /worker name/);
  assert.throws(() => worker("w", { capacity: 0 }), /capacity/);
  assert.throws(() => worker("w", { lease: "100ms" }), /lease/);
  const w = worker("w");
  w.task("a", () => 1);
  assert.throws(() => w.task("a", () => 2), /registered twice/);
  w.task("a", { version: "2" }, () => 2);
});

// The worker script of the signal tests: a child process, so signals reach only it.
function workerScript(dir: string, taskMs: number): string {
  const index = resolve(fileURLToPath(import.meta.url), "../../src/index.js");
  const file = join(dir, "worker.mjs");
  writeFileSync(
    file,
    `import { Worker } from ${JSON.stringify(index)};
const w = new Worker({ name: "sig-" + process.pid, capacity: 2, addr: process.env.FAKE_URL, drainTimeout: 5000 });
w.task("sig-task", async (ctx) => { ctx.log("running"); await new Promise((r) => setTimeout(r, ${taskMs})); return "done"; });
await w.run();
console.log("run resolved");
`,
  );
  return file;
}

async function runChild(file: string, onRunning: (pid: number) => void, t: { id: string }): Promise<{ code: number | null; out: string }> {
  const child = spawn(process.execPath, [file], { env: { ...process.env, FAKE_URL: url }, stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  child.stdout.on("data", (d: Buffer) => (out += d.toString()));
  child.stderr.on("data", (d: Buffer) => (out += d.toString()));
  const exited = new Promise<number | null>((r) => child.on("exit", (code) => r(code)));
  await fake.until(() => (fake.logs.get(t.id)?.length ?? 0) > 0, "the child's task to run");
  onRunning(child.pid ?? 0);
  return { code: await exited, out };
}

test("SIGTERM drains: the running task finishes, the worker leaves, the process exits 0", async () => {
  const dir = mkdtempSync(join(tmpdir(), "tw-sig-"));
  const t = fake.submit("sig-task", null);
  const { code, out } = await runChild(workerScript(dir, 400), (pid) => process.kill(pid, "SIGTERM"), t);
  assert.equal(code, 0, out);
  assert.match(out, /draining/);
  assert.match(out, /run resolved/);
  assert.equal(state(t.id), "succeeded");
  assert.ok(fake.calls("DELETE", "/v1/workers/").length > 0);
});

test("a second SIGTERM leaves at once and hands the task back", async () => {
  const dir = mkdtempSync(join(tmpdir(), "tw-sig-"));
  const t = fake.submit("sig-task", null);
  const { code, out } = await runChild(
    workerScript(dir, 60000),
    (pid) => {
      process.kill(pid, "SIGTERM");
      setTimeout(() => process.kill(pid, "SIGTERM"), 100);
    },
    t,
  );
  assert.equal(code, 143, out);
  assert.doesNotMatch(out, /run resolved/);
  assert.equal(state(t.id), "pending", "handed back");
  fake.cancel(t.id);
});

test("waitChildren ends the attempt, and the resumed one gets the children's outcomes", async () => {
  const resumed: boolean[] = [];
  const w = worker("waiter", { capacity: 1 });
  w.task("ts-sum", async (ctx, n: number) => {
    for (let i = 0; i < n; i++) await ctx.submit("nowhere", i, { idempotencyKey: `${ctx.taskId}/${i}` });
    await ctx.checkpoint({ submitted: n });
    let res;
    try {
      res = ctx.waitChildren();
    } catch (e) {
      assert.ok(e instanceof WaitingForChildren);
      throw e;
    }
    resumed.push(ctx.resumed);
    const ok = Object.values(res).filter((r) => r.state === "succeeded");
    return { sum: ok.reduce((a, r) => a + Number(r.result), 0), failed: Object.keys(res).filter((id) => res[id]?.state !== "succeeded") };
  });
  const running = w.run();
  const parent = fake.submit("ts-sum", 2);
  await fake.until(() => state(parent.id) === "waiting", "the parent to wait");
  const kids = fake.tasks.get(parent.id)?.wait_for ?? [];
  assert.equal(kids.length, 2);
  assert.deepEqual(kids, [...kids].sort());
  for (const k of kids) {
    const c = fake.tasks.get(k);
    assert.equal(c?.parent_id, parent.id);
    assert.equal(c?.execution_id, "e" + parent.id);
  }
  assert.deepEqual(fake.tasks.get(parent.id)?.checkpoint, { submitted: 2 });
  fake.resume(parent.id, [
    { id: kids[0], state: "succeeded", result: 9 },
    { id: kids[1], state: "failed", error: { type: "task_error", message: "boom" } },
  ]);
  await fake.until(() => state(parent.id) === "succeeded", "the parent to succeed");
  assert.deepEqual(fake.tasks.get(parent.id)?.result, { sum: 9, failed: [kids[1]] });
  assert.deepEqual(resumed, [true]);
  assert.equal([...fake.tasks.values()].filter((t) => t.parent_id === parent.id).length, 2, "no second children");
  await stopWorker(w, running);
});

test("waitChildren without children returns at once", async () => {
  const w = worker("no-children");
  w.task("ts-none", (ctx) => {
    assert.equal(ctx.resumed, false);
    assert.deepEqual(ctx.childResults, {});
    return Object.keys(ctx.waitChildren()).length;
  });
  const running = w.run();
  const t = fake.submit("ts-none", null);
  await fake.until(() => state(t.id) === "succeeded", "ts-none to succeed");
  assert.equal(fake.tasks.get(t.id)?.result, 0);
  await stopWorker(w, running);
});

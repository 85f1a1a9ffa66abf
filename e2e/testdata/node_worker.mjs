// A Node.js worker for e2e/worker_node_test.go, written as a user would write one with the
// TypeScript SDK. The connection comes from TASKWORKER_ADDR and TASKWORKER_TOKEN; the test sets:
//   TW_SDK        file URL of the built SDK (sdk/typescript/dist/index.js)
//   WORKER_NAME   the worker's name
//   WORKER_TYPES  comma-separated type=kind pairs, kind "wait" or "count"
// A "wait" task logs a line, then waits until the file named by its input's "release" exists. A
// "count" task counts to "to", one step every "step_ms", checkpointing each step, and resumes
// from its checkpoint on a later attempt.
import { existsSync } from "node:fs";

const { Worker } = await import(process.env.TW_SDK);
const name = process.env.WORKER_NAME;
const w = new Worker({ name, capacity: 2, drainTimeout: 60000 });

// Resolves after ms, or rejects with the attempt's abort reason.
function pause(ctx, ms) {
  return new Promise((resolve, reject) => {
    if (ctx.signal.aborted) return reject(ctx.signal.reason);
    const t = setTimeout(resolve, ms);
    ctx.signal.addEventListener("abort", () => (clearTimeout(t), reject(ctx.signal.reason)), { once: true });
  });
}

// What becomes of an attempt is printed on stdout, for the test to read.
async function reporting(ctx, run) {
  try {
    const out = await run();
    console.log(`attempt ${ctx.attempt} of ${ctx.taskId} returned`);
    return out;
  } catch (e) {
    console.log(`attempt ${ctx.attempt} of ${ctx.taskId} ended: ${e?.name}: ${e?.message}`);
    throw e;
  }
}

const kinds = {
  wait: (ctx, input) =>
    reporting(ctx, async () => {
      ctx.log(`waiting on ${name}`);
      while (!existsSync(input.release)) await pause(ctx, 20);
      return { text: String(input.text).toUpperCase(), worker: name };
    }),
  count: (ctx, input) =>
    reporting(ctx, async () => {
      const from = ctx.lastCheckpoint?.done ?? 0;
      ctx.log(`attempt ${ctx.attempt} on ${name} from ${from}`);
      for (let i = from + 1; i <= input.to; i++) {
        await pause(ctx, input.step_ms);
        ctx.log(`step ${i} on ${name}`);
        await ctx.checkpoint({ done: i });
      }
      return { worker: name, resumed_from: from, counted: input.to };
    }),
};

for (const pair of process.env.WORKER_TYPES.split(",")) {
  const [type, kind] = pair.split("=");
  w.task(type, { version: "1" }, kinds[kind]);
}

await w.run();
console.log(`worker ${name} left`);

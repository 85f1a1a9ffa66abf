// A Node.js worker: it offers ts-upper and ts-count to the cluster at TASKWORKER_ADDR (a
// comma-separated list of nodes; the next one is used when one goes away). Ctrl-C or SIGTERM
// drains it: running tasks finish, then it leaves; a second one leaves at once.
import { Worker, FinalError } from "taskworker";

const w = new Worker({ name: process.env.WORKER_NAME, capacity: 4 });

w.task("ts-upper", { version: "1", description: "upper-cases text", exampleInput: "hi" }, async (ctx, text) => {
  if (typeof text !== "string") throw new FinalError("the input must be a JSON string");
  ctx.log("upper-casing");
  return text.toUpperCase();
});

// Counts to `to`, one step every `step_ms`, checkpointing each step: a retry, or a run moved to
// another worker, resumes where the last one stopped.
w.task("ts-count", { description: "counts slowly, resuming from its checkpoint", exampleInput: { to: 5, step_ms: 500 } }, async (ctx, input) => {
  const { to = 5, step_ms = 500 } = input ?? {};
  const from = ctx.lastCheckpoint?.done ?? 0;
  for (let i = from + 1; i <= to; i++) {
    // ctx.signal aborts on cancel, timeout, or when the task is taken from this worker.
    await new Promise((resolve, reject) => {
      const t = setTimeout(resolve, step_ms);
      ctx.signal.addEventListener("abort", () => (clearTimeout(t), reject(ctx.signal.reason)), { once: true });
    });
    ctx.log(`step ${i} of ${to}`);
    await ctx.checkpoint({ done: i });
  }
  return { counted: to, resumed_from: from };
});

await w.run();
console.log("worker left");

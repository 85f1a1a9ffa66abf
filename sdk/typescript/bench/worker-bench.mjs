// Throughput and latency of a Node worker against a running node:
//   TASKWORKER_ADDR=http://127.0.0.1:7948 node bench/worker-bench.mjs [tasks] [capacity]
// It registers a worker offering ts-bench-echo, submits the tasks from 64 concurrent submitters,
// and reports tasks/s from the first submit to the last success; then the p50 of submit ->
// succeeded for ts-bench-echo and for the built-in echo, one task at a time (submit ?wait).
import { Client, Worker } from "../dist/index.js";

const n = Number(process.argv[2] ?? 2000);
const capacity = Number(process.argv[3] ?? 64);
const w = new Worker({ name: `bench-${process.pid}`, capacity, handleSignals: false, logger: () => {} });
w.task("ts-bench-echo", (ctx, input) => input);
const running = w.run();
const c = new Client();
while (!(await c.workers()).some((x) => x.name === `bench-${process.pid}` && x.state === "up")) await new Promise((r) => setTimeout(r, 50));

const t0 = performance.now();
let next = 0;
const ids = [];
await Promise.all(
  Array.from({ length: 64 }, async () => {
    while (next < n) {
      const i = next++;
      ids.push((await c.submit("ts-bench-echo", i)).id);
    }
  }),
);
const submitted = performance.now();
let idx = 0;
await Promise.all(
  Array.from({ length: 64 }, async () => {
    while (idx < ids.length) {
      const id = ids[idx++];
      const t = await c.wait(id);
      if (t.state !== "succeeded") throw new Error(`${id} ${t.state}`);
    }
  }),
);
const done = performance.now();
console.log(`${n} tasks, capacity ${capacity}: submitted in ${(submitted - t0).toFixed(0)} ms, all succeeded after ${(done - t0).toFixed(0)} ms: ${((n * 1000) / (done - t0)).toFixed(0)} tasks/s`);

async function p50(type) {
  const lat = [];
  for (let i = 0; i < 200; i++) {
    const s = performance.now();
    const r = await fetch(`${c.conn.addr}/v1/tasks?wait=10s`, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ type, input: i }) });
    const t = await r.json();
    if (t.state !== "succeeded") throw new Error(`${type}: ${t.state}`);
    lat.push(performance.now() - s);
  }
  lat.sort((a, b) => a - b);
  return lat[100];
}
const viaWorker = await p50("ts-bench-echo");
const builtin = await p50("echo");
console.log(`submit -> succeeded p50: worker ${viaWorker.toFixed(2)} ms, built-in echo ${builtin.toFixed(2)} ms (+${(viaWorker - builtin).toFixed(2)} ms)`);
w.drain();
await running;

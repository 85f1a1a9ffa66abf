// Submits to the cluster at TASKWORKER_ADDR: exec with live logs, then submit and wait.
import { Client, TaskFailedError } from "taskworker";

const c = new Client();
const result = await c.exec("ts-count", { to: 3, step_ms: 200 }, { onLog: (l) => console.log(`[${l.node}] ${l.line}`) });
console.log("ts-count:", JSON.stringify(result));

const t = await c.submit("ts-upper", "hello from node", { maxAttempts: 3 });
const done = await c.wait(t.id);
console.log(`ts-upper on ${done.node}:`, JSON.stringify(done.result));

try {
  await c.exec("ts-upper", 42);
} catch (e) {
  if (!(e instanceof TaskFailedError)) throw e;
  console.log(`a bad input fails at once: ${e.task.error?.type}: ${e.task.error?.message} (attempt ${e.task.attempt})`);
}

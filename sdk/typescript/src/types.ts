/** The API's JSON shapes, with the API's own (snake_case) field names. */

/** Any value JSON can carry. */
export type JSONValue = null | boolean | number | string | JSONValue[] | { [key: string]: JSONValue };

/** A task's state; the last three are final. */
export type TaskState = "scheduled" | "pending" | "assigned" | "running" | "waiting" | "succeeded" | "failed" | "cancelled";

/** Why a task failed. */
/**
 * How a child task a resumed attempt waited for ended: state is succeeded, failed or cancelled
 * ("" when it was removed before its parent resumed); result when it succeeded, error otherwise.
 */
export interface ChildResult {
  id: string;
  state: string;
  result?: unknown;
  error?: TaskErrorInfo;
}

export interface TaskErrorInfo {
  type: string;
  message: string;
  /** The task said no retry could fix it, and failed without another attempt. */
  final?: boolean;
}

/** One event in a task's life. */
export interface HistoryEntry {
  attempt: number;
  node: string;
  event: string;
  at: string;
  error?: string;
}

/** The task record (GET /v1/tasks/{id}). Fields the API adds later are kept as they come. */
export interface Task {
  id: string;
  type: string;
  version: string;
  input: unknown;
  state: TaskState;
  node: string;
  attempt: number;
  max_attempts: number;
  timeout: string;
  result: unknown;
  error: TaskErrorInfo | null;
  idempotency_key: string;
  created_at: string;
  started_at: string | null;
  finished_at: string | null;
  modify_index: number;
  history: HistoryEntry[];
  /** Why a pending task cannot run now (no worker offers its type and version, say). */
  pending_reason?: string;
  [field: string]: unknown;
}

/** One line of a task's output. */
export interface LogLine {
  ts: string;
  attempt: number;
  node: string;
  stream: "stdout" | "stderr" | "log";
  level: string;
  line: string;
}

/** A task type as a worker registers it, or as GET /v1/types and GET /v1/workers list it. */
export interface TaskTypeInfo {
  type: string;
  version: string;
  description?: string;
  example_input?: unknown;
}

/** A worker as GET /v1/workers shows it. */
export interface WorkerInfo {
  name: string;
  node: string;
  state: "up" | "down" | "left";
  draining: boolean;
  capacity: number;
  running: number;
  labels?: Record<string, string>;
  task_types: TaskTypeInfo[];
  registered_at: string;
  [field: string]: unknown;
}

/** Terminal states: a task in one of them does not change any more. */
export function isTerminal(state: string): boolean {
  return state === "succeeded" || state === "failed" || state === "cancelled";
}

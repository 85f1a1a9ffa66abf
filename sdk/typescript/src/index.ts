/**
 * taskworker: submit and follow tasks (Client), and run task types in Node.js (Worker).
 * Address, token and CA file come from TASKWORKER_ADDR, TASKWORKER_TOKEN and TASKWORKER_CA_FILE
 * when not passed.
 */
export { Client, type SubmitOptions, type ExecOptions, type ListOptions, type TaskPage, type SignalOptions } from "./client.js";
export { Worker, type WorkerOptions, type TaskOptions, type TaskContext, type Handler, type ChildOptions } from "./worker.js";
export {
  TaskworkerError,
  NotFoundError,
  PermissionDeniedError,
  ConflictError,
  InvalidInputError,
  RateLimitedError,
  UnavailableError,
  ConnectionError,
  ConfigError,
  TaskFailedError,
  FinalError,
  AttemptLostError,
  WaitingForChildren,
} from "./errors.js";
export { type ConnectionOptions } from "./config.js";
export { isTerminal, type ChildResult, type Task, type TaskState, type TaskErrorInfo, type HistoryEntry, type LogLine, type TaskTypeInfo, type WorkerInfo, type JSONValue } from "./types.js";

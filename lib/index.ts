/*!
 * express-background-tasks
 * MIT Licensed
 */

import type { TaskQueue } from './queue.js';

export { backgroundTasks, backgroundTasks as default } from './middleware.js';
export type { BackgroundTasksMiddleware } from './middleware.js';
export type { BackgroundTasksOptions, HandedOffTask, RetryBackoff, RetryOptions, TaskInfo, TaskRunner, TaskRunOptions, TaskStaging, TaskTransport } from './options.js';
export { defineTask } from './definition.js';
export type { DefinedTask, DefineTaskOptions } from './definition.js';
export type { TaskQueue } from './queue.js';
export type { TaskTraceContext } from './task.js';
export { HandOffError, PermanentError, QueueFullError, ShutdownError, TimeoutError } from './errors.js';
export { withSignal } from './signal.js';
export type { CloseOptions, CloseSummary } from './shutdown.js';

declare global {
  namespace Express {
    interface Locals {
      /** This response's background tasks, put here by `backgroundTasks()`. */
      tasks: TaskQueue;
    }
  }
}

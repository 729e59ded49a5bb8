/*!
 * express-background-tasks
 * MIT Licensed
 */

import type { TaskQueue } from './queue.js';

export { backgroundTasks, backgroundTasks as default } from './middleware.js';
export type { BackgroundTasksMiddleware } from './middleware.js';
export type { BackgroundTasksOptions, TaskInfo } from './options.js';
export type { TaskQueue } from './queue.js';
export type { TaskTraceContext } from './task.js';
export { QueueFullError, TimeoutError } from './errors.js';

declare global {
  namespace Express {
    interface Locals {
      /** This response's background tasks, put here by `backgroundTasks()`. */
      tasks: TaskQueue;
    }
  }
}

/*!
 * express-background-tasks
 * MIT Licensed
 */

// The types of the CommonJS entry (index.cjs): the factory, merged with a namespace holding every
// export, so that `require()`, `import x = require()`, default and named imports all type-check
// as they run. The build copies this file into dist/cjs, next to the compiled index.js.

import exported = require('./index.js');

/**
 * Creates the middleware that puts a task queue at `res.locals.tasks`; the queued functions run
 * one after another once the response has been sent. The same function as `.backgroundTasks`
 * and `.default`.
 * @throws {TypeError} an option of the wrong type
 * @throws {RangeError} a number option out of range
 * @public
 */
declare function backgroundTasks(...args: Parameters<typeof exported.backgroundTasks>): ReturnType<typeof exported.backgroundTasks>;

declare namespace backgroundTasks {
  // Type-only exports cannot be aliased with `export import`.
  export type BackgroundTasksMiddleware = exported.BackgroundTasksMiddleware;
  export type BackgroundTasksOptions = exported.BackgroundTasksOptions;
  export type CloseOptions = exported.CloseOptions;
  export type CloseSummary = exported.CloseSummary;
  export type DefinedTask<A extends unknown[] = never, R = unknown> = exported.DefinedTask<A, R>;
  export type DefineTaskOptions = exported.DefineTaskOptions;
  export type HandedOffTask = exported.HandedOffTask;
  export type RetryBackoff = exported.RetryBackoff;
  export type RetryOptions = exported.RetryOptions;
  export type TaskInfo = exported.TaskInfo;
  export type TaskQueue = exported.TaskQueue;
  export type TaskTraceContext = exported.TaskTraceContext;
  export type TaskTransport = exported.TaskTransport;
  export type TaskStaging = exported.TaskStaging;
  export type TaskRunOptions = exported.TaskRunOptions;
  export type TaskRunner = exported.TaskRunner;

  export import defineTask = exported.defineTask;
  export import HandOffError = exported.HandOffError;
  export import PermanentError = exported.PermanentError;
  export import QueueFullError = exported.QueueFullError;
  export import ShutdownError = exported.ShutdownError;
  export import TimeoutError = exported.TimeoutError;
  export import withSignal = exported.withSignal;
  // The factory itself, as at run time: `require(…).default === require(…)`.
  export { backgroundTasks, backgroundTasks as default };
}

export = backgroundTasks;

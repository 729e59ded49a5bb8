import { IncomingMessage } from 'node:http';
import type { NextFunction, Request, RequestHandler, Response } from 'express';
import { resolveOptions, type BackgroundTasksOptions } from './options.js';
import { ResponseQueue } from './queue.js';
import { Scheduler } from './scheduler.js';
import { type CloseOptions, type CloseSummary, closeTasks } from './shutdown.js';
import { debug } from './task.js';

/**
 * The middleware returned by `backgroundTasks()`, with the hooks for shutdown and tests.
 * @public
 */
export interface BackgroundTasksMiddleware extends RequestHandler {
  /**
   * Resolves once no task of any response is queued or running, counting tasks added while it
   * waits. Resolves at once when idle. A task that timed out no longer counts, though its work may
   * go on in this process (on a thread pool it is stopped). Stop accepting requests first (`server.close()`).
   */
  drain(): Promise<void>;
  /** Tasks queued or running, across all responses served by this middleware. */
  readonly pending: number;
  /**
   * Shuts down for a process about to exit: with `server`, it closes the server, each keep-alive
   * connection as soon as its last response has been flushed, and waits for the requests in
   * flight; pending tasks, and the ones those requests add, run until `timeout`; the rest are
   * reported to `onError` as `ShutdownError`s (their signals aborted, those on a thread pool
   * stopped). Then it closes the transports that run tasks (their threads). Tasks
   * added after it resolved are reported, not run. Calling it again returns the same promise.
   * @param options - `server`: the HTTP server to close with the tasks (without it, close the
   *   server yourself first); `timeout`: ms for it all (default 10000)
   * @return what became of the pending tasks
   * @throws {TypeError|RangeError} for an invalid `timeout`; a TypeError for options that are not
   *   a plain object, an unknown option (inherited ones too), or a `server` that is not one
   * @example
   * process.once('SIGTERM', async () => {
   *   const { abandoned } = await tasks.close({ server, timeout: 10_000 });
   *   process.exit(abandoned === 0 ? 0 : 1);
   * });
   */
  close(options?: CloseOptions): Promise<CloseSummary>;
}

/**
 * Creates the middleware that puts a task queue at `res.locals.tasks`; the queued functions run
 * one after another once the response has been sent.
 * @param options - see `BackgroundTasksOptions`
 * @return the middleware, with `drain()` and `pending`
 * @throws {TypeError} options that are not a plain object, an option of the wrong type, an unknown
 *   option (inherited or not enumerable ones too), or a request: the factory was mounted itself,
 *   `app.use(backgroundTasks)`, and Express called it with each request
 * @throws {RangeError} a number option out of range
 * @example
 * const tasks = backgroundTasks({ onError: (error, { name }) => log.error(error, name) });
 * app.use(tasks);
 * app.post('/items/:id', (req, res) => {
 *   res.locals.tasks.add(sendConfirmationEmail, req.params.id);
 *   res.json({ id: req.params.id });
 * });
 * @public
 */
export function backgroundTasks(options?: BackgroundTasksOptions): BackgroundTasksMiddleware;
export function backgroundTasks(options?: BackgroundTasksOptions, ...mountedAs: unknown[]): BackgroundTasksMiddleware {
  // `app.use(backgroundTasks)`: Express calls the factory with (req, res, next), and nothing ever
  // calls `next`. Throwing makes Express pass the error to `next(error)`, so the request fails.
  if (options instanceof IncomingMessage || typeof mountedAs[1] === 'function') {
    throw new TypeError('Expected `backgroundTasks` to be called before it is mounted, got the function itself, which Express ' +
      'called with the request: write app.use(backgroundTasks()), not app.use(backgroundTasks)');
  }
  const scheduler = new Scheduler(resolveOptions(options));

  let closed: Promise<CloseSummary> | undefined;

  function backgroundTasksMiddleware(req: Request, res: Response, next: NextFunction): void {
    // Mounted twice (app and router): keep the first queue, so each task runs once.
    if (res.locals.tasks === undefined) attachQueue(res, new ResponseQueue(scheduler, req, res));
    else debug('res.locals.tasks already set: the first middleware mounted keeps this response');
    next();
  }

  return Object.defineProperties(backgroundTasksMiddleware as BackgroundTasksMiddleware, {
    drain: { value: () => scheduler.drain() },
    pending: { get: () => scheduler.pending, enumerable: true },
    close: { value: (closeOptions?: CloseOptions) => (closed ??= closeTasks(scheduler, closeOptions)) },
  });
}

/**
 * Puts `queue` at `res.locals.tasks`, not enumerable: `res.json(res.locals)` and the locals of
 * `res.render()` (which would shadow `app.locals.tasks`) are the app's alone. It stays writable,
 * as any local is.
 * @private
 */
function attachQueue(res: Response, queue: ResponseQueue): void {
  Object.defineProperty(res.locals, 'tasks', { value: queue, enumerable: false, writable: true, configurable: true });
}

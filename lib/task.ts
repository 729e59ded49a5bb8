import { AsyncResource } from 'node:async_hooks';
import diagnostics from 'node:diagnostics_channel';
import { performance } from 'node:perf_hooks';
import createDebug from 'debug';
import type { Request, Response } from 'express';
import { describeError, isPermanent, TimeoutError } from './errors.js';
import type { HandedOffTask, Retry, RetryBackoff, Settings, TaskInfo, TaskRunner } from './options.js';
import { signalTaker } from './signal.js';

/**
 * The `debug` logger of the whole library: `DEBUG=express-background-tasks`.
 * @internal
 */
export const debug = createDebug('express-background-tasks');

/**
 * What subscribers of the `express-background-tasks:task` tracing channel receive: the task's
 * `TaskInfo` as it starts (`durationMs` is left to subscribers to measure), then its outcome.
 * @public
 */
export interface TaskTraceContext extends TaskInfo {
  /** What the task threw or rejected with (set before the `error` event). */
  error?: unknown;
  /**
   * What the task returned (set before `end`), then what its promise resolved to (set before
   * `asyncStart`). After a rejection or a timeout it still holds the returned promise.
   */
  result?: unknown;
}

/**
 * Tracing channel `express-background-tasks:task` (Node's `diagnostics_channel.tracingChannel`):
 * `start`/`end` around the call, `asyncStart`/`asyncEnd` when a returned promise settles, `error`
 * on a throw, a rejection or a timeout.
 * @internal
 */
export const taskTracing = diagnostics.tracingChannel<unknown, TaskTraceContext>('express-background-tasks:task');

/**
 * One queued call: the function, its arguments, when it was queued, and the async context of the
 * `add()` call (the task is its own `AsyncResource`, so binding the context costs no extra object).
 * @internal
 */
export class Task extends AsyncResource {
  readonly fn: (...args: never[]) => unknown;
  readonly args: unknown[];
  /** `performance.now()` at `add()`. */
  readonly queuedAt = performance.now();
  /** `performance.now()` when it started; 0 before. */
  startedAt = 0;
  /** The task queued after this one in the same response. */
  next: Task | undefined = undefined;
  /** Aborts the signal of a task made with `withSignal()`, or given to a runner, once it runs. */
  controller: AbortController | undefined = undefined;
  /** The transport that runs this defined task instead of this process. */
  runner: TaskRunner | undefined = undefined;
  /** How it is retried: its definition's `retry`, or the middleware's. */
  retry: Retry | undefined = undefined;
  /** Which run this is, or was last, from 1. */
  attempt = 1;
  /**
   * Set once the queue has stopped waiting for its current attempt: it settled, failed, timed out
   * or was given up on. A `run()` that `around` calls later starts nothing.
   */
  done = false;
  /** The function a task made by `withSignal()` wraps, looked up once. */
  readonly takesSignal: ((signal: AbortSignal, ...args: unknown[]) => unknown) | undefined;

  constructor(fn: (...args: never[]) => unknown, args: unknown[]) {
    super('express-background-tasks');
    this.fn = fn;
    this.args = args;
    this.takesSignal = signalTaker(fn);
  }
}

/**
 * Stops waiting for a running task: reports `error` as its failure, aborts its signal, and lets
 * its queue move on. Does nothing once the task has settled.
 * @internal
 */
export type Abandon = (error: Error) => void;

/**
 * The response a task was queued for, and the settings of its middleware: what reporting it needs.
 * @internal
 */
export interface TaskScope {
  readonly req: Request;
  readonly res: Response;
  readonly settings: Settings;
}

/**
 * What running the tasks of one response needs, gathered once per run of its queue.
 * @internal
 */
export interface TaskRun extends TaskScope {
  /** Whether the tracing channel has subscribers (read once per run). */
  readonly traced: boolean;
  /** Whether `debug` is enabled (read once per run: its getter is not free). */
  readonly debugging: boolean;
  /** Called once a task that returned a promise has settled, timed out or been abandoned. */
  readonly settled: () => void;
  /**
   * Called when a failed attempt is to be retried, instead of the report, and before `settled`
   * for a task that returned a promise: the queue runs the task again after `delayMs`.
   */
  readonly retry: (task: Task, delayMs: number) => void;
}

/**
 * @return the name shown for a task in traces and error reports
 * @internal
 */
export function taskName(fn: { name: string }): string {
  try {
    return String(fn.name) || 'anonymous';
  } catch {
    return 'anonymous'; // a `name` getter that throws must not stop the queue
  }
}

/**
 * Runs `task` in the async context of its `add()` call, through `around` and the tracing channel
 * when there are. Whatever it throws, returns or rejects with goes to `onError` at most once, with
 * a timeout; nothing escapes.
 * @return `undefined` when the task settled synchronously, otherwise the way to abandon it
 *   (`run.settled` is then called once it settles)
 * @internal
 */
export function runTask(task: Task, run: TaskRun): Abandon | undefined {
  const { settings } = run;
  task.done = false; // a retry's attempt starts anew
  const plain = !run.traced && settings.around === undefined && task.runner === undefined && task.takesSignal === undefined;
  // A clock read costs as much as a sync task: a plain one is stamped only once it proves async.
  if (!plain || run.debugging) task.startedAt = performance.now();
  const context: TaskTraceContext | undefined = plain ? undefined : taskInfo(task, run.req, run.res, false);
  if (run.debugging) started(task, run);
  let result: unknown;
  try {
    result = plain
      ? task.runInAsyncScope(task.fn as (...args: unknown[]) => unknown, undefined, ...task.args)
      : task.runInAsyncScope(callTask, undefined, task, run, context);
    if (!isThenable(result)) {
      task.done = true;
      if (run.debugging) finished(task);
      return undefined;
    }
    if (task.startedAt === 0) task.startedAt = performance.now();
  } catch (error) {
    task.done = true;
    attemptFailed(task, error, run);
    return undefined;
  }
  return awaitTask(task, result, run, context);
}

/**
 * Calls a foreign function (a transport's, a runner's) and observes how it settles: a throw goes
 * to `onRejected` at once, what it returns as `whenSettled()` sees it.
 * @return a promise that resolves once a callback has been called; it never rejects, provided the
 *   callbacks do not throw
 * @internal
 */
export function settleCall(
  call: () => unknown,
  onFulfilled: (value: unknown) => void,
  onRejected: (error: unknown) => void,
): Promise<void> {
  let returned: unknown;
  try {
    returned = call();
  } catch (error) {
    onRejected(error);
    return Promise.resolve();
  }
  return whenSettled(returned, onFulfilled, onRejected);
}

/**
 * Waits for `promise`, or `ms` milliseconds, whichever comes first; the timer is cleared as soon as
 * `promise` settles first.
 * @param ms - the deadline; `Infinity` for none
 * @param atDeadline - what the result is, when the deadline comes first; what it throws, the rejection
 * @param unref - whether the timer must not hold the process
 * @internal
 */
export function withDeadline<T, L>(promise: Promise<T>, ms: number, atDeadline: () => L, unref = false): Promise<T | L> {
  if (ms === Infinity) return promise;
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<L>((resolve, reject) => {
    timer = setTimeout(() => {
      try {
        resolve(atDeadline());
      } catch (error) {
        reject(error);
      }
    }, ms);
    if (unref) timer.unref();
  });
  return Promise.race([promise, deadline]).finally(() => clearTimeout(timer));
}

/**
 * What `onError`, `around` and tracing learn of a task.
 * @param ended - whether the task has ended, so `durationMs` is known
 * @internal
 */
export function taskInfo(task: Task, req: Request, res: Response, ended: boolean): TaskInfo {
  const now = performance.now();
  const startedAt = task.startedAt === 0 ? now : task.startedAt;
  return {
    name: taskName(task.fn),
    req,
    method: String(read(req, 'method')),
    url: String(read(req, 'originalUrl')),
    status: Number(read(res, 'statusCode')),
    requestId: requestIdOf(req),
    attempt: task.attempt,
    waitMs: startedAt - task.queuedAt,
    durationMs: ended && task.startedAt !== 0 ? now - task.startedAt : undefined,
  };
}

/**
 * @return what a transport receives of a defined task: its name and its (copied) arguments
 * @internal
 */
export function handedOff(task: Task): HandedOffTask {
  const { retry } = task;
  // A defined task's function is named after it.
  return retry === undefined ? { name: task.fn.name, args: task.args } : { name: task.fn.name, args: task.args, retry };
}

/**
 * @param attempt - the attempt that failed, from 1
 * @param error - what it failed with
 * @return milliseconds to wait before the next attempt, or `undefined` when there is none: no
 *   `retry`, the attempts are spent, or the error is a `PermanentError`
 * @internal
 */
export function retryDelay(retry: Retry | undefined, attempt: number, error: unknown): number | undefined {
  if (retry === undefined || attempt >= retry.attempts || isPermanent(error)) return undefined;
  return backoffDelay(retry.backoff, attempt);
}

/**
 * The wait after the `attempt`-th run failed: the backoff's delay (doubled after each attempt when
 * exponential), jittered to a random time between half of it and all of it, so that tasks that
 * failed together spread their retries; at most what `setTimeout()` takes.
 * @internal
 */
export function backoffDelay({ type, delay }: RetryBackoff, attempt: number): number {
  const full = type === 'fixed' ? delay : delay * 2 ** (attempt - 1);
  return Math.min(MAX_DELAY, Math.round(full / 2 + (Math.random() * full) / 2));
}

/** setTimeout() treats any longer delay as 1 ms. */
const MAX_DELAY = 2 ** 31 - 1;

/**
 * Reports `error` as the failure of `task`, inside the async context of the `add()` call that
 * queued it, as a failure of its own run is: with its `durationMs` when it started.
 * @param scope - its response and settings
 * @internal
 */
export function reportInScope(task: Task, error: unknown, { req, res, settings }: TaskScope): void {
  task.runInAsyncScope(report, undefined, error, taskInfo(task, req, res, true), settings);
}

/**
 * Hands a task's error to `onError`; an `onError` that throws, or returns a promise that rejects,
 * is reported on stderr. Never throws: it runs inside on-finished callbacks and the queue's loop.
 * @internal
 */
export function report(error: unknown, info: TaskInfo, settings: Settings): void {
  if (debug.enabled) debug('failed %s%s%s: %s', info.name, describeRequest(info), info.attempt > 1 ? ` at attempt ${info.attempt}` : '', describeError(error));
  try {
    const returned = settings.onError(error, info);
    if (isThenable(returned)) void whenSettled(returned, ignore, (rejection) => reportOnErrorFailure('rejected', rejection, error, info.name));
  } catch (onErrorFailure) {
    reportOnErrorFailure('threw', onErrorFailure, error, info.name);
  }
}

/**
 * A run of `task` failed with `error`: has the queue run it again after its backoff, when it is
 * `retryable` and its `retry` allows another attempt, or else reports the error (from inside the
 * task's async context).
 * @private
 */
function attemptFailed(task: Task, error: unknown, run: TaskRun, retryable = true): void {
  const delayMs = retryable ? retryDelay(task.retry, task.attempt, error) : undefined;
  if (delayMs === undefined) {
    reportInScope(task, error, run);
    return;
  }
  if (debug.enabled) {
    const { attempts } = task.retry as Retry;
    debug('failed %s, attempt %d of %d, retrying in %d ms: %s', taskName(task.fn), task.attempt, attempts, delayMs, describeError(error));
  }
  task.startedAt = 0; // the next attempt's start is stamped anew
  run.retry(task, delayMs);
}

/**
 * Calls the task through the tracing channel (so `bindStore` subscribers see their store), inside
 * `around`: hands it to its runner, or calls it, with its signal when it was made by `withSignal()`.
 * @private
 */
function callTask(task: Task, run: TaskRun, context: TaskTraceContext): unknown {
  const { around } = run.settings;
  const call = (): unknown => {
    const { runner } = task;
    if (runner !== undefined) {
      task.controller = new AbortController();
      // Without its `retry`: the queue retries a runner's tasks.
      return runner.run({ name: task.fn.name, args: task.args }, { signal: task.controller.signal });
    }
    const { takesSignal } = task;
    if (takesSignal === undefined) return (task.fn as (...args: unknown[]) => unknown)(...task.args);
    task.controller = new AbortController();
    return takesSignal(task.controller.signal, ...task.args);
  };
  const wrapped = around === undefined ? call : () => callAround(around, context, task, call);
  return run.traced ? taskTracing.traceSync(wrapped, context) : wrapped();
}

/**
 * Calls `around` with a `run` that runs the task once, and only while the queue waits for it: a
 * `run()` that comes once the attempt has settled or been given up on (its timeout, the `close()`
 * deadline), or once another attempt has begun, starts nothing and returns `undefined`. So does a second call, which fails the task
 * when it comes before `around` has returned or settled. An `around` that returns (or settles)
 * without having called `run` fails the task, which would otherwise vanish. `run` never throws of
 * its own: `around` may call it from a timer, where a throw would be uncaught.
 * @private
 */
function callAround(around: (info: TaskInfo, run: () => unknown) => unknown, info: TaskInfo, task: Task, call: () => unknown): unknown {
  const { attempt } = task;
  let called = false;
  let calledAgain: TypeError | undefined;
  const runOnce = (): unknown => {
    if (task.done || task.attempt !== attempt) {
      debug('around called run() for task %s once it had settled or been given up on: it does not run', info.name);
      return undefined;
    }
    if (called) {
      calledAgain ??= new TypeError(`around called run() a second time for task ${info.name}: each task runs once`);
      return undefined;
    }
    called = true;
    const returned = call();
    // A promise that settles as `await` sees the task's value: an async `around` that returns it
    // hands on its outcome, even from a native promise whose own `then` is shadowed, which the
    // return of an async function would take for a plain value and leave rejecting unhandled.
    return isThenable(returned) ? adopt(returned) : returned;
  };
  const checked = (value: unknown): unknown => {
    if (!called) throw new TypeError(`around returned without calling run() for task ${info.name}, so it did not run`);
    if (calledAgain !== undefined) throw calledAgain;
    return value;
  };
  const result = around(info, runOnce);
  if (isThenable(result)) return (async () => checked(await result))();
  return checked(result);
}

/**
 * Waits for a task's promise, or for `timeout`, whichever comes first.
 * @return the way to abandon the task at a shutdown deadline
 * @private
 */
function awaitTask(task: Task, promise: PromiseLike<unknown>, run: TaskRun, context: TaskTraceContext | undefined): Abandon {
  const { settings } = run;
  let timer: NodeJS.Timeout | undefined;
  const abandon = (error: Error): void => {
    if (task.done) return;
    task.controller?.abort(error); // before the report: the task learns it first
    finish(true, error, error instanceof TimeoutError); // a task given up on at shutdown is not retried
  };
  const finish = (failed: boolean, outcome: unknown, retryable = true): void => {
    if (task.done) {
      debug('%s settled after it was given up on', taskName(task.fn));
      return;
    }
    task.done = true;
    if (timer !== undefined) clearTimeout(timer);
    // Subscribers and onError see the task's own async context, not the one that settled it.
    task.runInAsyncScope(() => {
      if (context !== undefined && run.traced) {
        if (failed) {
          context.error = outcome;
          taskTracing.error.publish(context);
        } else {
          context.result = outcome;
        }
        taskTracing.asyncStart.publish(context);
        taskTracing.asyncEnd.publish(context);
      }
      if (failed) attemptFailed(task, outcome, run, retryable);
      else if (run.debugging) finished(task);
    });
    run.settled();
  };
  void whenSettled(promise, (value) => finish(false, value), (error) => finish(true, error));
  if (settings.timeout !== Infinity) {
    timer = setTimeout(() => {
      abandon(new TimeoutError(`Task ${taskName(task.fn)} did not settle within ${settings.timeout} ms`));
    }, settings.timeout);
  }
  return abandon;
}

/**
 * @return `req.id` as pino-http and express-request-id set it, when it is a string or a number
 * @private
 */
function requestIdOf(req: Request): string | undefined {
  const id = read(req, 'id');
  return typeof id === 'string' || typeof id === 'number' ? String(id) : undefined;
}

/**
 * @return `object[key]`, or `undefined` when reading it throws: an app's getter on `req` must not
 *   stop the report of a task's failure
 * @private
 */
function read(object: object, key: string): unknown {
  try {
    return (object as Record<string, unknown>)[key];
  } catch {
    return undefined;
  }
}

/**
 * Writes to stderr that `onError` itself failed, with both errors.
 * @private
 */
function reportOnErrorFailure(how: 'threw' | 'rejected', onErrorFailure: unknown, error: unknown, name: string): void {
  process.stderr.write(
    `express-background-tasks: onError ${how} while reporting task ${name}: ${describeError(onErrorFailure)}\n` +
      `  the task's own error: ${describeError(error)}\n`,
  );
}

/**
 * Calls `onFulfilled` or `onRejected` once `value` settles, as `await` sees it: a native promise by
 * its own state (an own `then` or a throwing `constructor` cannot break it), any other thenable
 * through its `then`, in a later job, once. Never throws and never leaves a rejection unhandled,
 * provided the callbacks do not throw.
 * @private
 */
async function whenSettled(
  value: unknown,
  onFulfilled: (value: unknown) => void,
  onRejected: (error: unknown) => void,
): Promise<void> {
  let outcome: unknown;
  try {
    outcome = await value;
  } catch (error) {
    // A native promise whose `constructor` getter throws makes `await` throw before it yields:
    // wait a job, so that no callback runs inside this call.
    await undefined;
    onRejected(error);
    return;
  }
  onFulfilled(outcome);
}

/**
 * @return a native promise that settles as `await` sees `value`
 * @private
 */
async function adopt(value: PromiseLike<unknown>): Promise<unknown> {
  return await value;
}

/**
 * What an `onError` promise resolves to is of no interest.
 * @private
 */
function ignore(): void {}

/**
 * @return whether `await` would wait for `value`: it has a callable `then`, or is a native promise
 * @private
 */
function isThenable(value: unknown): value is PromiseLike<unknown> {
  return (typeof value === 'object' || typeof value === 'function') && value !== null &&
    // A native promise whose own `then` is shadowed is still one: `await` settles it by its state.
    (typeof (value as { then?: unknown }).then === 'function' || value instanceof Promise);
}

/**
 * Traces a task's start, with its request and queue wait.
 * @private
 */
function started(task: Task, run: TaskRun): void {
  const info = taskInfo(task, run.req, run.res, false);
  const attempt = info.attempt === 1 ? '' : `, attempt ${info.attempt} of ${(task.retry as Retry).attempts}`;
  debug('started %s%s, after %sms in the queue%s', info.name, describeRequest(info), info.waitMs.toFixed(1), attempt);
}

/**
 * Traces a task's successful end with its duration, to one decimal of a ms.
 * @private
 */
function finished(task: Task): void {
  debug('finished %s in %sms', taskName(task.fn), (performance.now() - task.startedAt).toFixed(1));
}

/**
 * @return " (POST /items/1 → 201, request 7f3a)" for debug lines
 * @private
 */
function describeRequest(info: TaskInfo): string {
  return ` (${info.method} ${info.url} → ${info.status}${info.requestId === undefined ? '' : `, request ${info.requestId}`})`;
}

import { AsyncResource } from 'node:async_hooks';
import diagnostics from 'node:diagnostics_channel';
import { performance } from 'node:perf_hooks';
import createDebug from 'debug';
import type { Request } from 'express';
import { describeError, TimeoutError } from './errors.js';
import type { Settings } from './options.js';

/**
 * The `debug` logger of the whole library: `DEBUG=express-background-tasks`.
 * @internal
 */
export const debug = createDebug('express-background-tasks');

/**
 * What subscribers of the `express-background-tasks:task` tracing channel receive.
 * @public
 */
export interface TaskTraceContext {
  /** The task function's `name`, or `'anonymous'`. */
  readonly name: string;
  /** The request whose response queued the task. */
  readonly req: Request;
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
 * One queued call: the function, its arguments, and the async context of the `add()` call
 * (the task is its own `AsyncResource`, so binding the context costs no extra object).
 * @internal
 */
export class Task extends AsyncResource {
  readonly fn: (...args: never[]) => unknown;
  readonly args: unknown[];
  /** The task queued after this one in the same response. */
  next: Task | undefined = undefined;

  constructor(fn: (...args: never[]) => unknown, args: unknown[]) {
    super('express-background-tasks');
    this.fn = fn;
    this.args = args;
  }
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
 * What running the tasks of one response needs, gathered once per turn of its queue.
 * @internal
 */
export interface TaskRun {
  /** The request whose response queued the tasks, for `onError` and tracing. */
  readonly req: Request;
  readonly settings: Settings;
  /** Whether the tracing channel has subscribers (read once per turn). */
  readonly traced: boolean;
  /** Whether `debug` is enabled (read once per turn: its getter is not free). */
  readonly debugging: boolean;
  /** Called once a task that returned a promise has settled or timed out. */
  readonly settled: () => void;
}

/**
 * Runs `task` in the async context of its `add()` call. Whatever it throws, returns or rejects
 * with goes to `onError` at most once, with a timeout; nothing escapes.
 * @return true when the task settled synchronously (`run.settled` is then not called)
 * @internal
 */
export function runTask(task: Task, run: TaskRun): boolean {
  const context = run.traced ? { name: taskName(task.fn), req: run.req } : undefined;
  const startedAt = run.debugging ? started(task) : 0;
  let result: unknown;
  try {
    result = context === undefined
      ? task.runInAsyncScope(task.fn as (...args: unknown[]) => unknown, undefined, ...task.args)
      : task.runInAsyncScope(traceCall, undefined, task, context);
    if (!isThenable(result)) {
      if (startedAt !== 0) finished(task, startedAt);
      return true;
    }
  } catch (error) {
    task.runInAsyncScope(report, undefined, error, taskName(task.fn), run.req, run.settings);
    return true;
  }
  awaitTask(task, result, run, context, startedAt);
  return false;
}

/**
 * Calls `onFulfilled` or `onRejected` once `value` settles, as `await` sees it: a native promise by
 * its own state (an own `then` or a throwing `constructor` cannot break it), any other thenable
 * through its `then`, in a later job, once. Never throws and never leaves a rejection unhandled,
 * provided the callbacks do not throw.
 * @internal
 */
export async function whenSettled(
  value: unknown,
  onFulfilled: (value: unknown) => void,
  onRejected: (error: unknown) => void,
): Promise<void> {
  let outcome: unknown;
  try {
    outcome = await value;
  } catch (error) {
    onRejected(error);
    return;
  }
  onFulfilled(outcome);
}

/**
 * Waits for a task's promise, or for `timeout`, whichever comes first.
 * @private
 */
function awaitTask(task: Task, promise: PromiseLike<unknown>, run: TaskRun, context: TaskTraceContext | undefined, startedAt: number): void {
  const { req, settings } = run;
  let timer: NodeJS.Timeout | undefined;
  let done = false;
  const finish = (failed: boolean, outcome: unknown): void => {
    if (done) {
      debug('%s settled after its timeout', taskName(task.fn));
      return;
    }
    done = true;
    if (timer !== undefined) clearTimeout(timer);
    // Subscribers and onError see the task's own async context, not the one that settled it.
    task.runInAsyncScope(() => {
      if (context !== undefined) {
        if (failed) {
          context.error = outcome;
          taskTracing.error.publish(context);
        } else {
          context.result = outcome;
        }
        taskTracing.asyncStart.publish(context);
        taskTracing.asyncEnd.publish(context);
      }
      if (failed) report(outcome, taskName(task.fn), req, settings);
      else if (startedAt !== 0) finished(task, startedAt);
    });
    run.settled();
  };
  void whenSettled(promise, (value) => finish(false, value), (error) => finish(true, error));
  if (settings.timeout !== Infinity) {
    timer = setTimeout(() => {
      finish(true, new TimeoutError(`Task ${taskName(task.fn)} did not settle within ${settings.timeout} ms`));
    }, settings.timeout);
  }
}

/**
 * Calls the task through the tracing channel, so `bindStore` subscribers see their store.
 * @private
 */
function traceCall(task: Task, context: TaskTraceContext): unknown {
  return taskTracing.traceSync(task.fn as (...args: unknown[]) => unknown, context, undefined, ...task.args);
}

/**
 * Hands a task's error to `onError`; an `onError` that throws, or returns a promise that rejects,
 * is reported on stderr. Never throws: it runs inside on-finished callbacks and the queue's loop.
 * @internal
 */
export function report(error: unknown, name: string, req: Request, settings: Settings): void {
  if (debug.enabled) debug('failed %s: %s', name, describeError(error));
  try {
    const returned = settings.onError(error, { name, req });
    if (isThenable(returned)) void whenSettled(returned, ignore, (rejection) => reportOnErrorFailure('rejected', rejection, error, name));
  } catch (onErrorFailure) {
    reportOnErrorFailure('threw', onErrorFailure, error, name);
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

/** What an `onError` promise resolves to is of no interest. */
function ignore(): void {}

/**
 * @return whether `value` has a callable `then`, as `await` would treat it
 * @private
 */
function isThenable(value: unknown): value is PromiseLike<unknown> {
  return (typeof value === 'object' || typeof value === 'function') && value !== null &&
    typeof (value as { then?: unknown }).then === 'function';
}

/**
 * Traces a task's start.
 * @return the start time for its duration
 * @private
 */
function started(task: Task): number {
  debug('started %s', taskName(task.fn));
  return performance.now();
}

/**
 * Traces a task's successful end with its duration, to one decimal of a ms.
 * @private
 */
function finished(task: Task, startedAt: number): void {
  debug('finished %s in %sms', taskName(task.fn), (performance.now() - startedAt).toFixed(1));
}

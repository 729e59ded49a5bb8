/*!
 * express-background-tasks/otel
 * MIT Licensed
 */

import { AsyncLocalStorage } from 'node:async_hooks';
import { performance } from 'node:perf_hooks';
import { context, type Span, SpanStatusCode, trace, type Tracer } from '@opentelemetry/api';
import { describeError, invalid, messageOf } from './errors.js';
import { checkOptions, type TaskInfo } from './options.js';
import { debug, taskTracing, type TaskTraceContext } from './task.js';

/**
 * Options of `taskSpans()`.
 * @public
 */
export interface TaskSpansOptions {
  /**
   * The tracer that starts the task spans.
   * @default trace.getTracer('express-background-tasks'), from the registered tracer provider
   */
  readonly tracer?: Tracer | undefined;
  /**
   * Whether a task's span starts a trace of its own, with a link to the request's span, instead of
   * being a child of it: for long tasks, so that the request's trace is not held open by them. A
   * function decides task by task.
   * @default false: each task span is a child of the span active at `tasks.add()`
   * @example
   * taskSpans({ newTrace: (info) => info.name === 'rebuildSearchIndex' })
   */
  readonly newTrace?: boolean | ((info: TaskInfo) => boolean) | undefined;
}

/**
 * Makes the `around` option of `backgroundTasks()` that runs each task in a span of its own, named
 * after the task, so that the task's own outgoing calls nest under it. The span ends when the
 * queue stops waiting for the task: when it returns, throws or settles, or when it times out or is
 * abandoned by `close()`. It then carries the task's outcome, queue wait and run time; a failure
 * is recorded as an exception, with the span's status set to error.
 * @param options - see `TaskSpansOptions`
 * @return the `around` function; an `around` of yours may wrap it, and hand it `info` or a copy
 * @throws {TypeError} when `tracer` is not an OpenTelemetry tracer, `newTrace` is neither a
 *   boolean nor a function, or an option is unknown
 * @example
 * app.use(backgroundTasks({ around: taskSpans(), timeout: 60_000 }));
 * @public
 */
export function taskSpans(options?: TaskSpansOptions): (info: TaskInfo, run: () => unknown) => unknown {
  if (options === undefined) options = {};
  checkOptions('taskSpans()', options, OPTION_NAMES, '{ newTrace: true }');
  const { tracer = trace.getTracer('express-background-tasks'), newTrace = false } = options;
  if (typeof (tracer as Partial<Tracer> | null)?.startSpan !== 'function') {
    throw new TypeError(invalid('tracer', 'an OpenTelemetry Tracer, such as trace.getTracer(name)', tracer));
  }
  if (typeof newTrace !== 'boolean' && typeof newTrace !== 'function') {
    throw new TypeError(invalid('newTrace', 'a boolean or a function (info) => boolean', newTrace));
  }

  subscribeOnce();

  return function taskSpan(info: TaskInfo, run: () => unknown): unknown {
    const active = context.active(); // the async context of `tasks.add()`: the request's span
    const ownTrace = typeof newTrace === 'function' ? Boolean(newTrace(info)) : newTrace;
    const requestSpan = ownTrace ? trace.getSpan(active) : undefined;
    const span = tracer.startSpan(info.name, {
      attributes: startAttributes(info),
      ...(ownTrace && { root: true, links: requestSpan === undefined ? [] : [{ context: requestSpan.spanContext() }] }),
    }, active);
    // The run's own context on the tracing channel, which its outcome is published with, found by
    // the async context: `info` may be a copy made by an `around` of the app that wraps this one.
    open.set(currentRun.getStore() ?? info, { span, startedAt: performance.now() });
    return context.with(trace.setSpan(active, span), run);
  };
}

/** The keys `taskSpans()` reads; `satisfies` keeps the list in step with the interface. */
const OPTION_NAMES = Object.keys({ tracer: true, newTrace: true } satisfies Record<keyof TaskSpansOptions, true>);

/**
 * The task spans not ended yet, by the tracing-channel context of their run: one map for every
 * `taskSpans()` around, as the channel is subscribed to once.
 */
const open = new WeakMap<TaskTraceContext, OpenSpan>();

/** The tracing-channel context of the run in progress: the store bound to the channel's `start`. */
const currentRun = new AsyncLocalStorage<TaskTraceContext>();

/** Whether the tracing channel is subscribed to: on the first call of `taskSpans()`, and never again. */
let subscribed = false;

/**
 * Subscribes to the tracing channel once for all `taskSpans()` arounds: the only place that learns
 * of a timeout or of an abandon, as the task's own promise never settles then. One subscription,
 * however many times `taskSpans()` is called, so that repeated calls cost nothing per task.
 * @private
 */
function subscribeOnce(): void {
  if (subscribed) return;
  subscribed = true;
  taskTracing.start.bindStore(currentRun, (traced) => traced);
  taskTracing.subscribe({
    start: ignore,
    end: (traced) => {
      if ('error' in traced) settle(traced, true, traced.error);
      else endUnlessRunning(traced);
    },
    asyncStart: ignore,
    asyncEnd: (traced) => settle(traced, 'error' in traced, traced.error),
    error: ignore,
  });
}

/**
 * Ends the span of a run, once; does nothing for a task of a middleware without a task span.
 * @private
 */
function settle(traced: TaskTraceContext, failed: boolean, error: unknown): void {
  const opened = open.get(traced);
  if (opened === undefined) return;
  open.delete(traced);
  endSpan(opened, failed, error);
}

/** A task span not ended yet. */
interface OpenSpan {
  readonly span: Span;
  /** `performance.now()` when the task started. */
  readonly startedAt: number;
}

/**
 * Ends the span of a task that returned or threw, unless it returned a promise still to settle.
 * @param traced - the task's context on the tracing channel, at `end`
 * @private
 */
function endUnlessRunning(traced: TaskTraceContext): void {
  let running: boolean;
  try {
    const { result } = traced;
    running = (typeof result === 'object' || typeof result === 'function') && result !== null &&
      typeof (result as { then?: unknown }).then === 'function';
  } catch (error) {
    settle(traced, true, error); // a revoked Proxy, a throwing `then` getter: the queue reports the same
    return;
  }
  if (!running) settle(traced, false, undefined);
}

/**
 * @return the attributes a task span starts with
 * @private
 */
function startAttributes(info: TaskInfo): Record<string, string | number> {
  const attributes: Record<string, string | number> = {
    'background_task.name': info.name,
    'background_task.wait_ms': info.waitMs,
    'background_task.attempt': info.attempt,
  };
  if (info.requestId !== undefined) attributes['background_task.request_id'] = info.requestId;
  return attributes;
}

/**
 * Records the task's outcome and run time on its span and ends it. Never throws: it runs in a
 * tracing-channel subscriber, where a throw would become an uncaught exception.
 * @private
 */
function endSpan({ span, startedAt }: OpenSpan, failed: boolean, error: unknown): void {
  try {
    span.setAttribute('background_task.duration_ms', performance.now() - startedAt);
    if (failed) recordFailure(span, error);
    else span.setAttribute('background_task.outcome', 'ok');
    span.end();
  } catch (failure) {
    debug('could not end the span of a task: %s', describeError(failure));
  }
}

/**
 * Sets `background_task.outcome` (error, timeout or abandoned, told by the error's `name`) and
 * `error.type`, records the exception and sets the status to error.
 * @private
 */
function recordFailure(span: Span, error: unknown): void {
  const type = errorType(error);
  const message = messageOf(error);
  const outcome = type === 'TimeoutError' ? 'timeout' : type === 'ShutdownError' ? 'abandoned' : 'error';
  span.setAttributes({ 'background_task.outcome': outcome, 'error.type': type });
  const stack = stackOf(error);
  span.recordException({
    message,
    ...(type !== OTHER_ERROR_TYPE && { name: type }),
    ...(stack !== undefined && { stack }),
  });
  span.setStatus({ code: SpanStatusCode.ERROR, message });
}

/** `error.type` of a thrown value without a name, as the semantic conventions spell it. */
const OTHER_ERROR_TYPE = '_OTHER';

/**
 * @return the thrown value's `name` (`TypeError`, `TimeoutError`…), or `_OTHER`. Never throws.
 * @private
 */
function errorType(error: unknown): string {
  try {
    const name: unknown = (error as { name?: unknown } | null | undefined)?.name;
    if (typeof name === 'string' && name !== '') return name;
  } catch {
    // a revoked Proxy or a throwing getter: no name to tell
  }
  return OTHER_ERROR_TYPE;
}

/**
 * @return the thrown value's `stack`, when it is a string. Never throws.
 * @private
 */
function stackOf(error: unknown): string | undefined {
  try {
    const stack: unknown = (error as { stack?: unknown } | null | undefined)?.stack;
    return typeof stack === 'string' ? stack : undefined;
  } catch {
    return undefined;
  }
}

/**
 * The tracing-channel events a task span does not need.
 * @private
 */
function ignore(): void {}

// Background-task metrics for prom-client, fed by the library's diagnostics_channel:
// no wrapper around your tasks, no patch of the library. Call recordTaskMetrics() once at startup.
import diagnostics from 'node:diagnostics_channel';
import { performance } from 'node:perf_hooks';
import client from 'prom-client';
import type { TaskTraceContext } from '../lib/index.js'; // in your app: 'express-background-tasks'

/**
 * Records `background_task_duration_seconds{task, outcome}` (outcome: ok, error, timeout) and
 * `background_task_failures_total{task, outcome}` in `registry`.
 * @return a function that stops recording
 */
export function recordTaskMetrics(registry: client.Registry = client.register): () => void {
  const taskDuration = new client.Histogram({
    name: 'background_task_duration_seconds',
    help: 'Time from the start of a background task until it returned, settled or timed out',
    labelNames: ['task', 'outcome'] as const,
    registers: [registry],
  });
  const taskFailures = new client.Counter({
    name: 'background_task_failures_total',
    help: 'Background tasks that threw, rejected or timed out',
    labelNames: ['task', 'outcome'] as const,
    registers: [registry],
  });
  const startedAt = new WeakMap<TaskTraceContext, number>();

  const record = (context: TaskTraceContext): void => {
    const start = startedAt.get(context);
    if (start === undefined) return; // subscribed while this task was already running
    startedAt.delete(context);
    const outcome = !('error' in context)
      ? 'ok'
      // by name, not instanceof: holds even if both the ESM and the CJS build are loaded
      : (context.error as Error | undefined)?.name === 'TimeoutError' ? 'timeout' : 'error';
    taskDuration.observe({ task: context.name, outcome }, (performance.now() - start) / 1000);
    if (outcome !== 'ok') taskFailures.inc({ task: context.name, outcome });
  };
  const subscribers = {
    start: (context: TaskTraceContext) => startedAt.set(context, performance.now()),
    // A sync task is over at `end`; one that returned a promise is over at `asyncEnd`.
    end: (context: TaskTraceContext) => {
      if ('error' in context || !returnedPromise(context)) record(context);
    },
    asyncStart: () => {},
    asyncEnd: record,
    error: () => {},
  };
  const channel = diagnostics.tracingChannel<unknown, TaskTraceContext>('express-background-tasks:task');
  channel.subscribe(subscribers);
  return () => channel.unsubscribe(subscribers);
}

function returnedPromise({ result }: TaskTraceContext): boolean {
  try {
    return typeof (result as { then?: unknown } | null | undefined)?.then === 'function';
  } catch {
    return false; // a revoked Proxy, a throwing `then` getter: a listener that throws crashes the process
  }
}

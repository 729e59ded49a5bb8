// Feeds every background task's duration and outcome into prom-client, from the library's
// diagnostics_channel: no wrapper around your tasks, no patch of the library.
import diagnostics from 'node:diagnostics_channel';
import { Histogram, type Registry } from 'prom-client';
import { TimeoutError, type TaskTraceContext } from '../lib/index.js';

/**
 * Starts recording `background_task_duration_seconds{task, outcome}` in `registry`.
 * outcome is `success`, `failure` or `timeout`.
 * @return a function that stops recording
 */
export function recordTaskMetrics(registry: Registry): () => void {
  const duration = new Histogram({
    name: 'background_task_duration_seconds',
    help: 'Time background tasks took, by task name and outcome',
    labelNames: ['task', 'outcome'],
    registers: [registry],
  });
  const startedAt = new WeakMap<TaskTraceContext, number>();
  const observe = (context: TaskTraceContext): void => {
    const seconds = (performance.now() - (startedAt.get(context) ?? 0)) / 1000;
    duration.observe({ task: context.name, outcome: outcomeOf(context) }, seconds);
  };
  const subscribers = {
    start: (context: TaskTraceContext) => startedAt.set(context, performance.now()),
    // A task that returned a promise ends at asyncEnd; any other task ends here.
    end: (context: TaskTraceContext) => isThenable(context.result) || observe(context),
    asyncStart() {},
    asyncEnd: observe,
    error() {},
  };
  const channel = diagnostics.tracingChannel<unknown, TaskTraceContext>('express-background-tasks:task');
  channel.subscribe(subscribers);
  return () => channel.unsubscribe(subscribers);
}

function outcomeOf({ error }: TaskTraceContext): string {
  if (error === undefined) return 'success';
  return error instanceof TimeoutError ? 'timeout' : 'failure';
}

function isThenable(value: unknown): boolean {
  return typeof (value as { then?: unknown } | null)?.then === 'function';
}

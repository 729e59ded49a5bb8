// Type test: what a user's strict project writes must compile as is, without a cast.
// Here it imports ../../lib/index.js, so `npm run typecheck` checks it against the source;
// spec/packaging.spec.ts copies it into a consumer project where it imports the package by name.
import type { Server } from 'node:http';
import express, { type Request, type Response } from 'express';
import { Queue, type Worker } from 'bullmq';
import backgroundTasks, {
  backgroundTasks as namedBackgroundTasks,
  defineTask,
  HandOffError,
  PermanentError,
  QueueFullError,
  ShutdownError,
  TimeoutError,
  withSignal,
  type BackgroundTasksMiddleware,
  type CloseOptions,
  type CloseSummary,
  type BackgroundTasksOptions,
  type DefinedTask,
  type DefineTaskOptions,
  type HandedOffTask,
  type RetryBackoff,
  type RetryOptions,
  type TaskInfo,
  type TaskQueue,
  type TaskRunner,
  type TaskRunOptions,
  type TaskTransport,
} from '../../lib/index.js';
import { bullmqTransport, createWorker, type BullmqTransportOptions, type TasksJobData } from '../../lib/bullmq.js';
import { taskSpans, type TaskSpansOptions } from '../../lib/otel.js';
import { trace } from '@opentelemetry/api';
import { piscinaTransport, type PiscinaTransport, type PiscinaTransportOptions } from '../../lib/piscina.js';

async function sendConfirmationEmail(id: number): Promise<void> {
  await new Promise((resolve) => setTimeout(resolve, id));
}

function recordAnalytics(event: string, details: { id: number; path: string }): void {
  console.log(event, details.id, details.path);
}

function refreshCache(): void {
  console.log('cache refreshed');
}

class Mailer {
  from = 'noreply@example.com';
  send(this: Mailer, to: string): void {
    console.log(this.from, to);
  }
}
const mailer = new Mailer();

function reportTaskFailure(error: unknown, info: TaskInfo): void {
  const kind = error instanceof TimeoutError ? 'timed out' : 'failed';
  console.error(`task ${info.name} ${kind} (${info.req.method} ${info.req.originalUrl})`, error);
}

const options: BackgroundTasksOptions = {
  onError: reportTaskFailure,
  timeout: 5_000,
  concurrency: 4,
  maxPending: 10_000,
  runOn: 'success',
};

export const tasks: BackgroundTasksMiddleware = backgroundTasks(options);
export const sameFactory: typeof backgroundTasks = namedBackgroundTasks;
export const withDefaults = backgroundTasks();
export const inlineOptions = backgroundTasks({
  runOn: 'always',
  onError: (error, { name, req }) => console.error(name, req.path, error),
});

export const app = express();
app.use(tasks);

app.post('/items/:id', (req, res) => {
  const id = Number(req.params.id);
  res.locals.tasks.add((itemId: number) => console.log(itemId), 42);
  res.locals.tasks.add(mailer.send.bind(mailer), 'user@example.com').add((to: string) => mailer.send(to), 'user@example.com');
  res.locals.tasks
    .add(sendConfirmationEmail, id)
    .add(recordAnalytics, 'item created', { id, path: req.path })
    .add(refreshCache)
    .add(async () => {
      await sendConfirmationEmail(id);
    })
    .add((to: string, subject: string, retries?: number) => console.log(to, subject, retries), 'a@example.com', 'Hi');
  const queued: number = res.locals.tasks.size;
  res.status(201).json({ id, queued });
});

/** A handler declared apart from the app sees the same `res.locals.tasks`. */
export function createItem(req: Request<{ id: string }>, res: Response): void {
  const queue: TaskQueue = res.locals.tasks;
  try {
    queue.add(sendConfirmationEmail, Number(req.params.id));
  } catch (error) {
    if (error instanceof QueueFullError) {
      res.status(503).end();
      return;
    }
    throw error;
  }
  res.status(201).end();
}

/** Graceful shutdown: stop accepting requests, then wait for the queued tasks. */
export async function shutdown(server: Server): Promise<number> {
  server.close();
  const before: number = tasks.pending;
  await tasks.drain();
  return before;
}

/** Defined tasks: typed like plain functions, runnable in this process or by a BullMQ worker. */
export const sendReceipt = defineTask('send-receipt', async (orderId: string, cents: number) => {
  await sendConfirmationEmail(cents);
  console.log(orderId);
});
export const warmCache: DefinedTask<[], void> = defineTask('warm-cache', refreshCache);
const receiptTask: DefinedTask<[string, number], Promise<void>> = sendReceipt;
export const receiptName: string = receiptTask.taskName;
export const direct: Promise<void> = sendReceipt('o-1', 1299);

app.post('/orders/:id', (req, res) => {
  res.locals.tasks.add(sendReceipt, String(req.params.id), 1299).add(warmCache).add(refreshCache);
  res.status(202).end();
});

/** Payload types as users write them: JSON by construction, with no index signature of their own. */
interface OrderPlaced {
  orderId: string;
  lines: readonly { sku: string; quantity: number }[];
  coupon?: string;
  shippedAt: string | null;
  status: 'paid' | 'refunded';
}
type Address = { street: string; city: string; country?: string };
type JsonValue = string | number | boolean | null | JsonValue[] | { [key: string]: JsonValue };
enum Priority { Low, High }

export const payloadTasks = [
  defineTask('order-placed', async (event: OrderPlaced, attempt: number) => console.log(event.orderId, attempt)),
  defineTask('ship', (to: Address, items: [sku: string, quantity: number][], note?: string) => console.log(to.city, items, note)),
  defineTask('any-json', (value: JsonValue) => console.log(value)),
  defineTask('tagged', (tags: Record<string, number>, ...ids: string[]) => console.log(tags, ids)),
  defineTask('prioritised', (priority: Priority, flags: readonly boolean[]) => console.log(priority, flags)),
  defineTask('checked-at-add', (raw: unknown) => console.log(raw)), // add() checks what types cannot
  defineTask('no-arguments', () => {}),
] as const;

app.post('/orders/:id/placed', (req, res) => {
  const [orderPlaced, ship] = payloadTasks;
  res.locals.tasks
    .add(orderPlaced, { orderId: String(req.params.id), lines: [{ sku: 'a', quantity: 1 }], shippedAt: null, status: 'paid' }, 1)
    .add(ship, { street: '1 Main St', city: 'Springfield' }, [['a', 1]]);
  res.status(202).end();
});

/** The web side of BullMQ, and a transport of one's own. */
export function durableTasks(): BackgroundTasksMiddleware[] {
  const queue = new Queue('tasks', { connection: { host: '127.0.0.1', port: 6379, maxRetriesPerRequest: 1 }, skipWaitingForReady: true });
  const transportOptions: BullmqTransportOptions = { queue, jobOptions: { attempts: 3, backoff: { type: 'exponential', delay: 1000 } }, timeout: 5000 };
  const logOnly: TaskTransport = {
    async send(handedOff: readonly HandedOffTask[]) {
      for (const { name, args } of handedOff) console.log(name, args);
    },
  };
  return [
    backgroundTasks({
      transport: bullmqTransport(transportOptions),
      fallback: 'in-process',
      onError: (error, { name }) => console.error(error instanceof HandOffError ? 'not handed off' : 'failed', name, error),
    }),
    backgroundTasks({ transport: logOnly, fallback: 'none' }),
  ];
}

/** The worker side. */
export function worker(): Worker<TasksJobData> {
  return createWorker({ queueName: 'tasks', connection: { host: '127.0.0.1', port: 6379 }, tasks: [sendReceipt, warmCache], concurrency: 8 });
}

/** A task that takes a signal, an `around` that wraps each task, and a shutdown. */
export async function operated(server: Server): Promise<boolean> {
  const exportOrder = withSignal(async (signal: AbortSignal, orderId: string, attempt: number) => {
    await fetch(`https://example.com/orders/${orderId}?attempt=${attempt}`, { signal });
  });
  const exportDefined = defineTask('export-order', withSignal((signal: AbortSignal, orderId: string) => {
    signal.throwIfAborted();
    return orderId;
  }));
  const operatedTasks = backgroundTasks({
    around: (info: TaskInfo, run: () => unknown) => {
      console.log(info.method, info.url, info.status, info.requestId, info.waitMs, info.durationMs);
      return run();
    },
    onError: async (error: unknown, { name }: TaskInfo) => {
      if (error instanceof ShutdownError) console.error('abandoned', name);
    },
  });
  app.post('/exports/:id', (req, res) => {
    res.locals.tasks.add(exportOrder, String(req.params.id), 1).add(exportDefined, String(req.params.id));
    res.end();
  });
  const options: CloseOptions = { server, timeout: 10_000 };
  const summary: CloseSummary = await operatedTasks.close(options);
  return summary.drained && summary.abandoned === 0 && summary.settled >= 0 && summary.pending === 0;
}

/** Task spans, the default ones and with options, alone and inside an `around` of one's own. */
export function tracedTasks(): BackgroundTasksMiddleware[] {
  const options: TaskSpansOptions = { tracer: trace.getTracer('shop', '1.0.0'), newTrace: (info: TaskInfo) => info.name === 'rebuildIndex' };
  const spans = taskSpans(options);
  return [
    backgroundTasks({ around: taskSpans(), timeout: 60_000 }),
    backgroundTasks({ around: taskSpans({ newTrace: true }) }),
    backgroundTasks({ around: (info, run) => spans(info, () => run()) }),
  ];
}

/** Defined tasks on threads, beside BullMQ for the rest; and a runner of one's own. */
export async function onThreads(queue: Queue): Promise<readonly string[]> {
  const makeThumbnail = defineTask('make-thumbnail', (id: string, width: number) => console.log(id, width));
  const poolOptions: PiscinaTransportOptions = {
    filename: new URL('file:///srv/app/dist/tasks.js'), // in an ES module: new URL('./tasks.js', import.meta.url)
    tasks: [makeThumbnail, sendReceipt],
    maxThreads: 2,
    idleTimeout: 30_000,
    resourceLimits: { maxOldGenerationSizeMb: 256 },
  };
  const threads: PiscinaTransport = piscinaTransport(poolOptions);
  const byPath = piscinaTransport({ filename: '/srv/app/dist/tasks.js' });
  const inline: TaskRunner = {
    kind: 'runner',
    tasks: ['warm-cache'],
    run: async ({ name, args }: HandedOffTask, { signal }: TaskRunOptions) => console.log(name, args, signal.aborted),
  };
  app.use(backgroundTasks({ transport: [threads, inline, bullmqTransport({ queue })], timeout: 30_000 }));
  app.use(backgroundTasks({ transport: byPath }));
  app.post('/photos/:id', (req, res) => {
    res.locals.tasks.add(makeThumbnail, String(req.params.id), 320);
    res.status(202).end();
  });
  console.log(threads.pool.utilization, threads.pool.threads.length);
  return threads.ready;
}

/** Retries: per middleware, per defined task (read-only settings), and a permanent failure. */
export function retried(): BackgroundTasksMiddleware {
  const backoff: RetryBackoff = { type: 'exponential', delay: 1_000 };
  const retry: RetryOptions = { attempts: 3, backoff };
  const options: DefineTaskOptions = { retry: { attempts: 5 } };
  const sendWebhook = defineTask('send-webhook', async (url: string) => {
    const response = await fetch(url, { method: 'POST' });
    if (response.status === 410) throw new PermanentError(`${url} is gone`);
  }, options);
  defineTask('fixed', () => {}, { retry: { attempts: 2, backoff: { type: 'fixed', delay: 0 } } } as const);
  const retriedTasks = backgroundTasks({
    retry,
    onError: (error: unknown, { name, attempt }: TaskInfo) => console.log(name, attempt, error instanceof PermanentError),
  });
  app.post('/hooks', (_req, res) => {
    res.locals.tasks.add(sendWebhook, 'https://example.com/hook');
    res.end();
  });
  const handedOff: HandedOffTask = { name: 'send-webhook', args: [], retry };
  console.log(handedOff.retry?.attempts);
  return retriedTasks;
}

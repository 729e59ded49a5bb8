/*!
 * express-background-tasks/bullmq
 * MIT Licensed
 */

import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { type ConnectionOptions, DelayedError, type Job, type JobsOptions, type Queue, UnrecoverableError, Worker, type WorkerOptions } from 'bullmq';
import { definedName, type DefinedTask } from './definition.js';
import { describeError, invalid, isPermanent } from './errors.js';
import { checkOptions, checkRetry, checkTimeout, type HandedOffTask, type Retry, type TaskStaging, type TaskTransport } from './options.js';
import { debug, retryDelay, withDeadline } from './task.js';

/**
 * The most tasks one job holds. A worker records each success in the job's progress, so a longer
 * job would have Redis rewrite an ever larger progress object after every task.
 */
const MAX_JOB_TASKS = 1000;
/** The longest `failedReason` a worker has Redis store, in characters. */
const MAX_REASON_LENGTH = 4096;
/** The longest stack trace a worker has Redis store per attempt, in characters. */
const MAX_STACK_LENGTH = 16_384;
/** How many failures, or task names, a reason lists before "and N more". */
const MAX_LISTED = 10;
/** How much of each listed failure's message, or of a task or job name, a reason shows. */
const MAX_LISTED_LENGTH = 300;

/**
 * Options of `bullmqTransport()`.
 * @public
 */
export interface BullmqTransportOptions {
  /**
   * The queue the jobs go to, on Redis or on PostgreSQL (`createPostgresBackend`). Create it with
   * `skipWaitingForReady: true` and, in `connection`, `maxRetriesPerRequest: 1` (on PostgreSQL,
   * `connectionTimeoutMillis: 1000` and `query_timeout: 5000`), so that a hand-off fails within
   * seconds while the server is down instead of waiting for `timeout`.
   */
  readonly queue: Pick<Queue, 'add' | 'addBulk'>;
  /**
   * BullMQ's own options for every job, passed through unchanged (`attempts`, `backoff`,
   * `priority`, `removeOnComplete`, `removeOnFail`…). They override the queue's
   * `defaultJobOptions`. A retry runs again only the tasks of the job that failed. `jobId` is the
   * transport's: a random UUID per job, so that a command ioredis sends again after a reconnect
   * cannot add the job twice. `delay` is the lease's while staging: it needs `stage: false`.
   * @default the queue's `defaultJobOptions`
   */
  readonly jobOptions?: JobsOptions | undefined;
  /**
   * Milliseconds to wait for BullMQ to store a job before the hand-off counts as failed; while
   * staging, also how long a response's end waits for it. A job stored later anyway is run by the
   * workers after a plain hand-off (so with `fallback: 'in-process'` its tasks may run twice), and
   * removed after a staging.
   * @default 10000
   */
  readonly timeout?: number | undefined;
  /**
   * Whether a response's defined tasks are staged before its first byte: stored as a delayed job,
   * the response let through, then the job promoted once the response has been flushed. `false`
   * hands them off after the flush instead, in one job that runs at once: no wait, but a
   * process that dies between the flush and Redis's acknowledgement loses them.
   * @default true
   */
  readonly stage?: boolean | undefined;
  /**
   * Milliseconds a staged job waits for its web process to promote it before it runs anyway: the
   * web process died, or the response is still being flushed to a slow client. Make it longer than
   * your slowest response takes to reach its client.
   * @default 30000
   */
  readonly lease?: number | undefined;
}

/**
 * What a job made by `bullmqTransport()` holds: the tasks of one response.
 * @public
 */
export interface TasksJobData {
  /** The defined tasks one response queued, in the order they were added. */
  readonly tasks: readonly HandedOffTask[];
}

/**
 * Creates the transport that turns each response's defined tasks into one BullMQ job, which holds
 * them in order. Run the jobs with `createWorker()`. By default it stages: the tasks are stored in
 * a job delayed by `lease` before the response's end is let through, and released once the
 * response has been flushed. The jobs of the responses that start in the same turn of the event
 * loop are added in one `addBulk()`. A
 * hand-off of more than 1000 tasks is refused: each of them is reported as a `HandOffError`.
 * @param options - see `BullmqTransportOptions`
 * @return the transport, for `backgroundTasks({ transport })`
 * @throws {TypeError} when `queue` is not a BullMQ queue, `jobOptions` not an object, `stage` not a
 *   boolean, `jobOptions.delay` or `lease` given along with staging's opposite, or an option unknown
 *   (`jobOptions` itself is BullMQ's, passed through unchecked)
 * @throws {RangeError} when `timeout` or `lease` is not a positive number of milliseconds
 * @example
 * const queue = new Queue('tasks', { connection: { host, port, maxRetriesPerRequest: 1 }, skipWaitingForReady: true });
 * app.use(backgroundTasks({ transport: bullmqTransport({ queue, jobOptions: { attempts: 3 } }) }));
 * @public
 */
export function bullmqTransport(options: BullmqTransportOptions): TaskTransport {
  checkOptions('bullmqTransport()', options, TRANSPORT_OPTION_NAMES, '{ queue }');
  const { queue, jobOptions, timeout = 10_000, stage = true, lease } = options;
  if (typeof (queue as Partial<Queue> | null)?.add !== 'function' || typeof (queue as Partial<Queue>).addBulk !== 'function') {
    throw new TypeError(invalid('queue', 'a BullMQ Queue', queue));
  }
  if (jobOptions !== undefined && (jobOptions === null || typeof jobOptions !== 'object')) {
    throw new TypeError(invalid('jobOptions', 'an object of BullMQ job options', jobOptions));
  }
  const timeoutMs = checkTimeout(timeout, false);
  if (typeof stage !== 'boolean') {
    throw new TypeError(invalid('stage', 'a boolean', stage));
  }
  if (stage && jobOptions?.delay !== undefined) {
    throw new TypeError(invalid('jobOptions.delay', 'left out while staging (the delay is the lease); pass stage: false to delay jobs', jobOptions.delay));
  }
  if (!stage && lease !== undefined) {
    throw new TypeError(invalid('lease', 'left out with stage: false (nothing is staged)', lease));
  }

  const transport: TaskTransport = {
    kind: 'job-queue',
    send(tasks: readonly HandedOffTask[]): Promise<unknown> {
      const refused = refuseLongJob(tasks);
      if (refused !== undefined) return refused;
      return withTimeout(queue.add(jobName(tasks), { tasks } satisfies TasksJobData, { ...jobOptions, jobId: randomUUID() }), timeoutMs, 'store the job');
    },
  };
  if (!stage) return transport;
  return { ...transport, staging: stagingOf(queue, jobOptions, checkTimeout(lease ?? 30_000, false, 'lease'), timeoutMs) };
}

/** The keys `bullmqTransport()` reads; `satisfies` keeps the list in step with the interface. */
const TRANSPORT_OPTION_NAMES = Object.keys({ queue: true, jobOptions: true, timeout: true, stage: true, lease: true } satisfies Record<keyof BullmqTransportOptions, true>);

/**
 * Options of `createWorker()`: BullMQ's `WorkerOptions`, passed through, and the task definitions.
 * @public
 */
export interface CreateWorkerOptions extends Omit<WorkerOptions, 'connection'> {
  /** The name of the queue given to `bullmqTransport()`. */
  readonly queueName: string;
  /**
   * Where the queue's store is, as BullMQ takes it: Redis's host and port or client, or with
   * `backend: createPostgresBackend`, PostgreSQL's pool options (`{ connectionString }`).
   */
  readonly connection: ConnectionOptions;
  /**
   * BullMQ's backend factory for a queue that is not on Redis: `createPostgresBackend` (BullMQ 6)
   * for one on PostgreSQL, the factory the queue given to `bullmqTransport()` was made with.
   * @default BullMQ's default, Redis
   */
  readonly backend?: ((...args: never[]) => unknown) | undefined;
  /** The `defineTask()` definitions this worker runs; a job naming any other task fails. */
  readonly tasks: readonly DefinedTask[];
}

/**
 * Creates a BullMQ worker that runs the jobs of `bullmqTransport()`: the tasks of each job one
 * after another, in order. A task with a `retry` (its definition's, or the middleware's, which the
 * job carries) runs again, after its backoff, while the job waits; the tasks behind it wait too.
 * A task that still fails does not stop the tasks behind it; the job then fails with that task's
 * error (an `AggregateError` when several failed), and a retry of the job (BullMQ's `attempts`)
 * runs only the tasks that have neither succeeded nor thrown a `PermanentError` (or BullMQ's
 * `UnrecoverableError`), each with its `retry` afresh. A job whose every failure is permanent fails
 * with an `UnrecoverableError`: BullMQ does not retry it. `worker.close()` cuts a task's wait for
 * its next attempt short: its job goes back to the queue, delayed until that attempt was due, and
 * runs again there on any worker, skipping the tasks that succeeded. A task name this worker does
 * not know fails the job visibly,
 * and can be retried (by a newer worker, in a rolling deploy). A job that `bullmqTransport()` did not
 * make (no `tasks` array, more than 1000 tasks, a task that is not `{ name, args }`) fails at once
 * with BullMQ's `UnrecoverableError`, running none of its tasks. What a worker has Redis store of a
 * failure is bounded: a `failedReason` of at most 4096 characters, listing at most ten failures.
 * @param options - see `CreateWorkerOptions`
 * @return the BullMQ `Worker`, already running (unless `autorun: false`); `await worker.close()`
 *   to stop it
 * @throws {TypeError} when `queueName` is not a non-empty string, `backend` not a function, or
 *   `tasks` holds something other than a defined task, or one name twice
 * @example
 * const worker = createWorker({ queueName: 'tasks', connection, tasks: [sendConfirmationEmail] });
 * // on PostgreSQL:
 * createWorker({ queueName: 'tasks', connection: { connectionString }, backend: createPostgresBackend, tasks });
 * @public
 */
export function createWorker(options: CreateWorkerOptions): Worker<TasksJobData> {
  if (options === null || typeof options !== 'object') {
    throw new TypeError(invalid('options', 'an object', options));
  }
  const { queueName, tasks, backend, ...workerOptions } = options;
  if (typeof queueName !== 'string' || queueName === '') {
    throw new TypeError(invalid('queueName', 'a non-empty string', queueName));
  }
  if (backend !== undefined && typeof backend !== 'function') {
    throw new TypeError(invalid('backend', 'a BullMQ backend factory such as createPostgresBackend', backend));
  }
  if (!Array.isArray(tasks)) {
    throw new TypeError(invalid('tasks', 'an array of defineTask() definitions', tasks));
  }
  const byName = new Map<string, DefinedTask>();
  tasks.forEach((task: unknown, index) => {
    const name = typeof task === 'function' ? definedName(task) : undefined;
    if (name === undefined) {
      throw new TypeError(invalid(`tasks[${index}]`, 'a task made by defineTask()', task));
    }
    if (byName.has(name)) {
      throw new TypeError(invalid(`tasks[${index}]`, 'a task whose name no other task has', name));
    }
    byName.set(name, task as DefinedTask);
  });

  const closing = new AbortController(); // aborted by close(): stops the waits for a retry
  // BullMQ 6's fourth argument, typed by the factory: Redis's when undefined.
  const worker = new Worker<TasksJobData>(queueName, (job, token) => runJob(job, token, byName, closing.signal), workerOptions, backend as never);
  const closeWorker = worker.close.bind(worker);
  worker.close = (force?: boolean) => {
    closing.abort();
    return closeWorker(force);
  };
  return worker;
}

/**
 * What `job.progress` holds while a job's tasks run: the indexes of the tasks that have succeeded,
 * and of those that failed for good (`PermanentError`), so that a retry of the job skips them.
 */
interface TasksJobProgress {
  readonly succeeded: number[];
  readonly permanent?: number[];
}

/**
 * Runs the tasks of one job in order, each retried as its `retry` says, each failure recorded and
 * the next task run anyway.
 * @param token - the job's lock, for moving it back to the queue when the worker closes
 * @param closing - aborted when the worker closes
 * @throws {UnrecoverableError} before running anything, when the job was not made by
 *   `bullmqTransport()`; after, when every failure was permanent
 * @throws {DelayedError} once the job has gone back to the queue: the worker closed while a task
 *   waited for its next attempt
 * @throws the failed task's error, or an `AggregateError` of them when several failed
 * @private
 */
async function runJob(job: Job<TasksJobData>, token: string | undefined, byName: ReadonlyMap<string, DefinedTask>, closing: AbortSignal): Promise<void> {
  const tasks = checkJob(job);
  const succeeded = new Set(indexesBefore(job.progress, 'succeeded', tasks.length));
  const permanent = new Set(indexesBefore(job.progress, 'permanent', tasks.length));
  const failures: Error[] = [];
  let permanentFailures = 0;
  for (const [index, { name, args, retry }] of tasks.entries()) {
    if (succeeded.has(index) || permanent.has(index)) continue;
    const task = byName.get(name);
    if (task === undefined) {
      failures.push(new Error(`Unknown task "${clip(name, MAX_LISTED_LENGTH)}" in job ${job.id}: this worker runs ` +
        `${listed([...byName.keys()], String, ', ') || 'no tasks'}. Pass its defineTask() definition to createWorker({ tasks }).`));
      continue;
    }
    // Checked with the job: its defaults filled in, as a job made elsewhere may leave them out.
    const failure = await runWithRetries(job, token, name, () => task(...(args as never)), checkRetry(retry, 'retry'), closing);
    if (failure === undefined) {
      succeeded.add(index);
    } else {
      failures.push(toFailure(name, failure.error));
      if (!isPermanentHere(failure.error)) continue;
      permanentFailures++;
      permanent.add(index);
    }
    if (tasks.length > 1) await job.updateProgress(progressOf(succeeded, permanent));
  }
  if (failures.length === 0) return;
  const reason = failures.length === 1
    ? (failures[0] as Error).message
    : clip(`${failures.length} of the ${tasks.length} tasks of job ${job.id} failed: ${listed(failures, (failure) => clip(failure.message, MAX_LISTED_LENGTH), '; ')}`, MAX_REASON_LENGTH);
  if (permanentFailures === failures.length) throw Object.assign(new UnrecoverableError(reason), { cause: failures.length === 1 ? failures[0] : failures });
  if (failures.length === 1) throw failures[0];
  throw new AggregateError(failures, reason);
}

/**
 * Runs one task of a job, and again after its backoff while its `retry` allows.
 * @param run - calls the task once
 * @return `undefined` once an attempt succeeded, otherwise what the last attempt threw (which may
 *   be `undefined` itself)
 * @throws {DelayedError} when the worker closed during a wait, once the job is back in the queue
 * @private
 */
async function runWithRetries(job: Job, token: string | undefined, name: string, run: () => unknown, retry: Retry | undefined, closing: AbortSignal): Promise<{ error: unknown } | undefined> {
  for (let attempt = 1; ; attempt++) {
    try {
      debug('job %s: started %s%s', job.id, name, attempt === 1 ? '' : `, attempt ${attempt} of ${(retry as Retry).attempts}`);
      await run();
      debug('job %s: finished %s', job.id, name);
      return undefined;
    } catch (error) {
      const delayMs = isPermanentHere(error) ? undefined : retryDelay(retry, attempt, error);
      if (delayMs === undefined) {
        debug('job %s: failed %s%s', job.id, name, attempt === 1 ? '' : ` at attempt ${attempt}`);
        return { error };
      }
      debug('job %s: failed %s, attempt %d of %d, retrying in %d ms', job.id, name, attempt, (retry as Retry).attempts, delayMs);
      const dueAt = Date.now() + delayMs;
      try {
        await sleep(delayMs, undefined, { signal: closing });
      } catch {
        // The worker is closing: let the next attempt run later, on any worker.
        debug('job %s: the worker is closing; back to the queue until the next attempt of %s', job.id, name);
        await job.moveToDelayed(dueAt, token);
        throw new DelayedError();
      }
    }
  }
}

/**
 * @return whether `error` says that running its task again cannot help: a `PermanentError`, or
 *   BullMQ's `UnrecoverableError`
 * @private
 */
function isPermanentHere(error: unknown): boolean {
  try {
    return isPermanent(error) || error instanceof UnrecoverableError;
  } catch {
    return false; // a revoked proxy: an ordinary failure
  }
}

/**
 * @return the job progress recording `succeeded` and `permanent`, the latter only when there are
 * @private
 */
function progressOf(succeeded: ReadonlySet<number>, permanent: ReadonlySet<number>): TasksJobProgress {
  return permanent.size === 0 ? { succeeded: [...succeeded] } : { succeeded: [...succeeded], permanent: [...permanent] };
}

/**
 * @return the job's tasks, once the whole job has been checked to be what `bullmqTransport()` makes
 * @throws {UnrecoverableError} naming the first part of the job that is not
 * @private
 */
function checkJob(job: Job<TasksJobData>): readonly HandedOffTask[] {
  const tasks: unknown = (job.data as Partial<TasksJobData> | null)?.tasks;
  if (!Array.isArray(tasks)) {
    throw new UnrecoverableError(clip(`${jobLabel(job)} holds no tasks: was it added by bullmqTransport()?`, MAX_REASON_LENGTH));
  }
  const otherKey = Object.keys(job.data).find((key) => key !== 'tasks');
  if (otherKey !== undefined) refuseMalformed(job, `Expected the job's data to hold only \`tasks\`, got \`${clip(otherKey, MAX_LISTED_LENGTH)}\` too`);
  refuseMalformed(job, findMalformed(tasks, 'tasks'));
  return tasks as HandedOffTask[];
}

/**
 * @throws {UnrecoverableError} saying what `problem` is with the job, when there is one
 * @private
 */
function refuseMalformed(job: Job, problem: string | undefined): void {
  if (problem === undefined) return;
  throw new UnrecoverableError(clip(`${jobLabel(job)} was not made by bullmqTransport(): ${problem}`, MAX_REASON_LENGTH));
}

/**
 * @return the job as failure messages name it: `Job 7 (send,audit)`
 * @private
 */
function jobLabel(job: Job): string {
  return `Job ${job.id} (${clip(job.name, MAX_LISTED_LENGTH)})`;
}

/**
 * @param path - where the tasks are in the job's data, for the message
 * @return what is wrong with the first task that is not a `{ name, args }`, or with their number
 * @private
 */
function findMalformed(tasks: readonly unknown[], path: string): string | undefined {
  if (tasks.length > MAX_JOB_TASKS) return tooManyTasks(tasks.length, path);
  for (const [index, task] of tasks.entries()) {
    if (task === null || typeof task !== 'object' || Array.isArray(task)) {
      return invalid(`${path}[${index}]`, 'an object { name, args }', task);
    }
    const { name, args, retry } = task as Partial<Record<keyof HandedOffTask, unknown>>;
    if (typeof name !== 'string' || name === '') return invalid(`${path}[${index}].name`, 'a non-empty string', name);
    if (!Array.isArray(args)) return invalid(`${path}[${index}].args`, 'an array of arguments', args);
    try {
      checkRetry(retry, `${path}[${index}].retry`);
    } catch (error) {
      return (error as Error).message;
    }
  }
  return undefined;
}

/**
 * The two-phase form of `bullmqTransport()`: each response's tasks in one job, delayed by the
 * lease; the jobs of the responses that start in the same turn of the event loop are added in one
 * `addBulk()`. A release promotes the job, a discard removes it.
 * @param queue - where the jobs go
 * @param jobOptions - the user's job options
 * @param lease - the staged jobs' delay, ms
 * @param timeoutMs - how long a promotion or removal may take
 * @private
 */
function stagingOf(queue: Pick<Queue, 'add' | 'addBulk'>, jobOptions: JobsOptions | undefined, lease: number, timeoutMs: number): TaskStaging {
  const stageTurn = perTurn<Later<readonly HandedOffTask[]>>((staged) => {
    const jobs = staged.map(({ value: tasks }) => ({ name: jobName(tasks), data: { tasks } satisfies TasksJobData, opts: { ...jobOptions, delay: lease, jobId: randomUUID() } }));
    // Whatever a stand-in queue throws or resolves with ends as these stagings' failure.
    Promise.resolve()
      .then(() => queue.addBulk(jobs))
      .then((stored) => staged.map((_later, index) => stored[index]))
      .then(
        (stored) => staged.forEach((later, index) => later.resolve(stored[index])),
        (error: unknown) => staged.forEach((later) => later.reject(error)),
      );
  });
  return {
    timeout: timeoutMs,
    stage(tasks: readonly HandedOffTask[]): Promise<unknown> {
      return refuseLongJob(tasks) ?? new Promise((resolve, reject) => stageTurn({ value: tasks, resolve, reject }));
    },
    release(job: unknown): Promise<unknown> {
      return withTimeout(Promise.resolve().then(() => (job as Job).promote()), timeoutMs, 'promote the staged job');
    },
    discard(job: unknown): Promise<unknown> {
      return withTimeout(Promise.resolve().then(() => (job as Job).remove()), timeoutMs, 'remove the staged job');
    },
  };
}

/**
 * A call waiting for its turn: its argument and its promise's functions.
 * @private
 */
interface Later<T> {
  readonly value: T;
  readonly resolve: (result: unknown) => void;
  readonly reject: (error: unknown) => void;
}

/**
 * @return a function that collects items and hands those of one turn of the event loop to `run`
 *   together, at the end of the turn
 * @private
 */
function perTurn<T>(run: (items: T[]) => void): (item: T) => void {
  let items: T[] = [];
  const runTurn = (): void => {
    const turn = items;
    items = [];
    run(turn);
  };
  return (item) => {
    if (items.push(item) === 1) setImmediate(runTurn);
  };
}

/**
 * @return a rejection when `tasks` are more than a job holds
 * @private
 */
function refuseLongJob(tasks: readonly HandedOffTask[]): Promise<never> | undefined {
  if (tasks.length <= MAX_JOB_TASKS) return undefined;
  return Promise.reject(new RangeError(`${tooManyTasks(tasks.length, 'tasks')}: a worker refuses a longer job. Queue one defined task that fans out instead.`));
}

/**
 * @return the name of a job holding `tasks`: their names, joined by `,`
 * @private
 */
function jobName(tasks: readonly HandedOffTask[]): string {
  return tasks.map((task) => task.name).join(',');
}

/**
 * @param path - where the tasks are, for the message
 * @return the message for a job of `count` tasks, more than a worker runs
 * @private
 */
function tooManyTasks(count: number, path: string): string {
  return `Expected \`${path}\` to hold at most ${MAX_JOB_TASKS} tasks, got ${count}`;
}

/**
 * Turns whatever a task threw into an Error BullMQ can store. BullMQ reads the `name`, `message` and
 * `stack` of what the processor throws: a getter that throws there (or a revoked Proxy, which even
 * `instanceof` throws on) would leave the job active until the stalled-job check fails it.
 * @param name - the task's name, for the message
 * @param thrown - what the task threw or rejected with
 * @return `thrown` itself when it is a readable Error of bounded size, otherwise a new Error with a
 *   bounded message (and `thrown` as its `cause`)
 * @private
 */
function toFailure(name: string, thrown: unknown): Error {
  let isError = false;
  try {
    isError = thrown instanceof Error;
    if (isError) {
      const { name: errorName, message, stack } = thrown as Error;
      if (typeof errorName === 'string' && typeof message === 'string' && (stack === undefined || typeof stack === 'string')) {
        if (message.length <= MAX_REASON_LENGTH && (stack?.length ?? 0) <= MAX_STACK_LENGTH) return thrown as Error;
        const bounded = new Error(clip(message, MAX_REASON_LENGTH), { cause: thrown });
        bounded.name = errorName; // an UnrecoverableError stays one
        if (stack !== undefined) bounded.stack = clip(stack, MAX_STACK_LENGTH);
        return bounded;
      }
    }
  } catch {
    // Described below, without touching it again.
  }
  const described = isError ? 'an Error whose name, message or stack cannot be read' : `${describeError(thrown)}, not an Error`;
  return new Error(clip(`Task ${name} failed with ${described}`, MAX_REASON_LENGTH), { cause: thrown });
}

/**
 * @return the first `MAX_LISTED` of `items`, each shown by `show`, joined by `separator`, then how
 *   many more there are
 * @private
 */
function listed<T>(items: readonly T[], show: (item: T) => string, separator: string): string {
  const shown = items.slice(0, MAX_LISTED).map(show);
  if (items.length > MAX_LISTED) shown.push(`and ${items.length - MAX_LISTED} more`);
  return shown.join(separator);
}

/**
 * @return `text`, cut to `max` characters, the last of them `…`, when it is longer
 * @private
 */
function clip(text: string, max: number): string {
  return text.length <= max ? text : `${text.slice(0, max - 1)}…`;
}

/**
 * @return the indexes, among the job's `count` tasks, that a previous attempt recorded as `which`
 * @private
 */
function indexesBefore(progress: unknown, which: keyof TasksJobProgress, count: number): number[] {
  const indexes: unknown = (progress as Partial<TasksJobProgress> | null)?.[which];
  if (!Array.isArray(indexes)) return [];
  return indexes.filter((index): index is number => Number.isInteger(index) && index >= 0 && index < count);
}

/**
 * @param what - what BullMQ was asked to do, for the message: `store the job`…
 * @return `promise`, or a rejection once `ms` have passed without it settling
 * @private
 */
function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  return withDeadline(promise, ms, (): never => {
    throw new Error(`BullMQ did not ${what} within ${ms} ms`);
  });
}

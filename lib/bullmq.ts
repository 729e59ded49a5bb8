/*!
 * express-background-tasks/bullmq
 * MIT Licensed
 */

import { randomUUID } from 'node:crypto';
import type { Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { type ConnectionOptions, DelayedError, type Job, type JobsOptions, Queue, UnrecoverableError, Worker, type WorkerOptions } from 'bullmq';
import { definedName, type DefinedTask } from './definition.js';
import { describeError, invalid, isPermanent } from './errors.js';
import { checkOptions, checkRetry, checkTimeout, type HandedOffTask, type Retry, type TaskStaging, type TaskTransport } from './options.js';
import { debug, retryDelay } from './task.js';

/**
 * The most tasks one job holds. A worker records each success in the job's progress, so a longer
 * job would have Redis rewrite an ever larger progress object after every task.
 */
const MAX_JOB_TASKS = 1000;
/**
 * Milliseconds the responses released from a shared staged job wait for the others in it (still
 * being flushed) before they go in a job of their own. Responses that end in the same turn are
 * mostly flushed within a few turns of each other; only a slow client takes longer.
 */
const SHARED_JOB_GRACE_MS = 100;
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
   * The queue the jobs go to. Create it with `skipWaitingForReady: true` and, in `connection`,
   * `maxRetriesPerRequest: 1`, so that a hand-off fails within a second while Redis is down instead
   * of waiting for `timeout`.
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
   * Milliseconds to wait for Redis to store a job before the hand-off counts as failed; while
   * staging, also how long a response's end waits for it. A job stored later anyway is run by the
   * workers after a plain hand-off (so with `fallback: 'in-process'` its tasks may run twice), and
   * removed after a staging.
   * @default 10000
   */
  readonly timeout?: number | undefined;
  /**
   * Whether a response's defined tasks are staged before its end: stored as a delayed job, the
   * response let through, then the job promoted once the response has been flushed. `false` hands
   * them off after the flush instead, in one job that runs at once: no wait before the end, but a
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
 * What a staged job holds when several responses ended in the same turn of the event loop: their
 * tasks, one entry per response. A worker made by `createWorker()` adds one `TasksJobData` job per
 * entry, then completes this one.
 * @public
 */
export interface BatchJobData {
  /** The tasks of each response, in the order the responses ended. */
  readonly batch: readonly TasksJobData[];
}

/**
 * Creates the transport that turns each response's defined tasks into one BullMQ job, which holds
 * them in order. Run the jobs with `createWorker()`. By default it stages: the tasks are stored in
 * a job delayed by `lease` before the response's end is let through, and released once the
 * response has been flushed. The responses whose ends are held in the same turn of the event loop
 * share one staged job (`BatchJobData`), which the worker splits into one job per response. A
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
 * after another, in order. A staged job holding several responses (`BatchJobData`) is split into
 * one job per response, with the same job options, then completes. A task with a `retry` (its
 * definition's, or the middleware's, which the job carries) runs again, after its backoff, while
 * the job waits; the tasks behind it wait too. A task that still fails does not stop the tasks
 * behind it; the job then fails with that task's error (an `AggregateError` when several failed),
 * and a retry of the job (BullMQ's `attempts`) runs only the tasks that have neither succeeded nor
 * thrown a `PermanentError` (or BullMQ's `UnrecoverableError`), each with its `retry` afresh. A job
 * whose every failure is permanent fails with an `UnrecoverableError`: BullMQ does not retry it.
 * `worker.close()` cuts a task's wait for its next attempt short: its job goes back to the queue,
 * delayed until that attempt was due, and runs again there on any worker, skipping the tasks that
 * succeeded. A task name this worker does not know fails the job visibly,
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
export function createWorker(options: CreateWorkerOptions): Worker<TasksJobData | BatchJobData> {
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

  let splitInto: Queue | undefined; // made for the first batch: most workers never see one
  const closing = new AbortController(); // aborted by close(): stops the waits for a retry
  const worker = new Worker<TasksJobData | BatchJobData>(queueName, (job, token) => {
    const batch = (job.data as Partial<BatchJobData> | null)?.batch;
    if (batch === undefined) return runJob(job as Job<TasksJobData>, token, byName, closing.signal);
    const { connection, prefix } = workerOptions;
    if (splitInto === undefined) {
      splitInto = new Queue(queueName, prefix === undefined ? { connection } : { connection, prefix }, backend as never);
      // Its connection's errors are the worker's: without a listener BullMQ writes them to stderr.
      splitInto.on('error', (error) => worker.emit('error', error));
    }
    return splitBatch(job, checkBatch(job, batch), splitInto);
  }, workerOptions, backend as never); // BullMQ 6's fourth argument, typed by the factory: Redis's when undefined
  const closeWorker = worker.close.bind(worker);
  worker.close = async (force?: boolean) => {
    closing.abort();
    await closeWorker(force);
    await splitInto?.close();
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
  refuseMalformed(job, findMalformed(tasks, 'tasks'));
  return tasks as HandedOffTask[];
}

/**
 * @return the batch's entries, once each has been checked to hold what `bullmqTransport()` puts there
 * @throws {UnrecoverableError} naming the first entry that does not
 * @private
 */
function checkBatch(job: Job, batch: unknown): readonly TasksJobData[] {
  refuseMalformed(job, findMalformedBatch(batch));
  return batch as TasksJobData[];
}

/**
 * @return what is wrong with a batch: not an array, too long, or the first entry without a
 *   `tasks` array or with a malformed task
 * @private
 */
function findMalformedBatch(batch: unknown): string | undefined {
  if (!Array.isArray(batch)) return invalid('batch', 'an array of { tasks }', batch);
  if (batch.length > MAX_JOB_TASKS) return `Expected \`batch\` to hold at most ${MAX_JOB_TASKS} responses, got ${batch.length}`;
  for (const [index, entry] of batch.entries()) {
    const tasks: unknown = (entry as Partial<TasksJobData> | null)?.tasks;
    if (!Array.isArray(tasks)) return invalid(`batch[${index}].tasks`, 'an array of tasks', tasks);
    const problem = findMalformed(tasks, `batch[${index}].tasks`);
    if (problem !== undefined) return problem;
  }
  return undefined;
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
 * Adds one job per entry of a staged batch, with the batch job's options. Their ids come from the
 * batch job's, so when this runs again (the worker died before the batch job completed), BullMQ
 * adds none of those it still holds.
 * @private
 */
async function splitBatch(job: Job, batch: readonly TasksJobData[], queue: Queue): Promise<void> {
  const jobOptions: JobsOptions = { ...job.opts };
  delete jobOptions.delay; // the lease
  delete jobOptions.jobId;
  await queue.addBulk(batch.map((data, index) => ({ name: jobName(data.tasks), data, opts: { ...jobOptions, jobId: `${job.id}-${index}` } })));
  debug('job %s: split into %d jobs, one per response', job.id, batch.length);
}

/**
 * @param path - where `tasks` are in the job's data, for the message: `tasks`, `batch[2].tasks`
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
 * The two-phase form of `bullmqTransport()`. The responses whose ends are held in the same turn of
 * the event loop are staged together, in one delayed job (or more, of at most 1000 tasks each),
 * all added in one `addBulk()`: BullMQ's cost is per job, and most of a staged response's cost
 * was its job. The job is promoted once every response in it has been released, and removed when
 * none has. When some are released while others still wait for their flush (a slow client), the
 * released ones go in a job of their own that runs at once, and the staged job keeps only the
 * rest; a discarded response is left out of what finally runs. The finishing Redis calls of one
 * turn are sent while the queue's connection is corked: one write to Redis, at the next turn.
 * @param queue - where the jobs go
 * @param jobOptions - the user's job options
 * @param lease - the staged jobs' delay, ms
 * @param timeoutMs - how long a promotion or removal may take
 * @private
 */
function stagingOf(queue: Pick<Queue, 'add' | 'addBulk'>, jobOptions: JobsOptions | undefined, lease: number, timeoutMs: number): TaskStaging {
  const connection = connectionOf(queue);
  const stageTurn = perTurn<Later<readonly HandedOffTask[]>>((staged) => {
    const batches = batchesOf(staged);
    const jobs = batches.map(({ entries }) => ({ ...jobOf(entries), opts: { ...jobOptions, delay: lease, jobId: randomUUID() } }));
    // Whatever a stand-in queue throws or resolves with ends as these stagings' failure.
    Promise.resolve()
      .then(() => queue.addBulk(jobs))
      .then((stored) => batches.forEach((batch, index) => (batch.job = stored[index])))
      .then(
        () => batches.forEach((batch) => batch.entries.forEach((entry) => entry.later.resolve({ batch, entry } satisfies Receipt))),
        (error: unknown) => staged.forEach((entry) => entry.reject(error)),
      );
  });
  const finishTurn = perTurn<Finish>((finished) => {
    corkForTurn(connection);
    const touched = new Set<Batch>();
    for (const call of finished) {
      const { batch, entry } = call.value;
      entry.state = call.release ? 'released' : 'discarded';
      batch.waiting--;
      batch.calls.push(call);
      touched.add(batch);
    }
    for (const batch of touched) {
      if (batch.waiting === 0) {
        clearTimeout(batch.grace);
        // After the jobs of released responses still being added: one that fails goes back in this one.
        settleCalls(batch, () => batch.sending.then(() => finishBatch(batch)), timeoutMs);
      } else if (batch.grace === undefined) {
        batch.grace = setTimeout(() => {
          batch.grace = undefined;
          settleCalls(batch, () => sendReleased(queue, batch, jobOptions, timeoutMs), timeoutMs);
        }, SHARED_JOB_GRACE_MS);
      }
    }
  });
  return {
    timeout: timeoutMs,
    stage(tasks: readonly HandedOffTask[]): Promise<unknown> {
      return refuseLongJob(tasks) ?? new Promise((resolve, reject) => stageTurn({ value: tasks, resolve, reject }));
    },
    release(receipt: unknown): Promise<unknown> {
      return new Promise((resolve, reject) => finishTurn({ value: receipt as Receipt, release: true, resolve, reject }));
    },
    discard(receipt: unknown): Promise<unknown> {
      return new Promise((resolve, reject) => finishTurn({ value: receipt as Receipt, release: false, resolve, reject }));
    },
  };
}

/**
 * The responses staged in one job, and where each stands: `staged` (waiting for its release or
 * discard), `released`, `discarded`, or `sent` (released early, in a job of its own).
 * @private
 */
interface Batch {
  /** The staged job, once Redis has stored it. */
  job: Job | undefined;
  readonly entries: BatchEntry[];
  /** How many entries are still `staged`. */
  waiting: number;
  /** The `release()` and `discard()` calls not settled yet. */
  readonly calls: Finish[];
  /** Set while released or discarded entries wait for the rest: when it fires, they stop waiting. */
  grace: NodeJS.Timeout | undefined;
  /** Settles once the jobs of entries sent on their own, and the updates after them, have settled. */
  sending: Promise<unknown>;
}

/** A `release()` or `discard()` call. @private */
type Finish = Later<Receipt> & { readonly release: boolean };

/** One response's tasks in a `Batch`, and the call that staged them. @private */
interface BatchEntry {
  readonly later: Later<readonly HandedOffTask[]>;
  state: 'staged' | 'released' | 'discarded' | 'sent';
}

/** What `stage()` resolves with, for `release()` or `discard()`: a response's place in its batch. @private */
interface Receipt {
  readonly batch: Batch;
  readonly entry: BatchEntry;
}

/**
 * @return the staging calls of one turn, in batches of at most `MAX_JOB_TASKS` tasks in all (each
 *   call holds at most that many)
 * @private
 */
function batchesOf(staged: readonly Later<readonly HandedOffTask[]>[]): Batch[] {
  const batches: Batch[] = [];
  let tasksInLast = Infinity;
  for (const later of staged) {
    const entry: BatchEntry = { later, state: 'staged' };
    const last = batches.at(-1);
    if (last === undefined || tasksInLast + later.value.length > MAX_JOB_TASKS) {
      batches.push({ job: undefined, entries: [entry], waiting: 1, calls: [], grace: undefined, sending: Promise.resolve() });
      tasksInLast = later.value.length;
    } else {
      last.entries.push(entry);
      last.waiting++;
      tasksInLast += later.value.length;
    }
  }
  return batches;
}

/**
 * Once every response of a batch has been released or discarded: promotes its job, or removes it
 * when none was released; a job some of whose responses were discarded, or sent on their own, is
 * updated to hold the rest first.
 * @return the Redis calls' completion
 * @private
 */
function finishBatch(batch: Batch): Promise<unknown> {
  const job = batch.job as Job; // released or discarded only once stored
  const toRun = batch.entries.filter((entry) => entry.state === 'released');
  if (toRun.length === 0) return job.remove();
  if (toRun.length === batch.entries.length) return job.promote(); // none was sent or discarded: never updated
  // Sent on the same connection, so Redis updates the data before it promotes the job.
  return Promise.all([job.updateData(jobOf(toRun).data), job.promote()]);
}

/**
 * Some responses of a batch have been released or discarded, and the others are still being
 * flushed after the grace: sends those released in a job of their own, which runs at once, and
 * leaves the staged job holding only the others, so that none waits for a slow client.
 * @param jobOptions - the user's job options, for the new job
 * @return the Redis calls' completion
 * @private
 */
function sendReleased(queue: Pick<Queue, 'add'>, batch: Batch, jobOptions: JobsOptions | undefined, timeoutMs: number): Promise<unknown> {
  const job = batch.job as Job;
  const update = (): Promise<unknown> => {
    const kept = batch.entries.filter((entry) => entry.state === 'staged' || entry.state === 'released');
    return job.updateData(jobOf(kept).data);
  };
  const released = batch.entries.filter((entry) => entry.state === 'released');
  let done: Promise<unknown>;
  if (released.length === 0) {
    done = update(); // only discarded ones: out of the staged job
  } else {
    for (const entry of released) entry.state = 'sent';
    const { name, data } = jobOf(released);
    const added = withTimeout(Promise.resolve().then(() => queue.add(name, data, { ...jobOptions, jobId: randomUUID() })), timeoutMs, 'add the job');
    // The staged job lets go of them only once their own job is stored: a process that dies in
    // between leaves them in both (to run twice), never in neither. Not added (as far as this
    // process can tell), they stay in the staged job.
    done = added.then(update, (error: unknown) => {
      for (const entry of released) entry.state = 'released';
      throw error;
    });
  }
  batch.sending = Promise.all([batch.sending, done.catch(() => {})]);
  return done;
}

/**
 * Runs `redisCalls`, then settles the batch's `release()` and `discard()` calls made so far with
 * its outcome, or with a timeout after `timeoutMs`.
 * @private
 */
function settleCalls(batch: Batch, redisCalls: () => Promise<unknown>, timeoutMs: number): void {
  const calls = batch.calls.splice(0);
  // Whatever a stand-in queue's job throws ends as these calls' failure.
  withTimeout(Promise.resolve().then(redisCalls), timeoutMs, 'release or remove the job').then(
    () => calls.forEach((call) => call.resolve(undefined)),
    (error: unknown) => calls.forEach((call) => call.reject(error)),
  );
}

/**
 * @return the name and data of a job holding the tasks of `entries`: a `TasksJobData` for one
 *   response, a `BatchJobData` for several
 * @private
 */
function jobOf(entries: readonly BatchEntry[]): { name: string; data: TasksJobData | BatchJobData } {
  if (entries.length === 1) {
    const tasks = (entries[0] as BatchEntry).later.value;
    return { name: jobName(tasks), data: { tasks } };
  }
  const names = new Set(entries.flatMap((entry) => entry.later.value.map((task) => task.name)));
  return { name: `${entries.length} responses: ${[...names].join(',')}`, data: { batch: entries.map((entry) => ({ tasks: entry.later.value })) } };
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
 * The ioredis client of a BullMQ queue, once connected: `getBackend().client` in BullMQ 6,
 * `client` in BullMQ 5. Only its socket is used, to cork it; without one (a Redis Cluster, a
 * stand-in queue), nothing is corked.
 * @private
 */
function connectionOf(queue: object): { redis: { readonly stream?: Pick<Socket, 'cork' | 'uncork' | 'writable'> } | undefined } {
  const connection: ReturnType<typeof connectionOf> = { redis: undefined };
  const { getBackend, client } = queue as { getBackend?: () => { client?: unknown }; client?: unknown };
  const connecting: unknown = typeof getBackend === 'function' ? getBackend.call(queue).client : client;
  if (connecting instanceof Promise) connecting.then((redis: typeof connection.redis) => (connection.redis = redis), () => {});
  return connection;
}

/**
 * Corks the queue's connection until the next turn. Whatever a stand-in queue's client throws
 * there leaves it uncorked: the release and removal calls must still go out, and settle.
 * @private
 */
function corkForTurn(connection: ReturnType<typeof connectionOf>): void {
  try {
    const stream = connection.redis?.stream;
    if (stream?.writable !== true) return;
    stream.cork();
    setImmediate(() => {
      try {
        stream.uncork();
      } catch (error) {
        debug('uncorking the queue\'s connection failed: %s', describeError(error));
      }
    });
  } catch (error) {
    debug('corking the queue\'s connection failed: %s', describeError(error));
  }
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
 * @param path - where the tasks are, for the message: `tasks`, `batch[2].tasks`
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
  let timer: NodeJS.Timeout | undefined;
  const timedOut = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`BullMQ did not ${what} within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timedOut]).finally(() => clearTimeout(timer));
}

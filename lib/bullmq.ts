/*!
 * express-background-tasks/bullmq
 * MIT Licensed
 */

import { randomUUID } from 'node:crypto';
import { type ConnectionOptions, type Job, type JobsOptions, type Queue, UnrecoverableError, Worker, type WorkerOptions } from 'bullmq';
import { definedName, type DefinedTask } from './definition.js';
import { describeError, invalid } from './errors.js';
import { checkOptionNames, checkTimeout, type HandedOffTask, type TaskTransport } from './options.js';
import { debug } from './task.js';

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
  readonly queue: Pick<Queue, 'add'>;
  /**
   * BullMQ's own options for every job, passed through unchanged (`attempts`, `backoff`,
   * `priority`, `delay`, `removeOnComplete`, `removeOnFail`…). They override the queue's
   * `defaultJobOptions`. A retry runs again only the tasks of the job that failed. `jobId` is the
   * transport's: a random UUID per job, so that a command ioredis sends again after a reconnect
   * cannot add the job twice.
   * @default the queue's `defaultJobOptions`
   */
  readonly jobOptions?: JobsOptions | undefined;
  /**
   * Milliseconds to wait for Redis to store a job before the hand-off counts as failed. A job that
   * lands later anyway is run by the workers, so with `fallback: 'in-process'` its tasks may run twice.
   * @default 10000
   */
  readonly timeout?: number | undefined;
}

/**
 * What a job made by `bullmqTransport()` holds.
 * @public
 */
export interface TasksJobData {
  /** The defined tasks one response queued, in the order they were added. */
  readonly tasks: readonly HandedOffTask[];
}

/**
 * Creates the transport that turns each response's defined tasks into one BullMQ job, which holds
 * them in order. Run the jobs with `createWorker()`.
 * @param options - see `BullmqTransportOptions`
 * @return the transport, for `backgroundTasks({ transport })`
 * @throws {TypeError} when `queue` is not a BullMQ queue, `jobOptions` not an object, or an option
 *   unknown (`jobOptions` itself is BullMQ's, passed through unchecked)
 * @throws {RangeError} when `timeout` is not a positive number of milliseconds
 * @example
 * const queue = new Queue('tasks', { connection: { host, port, maxRetriesPerRequest: 1 }, skipWaitingForReady: true });
 * app.use(backgroundTasks({ transport: bullmqTransport({ queue, jobOptions: { attempts: 3 } }) }));
 * @public
 */
export function bullmqTransport(options: BullmqTransportOptions): TaskTransport {
  if (options === null || typeof options !== 'object') {
    throw new TypeError(invalid('options', 'an object', options));
  }
  checkOptionNames('bullmqTransport()', options, TRANSPORT_OPTION_NAMES);
  const { queue, jobOptions, timeout = 10_000 } = options;
  if (typeof (queue as Partial<Queue> | null)?.add !== 'function') {
    throw new TypeError(invalid('queue', 'a BullMQ Queue', queue));
  }
  if (jobOptions !== undefined && (jobOptions === null || typeof jobOptions !== 'object')) {
    throw new TypeError(invalid('jobOptions', 'an object of BullMQ job options', jobOptions));
  }
  const timeoutMs = checkTimeout(timeout, false);

  return {
    send(tasks: readonly HandedOffTask[]): Promise<unknown> {
      const data: TasksJobData = { tasks };
      const name = tasks.map((task) => task.name).join(',');
      return withTimeout(queue.add(name, data, { ...jobOptions, jobId: randomUUID() }), timeoutMs);
    },
  };
}

/** The keys `bullmqTransport()` reads; `satisfies` keeps the list in step with the interface. */
const TRANSPORT_OPTION_NAMES = Object.keys({ queue: true, jobOptions: true, timeout: true } satisfies Record<keyof BullmqTransportOptions, true>);

/**
 * Options of `createWorker()`: BullMQ's `WorkerOptions`, passed through, and the task definitions.
 * @public
 */
export interface CreateWorkerOptions extends Omit<WorkerOptions, 'connection'> {
  /** The name of the queue given to `bullmqTransport()`. */
  readonly queueName: string;
  /** Where Redis is, as BullMQ takes it. */
  readonly connection: ConnectionOptions;
  /** The `defineTask()` definitions this worker runs; a job naming any other task fails. */
  readonly tasks: readonly DefinedTask[];
}

/**
 * Creates a BullMQ worker that runs the jobs of `bullmqTransport()`: the tasks of each job one
 * after another, in order. A failing task does not stop the tasks behind it; the job then fails
 * with that task's error (an `AggregateError` when several failed), and a retry runs only the
 * tasks that have not succeeded yet. A task name this worker does not know fails the job visibly.
 * @param options - see `CreateWorkerOptions`
 * @return the BullMQ `Worker`, already running (unless `autorun: false`); `await worker.close()`
 *   to stop it
 * @throws {TypeError} when `queueName` is not a non-empty string, or `tasks` holds something other
 *   than a defined task, or one name twice
 * @example
 * const worker = createWorker({ queueName: 'tasks', connection, tasks: [sendConfirmationEmail] });
 * @public
 */
export function createWorker(options: CreateWorkerOptions): Worker<TasksJobData> {
  if (options === null || typeof options !== 'object') {
    throw new TypeError(invalid('options', 'an object', options));
  }
  const { queueName, tasks, ...workerOptions } = options;
  if (typeof queueName !== 'string' || queueName === '') {
    throw new TypeError(invalid('queueName', 'a non-empty string', queueName));
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

  return new Worker<TasksJobData>(queueName, (job) => runJob(job, byName), workerOptions);
}

/**
 * What `job.progress` holds while a job's tasks run: the indexes of the tasks that have succeeded,
 * so that a retry skips them.
 */
interface TasksJobProgress {
  readonly succeeded: number[];
}

/**
 * Runs the tasks of one job in order, each failure recorded and the next task run anyway.
 * @throws the failed task's error, or an `AggregateError` of them when several failed
 * @private
 */
async function runJob(job: Job<TasksJobData>, byName: ReadonlyMap<string, DefinedTask>): Promise<void> {
  const tasks = job.data?.tasks;
  if (!Array.isArray(tasks)) {
    throw new UnrecoverableError(`Job ${job.id} (${job.name}) holds no tasks: was it added by bullmqTransport()?`);
  }
  const succeeded = new Set(succeededBefore(job.progress));
  const failures: Error[] = [];
  for (const [index, { name, args }] of tasks.entries()) {
    if (succeeded.has(index)) continue;
    const task = byName.get(name);
    try {
      if (task === undefined) {
        throw new Error(`Unknown task "${name}" in job ${job.id}: this worker runs ${[...byName.keys()].join(', ') || 'no tasks'}. ` +
          'Pass its defineTask() definition to createWorker({ tasks }).');
      }
      debug('job %s: started %s', job.id, name);
      await task(...(args as never));
      debug('job %s: finished %s', job.id, name);
    } catch (error) {
      debug('job %s: failed %s', job.id, name);
      // BullMQ reads `.message` of what the processor throws: anything else would leave the job active.
      failures.push(error instanceof Error ? error : new Error(`Task ${name} failed with ${describeError(error)}, not an Error`, { cause: error }));
      continue;
    }
    succeeded.add(index);
    if (tasks.length > 1) await job.updateProgress({ succeeded: [...succeeded] } satisfies TasksJobProgress);
  }
  if (failures.length === 1) throw failures[0];
  if (failures.length > 1) {
    throw new AggregateError(failures, `${failures.length} of the ${tasks.length} tasks of job ${job.id} failed: ` +
      failures.map((failure) => failure.message).join('; '));
  }
}

/**
 * @return the indexes a previous attempt of the job recorded as succeeded
 * @private
 */
function succeededBefore(progress: unknown): number[] {
  const succeeded = (progress as Partial<TasksJobProgress> | null)?.succeeded;
  return Array.isArray(succeeded) ? succeeded : [];
}

/**
 * @return `promise`, or a rejection once `ms` have passed without it settling
 * @private
 */
function withTimeout<T>(promise: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timedOut = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`Redis did not store the job within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timedOut]).finally(() => clearTimeout(timer));
}

import type { Request } from 'express';
import { describeError, invalid } from './errors.js';

/**
 * Options of `backgroundTasks()`. Read once, when the middleware is created, and never mutated.
 * @public
 */
export interface BackgroundTasksOptions {
  /**
   * Called with each error a task throws or rejects with (and each `TimeoutError`).
   * Whatever it throws, or rejects with when it returns a promise, is caught and written to stderr.
   * @default writes the task name and the error's stack to stderr
   * @example
   * backgroundTasks({ onError: (error, { name, req }) => logger.error({ err: error, task: name, url: req.originalUrl }) })
   */
  readonly onError?: ((error: unknown, info: TaskInfo) => unknown) | undefined;
  /**
   * Milliseconds a task that returned a promise may run before it is reported as a `TimeoutError`
   * and its queue moves on. A task made by `withSignal()` has its signal aborted then, and a task a
   * runner runs (`piscinaTransport()`) is stopped; any other task's work goes on unobserved. A
   * synchronous task in this process cannot be timed out.
   * @default Infinity
   */
  readonly timeout?: number | undefined;
  /**
   * Tasks that may run at once across all responses served by this middleware; the rest wait in
   * FIFO order. The tasks of one response always run one at a time. A task that timed out no
   * longer counts, though its work may go on in this process. A task a runner runs holds its slot
   * while it waits for the runner too: set it to the pool's size to have tasks wait here, in order.
   * @default Infinity
   */
  readonly concurrency?: number | undefined;
  /**
   * Tasks that may be queued or running at once. Past it, `tasks.add()` throws `QueueFullError`.
   * @default Infinity
   */
  readonly maxPending?: number | undefined;
  /**
   * `'always'` runs a response's tasks whatever its status. `'success'` drops the tasks of a
   * response whose status is 400 or more (each drop is traced with `debug`).
   * @default 'always'
   */
  readonly runOn?: 'always' | 'success' | undefined;
  /**
   * Wraps each run of a task in this process: called with the task's info and a function that runs
   * it, and returns what that function returns. Whatever the task does then happens inside what
   * `around` set up: the active span of a tracer, a child logger, a Sentry scope. Call `run` once,
   * before the task's `timeout`: a `run()` that comes after the task was given up on (its timeout,
   * the `close()` deadline) does not start it and returns `undefined`; a second call returns
   * `undefined` too, and fails the task if it comes before `around` has returned or settled.
   * A synchronous `around` keeps a synchronous task synchronous. What `around` throws or rejects
   * with is reported to `onError` as the task's failure.
   * @default none: tasks are called directly
   * @example
   * backgroundTasks({ around: (info, run) => logger.child({ task: info.name, requestId: info.requestId }).run(run) })
   */
  readonly around?: ((info: TaskInfo, run: () => unknown) => unknown) | undefined;
  /**
   * Where tasks made by `defineTask()` go instead of running here: a transport that stores them for
   * workers elsewhere (`bullmqTransport({ queue })` from `express-background-tasks/bullmq`), or one
   * that runs them (`piscinaTransport({ filename })` from `express-background-tasks/piscina`), or a
   * list of such transports, each taking the defined tasks its `tasks` names (the last may take all
   * the others), at most one of them storing. A response's stored tasks are handed off together, in
   * the order they were added: with a transport that has `staging`, stored before the response's
   * end is let through and released to workers once it has been flushed; otherwise sent once it
   * has been flushed. Tasks a runner takes run in their turn in the response's queue, like the
   * functions that run here. Plain functions always run here.
   * @default none: defined tasks run in this process too
   * @example
   * backgroundTasks({ transport: [piscinaTransport({ filename, tasks: [makeThumbnail] }), bullmqTransport({ queue })] })
   */
  readonly transport?: TaskTransport | TaskRunner | readonly (TaskTransport | TaskRunner)[] | undefined;
  /**
   * What happens to defined tasks the `transport` that stores them could not take (a runner's task
   * that fails is reported as itself, and never runs again). Either way each is reported to
   * `onError` as a `HandOffError`. `'none'`: nothing more. `'in-process'`: they then run here,
   * after the response's other tasks.
   * @default 'none'
   */
  readonly fallback?: 'none' | 'in-process' | undefined;
  /**
   * What a response does when its defined tasks could not be staged before its first byte (the
   * transport failed or took longer than its `staging.timeout`). `'abort'`: its connection is
   * destroyed before any byte of it was sent, so every client knows it failed, as a 2xx would promise the tasks
   * were stored. `'respond'`: it is sent as the handler made it. Either way `fallback` applies.
   * Only for a transport with `staging`.
   * @default 'abort'
   */
  readonly stagingFailure?: 'abort' | 'respond' | undefined;
  /**
   * How every task of this middleware is retried when it fails: plain functions, and defined tasks
   * whose `defineTask()` sets no `retry` of its own (wherever they run: here, on threads, or on a
   * worker). A retried task keeps its place: the tasks queued after it in its response wait for
   * its final outcome, but while it waits for its next attempt it holds no `concurrency` slot.
   * `onError` sees only the final failure, with `info.attempt`; a `PermanentError` is not retried.
   * `timeout` and the `withSignal()` signal apply to each attempt.
   * @default none: a failed task is reported at once
   * @example
   * backgroundTasks({ retry: { attempts: 3, backoff: { type: 'exponential', delay: 1_000 } } })
   */
  readonly retry?: RetryOptions | undefined;
}

/**
 * How a task is retried, in the shape of BullMQ's job options.
 * @public
 */
export interface RetryOptions {
  /** How many times the task may run in all, the first run included: `1` means no retry. */
  readonly attempts: number;
  /**
   * How long to wait before each retry. Each wait is a random time between half of its delay and
   * all of it, so that tasks that failed together do not retry together.
   * @default { type: 'fixed', delay: 0 }: again at once, after the event loop has turned
   */
  readonly backoff?: RetryBackoff | undefined;
}

/**
 * The wait before each retry.
 * @public
 */
export interface RetryBackoff {
  /** `'fixed'`: `delay` before each retry. `'exponential'`: `delay` × 2^(n − 1) before the n-th. */
  readonly type: 'fixed' | 'exponential';
  /** Milliseconds, before jitter. */
  readonly delay: number;
}

/**
 * Takes the defined tasks of a response out of the process, to a job queue.
 * @public
 */
export interface TaskTransport {
  /**
   * What kind of transport this is: one that stores tasks for workers elsewhere. Left out, a
   * transport is taken to be of this kind; one that runs tasks says `kind: 'runner'`.
   * @default 'job-queue'
   */
  readonly kind?: 'job-queue' | undefined;
  /**
   * Stores the tasks one response queued, in order, for workers to run.
   * @param tasks - name and JSON arguments of each task
   * @return a promise that resolves once the tasks are stored and rejects when they could not be;
   *   it must settle (time out rather than wait forever), or `drain()` waits forever
   */
  send(tasks: readonly HandedOffTask[]): PromiseLike<unknown>;
  /**
   * The two-phase form, for a transport that can store tasks that run only later: a response's
   * defined tasks are then staged before its first byte is let through, and released (or discarded) once
   * it has been flushed. Without it, they are sent once the response has been flushed.
   */
  readonly staging?: TaskStaging | undefined;
  /**
   * The names of the defined tasks it takes, when it is one of several transports. Only the last
   * of them may leave it out, and then takes every defined task the others do not.
   * @default every defined task (no transport before it takes)
   */
  readonly tasks?: readonly string[] | undefined;
}

/**
 * The two-phase form of a transport: stage, then release or discard. Staged tasks must run by
 * themselves after a lease, should the process die before it releases them.
 * @public
 */
export interface TaskStaging {
  /**
   * Milliseconds a response's end may wait for `stage()`. Past it the staging counts as failed
   * (`stagingFailure` decides what the response does), and tasks it stores later are discarded.
   */
  readonly timeout: number;
  /**
   * Stores the tasks one response queued, in order, so that workers run them once released, or
   * once a lease has run out without a release or discard.
   * @param tasks - name and JSON arguments of each task
   * @return a promise of a receipt (a job id, a row, anything) that `release()` or `discard()`
   *   gets back; it rejects when the tasks could not be stored
   */
  stage(tasks: readonly HandedOffTask[]): PromiseLike<unknown>;
  /**
   * Lets workers run staged tasks now: their response has been flushed. When it fails, they run
   * once their lease has run out. It must settle, or `drain()` waits forever.
   * @param receipt - what `stage()` resolved to
   */
  release(receipt: unknown): PromiseLike<unknown>;
  /**
   * Deletes staged tasks that must not run: `runOn: 'success'` refused their response, or they
   * were stored after `timeout`. It must settle, or `drain()` waits forever.
   * @param receipt - what `stage()` resolved to
   */
  discard(receipt: unknown): PromiseLike<unknown>;
}

/**
 * Runs defined tasks off the event loop (on a pool of threads, say) and tells how each went. A task
 * it takes stays in its response's queue: it runs in its turn, counts in `pending` and `drain()`
 * until it has run, holds a `concurrency` slot meanwhile, and its failure or `timeout` is reported
 * to `onError` as its own.
 * @public
 */
export interface TaskRunner {
  /** What kind of transport this is: one that runs tasks, as opposed to a job queue storing them. */
  readonly kind: 'runner';
  /**
   * Runs one task.
   * @param task - its name and JSON arguments
   * @param options - `signal` aborts, with the `TimeoutError` or `ShutdownError` as its reason, when
   *   the task's `timeout` passes or `close()` gives up on it: stop the work then
   * @return a promise that resolves once the task has succeeded and rejects with its error
   */
  run(task: HandedOffTask, options: TaskRunOptions): PromiseLike<unknown>;
  /**
   * The names of the defined tasks it takes, when it is one of several transports. Only the last
   * of them may leave it out, and then takes every defined task the others do not.
   * @default every defined task (no transport before it takes)
   */
  readonly tasks?: readonly string[] | undefined;
  /**
   * Called by the middleware's `close()` once every task has settled or been given up on: stops
   * what runs the tasks (the threads), so that the process can exit.
   */
  close?(): PromiseLike<unknown>;
}

/**
 * What `TaskRunner.run()` receives besides the task.
 * @public
 */
export interface TaskRunOptions {
  /** Aborts when the task times out or is abandoned at the deadline of `close()`. */
  readonly signal: AbortSignal;
}

/**
 * One task on its way to a worker.
 * @public
 */
export interface HandedOffTask {
  /** The name given to `defineTask()`. */
  readonly name: string;
  /** The arguments given to `tasks.add()`, JSON values only: a copy made at `add()`. */
  readonly args: readonly unknown[];
  /** How a worker retries it: its definition's `retry`, or the middleware's; left out for none. */
  readonly retry?: RetryOptions | undefined;
}

/**
 * What `onError`, `around` and the tracing channel learn about a task and its request.
 * @public
 */
export interface TaskInfo {
  /** The task function's `name` (a defined task's name), or `'anonymous'`. */
  readonly name: string;
  /** The request whose response queued the task. */
  readonly req: Request;
  /** `req.method`. */
  readonly method: string;
  /** `req.originalUrl`: the URL as the client sent it, query string included. */
  readonly url: string;
  /** The response's status code: its final one, as tasks start once the response has been sent. */
  readonly status: number;
  /** `req.id`, as pino-http and express-request-id set it, when it is a string or a number. */
  readonly requestId: string | undefined;
  /**
   * Which run of the task this is, or was last, from 1; above 1 only for a task with a `retry`.
   * A task reported before it ran (abandoned at shutdown, or whose hand-off failed) shows 1.
   */
  readonly attempt: number;
  /**
   * Milliseconds from `add()` until this attempt started (until now, for a task that never
   * started), the earlier attempts and the waits between them included.
   */
  readonly waitMs: number;
  /**
   * Milliseconds this attempt ran until it failed, timed out or was abandoned; `undefined` while it runs,
   * and for a plain synchronous task that threw (its start is not timed: a clock read costs as much
   * as such a task; its `waitMs` then runs to the throw).
   */
  readonly durationMs: number | undefined;
}

/**
 * Options resolved to their defaults and validated.
 * @internal
 */
export interface Settings {
  readonly onError: (error: unknown, info: TaskInfo) => unknown;
  readonly around: ((info: TaskInfo, run: () => unknown) => unknown) | undefined;
  readonly timeout: number;
  readonly concurrency: number;
  readonly maxPending: number;
  readonly runOn: 'always' | 'success';
  /** The transport that stores defined tasks, if one does. */
  readonly transport: TaskTransport | undefined;
  /** The transport's two-phase form, and its `timeout`, read once. */
  readonly staging: TaskStaging | undefined;
  readonly stagingTimeout: number;
  /** The transports that run defined tasks, for `close()`. */
  readonly runners: readonly TaskRunner[];
  /** The transport that takes the defined task `name`, or `undefined` when it runs here. */
  readonly transportFor: (name: string) => TaskTransport | TaskRunner | undefined;
  readonly fallback: 'none' | 'in-process';
  readonly stagingFailure: 'abort' | 'respond';
  /** How tasks without a `retry` of their own are retried; `undefined` when they are not. */
  readonly retry: Retry | undefined;
}

/**
 * A `retry` option, checked, with its defaults filled in: what a job carries to a worker.
 * @internal
 */
export interface Retry extends RetryOptions {
  readonly backoff: RetryBackoff;
}

/**
 * Validates `options` and fills in the defaults.
 * @throws {TypeError} an option of the wrong type, or an unknown option
 * @throws {RangeError} a number option out of range
 * @internal
 */
export function resolveOptions(options: BackgroundTasksOptions | undefined): Settings {
  if (options === undefined) options = {};
  checkOptions('backgroundTasks()', options, OPTION_NAMES, '{ timeout: 30_000, concurrency: 4 }');

  const {
    onError = reportToStderr,
    around,
    timeout = Infinity,
    concurrency = Infinity,
    maxPending = Infinity,
    runOn = 'always',
    transport,
    fallback = 'none',
    stagingFailure = 'abort',
    retry,
  } = options;
  if (typeof onError !== 'function') {
    throw new TypeError(invalid('onError', 'a function', onError));
  }
  if (around !== undefined && typeof around !== 'function') {
    throw new TypeError(invalid('around', 'a function (info, run) => run()', around));
  }
  if (runOn !== 'always' && runOn !== 'success') {
    throw new TypeError(invalid('runOn', "'always' or 'success'", runOn));
  }
  if (fallback !== 'none' && fallback !== 'in-process') {
    throw new TypeError(invalid('fallback', "'none' or 'in-process'", fallback));
  }
  if (stagingFailure !== 'abort' && stagingFailure !== 'respond') {
    throw new TypeError(invalid('stagingFailure', "'abort' or 'respond'", stagingFailure));
  }
  const transports = resolveTransports(transport);
  return {
    onError,
    around,
    timeout: checkTimeout(timeout, true),
    concurrency: checkCount('concurrency', concurrency),
    maxPending: checkCount('maxPending', maxPending),
    runOn,
    ...transports,
    ...checkStaging(transports.transport?.staging),
    fallback,
    stagingFailure,
    retry: checkRetry(retry, 'retry'),
  };
}

/**
 * Checks options as the function that takes them reads them, by destructuring: refuses what is not
 * an options object (an array, a Map, a Date or another built-in object), and any key that
 * destructuring could find on it and the function does not read, so that a misspelled option fails
 * instead of silently leaving its default in place. Those keys are its own, enumerable or not, and
 * those it inherits (`Object.create({ concurency: 4 })`, a class's methods) short of the keys of
 * `Object.prototype`, of any realm (a vm context, Jest's test environment).
 * @param owner - whose options these are, e.g. `backgroundTasks()`
 * @param options - the options as given
 * @param known - the options it reads
 * @param example - options to show in the message, e.g. `{ server, timeout: 10_000 }`
 * @param name - what the options are called in messages: `options`, or a nested option's path
 * @throws {TypeError} when `options` is not an object or is a built-in one; naming the first
 *   unknown key and the option it most likely misspells, or listing the options when none is close
 * @internal
 */
export function checkOptions(owner: string, options: unknown, known: readonly string[], example: string, name = 'options'): asserts options is object {
  if (options === null || typeof options !== 'object') {
    throw new TypeError(invalid(name, `an object such as ${example}`, options));
  }
  if (Object.prototype.toString.call(options) !== '[object Object]') {
    throw new TypeError(invalid(name, `a plain object such as ${example}, not an array, a Map or another built-in object`, options));
  }
  for (let level: object | null = options; level !== null; level = Object.getPrototypeOf(level) as object | null) {
    const inherited = level !== options;
    for (const key of Object.getOwnPropertyNames(level)) {
      if (known.includes(key) || (inherited && OBJECT_KEYS.has(key))) continue;
      const meant = closest(key, known);
      const hint = meant === undefined ? known.join(', ') : `did you mean \`${meant}\`?`;
      const where = inherited ? `; inherited from the prototype of \`${name}\`` : '';
      const label = name === 'options' ? key : `${name}.${key}`;
      throw new TypeError(invalid(label, `an option of ${owner} (${hint}${where})`, (options as Record<string, unknown>)[key]));
    }
  }
}

/** The keys of `Object.prototype`, which every options object inherits and none is an option. */
const OBJECT_KEYS = new Set(Object.getOwnPropertyNames(Object.prototype));

/** The keys `backgroundTasks()` reads; `satisfies` keeps the list in step with the interface. */
const OPTION_NAMES = Object.keys({
  onError: true,
  around: true,
  timeout: true,
  concurrency: true,
  maxPending: true,
  runOn: true,
  transport: true,
  fallback: true,
  stagingFailure: true,
  retry: true,
} satisfies Record<keyof BackgroundTasksOptions, true>);

/** setTimeout() treats any longer delay as 1 ms. */
const MAX_TIMEOUT = 2 ** 31 - 1;

/**
 * Validates a `timeout` option, or another duration: of the middleware (which may be `Infinity`)
 * or of a transport (which must settle, so may not).
 * @param value - the option's value
 * @param infinityAllowed - whether `Infinity` means "no timeout" here
 * @param name - the option, for the message
 * @return the timeout in ms
 * @throws {TypeError} when `value` is not a number
 * @throws {RangeError} when it is outside 1 … 2^31 − 1 (or `Infinity`, when allowed)
 * @internal
 */
export function checkTimeout(value: unknown, infinityAllowed: boolean, name = 'timeout'): number {
  if (typeof value !== 'number') {
    throw new TypeError(invalid(name, 'a number of milliseconds', value));
  }
  if (!(value >= 1 && value <= MAX_TIMEOUT) && !(infinityAllowed && value === Infinity)) {
    const range = `a number of milliseconds from 1 to ${MAX_TIMEOUT}${infinityAllowed ? ', or Infinity' : ''}`;
    throw new RangeError(invalid(name, range, value));
  }
  return value;
}

/**
 * Validates a `retry` option: of the middleware, of a defined task, or of a task in a job.
 * @param value - the option's value
 * @param name - where it was given, for the messages: `retry`, `options.retry`
 * @return it with its defaults filled in, frozen; `undefined` when it is
 * @throws {TypeError} when it is not an object `{ attempts, backoff }`, has an unknown key, or a
 *   value of the wrong type
 * @throws {RangeError} when `attempts` is not a whole number from 1 to 100, or the delay is not a
 *   number of milliseconds from 0 to 2^31 − 1
 * @internal
 */
export function checkRetry(value: unknown, name: string): Retry | undefined {
  if (value === undefined) return undefined;
  const example = "{ attempts: 3, backoff: { type: 'exponential', delay: 1_000 } }";
  checkOptions(`\`${name}\``, value, ['attempts', 'backoff'], example, name);
  const { attempts, backoff = { type: 'fixed', delay: 0 } } = value as Partial<RetryOptions>;
  if (typeof attempts !== 'number') {
    throw new TypeError(invalid(`${name}.attempts`, 'a number of runs in all, the first included, such as 3', attempts));
  }
  if (!Number.isInteger(attempts) || attempts < 1 || attempts > MAX_ATTEMPTS) {
    throw new RangeError(invalid(`${name}.attempts`, `a whole number of runs from 1 (no retry) to ${MAX_ATTEMPTS}`, attempts));
  }
  checkOptions(`\`${name}.backoff\``, backoff, ['type', 'delay'], "{ type: 'exponential', delay: 1_000 }", `${name}.backoff`);
  const { type, delay } = backoff as Partial<RetryBackoff>;
  if (type !== 'fixed' && type !== 'exponential') {
    throw new TypeError(invalid(`${name}.backoff.type`, "'fixed' or 'exponential'", type));
  }
  if (typeof delay !== 'number') {
    throw new TypeError(invalid(`${name}.backoff.delay`, 'a number of milliseconds', delay));
  }
  if (!(delay >= 0 && delay <= MAX_TIMEOUT)) {
    throw new RangeError(invalid(`${name}.backoff.delay`, `a number of milliseconds from 0 to ${MAX_TIMEOUT}`, delay));
  }
  return Object.freeze({ attempts, backoff: Object.freeze({ type, delay }) });
}

/** The most runs a `retry` allows: enough for any backoff, few enough that a typo cannot pin a queue for days. */
const MAX_ATTEMPTS = 100;

/**
 * @param staging - a transport's `staging`
 * @return it, once checked to be a whole two-phase form, and its timeout
 * @throws {TypeError} when it is not an object with `stage()`, `release()` and `discard()` methods
 * @throws {RangeError} when its `timeout` is not a number of milliseconds
 * @private
 */
function checkStaging(staging: TaskStaging | undefined): Pick<Settings, 'staging' | 'stagingTimeout'> {
  if (staging === undefined) return { staging, stagingTimeout: 0 };
  const { stage, release, discard } = (staging ?? {}) as Partial<TaskStaging>;
  if (typeof stage !== 'function' || typeof release !== 'function' || typeof discard !== 'function') {
    throw new TypeError(invalid('transport.staging', 'an object with stage(), release() and discard() methods and a timeout', staging));
  }
  return { staging, stagingTimeout: checkTimeout(staging.timeout, false, 'transport.staging.timeout') };
}

/**
 * Checks the `transport` option and works out which transport takes which defined task: the first
 * whose `tasks` names it, or else the one that names none, which must come last.
 * @param option - the `transport` option: one transport, a list of them, or `undefined`
 * @return the transport that stores, the runners, and the lookup by task name
 * @throws {TypeError} for something that is not a transport, a `tasks` that is not a list of
 *   names, a transport taking every task before the last, or two transports that store
 * @private
 */
function resolveTransports(option: BackgroundTasksOptions['transport']): Pick<Settings, 'transport' | 'runners' | 'transportFor'> {
  const list: readonly unknown[] = option === undefined ? [] : Array.isArray(option) ? option : [option];
  const byName = new Map<string, TaskTransport | TaskRunner>();
  let rest: TaskTransport | TaskRunner | undefined;
  let store: TaskTransport | undefined;
  const runners: TaskRunner[] = [];
  list.forEach((candidate, index) => {
    const label = Array.isArray(option) ? `transport[${index}]` : 'transport';
    const transport = checkTransport(label, candidate);
    if (transport.kind === 'runner') {
      runners.push(transport);
    } else {
      if (store !== undefined) throw new TypeError(invalid(label, 'the only transport that stores tasks (a job queue)', transport));
      store = transport;
    }
    if (transport.tasks === undefined) {
      if (index !== list.length - 1) {
        throw new TypeError(invalid(label, 'a transport listing the tasks it takes (`tasks`), as it comes before the last and would leave the ones after it none', transport));
      }
      rest = transport;
    } else {
      for (const name of transport.tasks) if (!byName.has(name)) byName.set(name, transport);
    }
  });
  return {
    transport: store,
    runners,
    transportFor: byName.size === 0 ? () => rest : (name) => byName.get(name) ?? rest,
  };
}

/**
 * Checks a transport by the `kind` it declares: `'runner'` must have `run()`; `'job-queue'`, or no
 * `kind`, must have `send()`.
 * @param label - `transport`, or `transport[i]` in a list
 * @param transport - what the option holds there
 * @return it, once checked to be a transport that stores or one that runs, with a valid `tasks`
 * @throws {TypeError} otherwise
 * @private
 */
function checkTransport(label: string, transport: unknown): TaskTransport | TaskRunner {
  const { kind, send, run, tasks } = (typeof transport === 'object' && transport !== null ? transport : {}) as Partial<Record<'kind' | 'send' | 'run' | 'tasks', unknown>>;
  if (kind === 'runner' ? typeof run !== 'function' : kind !== undefined && kind !== 'job-queue') {
    throw new TypeError(invalid(`${label}.kind`, "'job-queue' (an object with send(), such as bullmqTransport({ queue })) or 'runner' (an object with run(), such as piscinaTransport({ filename }))", kind));
  }
  if (kind !== 'runner' && typeof send !== 'function') {
    const expectation = typeof run === 'function'
      ? "a job queue with a send() method, or, as it has run(), one declaring kind: 'runner'"
      : "a transport: a job queue with a send() method, such as bullmqTransport({ queue }), or an object with kind: 'runner' and a run() method, such as piscinaTransport({ filename })";
    throw new TypeError(invalid(label, expectation, transport));
  }
  if (tasks !== undefined && !(Array.isArray(tasks) && tasks.every((name) => typeof name === 'string' && name !== ''))) {
    throw new TypeError(invalid(`${label}.tasks`, 'an array of task names', tasks));
  }
  return transport as TaskTransport | TaskRunner;
}

/**
 * @param name - `concurrency` or `maxPending`
 * @param value - the option's value
 * @return a positive integer or `Infinity`
 * @private
 */
function checkCount(name: string, value: unknown): number {
  if (typeof value !== 'number') {
    throw new TypeError(invalid(name, 'a positive integer or Infinity', value));
  }
  if (value !== Infinity && !(Number.isInteger(value) && value >= 1)) {
    throw new RangeError(invalid(name, 'a positive integer or Infinity', value));
  }
  return value;
}

/**
 * @return the name in `known` closest to `key` (ignoring case) by edit distance, if it is close
 *   enough to be a misspelling of it: at most 2 edits, or a third of its length
 * @private
 */
function closest(key: string, known: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestDistance = Infinity;
  for (const name of known) {
    const distance = editDistance(key.toLowerCase(), name.toLowerCase());
    if (distance < bestDistance && distance <= Math.max(2, Math.floor(name.length / 3))) {
      best = name;
      bestDistance = distance;
    }
  }
  return best;
}

/**
 * @return the Levenshtein distance: the fewest insertions, deletions and substitutions of one
 *   character that turn `a` into `b`
 * @private
 */
function editDistance(a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, index) => index);
  for (let i = 1; i <= a.length; i++) {
    const current = [i];
    for (let j = 1; j <= b.length; j++) {
      const substitution = (previous[j - 1] ?? 0) + (a[i - 1] === b[j - 1] ? 0 : 1);
      current.push(Math.min((previous[j] ?? 0) + 1, (current[j - 1] ?? 0) + 1, substitution));
    }
    previous = current;
  }
  return previous[b.length] ?? 0;
}

/**
 * The default `onError`: the task name and the error's stack on stderr.
 * @private
 */
function reportToStderr(error: unknown, info: TaskInfo): void {
  process.stderr.write(`express-background-tasks: task ${info.name} failed: ${describeError(error)}\n`);
}

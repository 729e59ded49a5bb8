/*!
 * express-background-tasks/piscina
 * MIT Licensed
 */

import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import type { ResourceLimits, Worker, WorkerOptions } from 'node:worker_threads';
import { Piscina } from 'piscina';
import { definedName, type DefinedTask } from './definition.js';
import { describeError, invalid, PermanentError } from './errors.js';
import { checkOptions, type HandedOffTask, type TaskRunner, type TaskRunOptions } from './options.js';
import type { PermanentFailure, ThreadTask } from './piscina-thread.mjs';
import { debug } from './task.js';

/**
 * Options of `piscinaTransport()`: the module of task definitions, and piscina's own pool options,
 * passed to `new Piscina()` unchanged (declared here rather than taken from piscina's types, which
 * do not compile with `skipLibCheck` off).
 * @public
 */
export interface PiscinaTransportOptions {
  /**
   * The module the threads load: it exports the `defineTask()` definitions they run, which they
   * find by their defined names. An absolute path, a `file:` URL string, or a `URL`, e.g.
   * `new URL('./tasks.js', import.meta.url)`; with tsx, that `.js` URL loads `tasks.ts`.
   */
  readonly filename: string | URL;
  /**
   * The definitions this transport takes, when it is one of several, e.g. before a
   * `bullmqTransport()` that takes the rest. `filename` must export each of them.
   * @default every defined task (those `filename` does not export fail when they run)
   */
  readonly tasks?: readonly DefinedTask[] | undefined;
  /** @default half the cores, at least 1 (piscina's default) */
  readonly minThreads?: number | undefined;
  /** The most tasks that run at once. @default 1.5 × the cores (piscina's default) */
  readonly maxThreads?: number | undefined;
  /** Milliseconds a thread above `minThreads` may stay idle before it exits. @default 0 */
  readonly idleTimeout?: number | undefined;
  /** Tasks that may wait for a thread; past it a task fails. @default Infinity */
  readonly maxQueue?: number | 'auto' | undefined;
  readonly concurrentTasksPerWorker?: number | undefined;
  readonly atomics?: 'sync' | 'async' | 'disabled' | undefined;
  /** Each thread's heap and stack limits: a thread past them is stopped and its task fails. */
  readonly resourceLimits?: ResourceLimits | undefined;
  readonly argv?: string[] | undefined;
  /** Node flags for the threads. @default the process's own (`process.execArgv`) */
  readonly execArgv?: string[] | undefined;
  readonly env?: WorkerOptions['env'] | undefined;
  readonly workerData?: unknown;
  readonly niceIncrement?: number | undefined;
  readonly trackUnmanagedFds?: boolean | undefined;
  readonly closeTimeout?: number | undefined;
  readonly recordTiming?: boolean | undefined;
  readonly workerHistogram?: boolean | undefined;
  readonly stricterFIFO?: boolean | undefined;
  /** A piscina `TaskQueue`. */
  readonly taskQueue?: unknown;
  /** A piscina load balancer. */
  readonly loadBalancer?: unknown;
}

/**
 * What `piscinaTransport()` makes: a `TaskRunner`, with a way to wait for the threads to have
 * loaded the module, and its pool.
 * @public
 */
export interface PiscinaTransport extends TaskRunner {
  /**
   * Resolves with the names of the tasks the module exports, once a thread has loaded it; rejects
   * when it cannot be loaded, exports no definitions, or misses one that `tasks` lists. Await it
   * before `app.listen()` to fail at startup rather than at the first task.
   */
  readonly ready: Promise<readonly string[]>;
  /** The piscina pool itself, here with the statistics worth watching. */
  readonly pool: PiscinaPool;
}

/**
 * Some of what a piscina pool shows about itself.
 * @public
 */
export interface PiscinaPool {
  /** Its threads now. */
  readonly threads: readonly Worker[];
  /** Tasks waiting for a thread. */
  readonly queueSize: number;
  /** Tasks run so far, successful or not. */
  readonly completed: number;
  /** The share of its capacity it has used, from 0 to 1. */
  readonly utilization: number;
}

/**
 * Creates the transport that runs defined tasks on a pool of worker threads (piscina), off the
 * event loop that serves the requests. Each task runs in its turn in its response's queue, and the
 * middleware waits for it: its failure, or its `timeout`, is reported to `onError` as its own, or
 * retried, each attempt on a thread, as its `retry` says (a `PermanentError` thrown on a thread
 * stays one). A task that times out, or that `close()` gives up on, is stopped for real: its thread
 * is terminated and the pool starts another. The middleware's `close()` closes the pool.
 * @param options - see `PiscinaTransportOptions`
 * @return the transport, for `backgroundTasks({ transport })`
 * @throws {TypeError} when `filename` is not an absolute path or a file URL, `tasks` holds
 *   something other than a defined task, or an option is unknown (a misspelled one of piscina's
 *   too); piscina's own errors for the values of its options
 * @example
 * // tasks.ts
 * export const makeThumbnail = defineTask('make-thumbnail', (id: string) => { ... });
 * // app.ts
 * app.use(backgroundTasks({ transport: piscinaTransport({ filename: new URL('./tasks.js', import.meta.url) }) }));
 * @public
 */
export function piscinaTransport(options: PiscinaTransportOptions): PiscinaTransport {
  checkOptions('piscinaTransport()', options, OPTION_NAMES, "{ filename: new URL('./tasks.js', import.meta.url) }");
  const { filename, tasks, ...poolOptions } = options;
  const module = moduleUrl(filename);
  const names = tasks === undefined ? undefined : namesOf(tasks);
  const pool = new Piscina({ ...(poolOptions as ConstructorParameters<typeof Piscina>[0]), filename: threadModule(), name: 'runTask' });
  pool.on('error', (error: unknown) => {
    process.stderr.write(`express-background-tasks: a thread of the piscina pool failed outside any task: ${describeError(error)}\n`);
  });
  const ready = pool.run({ module }, { name: 'listTasks' }).then((exported: readonly string[]) => {
    const missing = (names ?? []).filter((name) => !exported.includes(name));
    if (missing.length > 0) {
      throw new Error(`The tasks module ${module} does not export ${missing.join(', ')}, which piscinaTransport({ tasks }) lists: it exports ${exported.join(', ')}`);
    }
    debug('piscina: %s exports %s', module, exported.join(', '));
    return exported;
  });
  ready.catch((error: unknown) => debug('piscina: %s', describeError(error)));

  return {
    kind: 'runner',
    tasks: names,
    ready,
    pool,
    async run({ name, args }: HandedOffTask, { signal }: TaskRunOptions): Promise<void> {
      const failure = (await pool.run({ module, name, args } satisfies ThreadTask, { signal })) as PermanentFailure | undefined;
      if (failure === undefined) return;
      // The thread's PermanentError, as itself again, so that the task is not retried.
      const error = new PermanentError(failure.permanent.message);
      if (failure.permanent.stack !== undefined) error.stack = failure.permanent.stack;
      throw error;
    },
    close(): Promise<void> {
      // piscina starts threads up to `minThreads` whenever a thread it terminated before destroy()
      // (idle past `idleTimeout`, or stopped with a task that timed out or was given up on) reports
      // its exit, even once destroy() has resolved; such a thread holds the process until it has
      // started. `options` is the pool's own object: with no minimum, nothing is started again.
      pool.options.minThreads = 0;
      return pool.destroy();
    },
  };
}

/**
 * The keys `piscinaTransport()` reads: its own, and piscina's pool options as piscina documents
 * them; `satisfies` keeps the list in step with the interface.
 */
const OPTION_NAMES = Object.keys({
  filename: true,
  tasks: true,
  minThreads: true,
  maxThreads: true,
  idleTimeout: true,
  maxQueue: true,
  concurrentTasksPerWorker: true,
  atomics: true,
  resourceLimits: true,
  argv: true,
  execArgv: true,
  env: true,
  workerData: true,
  niceIncrement: true,
  trackUnmanagedFds: true,
  closeTimeout: true,
  recordTiming: true,
  workerHistogram: true,
  stricterFIFO: true,
  taskQueue: true,
  loadBalancer: true,
} satisfies Record<keyof PiscinaTransportOptions, true>);

/**
 * @return `filename` as a `file:` URL string, the form the threads import
 * @throws {TypeError} when it is not an absolute path, a `file:` URL string or a `URL`
 * @private
 */
function moduleUrl(filename: unknown): string {
  if (filename instanceof URL && filename.protocol === 'file:') return filename.href;
  if (typeof filename === 'string' && filename.startsWith('file:')) return new URL(filename).href;
  if (typeof filename === 'string' && path.isAbsolute(filename)) return pathToFileURL(filename).href;
  throw new TypeError(invalid('filename', 'the module exporting the task definitions: an absolute path, a file: URL or new URL(\'./tasks.js\', import.meta.url)', filename));
}

/**
 * @return the names of `tasks`, each once
 * @throws {TypeError} when one is not a defined task
 * @private
 */
function namesOf(tasks: unknown): string[] {
  if (!Array.isArray(tasks)) {
    throw new TypeError(invalid('tasks', 'an array of defineTask() definitions', tasks));
  }
  return tasks.map((task: unknown, index) => {
    const name = typeof task === 'function' ? definedName(task) : undefined;
    if (name === undefined) throw new TypeError(invalid(`tasks[${index}]`, 'a task made by defineTask()', task));
    return name;
  }).filter((name, index, all) => all.indexOf(name) === index);
}

/**
 * Where the module the threads run lies: `piscina-thread.mjs` beside this module, in either build
 * (`piscina-thread.mts` beside the source, run through tsx). This module is compiled to ES modules
 * and to CommonJS, which have no common way to name their own file (`import.meta.url` is a syntax
 * error in CommonJS), so it reads its file from the call site V8 records.
 * @private
 */
function threadModule(): string {
  const { prepareStackTrace, stackTraceLimit } = Error;
  let own: unknown;
  try {
    Error.stackTraceLimit = 1;
    Error.prepareStackTrace = (_error, callSites) => callSites[0]?.getFileName();
    own = new Error().stack;
  } finally {
    Error.prepareStackTrace = prepareStackTrace;
    Error.stackTraceLimit = stackTraceLimit;
  }
  if (typeof own !== 'string') throw new Error('express-background-tasks/piscina cannot tell where its own file is: is it bundled? Keep it in node_modules.');
  const file = own.startsWith('file:') ? fileURLToPath(own) : own;
  return path.join(path.dirname(file), `piscina-thread${path.extname(file) === '.ts' ? '.mts' : '.mjs'}`);
}

/**
 * Child process (run with `--expose-gc`): the queue micro-benchmark. A million no-op tasks go
 * through the queue of one real response, and the same functions through a plain loop.
 * Usage (by bench/run.ts): `queue.ts <library url> measure`, reporting a `QueueResult` over IPC,
 * or `queue.ts <library url> profile`, reporting the CPU profile of the sync tasks' runs.
 */
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import { performance } from 'node:perf_hooks';
import express from 'express';
import { report } from './child.js';
import { importLibrary } from './library.js';
import { startProfiler } from './profile.js';

/** Tasks per measured run. */
const TASKS = 1_000_000;

/** Tasks per second, one entry per repetition. */
export interface QueueRuns {
  readonly library: number[];
  readonly plainLoop: number[];
}

/** What the queue child reports when it measures. */
export interface QueueResult {
  /** Tasks per run. */
  readonly tasks: number;
  readonly sync: QueueRuns;
  readonly async: QueueRuns;
}

/** Measured repetitions of each (kind, runner) pair, after one unrecorded warm-up. */
const REPETITIONS = 5;

if (globalThis.gc === undefined) throw new Error('bench/queue.ts needs --expose-gc');
const gc = globalThis.gc;
const [libraryUrl, mode] = process.argv.slice(2);
const library = await importLibrary(libraryUrl);
const middleware = library.backgroundTasks();

/** The batch the next request queues, and where its timings go. */
let batch: { readonly task: () => unknown; startedAt: number; drained: Promise<number> } | undefined;

const app = express();
app.use(middleware);
app.get('/', (_req, res) => {
  if (batch === undefined) throw new Error('no batch to queue');
  const current = batch;
  const { tasks } = res.locals;
  tasks.add(() => {
    current.startedAt = performance.now();
  });
  for (let queued = 0; queued < TASKS; queued++) tasks.add(current.task);
  current.drained = middleware.drain().then(() => performance.now());
  res.send('ok');
});
const server = app.listen(0, '127.0.0.1');
await once(server, 'listening');
const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/`;

if (mode === 'profile') {
  await throughLibrary(syncNoop);
  const stopProfiler = await startProfiler();
  for (let repetition = 0; repetition < REPETITIONS; repetition++) {
    gc();
    await throughLibrary(syncNoop);
  }
  report(await stopProfiler());
} else {
  const runs: QueueResult = {
    tasks: TASKS,
    sync: { library: [], plainLoop: [] },
    async: { library: [], plainLoop: [] },
  };
  for (let repetition = 0; repetition <= REPETITIONS; repetition++) {
    for (const kind of ['sync', 'async'] as const) {
      const task = kind === 'sync' ? syncNoop : asyncNoop;
      gc();
      const libraryMs = await throughLibrary(task);
      gc();
      const plainLoopMs = await throughPlainLoop(task);
      if (repetition === 0) continue;
      runs[kind].library.push(TASKS / (libraryMs / 1000));
      runs[kind].plainLoop.push(TASKS / (plainLoopMs / 1000));
    }
  }
  report(runs);
}
server.close();

/** The sync task. */
function syncNoop(): void {}

/** The async task. */
async function asyncNoop(): Promise<void> {}

/**
 * Queues a marker and `TASKS` calls of `task` on one response, sends it, and waits for `drain()`.
 * @return ms from the marker's start to `drain()` resolving
 */
async function throughLibrary(task: () => unknown): Promise<number> {
  const current = (batch = { task, startedAt: 0, drained: Promise.resolve(0) });
  const response = await fetch(url);
  await response.text();
  const drainedAt = await current.drained;
  batch = undefined;
  return drainedAt - current.startedAt;
}

/**
 * What a hand-written queue would do with the same array of functions: call each in turn,
 * awaiting only what is thenable, with each failure caught.
 * @return ms to run them all
 */
async function throughPlainLoop(task: () => unknown): Promise<number> {
  const queued = new Array<() => unknown>(TASKS).fill(task);
  const startedAt = performance.now();
  for (const fn of queued) {
    try {
      const result = fn();
      if (isThenable(result)) await result;
    } catch (error) {
      console.error(error);
    }
  }
  return performance.now() - startedAt;
}

/**
 * @return whether `value` has a callable `then`, as `await` would treat it
 */
function isThenable(value: unknown): value is PromiseLike<unknown> {
  return (typeof value === 'object' || typeof value === 'function') && value !== null &&
    typeof (value as { then?: unknown }).then === 'function';
}

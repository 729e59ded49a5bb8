/**
 * Child process (run with `--expose-gc`): heap per queued task. A handler queues `QUEUED` tasks
 * on its response and measures the heap before sending it, so none of them has run yet.
 * Usage (by bench/run.ts): `memory.ts <library url>`; reports a `MemoryResult` over IPC.
 */
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import express from 'express';
import { report } from './child.js';
import { importLibrary } from './library.js';

/** Tasks queued per measurement. */
const QUEUED = 100_000;

/** What the memory child reports: heap bytes per queued task, one entry per repetition. */
export interface MemoryResult {
  /** Tasks queued per measurement. */
  readonly queued: number;
  /** `tasks.add(fn)`. */
  readonly noArguments: number[];
  /** `tasks.add(fn, a, b)` with the same `a` and `b` every time, so only the task holds memory. */
  readonly twoArguments: number[];
}

/** Measurements of each kind, after one unrecorded warm-up of each. */
const REPETITIONS = 5;

if (globalThis.gc === undefined) throw new Error('bench/memory.ts needs --expose-gc');
const gc = globalThis.gc;
const library = await importLibrary(process.argv[2]);

/** The bytes per task the last request measured. */
let measured = 0;

const app = express();
app.use(library.backgroundTasks());
app.get('/:arguments', (req, res) => {
  const { tasks } = res.locals;
  const shared = { shared: true };
  const before = heapUsed();
  if (req.params.arguments === '0') {
    for (let queued = 0; queued < QUEUED; queued++) tasks.add(noop);
  } else {
    for (let queued = 0; queued < QUEUED; queued++) tasks.add(noopWithArguments, shared, shared);
  }
  measured = (heapUsed() - before) / QUEUED;
  res.send('ok');
});
const server = app.listen(0, '127.0.0.1');
await once(server, 'listening');
const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/`;

const runs: MemoryResult = { queued: QUEUED, noArguments: [], twoArguments: [] };
for (let repetition = 0; repetition <= REPETITIONS; repetition++) {
  const noArguments = await measure('0');
  const twoArguments = await measure('2');
  if (repetition === 0) continue;
  runs.noArguments.push(noArguments);
  runs.twoArguments.push(twoArguments);
}
server.close();
report(runs);

/** The task without arguments. */
function noop(): void {}

/** The task with two arguments. */
function noopWithArguments(_a: object, _b: object): void {}

/**
 * @param path - `0` or `2`: how many arguments each task gets
 * @return heap bytes per queued task
 */
async function measure(path: string): Promise<number> {
  const response = await fetch(url + path);
  await response.text();
  return measured;
}

/** @return heap bytes in use after a full collection */
function heapUsed(): number {
  gc();
  gc();
  return process.memoryUsage().heapUsed;
}

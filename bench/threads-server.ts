/**
 * Child process of bench/threads.ts: one server on 127.0.0.1, port 0, whose `GET /task` queues the
 * CPU task (bench/threads-tasks.mjs) and answers `res.send('ok')`, or answers without a task.
 * Usage: `threads-server.ts <variant> <library url> <iterations>`; reports `{ port, taskMs }` over
 * IPC. `GET /noops/:count` queues that many no-op tasks on one response; `GET /drain` answers, with
 * the tasks run so far, once none is pending.
 */
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import express from 'express';
import type { DefinedTask } from '../lib/index.js';
import type { PiscinaTransport } from '../lib/piscina.js';
import { report } from './child.js';
import { importLibrary } from './library.js';
import { median } from './stats.js';
import { threadVariants, type ThreadVariantId } from './threads.js';

/** What a server child reports once it listens. */
export interface ThreadServerReady {
  readonly port: number;
  /** The task's length in this process, ms (the median of a few runs). */
  readonly taskMs: number;
}

const [variant, libraryUrl, iterationsArgument] = process.argv.slice(2) as [ThreadVariantId, string, string];
const variantSettings = threadVariants.find(({ id }) => id === variant);
if (variantSettings === undefined) throw new Error(`unknown variant ${variant}`);
const iterations = Number(iterationsArgument);
const library = await importLibrary(libraryUrl);
const { piscinaTransport } = (await import(libraryUrl.replace(/index\.js$/, 'piscina.js'))) as typeof import('../lib/piscina.js');
const tasksModule = new URL('threads-tasks.mjs', import.meta.url);
const { burn, noop } = (await import(tasksModule.href)) as { burn: DefinedTask<[number]>; noop: DefinedTask<[]> };

let transport: PiscinaTransport | undefined;
if (variantSettings.threads > 0) {
  const threads = variantSettings.threads;
  transport = piscinaTransport({ filename: tasksModule, minThreads: threads, maxThreads: threads, execArgv: [] });
  await transport.ready;
}
const tasks = library.backgroundTasks({ ...(transport && { transport }) });
let added = 0;

const app = express();
app.use(tasks);
app.get('/task', (_req, res) => {
  if (variant !== 'bare') {
    res.locals.tasks.add(burn, iterations);
    added++;
  }
  res.send('ok');
});
app.get('/noops/:count', (req, res) => {
  const count = Number(req.params.count);
  for (let queued = 0; queued < count; queued++) res.locals.tasks.add(noop);
  added += count;
  res.send('ok');
});
app.get('/drain', async (_req, res) => {
  await tasks.drain();
  res.json({ completed: added });
});
const server = app.listen(0, '127.0.0.1');
await once(server, 'listening');
report({ port: (server.address() as AddressInfo).port, taskMs: taskLength() } satisfies ThreadServerReady);

/** @return the median length of a few runs of the task in this thread, after a warm-up, ms */
function taskLength(): number {
  for (let run = 0; run < 5; run++) burn(iterations);
  const lengths: number[] = [];
  for (let run = 0; run < 9; run++) {
    const startedAt = performance.now();
    burn(iterations);
    lengths.push(performance.now() - startedAt);
  }
  return median(lengths);
}

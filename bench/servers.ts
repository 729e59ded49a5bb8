/**
 * Child process: one HTTP server variant on 127.0.0.1, port 0.
 * Usage (by bench/http.ts): `servers.ts <variant> <library url> <redis port>`; reports `{ port }`
 * over IPC. Then answers `'start-profile'` with `'profiling'` and `'stop-profile'` with the CPU profile.
 * The BullMQ variants add their jobs to the queue `bench-hand-off`, which no worker takes from.
 */
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { Queue } from 'bullmq';
import express, { type NextFunction, type Request, type RequestHandler, type Response } from 'express';
import onFinished from 'on-finished';
import { report } from './child.js';
import { importLibrary, type Library } from './library.js';
import { startProfiler, type CpuProfile } from './profile.js';
import { variants, type VariantId } from './variants.js';

/** What a server child reports once it listens. */
export interface ServerReady {
  readonly port: number;
}

const [variant, libraryUrl, redisPort] = process.argv.slice(2);
if (!variants.some(({ id }) => id === variant)) throw new Error(`unknown variant ${String(variant)}`);
const app = express();
for (const middleware of await middlewareFor(variant as VariantId, await importLibrary(libraryUrl), libraryUrl as string)) app.use(middleware);
app.get('/', sendOk);
const server = app.listen(0, '127.0.0.1');
await once(server, 'listening');
report({ port: (server.address() as AddressInfo).port } satisfies ServerReady);

let stopProfiler: (() => Promise<CpuProfile>) | undefined;
process.on('message', async (command) => {
  if (command === 'start-profile') {
    stopProfiler = await startProfiler();
    report('profiling');
  } else if (command === 'stop-profile' && stopProfiler !== undefined) {
    report(await stopProfiler());
  }
});

/**
 * @param id - the variant
 * @param library - the compiled library
 * @param libraryUrl - where it is, for its BullMQ entry
 * @return the middleware that make up the variant, mounted before the `res.send('ok')` route
 */
async function middlewareFor(id: VariantId, library: Library, libraryUrl: string): Promise<RequestHandler[]> {
  switch (id) {
    case 'bare':
      return [];
    case 'passThrough':
      return [passThrough];
    case 'idle':
      return [library.backgroundTasks()];
    case 'one':
      return [library.backgroundTasks(), queueWithLibrary(1)];
    case 'ten':
      return [library.backgroundTasks(), queueWithLibrary(10)];
    case 'handRolledOne':
      return [handRolledTasks, queueHandRolled(1)];
    case 'handRolledTen':
      return [handRolledTasks, queueHandRolled(10)];
    case 'sleep':
      return [library.backgroundTasks(), queueSleep];
    case 'definedInProcess':
      return [library.backgroundTasks(), queueDefined(library.defineTask('noop', noop))];
    case 'staged':
    case 'afterFlush': {
      const { bullmqTransport } = (await import(libraryUrl.replace(/index\.js$/, 'bullmq.js'))) as typeof import('../lib/bullmq.js');
      const queue = new Queue('bench-hand-off', { connection: { host: '127.0.0.1', port: Number(redisPort), maxRetriesPerRequest: 1 }, skipWaitingForReady: true });
      await queue.waitUntilReady();
      const transport = bullmqTransport({ queue, stage: id === 'staged' });
      return [library.backgroundTasks({ transport }), queueDefined(library.defineTask('noop', noop))]; // a failed hand-off goes to stderr
    }
  }
}

/** The route of every variant. Named, like the functions below, so that profiles can tell them apart. */
function sendOk(_req: Request, res: Response): void {
  res.send('ok');
}

/** A middleware that does nothing: what Express charges for one more middleware. */
function passThrough(_req: Request, _res: Response, next: NextFunction): void {
  next();
}

/** The task of the no-op variants, the same function for the library and the hand-rolled code. */
function noop(): void {}

/**
 * @param count - tasks per request
 * @return a middleware that queues `count` no-op tasks with `res.locals.tasks.add()`
 */
function queueWithLibrary(count: number): RequestHandler {
  return function queueNoops(_req, res, next) {
    for (let queued = 0; queued < count; queued++) res.locals.tasks.add(noop);
    next();
  };
}

/**
 * @param definedNoop - the no-op, made a defined task
 * @return a middleware that queues it, to run here or be handed off
 */
function queueDefined(definedNoop: () => void): RequestHandler {
  return function queueDefinedNoop(_req, res, next) {
    res.locals.tasks.add(definedNoop);
    next();
  };
}

/** Queues a task that sleeps 50 ms. */
function queueSleep(_req: Request, res: Response, next: NextFunction): void {
  res.locals.tasks.add(sleep, 50);
  next();
}

/** The hand-rolled queue: what `res.locals.afterResponse` holds. */
type AfterResponse = (() => unknown)[];

/**
 * What a user would write without the library: an array on `res.locals`, one on-finished
 * listener per response, and a loop that awaits each function and catches its errors.
 */
function handRolledTasks(_req: Request, res: Response, next: NextFunction): void {
  const afterResponse: AfterResponse = [];
  res.locals.afterResponse = afterResponse;
  // An arrow: tsx would wrap a named function expression created per request in a `__name()` call.
  onFinished(res, () => runAfterResponse(afterResponse));
  next();
}

/** The hand-rolled loop over the functions queued on one response. */
async function runAfterResponse(afterResponse: AfterResponse): Promise<void> {
  for (const task of afterResponse) {
    try {
      await task();
    } catch (error) {
      console.error(error);
    }
  }
}

/**
 * @param count - tasks per request
 * @return a middleware that pushes `count` no-op tasks on the hand-rolled queue
 */
function queueHandRolled(count: number): RequestHandler {
  return function pushNoops(_req, res, next) {
    const afterResponse = res.locals.afterResponse as AfterResponse;
    for (let queued = 0; queued < count; queued++) afterResponse.push(noop);
    next();
  };
}

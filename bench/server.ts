/**
 * Child process of bench/run.ts: one server variant on 127.0.0.1, port 0, answering `GET /` with
 * `res.send('ok')`. Usage: `server.ts <variant> <library url> [<engine> <engine url>]`. It reports
 * `{ port }` over IPC, or `{ skipped }` when the variant cannot be built here; then answers each
 * `'cpu'` with the process's CPU time in µs (all threads), once its tasks have drained.
 */
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import { Queue } from 'bullmq';
import express, { type RequestHandler } from 'express';
import onFinished from 'on-finished';
import { Piscina } from 'piscina';
import { postgresQueue } from '../spec/support/postgres.js';

type Library = typeof import('../lib/index.js');

const [variant = '', libraryUrl = '', engine, engineUrl] = process.argv.slice(2);
const library = (await import(libraryUrl)) as Library;
const tasksModule = new URL('tasks.mjs', import.meta.url);
const noop = (): void => {};
const definedNoop = library.defineTask('noop', noop);
let drain = async (): Promise<void> => {};

try {
  const app = express();
  for (const handler of await handlersOf(variant)) app.use(handler);
  app.get('/', (_req, res) => void res.send('ok'));
  const server = app.listen(0, '127.0.0.1');
  await once(server, 'listening');
  process.send?.({ port: (server.address() as AddressInfo).port });
} catch (error) {
  process.send?.({ skipped: error instanceof Error ? error.message : String(error) });
}
process.on('message', async () => {
  await drain();
  const { user, system } = process.cpuUsage();
  process.send?.(user + system);
});
process.once('disconnect', () => process.exit(0));

/** @return the middleware of `id`, mounted before the route */
async function handlersOf(id: string): Promise<RequestHandler[]> {
  const mounted = (options?: Parameters<Library['backgroundTasks']>[0]): RequestHandler => {
    const middleware = library.backgroundTasks(options);
    drain = () => middleware.drain();
    return middleware;
  };
  const adding = (task: () => void): RequestHandler => (_req, res, next) => {
    res.locals.tasks.add(task);
    next();
  };
  switch (id) {
    case 'bare':
      return [];
    case 'mounted':
      return [mounted()];
    case 'task':
      return [mounted(), adding(noop)];
    case 'onFinished': // what a user would write instead: an array on res.locals, run once finished
      return [(_req, res, next) => {
        const afterResponse: (() => unknown)[] = (res.locals['afterResponse'] = []);
        onFinished(res, async () => {
          for (const task of afterResponse) await Promise.resolve().then(task).catch(console.error);
        });
        next();
      }, (_req, res, next) => {
        (res.locals['afterResponse'] as (() => unknown)[]).push(noop);
        next();
      }];
    case 'retry':
      return [mounted({ retry: { attempts: 3, backoff: { type: 'exponential', delay: 100 } } }), adding(noop)];
    case 'definedInProcess':
      return [mounted(), adding(definedNoop)];
    case 'staged': {
      const { bullmqTransport } = (await import(libraryUrl.replace(/index\.js$/, 'bullmq.js'))) as typeof import('../lib/bullmq.js');
      return [mounted({ transport: bullmqTransport({ queue: await connectedQueue() }) }), adding(definedNoop)];
    }
    case 'awaitAdd': {
      const queue = await connectedQueue();
      return [async (_req, _res, next) => {
        await queue.add('noop', { tasks: [{ name: 'noop', args: [] }] });
        next();
      }];
    }
    case 'pool': {
      const { piscinaTransport } = (await import(libraryUrl.replace(/index\.js$/, 'piscina.js'))) as typeof import('../lib/piscina.js');
      const transport = piscinaTransport({ filename: tasksModule, minThreads: 1, maxThreads: 1, execArgv: [] });
      await transport.ready;
      return [mounted({ transport }), adding(definedNoop)];
    }
    case 'poolByHand': {
      const pool = new Piscina({ filename: tasksModule.href, name: 'plainNoop', minThreads: 1, maxThreads: 1, execArgv: [] });
      let running = Promise.resolve();
      drain = () => running;
      return [(_req, res, next) => {
        onFinished(res, () => void (running = pool.run(null).catch(console.error)));
        next();
      }];
    }
    default:
      throw new Error(`unknown variant ${id}`);
  }
}

/** @return a BullMQ queue on the engine, set up to fail fast as the docs recommend */
async function connectedQueue(): Promise<Queue> {
  const { hostname, port } = new URL(engineUrl ?? '');
  const queue = engine === 'postgres'
    ? postgresQueue(engineUrl ?? '', 'bench')
    : new Queue('bench', { connection: { host: hostname, port: Number(port), maxRetriesPerRequest: 1 }, skipWaitingForReady: true });
  await queue.waitUntilReady();
  return queue;
}

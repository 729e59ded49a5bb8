// Defined tasks on a piscina pool of worker threads: real threads, each loading the TypeScript
// module spec/fixtures/pool-tasks.ts through tsx, and real HTTP. The core is proven against
// Express 4 and 5 elsewhere; these specs use Express 5.
import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import express from 'express';
import { backgroundTasks, defineTask, ShutdownError, TimeoutError, type BackgroundTasksOptions, type TaskInfo } from '../lib/index.js';
import { bullmqTransport, createWorker } from '../lib/bullmq.js';
import { piscinaTransport, type PiscinaTransport, type PiscinaTransportOptions } from '../lib/piscina.js';
import { burnCpu, exhaustMemory, exitThread, failInThread, noop, runaway } from './fixtures/pool-tasks.js';
import { deferred, delay, withServer } from './support/http.js';
import { startRedis, uniqueQueue, type Redis } from './support/redis.js';

/** The tasks module as an app names it: a `.js` URL, which tsx resolves to pool-tasks.ts. */
const filename = new URL('./fixtures/pool-tasks.js', import.meta.url);

/** Pools a test opened, destroyed after it whatever happened. */
const pools: PiscinaTransport[] = [];
after(() => Promise.all(pools.splice(0).map((transport) => transport.pool.destroy())));

/** A transport on a pool of its own, threads loaded, destroyed after the spec. */
async function pool(options: Partial<PiscinaTransportOptions> = {}): Promise<PiscinaTransport> {
  const transport = piscinaTransport({ filename, maxThreads: 1, ...options });
  pools.push(transport);
  await transport.ready;
  return transport;
}

/** One task as `around` saw it, in this thread: when it was handed over, when it settled, how. */
interface Run {
  readonly name: string;
  /** The URL of the request whose response queued it. */
  readonly url: string;
  readonly startedAt: number;
  endedAt: number;
  failed: boolean;
}

/**
 * An `around` that records each task's run, and the runs so far; `started(name)` resolves once a
 * task of that name has started.
 */
function recordRuns(): { around: NonNullable<BackgroundTasksOptions['around']>; runs: Run[]; started(name: string): Promise<Run> } {
  const runs: Run[] = [];
  const waiting = new Map<string, (run: Run) => void>();
  return {
    runs,
    around(info, run) {
      const record: Run = { name: info.name, url: info.url, startedAt: performance.now(), endedAt: NaN, failed: false };
      runs.push(record);
      waiting.get(info.name)?.(record);
      return Promise.resolve(run()).then(
        () => void (record.endedAt = performance.now()),
        (error: unknown) => {
          record.endedAt = performance.now();
          record.failed = true;
          throw error;
        },
      );
    },
    started(name) {
      const { promise, resolve } = deferred<Run>();
      waiting.set(name, resolve);
      return promise;
    },
  };
}

/** The errors `onError` received, with their info. */
function recordErrors(): { onError: (error: unknown, info: TaskInfo) => void; errors: { error: unknown; info: TaskInfo }[] } {
  const errors: { error: unknown; info: TaskInfo }[] = [];
  return { errors, onError: (error, info) => void errors.push({ error, info }) };
}

/** An app whose `POST /photos/:id` runs `handler` and whose `GET /ping` answers at once. */
function appWith(options: BackgroundTasksOptions, handler: express.RequestHandler): { app: express.Express; tasks: ReturnType<typeof backgroundTasks> } {
  const tasks = backgroundTasks(options);
  const app = express();
  app.use(tasks);
  app.post('/photos/:id', handler);
  app.get('/ping', (_req, res) => void res.send('pong'));
  return { app, tasks };
}

/** @return the ms `GET url` takes, response read in full */
async function timeGet(url: string): Promise<number> {
  const startedAt = performance.now();
  await (await fetch(url)).text();
  return performance.now() - startedAt;
}

/** @return the CPU time, in ms, every thread of this process used during the next `ms` */
async function cpuDuring(ms: number): Promise<number> {
  const before = process.cpuUsage();
  await delay(ms);
  const { user, system } = process.cpuUsage(before);
  return (user + system) / 1000;
}

describe('piscinaTransport(): defined tasks on a pool of worker threads', () => {
  test('a CPU-bound task on the pool does not delay the requests served while it runs; in this process, it does', async (t) => {
    const taskMs = 1000;
    /**
     * Queues the task, then sends a ping every 100 ms from 100 ms after the task started, while it
     * should still be running.
     * @return each ping's response time, from when it was due (a blocked event loop sends it late),
     *   and the task's run as `around` saw it
     */
    const measure = async (options: BackgroundTasksOptions): Promise<{ pings: number[]; run: Run }> => {
      const { around, started } = recordRuns();
      const { app, tasks } = appWith({ ...options, around }, (_req, res) => {
        res.locals.tasks.add(burnCpu, taskMs);
        res.status(202).end();
      });
      return withServer(app, async ({ url }) => {
        await (await fetch(`${url}/ping`)).text(); // a warm connection and route
        const running = started('burn-cpu');
        assert.equal((await fetch(`${url}/photos/1`, { method: 'POST' })).status, 202);
        const run = await running;
        const pings = await Promise.all([1, 2, 3, 4, 5].map(async (i) => {
          const dueAt = run.startedAt + i * 100;
          await delay(dueAt - performance.now());
          await (await fetch(`${url}/ping`)).text();
          return performance.now() - dueAt;
        }));
        await tasks.drain();
        return { pings, run };
      });
    };
    const onPool = await measure({ transport: await pool() });
    const taskLength = onPool.run.endedAt - onPool.run.startedAt;
    t.diagnostic(`pool: task ${taskLength.toFixed(0)} ms, pings ${onPool.pings.map((ms) => ms.toFixed(1)).join(', ')} ms after they were due`);
    assert.ok(taskLength >= taskMs, `the task took ${taskLength} ms`);
    assert.ok(Math.max(...onPool.pings) < taskLength / 8, 'each ping was answered within an eighth of the task\'s length');

    const inProcess = await measure({});
    t.diagnostic(`in this process: pings ${inProcess.pings.map((ms) => ms.toFixed(1)).join(', ')} ms after they were due`);
    assert.ok((inProcess.pings[0] ?? 0) > taskMs / 2, 'in this process, the first ping waited for the task');
  });

  test('a failing task reaches onError with its own error, its name and its request; the next task runs', async () => {
    const { around, runs } = recordRuns();
    const { onError, errors } = recordErrors();
    const { app, tasks } = appWith({ transport: await pool(), around, onError }, (req, res) => {
      res.locals.tasks.add(failInThread, String(req.params.id)).add(noop);
      res.status(202).end();
    });
    await withServer(app, ({ url }) => fetch(`${url}/photos/7?size=large`, { method: 'POST' }));
    await tasks.drain();
    assert.equal(errors.length, 1);
    const [{ error, info }] = errors as [(typeof errors)[number]];
    assert.ok(error instanceof TypeError, 'a built-in error class crosses the thread boundary as itself');
    assert.equal(error.message, 'photo 7 is not an image');
    assert.match(String(error.stack), /pool-tasks\.ts/, 'with its stack in the thread');
    assert.equal(info.name, 'fail-in-thread');
    assert.equal(info.method, 'POST');
    assert.equal(info.url, '/photos/7?size=large');
    assert.equal(info.status, 202);
    assert.equal(info.req.params['id'], '7');
    assert.deepEqual(runs.map(({ name, failed }) => [name, failed]), [['fail-in-thread', true], ['noop', false]]);
  });

  test('a response\'s tasks run one at a time in the order they were added, on the pool and in this process alike', async () => {
    const { around, runs } = recordRuns();
    const { app, tasks } = appWith({ transport: await pool({ maxThreads: 2 }), around }, (_req, res) => {
      res.locals.tasks
        .add(burnCpu, 150)
        .add(function inProcess() {})
        .add(burnCpu, 50)
        .add(async function inProcessAsync() {
          await delay(20);
        })
        .add(noop);
      res.end();
    });
    await withServer(app, async ({ url }) => {
      await Promise.all([fetch(`${url}/photos/1`, { method: 'POST' }), fetch(`${url}/photos/2`, { method: 'POST' })]);
    });
    await tasks.drain();
    for (const url of ['/photos/1', '/photos/2']) {
      const ofResponse = runs.filter((run) => run.url === url);
      assert.deepEqual(ofResponse.map(({ name }) => name), ['burn-cpu', 'inProcess', 'burn-cpu', 'inProcessAsync', 'noop'], url);
      ofResponse.slice(1).forEach((run, index) => {
        assert.ok(run.startedAt >= (ofResponse[index] as Run).endedAt, `${url}: ${run.name} started after the task before it settled`);
      });
    }
  });
});

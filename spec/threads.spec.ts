// Defined tasks on a piscina pool of worker threads: real threads, each loading the TypeScript
// module spec/fixtures/pool-tasks.ts through tsx, and real HTTP. The core is proven against
// Express 4 and 5 elsewhere; these specs use Express 5.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import type { Worker } from 'node:worker_threads';
import { after, describe, test } from 'node:test';
import express from 'express';
import { backgroundTasks, defineTask, PermanentError, ShutdownError, TimeoutError, type BackgroundTasksOptions, type CloseSummary, type TaskInfo, type TaskQueue } from '../lib/index.js';
import { bullmqTransport, createWorker } from '../lib/bullmq.js';
import { piscinaTransport, type PiscinaTransport, type PiscinaTransportOptions } from '../lib/piscina.js';
import { burnCpu, exhaustMemory, exitThread, failInThread, flakyInThread, goneInThread, noop, runaway, runawayOnce, throwValue } from './fixtures/pool-tasks.js';
import { deferred, delay, withServer } from './support/http.js';
import { startRedis, uniqueQueue, type Redis } from './support/redis.js';

/** The tasks module as an app names it: a `.js` URL, which tsx resolves to pool-tasks.ts. */
const filename = new URL('./fixtures/pool-tasks.js', import.meta.url);

/** Pools a test opened, destroyed after it whatever happened. */
const pools: PiscinaTransport[] = [];
after(() => Promise.all(pools.splice(0).map((transport) => transport.close?.())));

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

  test('a runaway task is stopped at `timeout`: a TimeoutError, its thread gone, and the next task runs', async (t) => {
    const transport = await pool();
    const { around, runs } = recordRuns();
    const { onError, errors } = recordErrors();
    // Long enough for the thread that replaces the stopped one to start and load the module through tsx.
    const timeout = 2000;
    const { app, tasks } = appWith({ transport, around, onError, timeout }, (_req, res) => {
      res.locals.tasks.add(runaway).add(noop);
      res.end();
    });
    const exited = once(transport.pool.threads[0] as Worker, 'exit');
    await withServer(app, ({ url }) => fetch(`${url}/photos/1`, { method: 'POST' }));
    await tasks.drain();
    assert.equal(await Promise.race([exited.then(() => 'exited'), delay(0).then(() => 'still running')]), 'exited', 'the thread that ran it ended');
    assert.deepEqual(errors.map(({ error, info }) => [info.name, (error as Error).name, (error as Error).message]), [
      ['runaway', 'TimeoutError', `Task runaway did not settle within ${timeout} ms`],
    ]);
    assert.ok(errors[0]?.error instanceof TimeoutError);
    assert.deepEqual(runs.map(({ name, failed }) => [name, failed]), [['runaway', true], ['noop', false]], 'the next task ran, on the pool');
    const cpu = await cpuDuring(500);
    t.diagnostic(`CPU time of the whole process over the next 500 ms: ${cpu.toFixed(0)} ms`);
    assert.ok(cpu < 150, 'no thread is still spinning');
    assert.equal(transport.pool.threads.length, 1, 'the pool has one thread, a new one');
  });

  for (const [death, task, queue, options, reason] of [
    ['calls process.exit()', exitThread, (tasks: TaskQueue) => tasks.add(exitThread, 3), {}, /worker exited with code: 3/],
    ['runs out of the memory `resourceLimits` gives it', exhaustMemory, (tasks: TaskQueue) => tasks.add(exhaustMemory),
      { resourceLimits: { maxOldGenerationSizeMb: 48 } }, /memory limit/],
  ] as const) {
    test(`a thread that ${death} is reported as its task's failure, and the pool starts another for the next task`, async () => {
      const { around, runs } = recordRuns();
      const { onError, errors } = recordErrors();
      const { app, tasks } = appWith({ transport: await pool(options), around, onError }, (_req, res) => {
        queue(res.locals.tasks).add(noop);
        res.end();
      });
      await withServer(app, ({ url }) => fetch(`${url}/photos/1`, { method: 'POST' }));
      await tasks.drain();
      assert.equal(errors.length, 1);
      assert.equal(errors[0]?.info.name, task.taskName);
      assert.match((errors[0]?.error as Error).message, reason);
      assert.deepEqual(runs.map(({ name, failed }) => [name, failed]), [[task.taskName, true], ['noop', false]]);
    });
  }

  test('pending and drain() count a pool task until it has run', async () => {
    const { around, runs } = recordRuns();
    const { app, tasks } = appWith({ transport: await pool(), around }, (_req, res) => {
      res.locals.tasks.add(burnCpu, 300);
      res.end();
    });
    await withServer(app, async ({ url }) => {
      await fetch(`${url}/photos/1`, { method: 'POST' });
      assert.equal(tasks.pending, 1);
      await tasks.drain();
    });
    const drainedAt = performance.now();
    assert.equal(tasks.pending, 0);
    assert.ok((runs[0]?.endedAt ?? Infinity) <= drainedAt, 'drain() resolved after the task had run');
    assert.ok(drainedAt - (runs[0]?.startedAt ?? 0) >= 300);
  });

  test('maxPending counts pool tasks until they have run; runOn: \'success\' drops them with a failed response', async () => {
    const { around, runs } = recordRuns();
    const { app, tasks } = appWith({ transport: await pool(), around, maxPending: 1, runOn: 'success' }, (req, res) => {
      try {
        res.locals.tasks.add(burnCpu, 200);
      } catch (error) {
        res.status(503).send((error as Error).name);
        return;
      }
      res.status(req.params.id === 'bad' ? 400 : 202).end();
    });
    await withServer(app, async ({ url }) => {
      assert.equal((await fetch(`${url}/photos/1`, { method: 'POST' })).status, 202);
      const refused = await fetch(`${url}/photos/2`, { method: 'POST' });
      assert.deepEqual([refused.status, await refused.text()], [503, 'QueueFullError'], 'the first is still pending');
      await tasks.drain();
      assert.equal((await fetch(`${url}/photos/bad`, { method: 'POST' })).status, 400);
      await tasks.drain();
    });
    assert.deepEqual(runs.map(({ url }) => url), ['/photos/1'], 'the task of the 400 never reached the pool');
  });

  test('a task the module does not export fails clearly, naming the tasks it does export', async () => {
    const { onError, errors } = recordErrors();
    const notExported = defineTask('not-exported', () => {});
    const { app, tasks } = appWith({ transport: await pool(), onError }, (_req, res) => {
      res.locals.tasks.add(notExported).add(noop);
      res.end();
    });
    await withServer(app, ({ url }) => fetch(`${url}/photos/1`, { method: 'POST' }));
    await tasks.drain();
    assert.deepEqual(errors.map(({ info }) => info.name), ['not-exported']);
    assert.equal((errors[0]?.error as Error).message, `Task not-exported is not exported by the tasks module ${filename.href}, which exports ` +
      'burn-cpu, exhaust-memory, exit-thread, fail-in-thread, flaky-in-thread, gone-in-thread, noop, runaway, runaway-once, throw-value: export its defineTask() definition there');
  });

  for (const [mistake, module, message] of [
    ['a file that does not exist', new URL('./fixtures/no-such-tasks.js', import.meta.url), /^Cannot load the tasks module file:\/\/\S+\/fixtures\/no-such-tasks\.js in a pool thread: Cannot find module/],
    ['a module that exports no definitions', new URL('./fixtures/pool-no-tasks.js', import.meta.url),
      /^The tasks module file:\/\/\S+\/fixtures\/pool-no-tasks\.js exports no defineTask\(\) definitions: export each task the pool runs/],
  ] as const) {
    test(`${mistake}: ready rejects at startup, and each task is reported with the reason when it runs`, async () => {
      const transport = piscinaTransport({ filename: module, maxThreads: 1 });
      pools.push(transport);
      await assert.rejects(transport.ready, { message });
      const { onError, errors } = recordErrors();
      const { app, tasks } = appWith({ transport, onError }, (_req, res) => {
        res.locals.tasks.add(noop).add(burnCpu, 1);
        res.end();
      });
      await withServer(app, ({ url }) => fetch(`${url}/photos/1`, { method: 'POST' }));
      await tasks.drain();
      assert.deepEqual(errors.map(({ info }) => info.name), ['noop', 'burn-cpu']);
      for (const { error } of errors) assert.match((error as Error).message, message);
    });
  }

  test('ready rejects when the module does not export a task that `tasks` lists', async () => {
    const elsewhere = defineTask('defined-elsewhere', () => {});
    const transport = piscinaTransport({ filename, maxThreads: 1, tasks: [burnCpu, elsewhere] });
    pools.push(transport);
    await assert.rejects(transport.ready, { message: /does not export defined-elsewhere, which piscinaTransport\(\{ tasks \}\) lists: it exports burn-cpu, / });
  });

  test('close() stops the pool tasks still running at its deadline, reports them as ShutdownErrors, and closes the pool', async () => {
    const transport = await pool();
    const { onError, errors } = recordErrors();
    const { app, tasks } = appWith({ transport, onError }, (_req, res) => {
      res.locals.tasks.add(runaway).add(noop);
      res.end();
    });
    await withServer(app, ({ url }) => fetch(`${url}/photos/1`, { method: 'POST' }));
    const [thread] = transport.pool.threads as [Worker]; // one thread: the one running `runaway`
    const exited = once(thread, 'exit');
    const summary = await tasks.close({ timeout: 300 });
    assert.deepEqual(summary, { drained: false, settled: 0, abandoned: 2, pending: 0 });
    assert.deepEqual(errors.map(({ error, info }) => [info.name, (error as Error).name]), [['noop', 'ShutdownError'], ['runaway', 'ShutdownError']]);
    assert.ok(errors.every(({ error }) => error instanceof ShutdownError));
    assert.equal(transport.pool.threads.length, 0, 'the pool is closed');
    assert.equal(await Promise.race([exited.then(() => 'exited'), delay(1000).then(() => 'still running')]), 'exited', 'the thread that ran it is gone');
  });

  test('retries: each attempt runs on a thread, as the task\'s own retry says, before the next task; onError is not called', async () => {
    const counter = runCounter();
    const { around, runs } = recordRuns();
    const { onError, errors } = recordErrors();
    const { app, tasks } = appWith({ transport: await pool(), around, onError }, (_req, res) => {
      res.locals.tasks.add(flakyInThread, counter.file, 2).add(noop);
      res.end();
    });
    await withServer(app, ({ url }) => fetch(`${url}/photos/1`, { method: 'POST' }));
    await tasks.drain();
    assert.equal(counter.runs(), 3);
    assert.deepEqual(runs.map(({ name, failed }) => [name, failed]), [
      ['flaky-in-thread', true], ['flaky-in-thread', true], ['flaky-in-thread', false], ['noop', false],
    ]);
    assert.deepEqual(errors, []);
  });

  test('retries: a thread stopped at `timeout` is a failed attempt, and the next attempt runs on a new thread', async () => {
    const counter = runCounter();
    const transport = await pool();
    const { onError, errors } = recordErrors();
    // Long enough for the thread that replaces the stopped one to start and load the module through tsx.
    const { app, tasks } = appWith({ transport, onError, timeout: 2000, retry: { attempts: 2 } }, (_req, res) => {
      res.locals.tasks.add(runawayOnce, counter.file);
      res.end();
    });
    const exited = once(transport.pool.threads[0] as Worker, 'exit');
    await withServer(app, ({ url }) => fetch(`${url}/photos/1`, { method: 'POST' }));
    await tasks.drain();
    await exited;
    assert.equal(counter.runs(), 2);
    assert.deepEqual(errors, []);
  });

  test('retries: a PermanentError thrown on a thread reaches onError as itself, after one attempt', async () => {
    const counter = runCounter();
    const { onError, errors } = recordErrors();
    const { app, tasks } = appWith({ transport: await pool(), onError, retry: { attempts: 5 } }, (_req, res) => {
      res.locals.tasks.add(goneInThread, counter.file);
      res.end();
    });
    await withServer(app, ({ url }) => fetch(`${url}/photos/1`, { method: 'POST' }));
    await tasks.drain();
    assert.equal(counter.runs(), 1);
    assert.equal(errors.length, 1);
    const [{ error, info }] = errors as [{ error: Error; info: TaskInfo }];
    assert.ok(error instanceof PermanentError);
    assert.equal(error.message, 'photo 7 was deleted');
    assert.match(String(error.stack), /gone-in-thread|pool-tasks/);
    assert.equal(info.attempt, 1);
  });

  test('retries: close() during the backoff of a pool task reports a ShutdownError within its deadline, and closes the pool', async () => {
    const transport = await pool();
    const { onError, errors } = recordErrors();
    const firstFailed = deferred();
    const around = (_info: TaskInfo, run: () => unknown): Promise<unknown> => Promise.resolve(run()).catch((error: unknown) => {
      firstFailed.resolve();
      throw error;
    });
    const retry = { attempts: 3, backoff: { type: 'fixed', delay: 60_000 } } as const;
    const { app, tasks } = appWith({ transport, onError, around, retry }, (_req, res) => {
      res.locals.tasks.add(failInThread, '7');
      res.end();
    });
    await withServer(app, ({ url }) => fetch(`${url}/photos/1`, { method: 'POST' }));
    await firstFailed.promise;
    const closing = performance.now();
    const summary = await tasks.close({ timeout: 200 });
    assert.ok(performance.now() - closing < 2_000, 'within the deadline, not the backoff');
    assert.deepEqual(summary, { drained: false, settled: 0, abandoned: 1, pending: 0 });
    assert.equal(errors.length, 1);
    assert.ok(errors[0]?.error instanceof ShutdownError);
    assert.match((errors[0]?.error as Error).message, /fail-in-thread was abandoned at shutdown: waiting for its next attempt 200 ms after close\(\), after 1 of 3 attempts had failed/);
    assert.equal(transport.pool.threads.length, 0, 'the pool is closed');
  });

  test('tasks the module does not run stay elsewhere: plain functions here, and defined tasks a transport does not list', async () => {
    const { around, runs } = recordRuns();
    const local = defineTask('local', () => {});
    const transport = await pool({ tasks: [burnCpu] });
    const { app, tasks } = appWith({ transport, around }, (_req, res) => {
      res.locals.tasks.add(burnCpu, 1).add(local).add(function plain() {});
      res.end();
    });
    await withServer(app, ({ url }) => fetch(`${url}/photos/1`, { method: 'POST' }));
    await tasks.drain();
    assert.deepEqual(runs.map(({ name }) => name), ['burn-cpu', 'local', 'plain']);
    assert.equal(transport.pool.completed, 2, 'the pool ran the startup check and burn-cpu, not local');
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

describe('piscinaTransport(): a process closed with close() exits by itself (child process)', { timeout: 60_000 }, () => {
  /** What spec/fixtures/pool-exit-server.mjs prints as it exits, in ms since SIGTERM. */
  interface ExitOutcome {
    readonly summary: CloseSummary;
    readonly closedMs: number;
    /** When the thread that ran the stuck task ended. */
    readonly threadEndedMs: number | null;
    readonly exitMs: number;
    readonly threadsAtExit: number;
  }

  for (const [how, execArgv] of [['compiled JavaScript on plain node', []], ['the same, run through tsx', ['--import', 'tsx']]] as const) {
    test(`${how}: once close() has resolved and the thread of a task it gave up on has ended, the process exits at once, the pool starting no thread after close()`, async (t) => {
      assert.ok(existsSync('dist/esm/piscina.js'), 'dist/ is missing: run `npm run build` before this spec');
      const child = spawn(process.execPath, [...execArgv, 'spec/fixtures/pool-exit-server.mjs'], { stdio: ['ignore', 'pipe', 'inherit'] });
      const exited = once(child, 'exit');
      const lines = createInterface({ input: child.stdout })[Symbol.asyncIterator]();
      const stopper = setTimeout(() => child.kill('SIGKILL'), 30_000);
      try {
        const { port } = JSON.parse(String((await lines.next()).value)) as { port: number };
        for (const path of ['/noop', '/noop', '/noop']) {
          assert.equal((await fetch(`http://127.0.0.1:${port}${path}`, { method: 'POST' })).status, 202);
        }
        // Blocked in a synchronous call, it outlives close()'s deadline, and its thread ends only once the call returns.
        assert.equal((await fetch(`http://127.0.0.1:${port}/block/1500`, { method: 'POST' })).status, 202);
        await delay(250); // for it to be running on the thread
        child.kill('SIGTERM');
        const outcome = JSON.parse(String((await lines.next()).value)) as ExitOutcome;
        const [code] = (await exited) as [number | null];
        t.diagnostic(`close() resolved ${outcome.closedMs} ms after SIGTERM, the stuck thread ended at ${outcome.threadEndedMs} ms, the process exited at ${outcome.exitMs} ms`);
        assert.equal(code, 0);
        assert.equal(outcome.summary.abandoned, 1, 'close() gave up on the stuck task');
        assert.ok(outcome.threadEndedMs !== null, 'its thread was terminated');
        const lastToEnd = Math.max(outcome.closedMs, outcome.threadEndedMs);
        assert.ok(outcome.exitMs - lastToEnd < 1000, `exited ${outcome.exitMs - lastToEnd} ms after close() had resolved and the thread had ended`);
        assert.equal(outcome.threadsAtExit, 0, 'the pool started no thread after close()');
      } finally {
        clearTimeout(stopper);
        child.kill('SIGKILL');
      }
    });
  }
});

describe('piscinaTransport() beside bullmqTransport(): CPU work on threads, must-not-lose work in Redis', () => {
  let redis: Redis | undefined;
  after(() => redis?.stop());

  test('the pool runs the tasks its transport lists, Redis stores the other defined tasks, plain functions run here', async (t) => {
    const redisOrReason = await startRedis();
    if (typeof redisOrReason === 'string') {
      t.skip(redisOrReason);
      return;
    }
    redis = redisOrReason;
    const queue = await uniqueQueue(redis);
    const receipts: string[] = [];
    const sendReceipt = defineTask('send-receipt', (id: string) => void receipts.push(id));
    const worker = createWorker({ queueName: queue.name, connection: { host: redis.host, port: redis.port }, tasks: [sendReceipt], autorun: false });
    t.after(() => Promise.all([queue.close(), worker.close()]));
    const threads = await pool({ tasks: [burnCpu, failInThread] });
    const { around, runs } = recordRuns();
    const { onError, errors } = recordErrors();
    // The choice is made here, where the transports are configured; the handler does not change.
    const { app, tasks } = appWith({ transport: [threads, bullmqTransport({ queue })], around, onError }, (req, res) => {
      const id = String(req.params.id);
      res.locals.tasks.add(burnCpu, 20).add(sendReceipt, id).add(failInThread, id).add(function audit() {});
      res.status(202).end();
    });
    await withServer(app, async ({ url }) => {
      await Promise.all(['1', '2'].map((id) => fetch(`${url}/photos/${id}`, { method: 'POST' })));
    });
    await tasks.drain();

    assert.deepEqual(runs.filter(({ url }) => url === '/photos/1').map(({ name }) => name), ['burn-cpu', 'fail-in-thread', 'audit'], 'in turn, here and on the pool');
    assert.equal(threads.pool.completed, 1 + 4, 'the startup check, then burn-cpu and fail-in-thread of each response');
    assert.deepEqual(errors.map(({ info }) => `${info.name} ${info.url}`).sort(), ['fail-in-thread /photos/1', 'fail-in-thread /photos/2']);
    const jobs = await queue.getJobs(['waiting']);
    assert.deepEqual(jobs.map((job) => job.data).sort((a, b) => String(a.tasks[0]?.args[0]).localeCompare(String(b.tasks[0]?.args[0]))), [
      { tasks: [{ name: 'send-receipt', args: ['1'] }] },
      { tasks: [{ name: 'send-receipt', args: ['2'] }] },
    ], 'only the task the pool does not list went to Redis');
    const completed = new Promise<void>((resolve) => {
      let count = 0;
      worker.on('completed', () => void (++count === 2 && resolve()));
    });
    void worker.run();
    await completed;
    assert.deepEqual(receipts.sort(), ['1', '2']);
  });
});

describe('piscinaTransport() refuses bad options at once, with a TypeError', () => {
  for (const [label, options, message] of [
    ['no options', undefined, 'Expected `options` to be an object such as { filename: new URL(\'./tasks.js\', import.meta.url) }, got `undefined` (undefined)'],
    ['a relative filename', { filename: 'tasks.js' }, 'Expected `filename` to be the module exporting the task definitions: an absolute path, a file: URL or new URL(\'./tasks.js\', import.meta.url), got `tasks.js` (string)'],
    ['an https: URL', { filename: new URL('https://example.com/tasks.js') }, 'Expected `filename` to be the module exporting the task definitions'],
    ['tasks that is not an array', { filename, tasks: burnCpu }, 'Expected `tasks` to be an array of defineTask() definitions'],
    ['a plain function among tasks', { filename, tasks: [burnCpu, () => {}] }, 'Expected `tasks[1]` to be a task made by defineTask(), got `[Function (anonymous)]` (function)'],
  ] as const) {
    test(label, () => {
      assert.throws(() => piscinaTransport(options as unknown as PiscinaTransportOptions), (error: unknown) => {
        assert.ok(error instanceof TypeError);
        assert.ok(error.message.startsWith(message), error.message);
        return true;
      });
    });
  }
});

describe('piscinaTransport(): whatever a task throws in its thread', () => {
  const thrown: [kind: string, message: string][] = [
    ['null', 'Task throw-value failed with null, not an Error'],
    ['undefined', 'Task throw-value failed with undefined, not an Error'],
    ['symbol', 'Task throw-value failed with Symbol(boom), not an Error'],
    ['function', 'Task throw-value failed with [Function: explode], not an Error'],
    ['proxy', 'Task throw-value failed with { code: 7 }, not an Error'],
    ['revoked proxy', 'Task throw-value failed with a thrown object that cannot be shown, not an Error'],
    ['object with a method', 'Task throw-value failed with { code: 42, retry: [Function: retry] }, not an Error'],
  ];
  test('reaches onError as a failure that says what was thrown, and the next task runs', async () => {
    const reported: [name: string, message: string, isError: boolean][] = [];
    const ran: string[] = [];
    const onError = (error: unknown, { name }: TaskInfo): void => void reported.push([name, error instanceof Error ? error.message : String(error), error instanceof Error]);
    const tasks = backgroundTasks({ transport: await pool({ tasks: [throwValue] }), onError });
    const app = express();
    app.use(tasks);
    app.get('/', (_req, res) => {
      for (const [kind] of thrown) res.locals.tasks.add(throwValue, kind);
      res.locals.tasks.add(function after() {
        ran.push('after');
      });
      res.send('ok');
    });
    await withServer(app, async ({ url }) => {
      await (await fetch(url)).text();
      await tasks.drain();
    });
    assert.deepEqual(reported, thrown.map(([, message]) => ['throw-value', message, true]));
    assert.deepEqual(ran, ['after']);
  });
});

describe('piscinaTransport() options', () => {
  test('refuses a misspelled option of the pool, naming it and the option it misspells', () => {
    assert.throws(() => piscinaTransport({ filename, maxThread: 1 } as PiscinaTransportOptions), {
      name: 'TypeError',
      message: 'Expected `maxThread` to be an option of piscinaTransport() (did you mean `maxThreads`?), got `1` (number)',
    });
  });
});

/** A file in which pool tasks count their runs (each attempt may run on another thread). */
function runCounter(): { file: string; runs(): number } {
  const directory = mkdtempSync(path.join(tmpdir(), 'pool-runs-'));
  const file = path.join(directory, 'runs');
  after(() => rmSync(directory, { recursive: true, force: true }));
  return { file, runs: () => (existsSync(file) ? readFileSync(file, 'utf8').split('\n').length - 1 : 0) };
}

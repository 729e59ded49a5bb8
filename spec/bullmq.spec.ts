// The BullMQ transport against a real Redis server (see spec/support/redis.ts for which one).
// The core is proven against Express 4 and 5 elsewhere; these specs use Express 5.
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { once } from 'node:events';
import { after, describe, test } from 'node:test';
import { type ConnectionOptions, type Job, Queue, type Worker } from 'bullmq';
import express from 'express';
import { Redis as Ioredis6 } from 'ioredis';
import { Redis as Ioredis5 } from 'ioredis5';
import { backgroundTasks, defineTask, HandOffError, type BackgroundTasksOptions, type TaskInfo } from '../lib/index.js';
import { bullmqTransport, createWorker, type TasksJobData } from '../lib/bullmq.js';
import { deferred, withServer } from './support/http.js';
import { freePort, startRedis, uniqueQueue, waitForOutput, type Redis } from './support/redis.js';

const requireFromSpec = createRequire(import.meta.url);
const redisOrReason = await startRedis();
const redis = typeof redisOrReason === 'string' ? undefined : redisOrReason;
const skip = typeof redisOrReason === 'string' ? redisOrReason : false;
const connection = { host: redis?.host ?? '', port: redis?.port ?? 0 };
after(() => redis?.stop());

/** Queues and workers a test opened, closed after it. */
const opened: (Queue | Worker)[] = [];
async function closeOpened(): Promise<void> {
  await Promise.all(opened.splice(0).map((client) => client.close()));
}

/** An app whose `POST /:id` runs `handler`, with the middleware `options` configure. */
function appWith(options: BackgroundTasksOptions, handler: express.RequestHandler): { app: express.Express; tasks: ReturnType<typeof backgroundTasks> } {
  const tasks = backgroundTasks(options);
  const app = express();
  app.use(tasks);
  app.post('/:id', handler);
  return { app, tasks };
}

/** Resolves once `worker` has emitted `event` `count` times, with the jobs. */
function jobEvents(worker: Worker, event: 'completed' | 'failed', count: number): Promise<Job<TasksJobData>[]> {
  const jobs: Job<TasksJobData>[] = [];
  const done = deferred<Job<TasksJobData>[]>();
  worker.on(event, (job: Job<TasksJobData> | undefined) => {
    if (job !== undefined && jobs.push(job) === count) done.resolve(jobs);
  });
  return done.promise;
}

describe('bullmqTransport() and createWorker() against Redis', { skip }, () => {
  test('hands a response\'s defined tasks off once it has been flushed, as one job holding them in order', async () => {
    const queue = await uniqueQueue(redis as Redis);
    opened.push(queue);
    const inProcess: string[] = [];
    const send = defineTask('send', (_to: string) => {});
    const audit = defineTask('audit', (_event: { id: string; n: number }) => {});
    const respond = deferred();
    const jobsBeforeResponse = deferred<number>();
    let finishedAt = 0;
    const { app, tasks } = appWith({ transport: bullmqTransport({ queue }) }, async (req, res) => {
      res.on('finish', () => (finishedAt = Date.now()));
      res.locals.tasks
        .add(send, `${req.params.id}@example.com`)
        .add((id: string) => void inProcess.push(id), String(req.params.id))
        .add(audit, { id: String(req.params.id), n: 1 });
      jobsBeforeResponse.resolve(await queue.count());
      await respond.promise;
      res.json({ ok: true });
    });
    await withServer(app, async ({ url }) => {
      const response = fetch(`${url}/7`, { method: 'POST' });
      assert.equal(await jobsBeforeResponse.promise, 0, 'no job before the response');
      respond.resolve();
      assert.equal((await response).status, 200);
      await tasks.drain(); // resolves once Redis has stored the job
    });
    const jobs = await queue.getJobs(['waiting']);
    assert.equal(jobs.length, 1);
    const [job] = jobs as [Job<TasksJobData>];
    assert.deepEqual(job.data.tasks, [
      { name: 'send', args: ['7@example.com'] },
      { name: 'audit', args: [{ id: '7', n: 1 }] },
    ]);
    assert.equal(job.name, 'send,audit');
    assert.match(job.id ?? '', /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/, 'a UUID: a resent add cannot make a second job');
    assert.ok(job.timestamp >= finishedAt, 'the job was added after the response finished');
    assert.deepEqual(inProcess, ['7'], 'the plain function ran in this process');
    await closeOpened();
  });

  test('a worker runs each job\'s tasks one after another, in the order they were added', async () => {
    const queue = await uniqueQueue(redis as Redis);
    const ran = new Map<string, string[]>();
    const step = defineTask('step', async (id: string, name: string) => {
      await new Promise((resolve) => setTimeout(resolve, name === 'a' ? 5 : 0)); // the first is slowest
      ran.set(id, [...(ran.get(id) ?? []), name]);
    });
    const worker = createWorker({ queueName: queue.name, connection, tasks: [step], concurrency: 4 });
    opened.push(queue, worker);
    const completed = jobEvents(worker, 'completed', 10);
    const { app } = appWith({ transport: bullmqTransport({ queue }) }, (req, res) => {
      const id = String(req.params.id);
      res.locals.tasks.add(step, id, 'a').add(step, id, 'b').add(step, id, 'c');
      res.end();
    });
    await withServer(app, async ({ url }) => {
      await Promise.all(Array.from({ length: 10 }, (_, i) => fetch(`${url}/${i}`, { method: 'POST' })));
    });
    assert.equal((await completed).length, 10);
    assert.equal(ran.size, 10);
    for (const [id, names] of ran) assert.deepEqual(names, ['a', 'b', 'c'], `response ${id}`);
    await closeOpened();
  });

  test('a worker process runs the tasks of a web process killed by SIGKILL right after its responses', async (t) => {
    const requests = 50;
    const env = { ...process.env, REDIS_HOST: connection.host, REDIS_PORT: String(connection.port), QUEUE: `kill-${Date.now()}` };
    const web = spawn(process.execPath, ['--import', 'tsx', 'spec/fixtures/bullmq-web.ts'], {
      env: { ...env, DEBUG: 'express-background-tasks' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    t.after(() => web.kill('SIGKILL'));
    const [, port] = (await waitForOutput(web, /listening (\d+)/)) as [string, string];
    let webErrors = '';
    const allHandedOff = deferred();
    web.stderr.on('data', (chunk: Buffer) => {
      webErrors += chunk.toString();
      if (webErrors.match(/handed off 2 task\(s\)/g)?.length === requests) allHandedOff.resolve();
    });

    for (let i = 0; i < requests; i++) {
      const response = await fetch(`http://127.0.0.1:${port}/items/${i}`, { method: 'POST' });
      assert.equal(response.status, 200);
    }
    const responsesAt = performance.now();
    await allHandedOff.promise;
    t.diagnostic(`last hand-off seen ${(performance.now() - responsesAt).toFixed(1)} ms after the last response`);
    web.kill('SIGKILL');
    await once(web, 'exit');

    // The worker starts only now: the jobs must have been in Redis, not in the dead process.
    const worker = spawn(process.execPath, ['--import', 'tsx', 'spec/fixtures/bullmq-worker.ts'], { env, stdio: ['ignore', 'pipe', 'inherit'] });
    t.after(() => worker.kill('SIGKILL'));
    let output = '';
    const allCompleted = deferred();
    worker.stdout.on('data', (chunk: Buffer) => {
      output += chunk.toString();
      if (output.match(/^completed /gm)?.length === requests) allCompleted.resolve();
    });
    await allCompleted.promise;
    const ran = [...output.matchAll(/^ran (\S+)$/gm)].map(([, label]) => label);
    const labels = Array.from({ length: requests }, (_, i) => [`${i}:a`, `${i}:b`]).flat();
    assert.deepEqual(ran.sort(), labels.sort(), 'once all jobs completed, every task had run exactly once');
    worker.kill('SIGTERM');
    assert.equal((await once(worker, 'exit'))[0], 0);
  });

  test('a failing task is retried per the job options; the tasks that succeeded do not run again', async () => {
    const queue = await uniqueQueue(redis as Redis);
    const runs: string[] = [];
    let flakyRuns = 0;
    const before = defineTask('before', () => void runs.push('before'));
    const flaky = defineTask('flaky', () => {
      runs.push('flaky');
      if (++flakyRuns < 3) throw new Error(`SMTP down (attempt ${flakyRuns})`);
    });
    const behind = defineTask('behind', () => void runs.push('behind'));
    const worker = createWorker({ queueName: queue.name, connection, tasks: [before, flaky, behind] });
    opened.push(queue, worker);
    const failed = jobEvents(worker, 'failed', 2);
    const completed = jobEvents(worker, 'completed', 1);
    const transport = bullmqTransport({ queue, jobOptions: { attempts: 3, backoff: { type: 'fixed', delay: 10 } } });
    const { app } = appWith({ transport }, (_req, res) => {
      res.locals.tasks.add(before).add(flaky).add(behind);
      res.end();
    });
    await withServer(app, ({ url }) => fetch(`${url}/1`, { method: 'POST' }));

    const [job] = (await completed) as [Job<TasksJobData>];
    assert.equal(job.attemptsMade, 3);
    assert.deepEqual((await failed).map((failure) => failure.failedReason), ['SMTP down (attempt 1)', 'SMTP down (attempt 2)']);
    assert.deepEqual(runs, ['before', 'flaky', 'behind', 'flaky', 'flaky']);
    await closeOpened();
  });

  test('a job whose attempts run out stays failed with its tasks\' errors', async () => {
    const queue = await uniqueQueue(redis as Redis);
    const first = defineTask('first', () => Promise.reject(new Error('disk full')));
    const second = defineTask('second', () => {
      throw new Error('quota exceeded');
    });
    const worker = createWorker({ queueName: queue.name, connection, tasks: [first, second] });
    opened.push(queue, worker);
    const failed = jobEvents(worker, 'failed', 2);
    const transport = bullmqTransport({ queue, jobOptions: { attempts: 2 } });
    const { app } = appWith({ transport }, (_req, res) => {
      res.locals.tasks.add(first).add(second);
      res.end();
    });
    await withServer(app, ({ url }) => fetch(`${url}/1`, { method: 'POST' }));

    const [, last] = (await failed) as [Job<TasksJobData>, Job<TasksJobData>];
    assert.equal(last.attemptsMade, 2);
    assert.match(last.failedReason, /^2 of the 2 tasks of job \S+ failed: disk full; quota exceeded$/);
    assert.equal(await queue.getJobState(last.id as string), 'failed');
    await closeOpened();
  });

  test('a task that rejects with something other than an Error still fails its job, with a message', async () => {
    const queue = await uniqueQueue(redis as Redis);
    const vague = defineTask('vague', () => Promise.reject(undefined));
    const worker = createWorker({ queueName: queue.name, connection, tasks: [vague] });
    opened.push(queue, worker);
    const failed = jobEvents(worker, 'failed', 1);
    const { app } = appWith({ transport: bullmqTransport({ queue }) }, (_req, res) => {
      res.locals.tasks.add(vague);
      res.end();
    });
    await withServer(app, ({ url }) => fetch(`${url}/1`, { method: 'POST' }));

    const [job] = (await failed) as [Job<TasksJobData>];
    assert.equal(job.failedReason, 'Task vague failed with undefined, not an Error');
    assert.equal(await queue.getJobState(job.id as string), 'failed');
    await closeOpened();
  });

  test('a job not made by bullmqTransport() fails at once, without retries', async () => {
    const queue = await uniqueQueue(redis as Redis);
    const worker = createWorker({ queueName: queue.name, connection, tasks: [defineTask('greet', () => {})] });
    opened.push(queue, worker);
    const failed = jobEvents(worker, 'failed', 1);
    await queue.add('foreign', { to: 'someone' }, { attempts: 3 });
    const [job] = (await failed) as [Job<TasksJobData>];
    assert.match(job.failedReason, /^Job \S+ \(foreign\) holds no tasks: was it added by bullmqTransport\(\)\?$/);
    assert.equal(job.attemptsMade, 1);
    await closeOpened();
  });

  test('a task name the worker does not know fails the job visibly; the known tasks in it still run', async () => {
    const queue = await uniqueQueue(redis as Redis);
    const known: string[] = [];
    const greet = defineTask('greet', (name: string) => void known.push(name));
    const ghost = defineTask('ghost', () => {});
    const worker = createWorker({ queueName: queue.name, connection, tasks: [greet] });
    opened.push(queue, worker);
    const failed = jobEvents(worker, 'failed', 1);
    const { app } = appWith({ transport: bullmqTransport({ queue }) }, (_req, res) => {
      res.locals.tasks.add(ghost).add(greet, 'Ada');
      res.end();
    });
    await withServer(app, ({ url }) => fetch(`${url}/1`, { method: 'POST' }));

    const [job] = (await failed) as [Job<TasksJobData>];
    assert.match(job.failedReason, /^Unknown task "ghost" in job \S+: this worker runs greet\. Pass its defineTask\(\) definition to createWorker\(\{ tasks \}\)\.$/);
    assert.deepEqual(known, ['Ada']);
    assert.equal(await queue.getJobState(job.id as string), 'failed');
    await closeOpened();
  });

  for (const fallback of ['none', 'in-process'] as const) {
    test(`when Redis is unreachable each task is reported to onError${fallback === 'in-process' ? ' and then run in this process' : ''} (fallback: '${fallback}')`, async () => {
      const deadQueue = new Queue(`spec-${randomUUID()}`, {
        connection: { host: '127.0.0.1', port: await freePort(), maxRetriesPerRequest: 1 },
        skipWaitingForReady: true,
      });
      deadQueue.on('error', () => {}); // ioredis reports each failed connection attempt
      opened.push(deadQueue);
      const ran: string[] = [];
      const reported: { error: unknown; info: TaskInfo }[] = [];
      const notify = defineTask('notify', (id: string) => void ran.push(`notify ${id}`));
      const { app, tasks } = appWith(
        { transport: bullmqTransport({ queue: deadQueue }), fallback, onError: (error, info) => reported.push({ error, info }) },
        (req, res) => {
          res.locals.tasks.add(notify, String(req.params.id)).add(() => void ran.push('plain')).add(notify, 'again');
          res.json({ ok: true });
        },
      );
      await withServer(app, async ({ url }) => {
        assert.equal((await fetch(`${url}/1`, { method: 'POST' })).status, 200);
        await tasks.drain();
      });

      assert.equal(reported.length, 2);
      for (const { error, info } of reported) {
        assert.ok(error instanceof HandOffError);
        assert.equal(info.name, 'notify');
        assert.match(error.message, fallback === 'none'
          ? /^Task notify could not be handed off: Reached the max retries per request limit/
          : /^Task notify could not be handed off, so it runs in this process: /);
        assert.ok(error.cause instanceof Error);
      }
      assert.deepEqual(ran, fallback === 'none' ? ['plain'] : ['plain', 'notify 1', 'notify again']);
      assert.equal(tasks.pending, 0);
      await closeOpened();
    });
  }

  test('a hand-off Redis does not acknowledge within `timeout` is reported', async () => {
    // A queue left at BullMQ's defaults waits for Redis to come back: the transport's timeout ends it.
    const patientQueue = new Queue(`spec-${randomUUID()}`, { connection: { host: '127.0.0.1', port: await freePort() } });
    patientQueue.on('error', () => {});
    const reported: unknown[] = [];
    const notify = defineTask('notify', () => {});
    const { app, tasks } = appWith(
      { transport: bullmqTransport({ queue: patientQueue, timeout: 200 }), onError: (error) => reported.push(error) },
      (_req, res) => {
        res.locals.tasks.add(notify);
        res.end();
      },
    );
    await withServer(app, async ({ url }) => {
      await fetch(`${url}/1`, { method: 'POST' });
      await tasks.drain();
    });
    assert.equal(reported.length, 1);
    assert.match((reported[0] as Error).message, /^Task notify could not be handed off: Redis did not store the job within 200 ms$/);
    void patientQueue.close(); // resolves only once connected: never here, and nothing else holds the process
  });

  // BullMQ 6 loads whichever ioredis the app installed (`npm install bullmq ioredis` gives 6, the
  // specs above run on it); BullMQ 5 brings ioredis 5. Both, through connections made by each.
  const clients = [
    ['ioredis 5', 'ioredis5', (options: { host: string; port: number; maxRetriesPerRequest: number | null }) => new Ioredis5(options)],
    ['ioredis 6', 'ioredis', (options: { host: string; port: number; maxRetriesPerRequest: number | null }) => new Ioredis6(options)],
  ] as const;
  for (const [label, packageName, makeClient] of clients) {
    test(`hands off and runs a job, and fails fast when Redis is down, over connections made by ${label}`, async (t) => {
      assert.equal(requireFromSpec(`${packageName}/package.json`).version.split('.')[0], label.slice(-1));
      const made: { disconnect(): void }[] = [];
      t.after(() => made.forEach((client) => client.disconnect())); // BullMQ leaves a client it was given open
      const clientFor = (options: { port: number; maxRetriesPerRequest: number | null }): ConnectionOptions => {
        const client = makeClient({ host: connection.host, ...options });
        client.on('error', () => {}); // each failed connection attempt, while Redis is down
        made.push(client);
        return client as unknown as ConnectionOptions;
      };
      const queue = new Queue(`spec-${randomUUID()}`, { connection: clientFor({ port: connection.port, maxRetriesPerRequest: 1 }), skipWaitingForReady: true });
      await queue.waitUntilReady();
      const ran: string[] = [];
      const greet = defineTask('greet', (name: string) => void ran.push(name));
      const worker = createWorker({ queueName: queue.name, connection: clientFor({ port: connection.port, maxRetriesPerRequest: null }), tasks: [greet] });
      opened.push(queue, worker);
      const completed = jobEvents(worker, 'completed', 1);
      const { app } = appWith({ transport: bullmqTransport({ queue }) }, (_req, res) => {
        res.locals.tasks.add(greet, 'Ada').add(greet, 'Grace');
        res.end();
      });
      await withServer(app, ({ url }) => fetch(`${url}/1`, { method: 'POST' }));
      await completed;
      assert.deepEqual(ran, ['Ada', 'Grace']);

      const deadQueue = new Queue(`spec-${randomUUID()}`, { connection: clientFor({ port: await freePort(), maxRetriesPerRequest: 1 }), skipWaitingForReady: true });
      deadQueue.on('error', () => {}); // BullMQ writes each one to stderr unless the queue has a listener
      opened.push(deadQueue);
      const reported: unknown[] = [];
      const dead = appWith({ transport: bullmqTransport({ queue: deadQueue }), onError: (error) => reported.push(error) }, (_req, res) => {
        res.locals.tasks.add(greet, 'Lin');
        res.end();
      });
      const startedAt = performance.now();
      await withServer(dead.app, ({ url }) => fetch(`${url}/1`, { method: 'POST' }));
      await dead.tasks.drain();
      assert.ok(performance.now() - startedAt < 5_000, 'the hand-off failed within seconds, not at the transport\'s timeout');
      assert.match((reported[0] as Error).message, /^Task greet could not be handed off: Reached the max retries per request limit/);
      await closeOpened();
    });
  }
});

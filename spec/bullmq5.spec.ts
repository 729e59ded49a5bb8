// The BullMQ transport and worker on BullMQ 5 (the `bullmq5` dev dependency), against a real Redis:
// what an app that installed bullmq 5 instead of 6 runs. spec/bullmq.spec.ts covers the rest on
// BullMQ 6. lib/bullmq.ts is loaded a second time here, with its `import … from 'bullmq'` resolved
// to bullmq5 (spec/support/bullmq5-resolve.mjs), so that createWorker() makes BullMQ 5 workers
// and split queues, and throws BullMQ 5's UnrecoverableError, as it would in that app.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { createRequire, register } from 'node:module';
import { after, describe, test } from 'node:test';
import { Worker as Worker6 } from 'bullmq';
import { Job as Job5, Queue as Queue5, Worker as Worker5 } from 'bullmq5';
import express from 'express';
import { backgroundTasks, defineTask, type BackgroundTasksOptions } from '../lib/index.js';
import * as onBullmq6 from '../lib/bullmq.js';
import type { TasksJobData } from '../lib/bullmq.js';
import { deferred, endLaterWithStatus, handlerGate, withServer } from './support/http.js';
import { startRedis } from './support/redis.js';

register('./support/bullmq5-resolve.mjs', import.meta.url);
/** lib/bullmq.ts on BullMQ 5. Typed here with BullMQ 6's types, so a BullMQ 5 queue is passed to `bullmqTransport()` as `QueueArg`. */
const onBullmq5 = (await import(new URL('../lib/bullmq.ts?bullmq5', import.meta.url).href)) as typeof onBullmq6;
const { bullmqTransport, createWorker } = onBullmq5;
type QueueArg = Parameters<typeof bullmqTransport>[0]['queue'];

const redisOrReason = await startRedis();
const redis = typeof redisOrReason === 'string' ? undefined : redisOrReason;
const skip = typeof redisOrReason === 'string' ? redisOrReason : false;
const connection = { host: redis?.host ?? '', port: redis?.port ?? 0 };
after(() => redis?.stop());

/** Queues and workers a test opened, closed after it. */
const opened: { close(): Promise<void> }[] = [];
async function closeOpened(): Promise<void> {
  await Promise.all(opened.splice(0).map((client) => client.close()));
}

/** A BullMQ 5 queue with a name of its own, connected, failing fast as docs/bullmq.md recommends. */
async function queue5(): Promise<Queue5> {
  const queue = new Queue5(`spec-${randomUUID()}`, { connection: { ...connection, maxRetriesPerRequest: 1 }, skipWaitingForReady: true });
  await queue.waitUntilReady();
  opened.push(queue);
  return queue;
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
function jobEvents(worker: Worker5 | Worker6, event: 'completed' | 'failed', count: number): Promise<Job5[]> {
  const jobs: Job5[] = [];
  const done = deferred<Job5[]>();
  (worker as Worker5).on(event, (job: Job5 | undefined) => {
    if (job !== undefined && jobs.push(job) === count) done.resolve(jobs);
  });
  return done.promise;
}

/**
 * Handlers that end their responses in the same turn: `endTogether(ids)` posts to each `/:id` and
 * lets their handlers go on (past `sameTurn()`) only once all of them have arrived.
 * @return the responses' statuses
 */
function sameTurnGate(): { sameTurn: () => Promise<void>; endTogether: (url: string, ids: readonly string[]) => Promise<number[]> } {
  let together = handlerGate(0);
  return {
    sameTurn: () => together.wait(),
    async endTogether(url, ids) {
      together = handlerGate(ids.length);
      const responses = ids.map((id) => fetch(`${url}/${id}`, { method: 'POST' }));
      await together.arrived;
      together.open();
      return Promise.all(responses.map(async (response) => (await response).status));
    },
  };
}

describe('bullmqTransport() and createWorker() on BullMQ 5, against Redis', { skip }, () => {
  test('loads lib/bullmq.ts on BullMQ 5', async () => {
    const bullmq5 = createRequire(import.meta.url)('bullmq5/package.json') as { version: string };
    assert.equal(bullmq5.version.split('.')[0], '5');
    assert.notEqual(onBullmq5, onBullmq6, 'a second instance of the module');
    const worker: object = createWorker({ queueName: 'unused', connection, tasks: [], autorun: false });
    opened.push(worker as Worker5);
    assert.ok(worker instanceof Worker5 && !(worker instanceof Worker6), 'createWorker() made a BullMQ 5 worker');
    await closeOpened();
  });

  test("stages a response's defined tasks as a delayed job before its first byte, and promotes it once flushed", async () => {
    const queue = await queue5();
    const send = defineTask('send', (_to: string) => {});
    const states: string[] = [];
    let finishedAt = 0;
    const { app, tasks } = appWith({ transport: bullmqTransport({ queue: queue as unknown as QueueArg, lease: 60_000 }) }, (req, res) => {
      res.on('finish', () => {
        finishedAt = Date.now();
        void queue.getJobCounts('delayed', 'waiting').then((counts) => states.push(`at the flush: ${counts['delayed']} delayed, ${counts['waiting']} waiting`));
      });
      res.locals.tasks.add(send, `${req.params.id}@example.com`);
      res.status(201).json({ ok: true });
    });
    await withServer(app, async ({ url }) => {
      assert.equal((await fetch(`${url}/7`, { method: 'POST' })).status, 201);
      await tasks.drain(); // resolves once Redis has promoted the job
    });
    const [job, ...others] = await queue.getJobs(['waiting']);
    assert.deepEqual(others, [], 'promoted');
    assert.deepEqual(job?.data, { tasks: [{ name: 'send', args: ['7@example.com'] }] });
    assert.ok((job?.timestamp ?? Infinity) <= finishedAt, 'stored before the response finished');
    assert.equal(job?.opts.delay, 60_000, 'staged with the lease as its delay');
    assert.deepEqual(states, ['at the flush: 1 delayed, 0 waiting']);
    await closeOpened();
  });

  test("the responses that start in the same turn are staged in one addBulk(), a job each; with runOn: 'success', one whose status a wrapper of res.end turns to 500 stages nothing", async (t) => {
    const queue = await queue5();
    const step = defineTask('step', (_id: string) => {});
    const addBulk = t.mock.method(queue, 'addBulk');
    const calls = (['promote', 'remove'] as const).map((method) => [method, t.mock.method(Job5.prototype, method)] as const);
    const jobCalls = (): string[] => calls.flatMap(([method, mock]) => mock.mock.calls.map(() => method)).sort();
    const { sameTurn, endTogether } = sameTurnGate();
    const { app, tasks } = appWith({ transport: bullmqTransport({ queue: queue as unknown as QueueArg }), runOn: 'success' }, async (req, res) => {
      const id = String(req.params.id);
      // A wrapper of res.end that decides the status later, as a session store saving first does.
      if (id.startsWith('fails')) endLaterWithStatus(res, 500, 10);
      await sameTurn();
      res.locals.tasks.add(step, id);
      res.status(201).end();
    });
    const tasksOf = (id: string): TasksJobData => ({ tasks: [{ name: 'step', args: [id] }] });
    await withServer(app, async ({ url }) => {
      assert.deepEqual(await endTogether(url, ['a', 'b', 'fails-c']), [201, 201, 500]);
      await tasks.drain();
    });
    const [stored, ...more] = await Promise.all(addBulk.mock.calls.map((call) => call.result));
    assert.equal(more.length, 0, 'one addBulk() for the turn');
    assert.ok(stored?.length === 2 && stored.every((job) => job instanceof Job5), 'a BullMQ 5 Job per response');
    assert.deepEqual(addBulk.mock.calls[0]?.arguments[0].map((job) => job.data), [tasksOf('a'), tasksOf('b')]);
    assert.deepEqual(jobCalls(), ['promote', 'promote']);
    const waiting = await queue.getJobs(['waiting', 'delayed']);
    assert.deepEqual(waiting.map((job) => job.data).sort((x, y) => JSON.stringify(x).localeCompare(JSON.stringify(y))), [tasksOf('a'), tasksOf('b')], 'waiting, without the failed response');
    await closeOpened();
  });

  test('with stage: false, a response\'s defined tasks are handed off once it has been flushed, in a job that runs at once', async () => {
    const queue = await queue5();
    const send = defineTask('send', (_to: string) => {});
    let finishedAt = 0;
    let jobsBeforeEnd = -1;
    const { app, tasks } = appWith({ transport: bullmqTransport({ queue: queue as unknown as QueueArg, stage: false }) }, async (req, res) => {
      res.on('finish', () => (finishedAt = Date.now()));
      res.locals.tasks.add(send, `${req.params.id}@example.com`);
      jobsBeforeEnd = await queue.count();
      res.json({ ok: true });
    });
    await withServer(app, async ({ url }) => {
      assert.equal((await fetch(`${url}/7`, { method: 'POST' })).status, 200);
      await tasks.drain(); // resolves once Redis has stored the job
    });
    assert.equal(jobsBeforeEnd, 0, 'no job before the response');
    const [job, ...others] = await queue.getJobs(['waiting']);
    assert.deepEqual(others, []);
    assert.ok(job instanceof Job5);
    assert.deepEqual(job.data, { tasks: [{ name: 'send', args: ['7@example.com'] }] });
    assert.ok(job.timestamp >= finishedAt, 'added after the response finished');
    assert.equal(job.opts.delay ?? 0, 0);
    await closeOpened();
  });

  // A BullMQ 5 app runs createWorker() on BullMQ 5. During an upgrade to 6, workers of either
  // version may take the jobs web processes of the other stored: the same Redis keys.
  for (const [label, lib, Worker] of [['BullMQ 5', onBullmq5, Worker5], ['BullMQ 6', onBullmq6, Worker6]] as const) {
    test(`createWorker() on ${label} runs the jobs a BullMQ 5 queue stored: each response's tasks in order`, async () => {
      const queue = await queue5();
      const ran: string[] = [];
      const step = defineTask('step', (id: string, n: number) => void ran.push(`${id}.${n}`));
      const { sameTurn, endTogether } = sameTurnGate();
      const { app, tasks } = appWith({ transport: bullmqTransport({ queue: queue as unknown as QueueArg, jobOptions: { attempts: 2 } }) }, async (req, res) => {
        if (req.params.id !== 'alone') await sameTurn();
        res.locals.tasks.add(step, String(req.params.id), 1).add(step, String(req.params.id), 2);
        res.end();
      });
      await withServer(app, async ({ url }) => {
        assert.equal((await fetch(`${url}/alone`, { method: 'POST' })).status, 200);
        assert.deepEqual(await endTogether(url, ['a', 'b', 'c']), [200, 200, 200]);
        await tasks.drain();
      });
      assert.equal(await queue.count(), 4, 'a job per response');

      const worker = lib.createWorker({ queueName: queue.name, connection, tasks: [step], concurrency: 3 });
      opened.push(worker);
      assert.ok(worker instanceof Worker);
      const completed = await jobEvents(worker, 'completed', 4);
      assert.deepEqual(completed.map((job) => job.opts.attempts), [2, 2, 2, 2], 'with the job options');
      for (const id of ['alone', 'a', 'b', 'c']) assert.deepEqual(ran.filter((run) => run.startsWith(`${id}.`)), [`${id}.1`, `${id}.2`], `response ${id}, in order`);
      assert.equal(ran.length, 8, 'each task once');
      await closeOpened();
    });
  }

  test('createWorker() on BullMQ 5 retries a failing task without running again the tasks that succeeded, and fails a job not made by bullmqTransport() at once', async () => {
    const queue = await queue5();
    const runs: string[] = [];
    let flakyRuns = 0;
    const before = defineTask('before', () => void runs.push('before'));
    const flaky = defineTask('flaky', () => {
      runs.push('flaky');
      if (++flakyRuns < 2) throw new Error('SMTP down');
    });
    const worker = createWorker({ queueName: queue.name, connection, tasks: [before, flaky] });
    opened.push(worker);
    const failed = jobEvents(worker, 'failed', 2);
    const completed = jobEvents(worker, 'completed', 1);
    const { app, tasks } = appWith({ transport: bullmqTransport({ queue: queue as unknown as QueueArg, jobOptions: { attempts: 3 } }) }, (_req, res) => {
      res.locals.tasks.add(before).add(flaky);
      res.end();
    });
    await withServer(app, async ({ url }) => {
      await fetch(`${url}/1`, { method: 'POST' });
      await tasks.drain();
    });
    await queue.add('foreign', { to: 'someone' }, { attempts: 3 });

    const [job] = (await completed) as [Job5];
    assert.equal(job.attemptsMade, 2);
    assert.deepEqual(runs, ['before', 'flaky', 'flaky']);
    const failures = await failed;
    const [retried, foreign] = ['before,flaky', 'foreign'].map((name) => failures.find((failure) => failure.name === name)) as [Job5, Job5];
    assert.equal(retried.failedReason, 'SMTP down');
    assert.match(foreign.failedReason, /^Job \S+ \(foreign\) holds no tasks: was it added by bullmqTransport\(\)\?$/);
    assert.equal(foreign.attemptsMade, 1, 'BullMQ 5 took its UnrecoverableError: no retry');
    assert.equal(await queue.getJobState(foreign.id as string), 'failed');
    await closeOpened();
  });
});

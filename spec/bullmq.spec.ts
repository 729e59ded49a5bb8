// The BullMQ transport against a real Redis server and a real PostgreSQL server (see
// spec/support/redis.ts and spec/support/postgres.ts for which ones): what a user sees is the same
// on both engines. The core is proven against Express 4 and 5 elsewhere; these specs use Express 5.
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { type ChildProcess, spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { once } from 'node:events';
import net from 'node:net';
import { after, describe, test, type TestContext } from 'node:test';
import { type ConnectionOptions, createPostgresBackend, type Job, type JobsOptions, Queue, type Worker } from 'bullmq';
import express from 'express';
import { Redis as Ioredis6 } from 'ioredis';
import { Redis as Ioredis5 } from 'ioredis5';
import { backgroundTasks, defineTask, HandOffError, PermanentError, type BackgroundTasksOptions, type DefinedTask, type TaskInfo } from '../lib/index.js';
import { bullmqTransport, createWorker, type CreateWorkerOptions, type TasksJobData } from '../lib/bullmq.js';
import { deferred, delay, endLaterWithStatus, handlerGate, pausedPost, withServer } from './support/http.js';
import { postgresQueue, startPostgres } from './support/postgres.js';
import { freePort, startRedis, tcpProxy, waitForOutput, type TcpProxy } from './support/redis.js';

const requireFromSpec = createRequire(import.meta.url);
const [redisOrReason, postgresOrReason] = await Promise.all([startRedis(), startPostgres()]);
const redis = typeof redisOrReason === 'string' ? undefined : redisOrReason;
const postgres = typeof postgresOrReason === 'string' ? undefined : postgresOrReason;
const connection = { host: redis?.host ?? '', port: redis?.port ?? 0 };
after(() => Promise.all([redis?.stop(), postgres?.stop()]));

/** A datastore BullMQ runs on, as the specs reach it. */
interface Engine {
  readonly name: 'Redis' | 'PostgreSQL';
  /** Why its specs are skipped: no server to run them against. */
  readonly skip: string | false;
  readonly host: string;
  readonly port: number;
  /**
   * A queue of its own on the server at `port`, not waited for. It fails fast while the server is
   * unreachable, as the docs recommend for the web side; a `patient` one is left at BullMQ's
   * defaults, and waits.
   */
  queueAt(port: number, patient?: boolean): Queue;
  /** What `createWorker()` needs to reach the server at `port`. */
  workerAt(port: number): Pick<CreateWorkerOptions, 'connection' | 'backend'>;
  /** How a hand-off fails on a port nothing listens on. */
  readonly refused: RegExp;
  /** What the web and worker fixtures read to reach the server. */
  readonly fixtureEnv: Readonly<Record<string, string>>;
}

const onRedis: Engine = {
  name: 'Redis',
  skip: typeof redisOrReason === 'string' ? redisOrReason : false,
  ...connection,
  queueAt: (port, patient) => new Queue(`spec-${randomUUID()}`, {
    // Not patient: the settings docs/bullmq.md recommends for a web process.
    connection: patient ? { host: connection.host, port } : { host: connection.host, port, maxRetriesPerRequest: 1, retryStrategy: () => 500 },
    skipWaitingForReady: true,
  }),
  workerAt: (port) => ({ connection: { host: connection.host, port } }),
  refused: /Reached the max retries per request limit/,
  fixtureEnv: { REDIS_HOST: connection.host, REDIS_PORT: String(connection.port), DATABASE_URL: '' }, // not PostgreSQL's, even if set
};
const onPostgres: Engine = {
  name: 'PostgreSQL',
  skip: typeof postgresOrReason === 'string' ? postgresOrReason : false,
  host: postgres?.host ?? '',
  port: postgres?.port ?? 0,
  queueAt: (port, patient) => postgresQueue(urlAt(port), `spec-${randomUUID()}`, patient),
  workerAt: (port) => ({ connection: { connectionString: urlAt(port) }, backend: createPostgresBackend }),
  refused: /ECONNREFUSED/,
  fixtureEnv: { DATABASE_URL: postgres?.url ?? '' },
};
const engines = [onRedis, onPostgres];

/** @return the connection string of the PostgreSQL server, with its port replaced by `port` */
function urlAt(port: number): string {
  const url = new URL(postgres?.url ?? 'postgres://127.0.0.1');
  url.port = String(port);
  return url.href;
}

/** A queue of its own on `engine`'s server, connected. */
async function uniqueQueue(engine: Engine): Promise<Queue> {
  const queue = engine.queueAt(engine.port);
  await queue.waitUntilReady();
  return queue;
}

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

/** A seeded pseudo-random generator (mulberry32): numbers in [0, 1), the same for the same seed. */
function mulberry32(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let mixed = Math.imul(state ^ (state >>> 15), state | 1);
    mixed ^= mixed + Math.imul(mixed ^ (mixed >>> 7), mixed | 61);
    return ((mixed ^ (mixed >>> 14)) >>> 0) / 2 ** 32;
  };
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

/**
 * Adds a job holding `data` straight to a new queue on `engine`, as no transport would, and runs it
 * on a worker that knows `tasks` and `rec` (which records its arguments). Resolves once the job has
 * completed or failed for the first time, with the job and its state as then stored; rejects when
 * the worker reports an error instead, which is BullMQ failing to record the outcome (the job would
 * stay active until the stalled-job check).
 */
async function runStoredJob(engine: Engine, data: unknown, tasks: readonly DefinedTask[] = [], jobOptions?: JobsOptions):
Promise<{ state: string; job: Job<TasksJobData>; recorded: unknown[][] }> {
  const queue = await uniqueQueue(engine);
  const recorded: unknown[][] = [];
  const rec = defineTask('rec', (...args: unknown[]) => void recorded.push(args));
  const worker = createWorker({ queueName: queue.name, ...engine.workerAt(engine.port), tasks: [rec, ...tasks] });
  opened.push(queue, worker);
  const settled = new Promise<void>((resolve, reject) => {
    worker.once('completed', () => resolve());
    worker.once('failed', () => resolve());
    worker.once('error', reject);
  });
  const { id } = await queue.add('malformed', data, jobOptions);
  await settled;
  const state = await queue.getJobState(id as string);
  const job = (await queue.getJob(id as string)) as Job<TasksJobData>;
  await closeOpened();
  return { state, job, recorded };
}

describe('bullmqTransport() with a stand-in queue', () => {
  const hostileQueues: [string, (jobs: unknown[]) => unknown, string][] = [
    ['whose addBulk() throws', () => {
      throw new Error('addBulk is broken');
    }, 'addBulk is broken'],
    ['whose addBulk() resolves with null', async () => null, 'Cannot read properties of null'],
    ['whose addBulk() returns a thenable that throws', () => ({
      then() {
        throw new Error('then is broken');
      },
    }), 'then is broken'],
  ];
  for (const [label, addBulk, reason] of hostileQueues) {
    test(`a staging on a queue ${label} fails, reported, and the process carries on`, async () => {
      const notify = defineTask('notify', (_id: string) => {});
      const errors: unknown[] = [];
      const queue = { add: async () => ({}), addBulk } as unknown as Queue;
      const { app, tasks } = appWith({ transport: bullmqTransport({ queue, timeout: 1000 }), stagingFailure: 'respond', onError: (error) => void errors.push(error) }, (req, res) => {
        res.locals.tasks.add(notify, String(req.params.id));
        res.status(201).end();
      });
      await withServer(app, async ({ url }) => {
        assert.equal((await fetch(`${url}/1`, { method: 'POST' })).status, 201);
        await tasks.drain();
      });
      assert.equal(errors.length, 1);
      assert.ok(errors[0] instanceof HandOffError);
      assert.match((errors[0] as Error).message, new RegExp(`^Task notify could not be handed off: .*${reason}`));
    });
  }

  test('a staging on a queue whose addBulk() resolves with no jobs is released without a crash, left to its lease', async () => {
    const notify = defineTask('notify', () => {});
    const errors: unknown[] = [];
    const queue = { add: async () => ({}), addBulk: async () => [undefined] } as unknown as Queue;
    const { app, tasks } = appWith({ transport: bullmqTransport({ queue, timeout: 1000 }), onError: (error) => void errors.push(error) }, (_req, res) => {
      res.locals.tasks.add(notify);
      res.status(201).end();
    });
    await withServer(app, async ({ url }) => {
      assert.equal((await fetch(`${url}/1`, { method: 'POST' })).status, 201);
      await tasks.drain();
    });
    assert.deepEqual(errors, [], 'a failed release is not an error of the tasks');
  });

});

/**
 * The ways the kill spec's clients ask, each resolving with the ids of the responses received in
 * full: JSON over fetch, a file over fetch, a stream over HTTP/1.0 (framed by the connection's
 * close, so only its last chunk tells it is complete), two JSON responses pipelined on one connection.
 */
const killShapes: [string, (port: number, id: string) => Promise<string[]>][] = [
  ['json', async (port, id) => {
    const response = await fetch(`http://127.0.0.1:${port}/items/${id}`, { method: 'POST' });
    return response.status === 200 && ((await response.json()) as { id?: string }).id === id ? [id] : [];
  }],
  ['sendFile', async (port, id) => {
    const response = await fetch(`http://127.0.0.1:${port}/files/${id}`, { method: 'POST' });
    return response.status === 200 && response.headers.get('x-id') === id && (await response.text()).length === 200_000 ? [id] : [];
  }],
  ['HTTP/1.0 stream', async (port, id) => {
    const answer = await rawExchange(port, `POST /streams/${id} HTTP/1.0\r\nContent-Length: 0\r\n\r\n`);
    return answer.startsWith('HTTP/1.1 200') && answer.endsWith(`end ${id}`) ? [id] : [];
  }],
  ['pipelined', async (port, id) => {
    const answer = await rawExchange(port, `POST /items/${id}.1 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n` +
      `POST /items/${id}.2 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n`);
    return [`${id}.1`, `${id}.2`].filter((each) => answer.includes(`{"id":"${each}"}`));
  }],
];

/** @return all that the server sent on a connection of its own, once the connection has closed */
function rawExchange(port: number, request: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1', () => socket.write(request));
    let answer = '';
    socket.setEncoding('latin1');
    socket.on('data', (chunk: string) => (answer += chunk));
    socket.on('error', reject);
    socket.on('close', () => resolve(answer));
  });
}

for (const engine of engines) describe(`bullmqTransport() and createWorker() on ${engine.name}`, { skip: engine.skip }, () => {
  test('stages a response\'s defined tasks as one delayed job before its first byte is sent, and promotes it once the response has been flushed', async () => {
    const queue = await uniqueQueue(engine);
    opened.push(queue);
    const inProcess: string[] = [];
    const send = defineTask('send', (_to: string) => {});
    const audit = defineTask('audit', (_event: { id: string; n: number }) => {});
    let finishedAt = 0;
    const { app, tasks } = appWith({ transport: bullmqTransport({ queue, lease: 60_000 }) }, (req, res) => {
      // Still delayed at the flush: see the slow client's spec (PostgreSQL runs a query sent here
      // beside the promotion, on another connection, so it cannot tell).
      res.on('finish', () => (finishedAt = Date.now()));
      res.locals.tasks
        .add(send, `${req.params.id}@example.com`)
        .add((id: string) => void inProcess.push(id), String(req.params.id))
        .add(audit, { id: String(req.params.id), n: 1 });
      res.status(201).json({ ok: true });
    });
    await withServer(app, async ({ url }) => {
      assert.equal((await fetch(`${url}/7`, { method: 'POST' })).status, 201);
      await tasks.drain(); // resolves once the job has been promoted
    });
    const jobs = await queue.getJobs(['waiting']);
    assert.equal(jobs.length, 1, 'promoted');
    const [job] = jobs as [Job<TasksJobData>];
    assert.deepEqual(job.data.tasks, [
      { name: 'send', args: ['7@example.com'] },
      { name: 'audit', args: [{ id: '7', n: 1 }] },
    ]);
    assert.equal(job.name, 'send,audit');
    assert.match(job.id ?? '', /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/, 'a UUID: a resent add cannot make a second job');
    assert.ok(job.timestamp <= finishedAt, 'stored before the response finished');
    assert.equal(job.opts.delay, 60_000, 'staged with the lease as its delay');
    assert.deepEqual(inProcess, ['7'], 'the plain function ran in this process');
    await closeOpened();
  });

  test('with stage: false, a response\'s defined tasks are handed off once it has been flushed, in a job that runs at once', async () => {
    const queue = await uniqueQueue(engine);
    opened.push(queue);
    const send = defineTask('send', (_to: string) => {});
    const respond = deferred();
    const jobsBeforeResponse = deferred<number>();
    let finishedAt = 0;
    const { app, tasks } = appWith({ transport: bullmqTransport({ queue, stage: false }) }, async (req, res) => {
      res.on('finish', () => (finishedAt = Date.now()));
      res.locals.tasks.add(send, `${req.params.id}@example.com`);
      jobsBeforeResponse.resolve(await queue.count());
      await respond.promise;
      res.json({ ok: true });
    });
    await withServer(app, async ({ url }) => {
      const response = fetch(`${url}/7`, { method: 'POST' });
      assert.equal(await jobsBeforeResponse.promise, 0, 'no job before the response');
      respond.resolve();
      assert.equal((await response).status, 200);
      await tasks.drain(); // resolves once the job has been stored
    });
    const [job, ...others] = (await queue.getJobs(['waiting'])) as Job<TasksJobData>[];
    assert.deepEqual(others, []);
    assert.deepEqual(job?.data.tasks, [{ name: 'send', args: ['7@example.com'] }]);
    assert.ok((job?.timestamp ?? 0) >= finishedAt, 'the job was added after the response finished');
    assert.equal(job?.opts.delay ?? 0, 0);
    await closeOpened();
  });

  test('a staged job promoted after the flush runs well before its lease', async () => {
    const queue = await uniqueQueue(engine);
    const ran = deferred<number>();
    const stamp = defineTask('stamp', () => ran.resolve(Date.now()));
    const worker = createWorker({ queueName: queue.name, ...engine.workerAt(engine.port), tasks: [stamp] });
    opened.push(queue, worker);
    await worker.waitUntilReady();
    const { app } = appWith({ transport: bullmqTransport({ queue, lease: 20_000 }) }, (_req, res) => {
      res.locals.tasks.add(stamp);
      res.end();
    });
    const respondedAt = await withServer(app, async ({ url }) => {
      await fetch(`${url}/1`, { method: 'POST' });
      return Date.now();
    });
    const latency = (await ran.promise) - respondedAt;
    assert.ok(latency < 2_000, `ran ${latency} ms after the response, with a lease of 20 s`);
    await closeOpened();
  });

  test('a slow client keeps the job staged until its response has been flushed', async () => {
    const queue = await uniqueQueue(engine);
    opened.push(queue);
    const notify = defineTask('notify', () => {});
    const body = 'x'.repeat(64 * 2 ** 20); // more than the socket buffers hold
    const { app, tasks } = appWith({ transport: bullmqTransport({ queue }) }, (_req, res) => {
      res.locals.tasks.add(notify);
      res.end(body);
    });
    await withServer(app, async ({ port }) => {
      const socket = await pausedPost(port, '/1'); // reads nothing for now
      while ((await queue.getJobCounts('delayed'))['delayed'] === 0) await delay(10);
      await delay(300);
      assert.deepEqual(await queue.getJobCounts('delayed', 'waiting'), { delayed: 1, waiting: 0 }, 'staged while the client is not reading');
      socket.resume();
      await once(socket, 'end');
      await tasks.drain();
      assert.deepEqual(await queue.getJobCounts('delayed', 'waiting'), { delayed: 0, waiting: 1 }, 'promoted once flushed');
    });
    await closeOpened();
  });

  test('the responses that start in the same turn are staged in one addBulk(), a job each, which workers run as they are', async (t) => {
    const queue = await uniqueQueue(engine);
    const addBulk = t.mock.method(queue, 'addBulk');
    const ran: string[] = [];
    const step = defineTask('step', (id: string, n: number) => void ran.push(`${id}.${n}`));
    const together = handlerGate(3);
    const { app, tasks } = appWith({ transport: bullmqTransport({ queue, lease: 60_000, jobOptions: { attempts: 2 } }) }, async (req, res) => {
      await together.wait(); // all three handlers go on in the same turn
      res.locals.tasks.add(step, String(req.params.id), 1).add(step, String(req.params.id), 2);
      res.status(201).end();
    });
    await withServer(app, async ({ url }) => {
      const responses = ['a', 'b', 'c'].map((id) => fetch(`${url}/${id}`, { method: 'POST' }));
      await together.arrived;
      together.open();
      assert.deepEqual(await Promise.all(responses.map(async (response) => (await response).status)), [201, 201, 201]);
      await tasks.drain();
    });
    assert.equal(addBulk.mock.callCount(), 1, 'one addBulk() for the turn');
    const jobs = await queue.getJobs(['waiting']);
    assert.deepEqual(jobs.map((job) => job.data).sort((x, y) => JSON.stringify(x).localeCompare(JSON.stringify(y))),
      ['a', 'b', 'c'].map((id) => ({ tasks: [{ name: 'step', args: [id, 1] }, { name: 'step', args: [id, 2] }] })));
    const worker = createWorker({ queueName: queue.name, ...engine.workerAt(engine.port), tasks: [step], concurrency: 3 });
    opened.push(queue, worker);
    const completed = await jobEvents(worker, 'completed', 3);
    assert.deepEqual(completed.map((job) => job.opts.attempts), [2, 2, 2], 'with the job options');
    for (const id of ['a', 'b', 'c']) assert.deepEqual(ran.filter((run) => run.startsWith(`${id}.`)), [`${id}.1`, `${id}.2`], `response ${id}, in order`);
    await closeOpened();
  });

  test("with runOn: 'success', a failed response stores no job, nor does one whose status a wrapper of res.end sets to 500", async (t) => {
    const queue = await uniqueQueue(engine);
    opened.push(queue);
    const staging = t.mock.method(queue, 'addBulk');
    const charge = defineTask('charge', (_cents: number) => {});
    const tasks = backgroundTasks({ transport: bullmqTransport({ queue }), runOn: 'success' });
    const app = express();
    app.use(tasks);
    app.post('/fails', (_req, res) => {
      res.locals.tasks.add(charge, 100);
      res.status(402).json({ error: 'card declined' });
    });
    app.post('/fails-later', (_req, res, next) => {
      // A wrapper of res.end that decides the status later, as a session store saving first does.
      endLaterWithStatus(res, 500, 50);
      next();
    }, (_req, res) => {
      res.locals.tasks.add(charge, 200);
      res.end();
    });
    await withServer(app, async ({ url }) => {
      assert.equal((await fetch(`${url}/fails`, { method: 'POST' })).status, 402);
      assert.equal((await fetch(`${url}/fails-later`, { method: 'POST' })).status, 500);
      await tasks.drain();
    });
    assert.equal(staging.mock.callCount(), 0, 'nothing staged');
    assert.equal(await queue.count(), 0);
    assert.deepEqual(await queue.getJobCounts('delayed', 'waiting', 'completed'), { delayed: 0, waiting: 0, completed: 0 });
    await closeOpened();
  });

  test('a worker runs each job\'s tasks one after another, in the order they were added', async () => {
    const queue = await uniqueQueue(engine);
    const ran = new Map<string, string[]>();
    const step = defineTask('step', async (id: string, name: string) => {
      await new Promise((resolve) => setTimeout(resolve, name === 'a' ? 5 : 0)); // the first is slowest
      ran.set(id, [...(ran.get(id) ?? []), name]);
    });
    const worker = createWorker({ queueName: queue.name, ...engine.workerAt(engine.port), tasks: [step], concurrency: 4 });
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

  test("defined tasks added after the end are stored after the staged job's promotion: a worker taking one job at a time runs the staged ones first", async () => {
    const queue = await uniqueQueue(engine);
    opened.push(queue);
    const ran: string[] = [];
    const index = defineTask('index', (id: string) => void ran.push(id));
    const { app, tasks } = appWith({ transport: bullmqTransport({ queue, lease: 60_000 }) }, (_req, res) => {
      res.locals.tasks.add(index, 'before the end');
      res.end();
      res.locals.tasks.add(index, 'after the end');
    });
    await withServer(app, async ({ url }) => {
      await fetch(`${url}/1`, { method: 'POST' });
      await tasks.drain();
    });
    const worker = createWorker({ queueName: queue.name, ...engine.workerAt(engine.port), tasks: [index], concurrency: 1 });
    opened.push(worker);
    await jobEvents(worker, 'completed', 2);
    assert.deepEqual(ran, ['before the end', 'after the end']);
    await closeOpened();
  });

  test('SIGKILLed at random instants under load, a staging web process loses no task of a response its client received in full', async (t) => {
    const trials = 10;
    const clients = 4;
    const lease = 1000;
    const seed = Number(process.env['KILL_SEED'] ?? Date.now() % 2 ** 31);
    const random = mulberry32(seed);
    const env = { ...process.env, ...engine.fixtureEnv, QUEUE: `kill-${seed}`, LEASE: String(lease) };
    const startWeb = async (): Promise<{ web: ChildProcess; port: string }> => {
      const web = spawn(process.execPath, ['--import', 'tsx', 'spec/fixtures/bullmq-web.ts'], { env, stdio: ['ignore', 'pipe', 'inherit'] });
      t.after(() => web.kill('SIGKILL'));
      const [, port] = (await waitForOutput(web, /listening (\d+)/)) as [string, string];
      return { web, port };
    };

    const received: string[] = [];
    const shapeOf = new Map<string, string>();
    const webs = await Promise.all(Array.from({ length: trials }, startWeb)); // started together: a start takes a second or two
    for (const [trial, { web, port }] of webs.entries()) {
      let killed = false;
      let sent = 0;
      const client = async (): Promise<void> => {
        while (!killed) {
          const id = `${trial}-${sent++}`;
          try {
            // Each shape in turn; a response counts only once its client holds all of it.
            const [shape, ask] = killShapes[sent % killShapes.length] as (typeof killShapes)[number];
            for (const each of await ask(Number(port), id)) {
              received.push(each);
              shapeOf.set(each, shape);
            }
          } catch {
            // Killed before this response was complete: no promise was made to its client.
          }
        }
      };
      const load = Promise.all(Array.from({ length: clients }, client));
      await delay(50 + random() * 350);
      web.kill('SIGKILL');
      killed = true;
      await once(web, 'exit');
      await load;
    }

    // Only now a worker, in another process: the jobs must be stored, not in the dead web processes.
    const worker = spawn(process.execPath, ['--import', 'tsx', 'spec/fixtures/bullmq-worker.ts'], { env, stdio: ['ignore', 'pipe', 'inherit'] });
    t.after(() => worker.kill('SIGKILL'));
    const expected = new Set(received.flatMap((id) => [`${id}:a`, `${id}:b`]));
    const runs = new Map<string, number>();
    const allRan = deferred();
    let output = '';
    worker.stdout.on('data', (chunk: Buffer) => {
      output += chunk.toString();
      const lines = output.split('\n');
      output = lines.pop() ?? '';
      for (const line of lines) {
        const label = /^ran (\S+)$/.exec(line)?.[1];
        if (label === undefined) continue;
        runs.set(label, (runs.get(label) ?? 0) + 1);
        if ([...expected].every((task) => runs.has(task))) allRan.resolve();
      }
    });
    const gaveUp = new Promise((resolve) => setTimeout(resolve, lease + 20_000).unref());
    await Promise.race([allRan.promise, gaveUp]);
    await delay(lease + 500); // whatever else was stored, staged and never released, runs by now
    worker.kill('SIGTERM');
    await once(worker, 'exit');

    const missing = [...expected].filter((task) => !runs.has(task));
    const duplicated = [...runs].filter(([, count]) => count > 1).length;
    const unacknowledged = [...runs.keys()].filter((task) => !expected.has(task)).length;
    t.diagnostic(`${engine.name}, seed ${seed}: ${trials} trials, ${received.length} responses received in full, ${expected.size} tasks expected, ` +
      `${expected.size - missing.length} run, ${missing.length} missing, ${duplicated} run more than once; ` +
      `${unacknowledged} more tasks ran for responses their client did not receive in full; received in full per shape: ` +
      killShapes.map(([shape]) => `${shape} ${[...shapeOf.values()].filter((each) => each === shape).length}`).join(', '));
    assert.ok(received.length >= trials, 'each trial served responses before its kill');
    for (const [shape] of killShapes) assert.ok([...shapeOf.values()].includes(shape), `some ${shape} responses were received in full`);
    assert.deepEqual(missing, [], `seed ${seed}`);
  });

  const outages = [
    ['down', 'its connections refused', (proxy: TcpProxy) => proxy.cut()],
    ['unreachable', 'its connections left hanging', (proxy: TcpProxy) => proxy.hang()],
  ] as const;
  for (const [outage, how, begin] of outages) {
    test(`while ${engine.name} is ${outage} (${how}), each staging fails within the transport's \`timeout\` and its response is aborted; once it is back, staging works again`, async (t) => {
      const timeout = 2_000;
      const proxy = await tcpProxy(engine);
      const queue = engine.queueAt(proxy.port);
      queue.on('error', () => {}); // each failed connection attempt, during the outage
      await queue.waitUntilReady();
      const reported: unknown[] = [];
      const notify = defineTask('notify', (_id: string) => {});
      const { app, tasks } = appWith({ transport: bullmqTransport({ queue, timeout }), onError: (error) => reported.push(error) }, (req, res) => {
        res.locals.tasks.add(notify, String(req.params.id));
        res.json({ id: req.params.id });
      });
      const received: string[] = [];
      const failedAfter: number[] = [];
      let recoveredAfter = 0;
      try {
        await withServer(app, async ({ url }) => {
          /** Whether the response came in full, timed. */
          const post = async (id: string): Promise<{ ok: boolean; ms: number }> => {
            const startedAt = performance.now();
            const ok = await fetch(`${url}/${id}`, { method: 'POST' })
              .then(async (response) => response.status === 200 && ((await response.json()) as { id: string }).id === id, () => false);
            if (ok) received.push(id);
            return { ok, ms: performance.now() - startedAt };
          };
          assert.ok((await post('before')).ok);
          await tasks.drain(); // its job promoted
          begin(proxy);
          for (let i = 0; i < 3; i++) {
            const { ok, ms } = await post(`during-${i}`);
            assert.equal(ok, false, 'aborted: its tasks could not be stored');
            failedAfter.push(ms);
          }
          proxy.restore();
          const restoredAt = performance.now();
          for (let i = 0; !(await post(`after-${i}`)).ok && performance.now() - restoredAt < 30_000; i++) await delay(50);
          recoveredAfter = performance.now() - restoredAt;
          await tasks.drain();
        });
        const stored = (await queue.getJobs(['waiting', 'delayed'])).map((job) => (job.data as TasksJobData).tasks[0]?.args[0]);
        assert.deepEqual(stored.sort(), [...received].sort(), 'each response received in full, and only those, has its job');
      } finally {
        await queue.close();
        await proxy.close();
      }
      t.diagnostic(`${engine.name} ${outage}: stagings failed after ${failedAfter.map((ms) => ms.toFixed(0)).join(', ')} ms; ` +
        `staging worked again ${recoveredAfter.toFixed(0)} ms after it was back`);
      for (const ms of failedAfter) assert.ok(ms < timeout + 500, `a staging failed after ${ms.toFixed(0)} ms, with a timeout of ${timeout} ms`);
      assert.ok(received.some((id) => id.startsWith('after-')), 'staging worked again');
      assert.ok(recoveredAfter < 1_500, `staging worked again ${recoveredAfter.toFixed(0)} ms after ${engine.name} was back`);
      assert.ok(reported.length >= 3 && reported.every((error) => error instanceof HandOffError), 'each aborted response\'s task reported');
    });
  }

  test('a failing task is retried per the job options; the tasks that succeeded do not run again', async () => {
    const queue = await uniqueQueue(engine);
    const runs: string[] = [];
    let flakyRuns = 0;
    const before = defineTask('before', () => void runs.push('before'));
    const flaky = defineTask('flaky', () => {
      runs.push('flaky');
      if (++flakyRuns < 3) throw new Error(`SMTP down (attempt ${flakyRuns})`);
    });
    const behind = defineTask('behind', () => void runs.push('behind'));
    const worker = createWorker({ queueName: queue.name, ...engine.workerAt(engine.port), tasks: [before, flaky, behind] });
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
    const queue = await uniqueQueue(engine);
    const first = defineTask('first', () => Promise.reject(new Error('disk full')));
    const second = defineTask('second', () => {
      throw new Error('quota exceeded');
    });
    const worker = createWorker({ queueName: queue.name, ...engine.workerAt(engine.port), tasks: [first, second] });
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

  test("retries: a job carries each task's retry, and the worker runs a failing task again within the job, before the tasks behind it", async () => {
    const queue = await uniqueQueue(engine);
    const runs: string[] = [];
    let flakyRuns = 0;
    const before = defineTask('before', () => void runs.push('before'));
    const flaky = defineTask('flaky', () => {
      runs.push('flaky');
      if (++flakyRuns < 3) throw new Error(`SMTP down (run ${flakyRuns})`);
    }, { retry: { attempts: 3, backoff: { type: 'fixed', delay: 20 } } });
    const behind = defineTask('behind', () => void runs.push('behind'));
    const worker = createWorker({ queueName: queue.name, ...engine.workerAt(engine.port), tasks: [before, flaky, behind] });
    opened.push(queue, worker);
    const completed = jobEvents(worker, 'completed', 1);
    const { app } = appWith({ transport: bullmqTransport({ queue }) }, (_req, res) => {
      res.locals.tasks.add(before).add(flaky).add(behind);
      res.end();
    });
    await withServer(app, ({ url }) => fetch(`${url}/1`, { method: 'POST' }));

    const [job] = (await completed) as [Job<TasksJobData>];
    assert.deepEqual(runs, ['before', 'flaky', 'flaky', 'flaky', 'behind']);
    assert.equal(job.attemptsMade, 1, 'within one attempt of the job');
    assert.deepEqual(job.data.tasks.map((task) => task.retry), [undefined, { attempts: 3, backoff: { type: 'fixed', delay: 20 } }, undefined]);
    await closeOpened();
  });

  test("retries: the middleware's retry travels with the job; the job's own attempts then retry it, so the runs multiply, and a task that succeeded never runs again", async () => {
    const queue = await uniqueQueue(engine);
    const runs: string[] = [];
    const before = defineTask('before', () => void runs.push('before'));
    const down = defineTask('down', () => {
      runs.push('down');
      throw new Error(`down ${runs.length}`);
    });
    const worker = createWorker({ queueName: queue.name, ...engine.workerAt(engine.port), tasks: [before, down] });
    opened.push(queue, worker);
    const failed = jobEvents(worker, 'failed', 2);
    const transport = bullmqTransport({ queue, jobOptions: { attempts: 2 } });
    const { app } = appWith({ transport, retry: { attempts: 2 } }, (_req, res) => {
      res.locals.tasks.add(before).add(down);
      res.end();
    });
    await withServer(app, ({ url }) => fetch(`${url}/1`, { method: 'POST' }));

    const [, last] = (await failed) as [Job<TasksJobData>, Job<TasksJobData>];
    assert.deepEqual(runs, ['before', 'down', 'down', 'down', 'down'], '2 attempts of the job × 2 of the task');
    assert.equal(last.failedReason, 'down 5');
    assert.equal(await queue.getJobState(last.id as string), 'failed');
    await closeOpened();
  });

  test('retries: a PermanentError is retried neither in the job nor by BullMQ, and a retry of its job skips it', async () => {
    const queue = await uniqueQueue(engine);
    const runs: string[] = [];
    let transientRuns = 0;
    const gone = defineTask('gone', () => {
      runs.push('gone');
      throw new PermanentError('order 7 no longer exists');
    });
    const transient = defineTask('transient', () => {
      runs.push('transient');
      if (++transientRuns === 1) throw new Error('busy');
    }, { retry: { attempts: 1 } }); // left to the job's attempts
    const worker = createWorker({ queueName: queue.name, ...engine.workerAt(engine.port), tasks: [gone, transient] });
    opened.push(queue, worker);
    const failed = jobEvents(worker, 'failed', 2);
    const completed = jobEvents(worker, 'completed', 1);
    const transport = bullmqTransport({ queue, jobOptions: { attempts: 3 } });
    const { app } = appWith({ transport, retry: { attempts: 5 } }, (_req, res) => {
      res.locals.tasks.add(gone); // a job of its own: every failure permanent
      setImmediate(() => res.locals.tasks.add(gone).add(transient)); // after the end, another job
      res.end();
    });
    await withServer(app, ({ url }) => fetch(`${url}/1`, { method: 'POST' }));

    const [alone, mixed] = (await failed) as [Job<TasksJobData>, Job<TasksJobData>];
    assert.equal(alone.failedReason, 'order 7 no longer exists');
    assert.equal(alone.attemptsMade, 1, 'BullMQ did not retry the job');
    assert.equal(await queue.getJobState(alone.id as string), 'failed');
    assert.match(mixed.failedReason, /^2 of the 2 tasks of job \S+ failed: order 7 no longer exists; busy$/);
    const [done] = (await completed) as [Job<TasksJobData>];
    assert.equal(done.id, mixed.id, 'its retry ran only the transient task');
    assert.deepEqual(runs.slice().sort(), ['gone', 'gone', 'transient', 'transient']);
    await closeOpened();
  });

  test('retries: worker.close() cuts a wait for the next attempt short; the job goes back to the queue, delayed, and another worker runs it without the tasks that succeeded', async () => {
    const queue = await uniqueQueue(engine);
    const runs: string[] = [];
    const failedOnce = deferred();
    const before = defineTask('before', () => void runs.push('before'));
    const flaky = defineTask('flaky', () => {
      runs.push('flaky');
      if (runs.filter((run) => run === 'flaky').length === 1) {
        failedOnce.resolve();
        throw new Error('SMTP down');
      }
    }, { retry: { attempts: 3, backoff: { type: 'fixed', delay: 1_000 } } });
    const first = createWorker({ queueName: queue.name, ...engine.workerAt(engine.port), tasks: [before, flaky] });
    opened.push(queue);
    const { app } = appWith({ transport: bullmqTransport({ queue }) }, (_req, res) => {
      res.locals.tasks.add(before).add(flaky);
      res.end();
    });
    await withServer(app, ({ url }) => fetch(`${url}/1`, { method: 'POST' }));
    await failedOnce.promise;
    const closing = performance.now();
    await first.close();
    assert.ok(performance.now() - closing < 500, `close() took ${(performance.now() - closing).toFixed(0)} ms, not the backoff`);
    const [waiting] = await queue.getJobs(['delayed']);
    assert.ok(waiting !== undefined, 'the job waits in the queue, delayed');

    const second = createWorker({ queueName: queue.name, ...engine.workerAt(engine.port), tasks: [before, flaky] });
    opened.push(second);
    const [job] = (await jobEvents(second, 'completed', 1)) as [Job<TasksJobData>];
    assert.equal(job.id, waiting.id);
    assert.deepEqual(runs, ['before', 'flaky', 'flaky']);
    await closeOpened();
  });

  test('retries: a job whose task carries a malformed retry fails at once, running none of its tasks', async () => {
    const { state, job, recorded } = await runStoredJob(engine, { tasks: [{ name: 'rec', args: [1] }, { name: 'rec', args: [2], retry: { attempts: 0 } }] }, [], { attempts: 3 });
    assert.equal(state, 'failed');
    assert.match(job.failedReason, /was not made by bullmqTransport\(\): Expected `tasks\[1\]\.retry\.attempts` to be a whole number of runs from 1 \(no retry\) to 100, got `0` \(number\)$/);
    assert.deepEqual(recorded, []);
  });

  test('a task that rejects with something other than an Error still fails its job, with a message', async () => {
    const queue = await uniqueQueue(engine);
    const vague = defineTask('vague', () => Promise.reject(undefined));
    const worker = createWorker({ queueName: queue.name, ...engine.workerAt(engine.port), tasks: [vague] });
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
    const queue = await uniqueQueue(engine);
    const worker = createWorker({ queueName: queue.name, ...engine.workerAt(engine.port), tasks: [defineTask('greet', () => {})] });
    opened.push(queue, worker);
    const failed = jobEvents(worker, 'failed', 1);
    await queue.add('foreign', { to: 'someone' }, { attempts: 3 });
    const [job] = (await failed) as [Job<TasksJobData>];
    assert.match(job.failedReason, /^Job \S+ \(foreign\) holds no tasks: was it added by bullmqTransport\(\)\?$/);
    assert.equal(job.attemptsMade, 1);
    await closeOpened();
  });

  test('a task name the worker does not know fails the job visibly; the known tasks in it still run', async () => {
    const queue = await uniqueQueue(engine);
    const known: string[] = [];
    const greet = defineTask('greet', (name: string) => void known.push(name));
    const ghost = defineTask('ghost', () => {});
    const worker = createWorker({ queueName: queue.name, ...engine.workerAt(engine.port), tasks: [greet] });
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

  const { proxy: revoked, revoke } = Proxy.revocable({}, {});
  revoke();
  const unreadable = Object.defineProperty(new Error('hidden'), 'message', {
    get(): never {
      throw new Error('no message for you');
    },
  });
  const hostileOutcomes: { outcome: string; run: () => unknown; reason: RegExp }[] = [
    {
      outcome: 'throws a revoked Proxy',
      run: () => {
        throw revoked;
      },
      reason: /^Task hostile failed with a thrown object that cannot be shown, not an Error$/,
    },
    {
      outcome: 'returns a thenable whose `then` getter throws a revoked Proxy',
      run: () => ({
        get then(): never {
          throw revoked;
        },
      }),
      reason: /^Task hostile failed with a thrown object that cannot be shown, not an Error$/,
    },
    {
      outcome: 'throws an Error whose `message` getter throws',
      run: () => {
        throw unreadable;
      },
      reason: /^Task hostile failed with an Error whose name, message or stack cannot be read$/,
    },
    { outcome: 'rejects with null', run: () => Promise.reject(null), reason: /^Task hostile failed with null, not an Error$/ },
    { outcome: 'rejects with a Symbol', run: () => Promise.reject(Symbol('boom')), reason: /^Task hostile failed with Symbol\(boom\), not an Error$/ },
    { outcome: 'rejects with a 1 MB string', run: () => Promise.reject('x'.repeat(2 ** 20)), reason: /^Task hostile failed with x+…$/ },
    { outcome: 'rejects with an Error with a 1 MB message', run: () => Promise.reject(new Error('x'.repeat(2 ** 20))), reason: /^x+…$/ },
  ];
  for (const { outcome, run, reason } of hostileOutcomes) {
    test(`a task that ${outcome} fails its job at once with a short reason; the task behind it still runs`, async () => {
      const hostile = defineTask('hostile', run);
      const { state, job, recorded } = await runStoredJob(engine, { tasks: [{ name: 'hostile', args: [] }, { name: 'rec', args: ['behind'] }] }, [hostile]);
      assert.equal(state, 'failed');
      assert.match(job.failedReason, reason);
      assert.ok(job.failedReason.length <= 4096, `failedReason of ${job.failedReason.length} characters`);
      for (const stack of job.stacktrace ?? []) assert.ok(stack.length <= 16_384, `a stack trace of ${stack.length} characters`);
      assert.deepEqual(recorded, [['behind']]);
    });
  }

  const malformedJobs: { shape: string; tasks: unknown; reason: string }[] = [
    { shape: 'holding null as a task', tasks: [{ name: 'rec', args: ['a'] }, null, { name: 'rec', args: ['c'] }], reason: 'Expected `tasks[1]` to be an object { name, args }, got `null` (object)' },
    { shape: 'holding an array as a task', tasks: [['rec', []]], reason: "Expected `tasks[0]` to be an object { name, args }, got `[ 'rec', [] ]` (object)" },
    { shape: 'whose task name is not a string', tasks: [{ name: 7, args: [] }], reason: 'Expected `tasks[0].name` to be a non-empty string, got `7` (number)' },
    { shape: 'whose task args is a string', tasks: [{ name: 'rec', args: ['a'] }, { name: 'rec', args: 'abc' }], reason: 'Expected `tasks[1].args` to be an array of arguments, got `abc` (string)' },
    { shape: 'whose task has no args', tasks: [{ name: 'rec' }], reason: 'Expected `tasks[0].args` to be an array of arguments, got `undefined` (undefined)' },
    {
      shape: 'of 20,000 tasks',
      tasks: Array.from({ length: 20_000 }, (_, i) => ({ name: `unknown-${i}`, args: [] })),
      reason: 'Expected `tasks` to hold at most 1000 tasks, got 20000',
    },
  ];
  for (const { shape, tasks, reason } of malformedJobs) {
    test(`a job ${shape} fails at once, without retries, and runs none of its tasks`, async () => {
      const { state, job, recorded } = await runStoredJob(engine, { tasks }, [], { attempts: 3 });
      assert.equal(state, 'failed');
      assert.equal(job.failedReason, `Job ${job.id} (malformed) was not made by bullmqTransport(): ${reason}`);
      assert.equal(job.attemptsMade, 1);
      assert.deepEqual(recorded, []);
    });
  }

  test('a job holding other data besides its tasks fails at once, without retries, and runs none of its tasks', async () => {
    const { state, job, recorded } = await runStoredJob(engine, { tasks: [{ name: 'rec', args: ['a'] }], batch: [{ tasks: [] }] }, [], { attempts: 3 });
    assert.equal(state, 'failed');
    assert.equal(job.failedReason, `Job ${job.id} (malformed) was not made by bullmqTransport(): Expected the job's data to hold only \`tasks\`, got \`batch\` too`);
    assert.equal(job.attemptsMade, 1);
    assert.deepEqual(recorded, []);
  });

  test('a job of 1,000 tasks the worker does not know fails with a reason of a few KB, listing the first ten', async () => {
    const known = Array.from({ length: 50 }, (_, i) => defineTask(`known-${i}`, () => {}));
    const tasks = Array.from({ length: 1000 }, (_, i) => ({ name: `ghost-${i}`, args: [] }));
    const { state, job } = await runStoredJob(engine, { tasks }, known);
    assert.equal(state, 'failed');
    assert.ok(job.failedReason.length <= 4096, `failedReason of ${job.failedReason.length} characters`);
    const unknown = (i: number): string => `Unknown task "ghost-${i}" in job ${job.id}: this worker runs rec, known-0, known-1, known-2, known-3, ` +
      'known-4, known-5, known-6, known-7, known-8, and 41 more. Pass its defineTask() definition to createWorker({ tasks }).';
    const listed = Array.from({ length: 10 }, (_, i) => unknown(i)).join('; ');
    assert.equal(job.failedReason, `1000 of the 1000 tasks of job ${job.id} failed: ${listed}; and 990 more`);
  });

  test('a response with more than 1,000 defined tasks is refused at the hand-off, each task reported', async () => {
    const queue = await uniqueQueue(engine);
    opened.push(queue);
    const reported: unknown[] = [];
    const notify = defineTask('notify', (_i: number) => {});
    const { app, tasks } = appWith({ transport: bullmqTransport({ queue }), stagingFailure: 'respond', onError: (error) => reported.push(error) }, (_req, res) => {
      for (let i = 0; i < 1001; i++) res.locals.tasks.add(notify, i);
      res.end();
    });
    await withServer(app, async ({ url }) => {
      assert.equal((await fetch(`${url}/1`, { method: 'POST' })).status, 200);
      await tasks.drain();
    });
    assert.equal(reported.length, 1001);
    for (const error of reported) {
      assert.ok(error instanceof HandOffError);
      assert.match(error.message, /^Task notify could not be handed off: Expected `tasks` to hold at most 1000 tasks, got 1001: /);
    }
    assert.equal(await queue.count(), 0);
    await closeOpened();
  });

  /** A queue on a port nothing listens on, failing fast as the docs recommend. */
  async function deadQueue(): Promise<Queue> {
    const queue = engine.queueAt(await freePort());
    queue.on('error', () => {}); // each failed connection attempt
    opened.push(queue);
    return queue;
  }

  /**
   * A queue left at BullMQ's defaults, behind a proxy that takes connections and never answers:
   * only a timeout ends a hand-off. Closed after the test, without waiting: its close() resolves
   * only once connected, never here, and nothing else holds the process.
   */
  async function patientQueue(t: TestContext): Promise<Queue> {
    const silent = await tcpProxy(engine);
    silent.hang();
    const queue = engine.queueAt(silent.port, true);
    queue.on('error', () => {});
    t.after(async () => {
      void queue.close();
      await silent.close();
    });
    return queue;
  }

  for (const fallback of ['none', 'in-process'] as const) {
    test(`when ${engine.name} is unreachable at the staging, the response is aborted and each task reported${fallback === 'in-process' ? ', then run in this process' : ''} (fallback: '${fallback}')`, async () => {
      const ran: string[] = [];
      const reported: { error: unknown; info: TaskInfo }[] = [];
      const notify = defineTask('notify', (id: string) => void ran.push(`notify ${id}`));
      const { app, tasks } = appWith(
        { transport: bullmqTransport({ queue: await deadQueue() }), fallback, onError: (error, info) => reported.push({ error, info }) },
        (req, res) => {
          res.locals.tasks.add(notify, String(req.params.id)).add(() => void ran.push('plain')).add(notify, 'again');
          res.status(201).json({ ok: true });
        },
      );
      await withServer(app, async ({ url }) => {
        await assert.rejects(fetch(`${url}/1`, { method: 'POST' }), { name: 'TypeError', message: 'fetch failed' }, 'no response: the connection was destroyed');
        await tasks.drain();
      });

      assert.equal(reported.length, 2);
      for (const { error, info } of reported) {
        assert.ok(error instanceof HandOffError);
        assert.equal(info.name, 'notify');
        assert.match(error.message, fallback === 'none'
          ? /^Task notify could not be handed off, so its response was aborted: /
          : /^Task notify could not be handed off, so its response was aborted and it runs in this process: /);
        assert.match(error.message, engine.refused);
        assert.ok(error.cause instanceof Error);
      }
      assert.deepEqual(ran, fallback === 'none' ? ['plain'] : ['plain', 'notify 1', 'notify again']);
      assert.equal(tasks.pending, 0);
      await closeOpened();
    });
  }

  for (const stagingFailure of ['abort', 'respond'] as const) {
    test(`a staging ${engine.name} does not acknowledge within \`timeout\` ${stagingFailure === 'abort' ? 'aborts' : 'sends'} the response at the timeout (stagingFailure: '${stagingFailure}')`, async (t) => {
      const reported: unknown[] = [];
      const notify = defineTask('notify', () => {});
      const { app, tasks } = appWith(
        { transport: bullmqTransport({ queue: await patientQueue(t), timeout: 300 }), stagingFailure, onError: (error) => reported.push(error) },
        (_req, res) => {
          res.locals.tasks.add(notify);
          res.json({ paid: true });
        },
      );
      await withServer(app, async ({ url }) => {
        const startedAt = performance.now();
        const outcome = await fetch(`${url}/1`, { method: 'POST' }).then((response) => response.status, (error: Error) => error.message);
        const waited = performance.now() - startedAt;
        assert.equal(outcome, stagingFailure === 'abort' ? 'fetch failed' : 200);
        assert.ok(waited >= 290 && waited < 1_500, `the response waited ${waited.toFixed(0)} ms`);
        await tasks.drain();
      });
      assert.deepEqual(reported.map((error) => (error as Error).message), [
        `Task notify could not be handed off${stagingFailure === 'abort' ? ', so its response was aborted' : ''}: the transport did not stage it within 300 ms`,
      ]);
    });
  }

  test(`with stage: false, when ${engine.name} is unreachable the response is sent and each task reported`, async () => {
    const reported: unknown[] = [];
    const notify = defineTask('notify', () => {});
    const { app, tasks } = appWith(
      { transport: bullmqTransport({ queue: await deadQueue(), stage: false }), onError: (error) => reported.push(error) },
      (_req, res) => {
        res.locals.tasks.add(notify);
        res.json({ ok: true });
      },
    );
    await withServer(app, async ({ url }) => {
      assert.equal((await fetch(`${url}/1`, { method: 'POST' })).status, 200);
      await tasks.drain();
    });
    assert.equal(reported.length, 1);
    assert.match((reported[0] as Error).message, /^Task notify could not be handed off: /);
    assert.match((reported[0] as Error).message, engine.refused);
    await closeOpened();
  });

  test(`with stage: false, a hand-off ${engine.name} does not acknowledge within \`timeout\` is reported`, async (t) => {
    const reported: unknown[] = [];
    const notify = defineTask('notify', () => {});
    const { app, tasks } = appWith(
      { transport: bullmqTransport({ queue: await patientQueue(t), timeout: 200, stage: false }), onError: (error) => reported.push(error) },
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
    assert.match((reported[0] as Error).message, /^Task notify could not be handed off: BullMQ did not store the job within 200 ms$/);
  });

});

describe('bullmqTransport() on PostgreSQL only', { skip: onPostgres.skip }, () => {
  test('a task argument holding U+0000, which PostgreSQL cannot store in JSON, fails the staging as `stagingFailure` says: the response aborted, the task reported', async () => {
    const queue = await uniqueQueue(onPostgres);
    opened.push(queue);
    const reported: unknown[] = [];
    const notify = defineTask('notify', (_text: string) => {});
    const { app, tasks } = appWith({ transport: bullmqTransport({ queue }), onError: (error) => reported.push(error) }, (_req, res) => {
      res.locals.tasks.add(notify, 'a\u0000b');
      res.json({ ok: true });
    });
    await withServer(app, async ({ url }) => {
      await assert.rejects(fetch(`${url}/1`, { method: 'POST' }), { message: 'fetch failed' });
      await tasks.drain();
    });
    assert.equal(reported.length, 1);
    assert.match((reported[0] as Error).message, /^Task notify could not be handed off, so its response was aborted: unsupported Unicode escape sequence/);
    assert.equal(await queue.count(), 0);
    await closeOpened();
  });

  test('a queue whose first connection failed never connects again (BullMQ 6.7), as docs/postgresql.md warns: its web process must exit and restart', async () => {
    const proxy = await tcpProxy(onPostgres);
    proxy.cut();
    const queue = onPostgres.queueAt(proxy.port);
    queue.on('error', () => {});
    try {
      await assert.rejects(queue.waitUntilReady());
      proxy.restore();
      await assert.rejects(queue.add('notify', { tasks: [] }), 'still failing once PostgreSQL is reachable');
      const fresh = onPostgres.queueAt(proxy.port);
      opened.push(fresh);
      await fresh.add('notify', { tasks: [] }); // a new queue connects
    } finally {
      await Promise.race([queue.close(), delay(1_000)]);
      await closeOpened();
      await proxy.close();
    }
  });
});

describe('bullmqTransport() and createWorker() on Redis only', { skip: onRedis.skip }, () => {
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
      const dead = appWith({ transport: bullmqTransport({ queue: deadQueue }), stagingFailure: 'respond', onError: (error) => reported.push(error) }, (_req, res) => {
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

// npm run demo: a real Express 5 server with background tasks, and a client sending it real
// requests over HTTP. The timeline shows when each thing happened, in ms since the first request.
// npm run demo -- --bullmq: the same handlers, but the tasks go to Redis through BullMQ and a
// worker runs them (needs redis-server installed, or REDIS_URL).
// npm run demo -- --threads: a CPU-heavy task (examples/thumbnails.ts) runs on a pool of worker
// threads (piscina) while the server keeps answering at once.
// Copy freely: in your app, import from 'express-background-tasks'.
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import net, { type AddressInfo } from 'node:net';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { type Job, Queue } from 'bullmq';
import express, { type NextFunction, type Request, type Response } from 'express';
import { backgroundTasks, defineTask } from '../lib/index.js';
import { bullmqTransport, createWorker, type TasksJobData } from '../lib/bullmq.js';
import { piscinaTransport } from '../lib/piscina.js';
import { makeThumbnail } from './thumbnails.js';

const useBullmq = process.argv.includes('--bullmq');
const useThreads = process.argv.includes('--threads');
/** How long makeThumbnail keeps its thread busy. */
const THUMBNAIL_CPU_MS = 600;
const runner = useBullmq ? 'worker' : 'task';

// The background work: stand-ins for an email API, an analytics service and a file import.
// Defined with a name, so that a BullMQ worker can run them too; without a transport they run
// in this process like plain functions. Each is named as its variable, so the timeline, onError,
// DEBUG output and the BullMQ jobs all call a task by one name.

const sendConfirmationEmail = defineTask('sendConfirmationEmail', async (id: string) => {
  log(runner, `sendConfirmationEmail(${id}) started`);
  await sleep(300);
  log(runner, `sendConfirmationEmail(${id}) finished: email sent`);
});

const recordAnalytics = defineTask('recordAnalytics', (event: string, id: string) => {
  log(runner, `recordAnalytics(${event}, ${id})`);
});

const importContacts = defineTask('importContacts', async (file: string) => {
  log(runner, `importContacts(${file}) started`);
  await sleep(50);
  throw new Error(`${file}: row 3 has no email address`);
});

const deleteUpload = defineTask('deleteUpload', (file: string) => {
  log(runner, `deleteUpload(${file}) runs although the task before it failed`);
});

// With --bullmq: a Redis, the web side's queue, and a worker (in this process for the demo; in
// production, a process of its own on any machine: see docs/bullmq.md).

const redis = useBullmq ? await startRedis() : undefined;
const connection = { host: redis?.host ?? '', port: redis?.port ?? 0 };
const queue = redis && new Queue('demo-tasks', { connection: { ...connection, maxRetriesPerRequest: 1 }, skipWaitingForReady: true });
await queue?.obliterate({ force: true }); // a clean slate if REDIS_URL points at a Redis used before
const worker = redis && createWorker({ queueName: 'demo-tasks', connection, tasks: [sendConfirmationEmail, recordAnalytics, importContacts, deleteUpload], concurrency: 4 });
// One line per Redis connection error; without these listeners BullMQ prints a raw stack for each
// reconnection attempt while Redis is down.
queue?.on('error', (error) => log('server', `queue: ${error.message}`));
worker?.on('error', (error) => log('worker', error.message));
worker?.on('active', (job) => log('worker', `picked up a job from Redis: ${describeJob(job)}`));
worker?.on('failed', (job, error) => log('worker', `job ${job && describeJob(job)} failed: ${error.message}`));
const jobsDone = new Promise<void>((resolve) => {
  let done = 0;
  const count = (): void => void (++done === 3 && resolve());
  worker?.on('completed', count).on('failed', count);
});

// The app: each route answers at once and leaves the slow work to res.locals.tasks.

// With --threads: defined tasks run on one worker thread, which loads examples/thumbnails.ts.
const threads = useThreads ? piscinaTransport({ filename: new URL('./thumbnails.js', import.meta.url), maxThreads: 1 }) : undefined;
await threads?.ready; // fails here, at startup, if the threads cannot load the module

const tasks = backgroundTasks({
  ...(queue && { transport: bullmqTransport({ queue }) }),
  ...(threads && { transport: threads }),
  onError(error, { name, req }) {
    const message = error instanceof Error ? error.message : String(error);
    log('onError', `${name} failed (${req.method} ${req.originalUrl}): ${message}`);
  },
});

const app = express();
app.use(logRequests);
app.use(tasks);

app.post('/items/:id', (req, res) => {
  const { id } = req.params;
  res.locals.tasks.add(sendConfirmationEmail, id).add(recordAnalytics, 'item_created', id);
  res.status(201).json({ id });
});

app.post('/photos/:photo', (req, res) => {
  res.locals.tasks.add(makeThumbnail, req.params.photo, THUMBNAIL_CPU_MS, performance.timeOrigin + t0);
  res.status(202).json({ photo: req.params.photo, status: 'making a thumbnail' });
});

app.get('/status', (_req, res) => {
  res.json({ pending: tasks.pending });
});

app.post('/imports/:file', (req, res) => {
  const { file } = req.params;
  res.locals.tasks.add(importContacts, file).add(deleteUpload, file);
  res.status(202).json({ file, status: 'importing' });
});

// The run: start the server, send three requests one after another, shut down gracefully.

const server = app.listen(0, '127.0.0.1');
await once(server, 'listening');
const { port } = server.address() as AddressInfo;

console.log(useThreads
  ? `express-background-tasks demo, --threads: Express 5 on http://127.0.0.1:${port}.

POST /photos/:photo queues makeThumbnail, ${THUMBNAIL_CPU_MS} ms of synchronous CPU work: in this process it
would stop every response behind it. backgroundTasks({ transport: piscinaTransport({ filename }) })
runs it on a worker thread instead, which loads examples/thumbnails.ts and finds the task by its
name. Watch the client's GET /status calls: each is answered in a few ms while the thread works.
`
  : useBullmq
  ? `express-background-tasks demo, --bullmq: Express 5 on http://127.0.0.1:${port}, Redis on ${connection.host}:${connection.port}.

The handlers are the same as in the plain demo. The one change is backgroundTasks({ transport:
bullmqTransport({ queue }) }): before a response's end goes out, its tasks are stored as one
BullMQ job in Redis; once the response has been sent, a worker (createWorker) runs them, in order. A failing task fails its job
(BullMQ keeps it, with the error, for retries or inspection); the next task still runs.
`
  : `express-background-tasks demo: Express 5 on http://127.0.0.1:${port}, and a client calling it.

Each route responds at once and queues its slow work with res.locals.tasks.add(fn, ...args).
Watch the times: a response is sent before any of its tasks starts, so the client gets
"201" ~300 ms before "email sent". A task may still print "started" just before the client's
"got 201": the task starts once the response has been handed to the OS, and the client, in
this same process, reads it from the socket a moment later. A failing task goes to onError,
and the next task of the same response still runs. (DEBUG=express-background-tasks shows the
library's own trace; npm run demo -- --bullmq runs the same tasks through Redis.)
`);

const t0 = performance.now();
if (useThreads) {
  await send('POST', '/photos/cat.jpg');
  for (let call = 0; call < 5; call++) {
    await sleep(120);
    await send('GET', '/status');
  }
} else {
  await send('POST', '/items/1');
  await send('POST', '/items/2');
  await send('POST', '/imports/contacts.csv');
  log('client', `has all 3 responses; ${tasks.pending} tasks are still queued or running`);
}

// Graceful shutdown: stop accepting connections, then wait for every queued task.
server.close();
server.closeIdleConnections();
await tasks.drain();
if (threads !== undefined) {
  await tasks.close(); // closes the pool: its thread exits
  log('server', 'closed: tasks.drain() resolved once the thumbnail was made, and tasks.close() closed the pool');
} else if (worker === undefined) {
  log('server', 'closed, and tasks.drain() resolved: every task has settled');
} else {
  log('server', 'closed, and tasks.drain() resolved: every job is in Redis');
  await jobsDone;
  await worker.close();
  await queue?.close();
  redis?.stop();
  log('worker', 'closed: all 3 jobs have run');
}

/** Sends a request to the demo server and logs the response as the client sees it, with its time. */
async function send(method: string, path: string): Promise<void> {
  const sentAt = performance.now();
  const response = await fetch(`http://127.0.0.1:${port}${path}`, { method });
  const body = await response.text();
  log('client', `${column(`${method} ${path}`)}  got ${response.status} ${body} in ${Math.round(performance.now() - sentAt)} ms`);
}

/** Middleware: logs each request as it arrives, and again once its response has been sent. */
function logRequests(req: Request, res: Response, next: NextFunction): void {
  const request = column(`${req.method} ${req.originalUrl}`);
  log('server', `${request}  request received`);
  res.on('finish', () => log('server', `${request}  response sent (${res.statusCode})`));
  next();
}

/** Prints one line of the timeline: ms since the first request, who, what. */
function log(who: 'server' | 'client' | 'task' | 'onError' | 'worker', what: string): void {
  const ms = Math.round(performance.now() - t0);
  console.log(`+ ${String(ms).padStart(4)} ms  ${who.padEnd(7)}  ${what}`);
}

/** Pads a request to the width of the longest one, `POST /imports/contacts.csv`. */
function column(request: string): string {
  return request.padEnd(26);
}

/**
 * A job as its tasks: `sendConfirmationEmail("1"), recordAnalytics("item_created","1")`. (Responses
 * that end in the same turn share a staged job, which the worker splits; here they come one by one.)
 */
function describeJob(job: Job<TasksJobData>): string {
  return job.data.tasks.map(({ name, args }) => `${name}(${args.map((arg) => JSON.stringify(arg)).join(',')})`).join(', ');
}

/**
 * The Redis at REDIS_URL, or a redis-server started for the demo on a free port on 127.0.0.1.
 * Exits with a hint when there is neither.
 */
async function startRedis(): Promise<{ host: string; port: number; stop(): void }> {
  if (process.env['REDIS_URL']) {
    const { hostname, port } = new URL(process.env['REDIS_URL']);
    return { host: hostname, port: Number(port || 6379), stop() {} };
  }
  const probe = net.createServer().listen(0, '127.0.0.1');
  await once(probe, 'listening');
  const { port } = probe.address() as AddressInfo;
  await new Promise((resolve) => probe.close(resolve));
  const server = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { stdio: ['ignore', 'pipe', 'ignore'] });
  const started = await new Promise<boolean>((resolve) => {
    server.once('error', () => resolve(false));
    server.stdout.on('data', (chunk: Buffer) => chunk.toString().includes('Ready to accept connections') && resolve(true));
  });
  if (!started) {
    console.error('--bullmq needs Redis: install redis-server (apt-get install redis-server, brew install redis) or set REDIS_URL.');
    process.exit(1);
  }
  return { host: '127.0.0.1', port, stop: () => server.kill() };
}

// npm run demo: a real Express 5 server with background tasks, and a client sending it real
// requests over HTTP. The timeline shows when each thing happened, in ms since the first request.
// Copy freely: in your app, import from 'express-background-tasks'.
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import express, { type NextFunction, type Request, type Response } from 'express';
import { backgroundTasks } from '../lib/index.js';

// The background work: stand-ins for an email API, an analytics service and a file import.

async function sendConfirmationEmail(id: string): Promise<void> {
  log('task', `sendConfirmationEmail(${id}) started`);
  await sleep(300);
  log('task', `sendConfirmationEmail(${id}) finished: email sent`);
}

function recordAnalytics(event: string, id: string): void {
  log('task', `recordAnalytics(${event}, ${id})`);
}

async function importContacts(file: string): Promise<void> {
  log('task', `importContacts(${file}) started`);
  await sleep(50);
  throw new Error(`${file}: row 3 has no email address`);
}

function deleteUpload(file: string): void {
  log('task', `deleteUpload(${file}) runs although the task before it failed`);
}

// The app: each route answers at once and leaves the slow work to res.locals.tasks.

const tasks = backgroundTasks({
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

app.post('/imports/:file', (req, res) => {
  const { file } = req.params;
  res.locals.tasks.add(importContacts, file).add(deleteUpload, file);
  res.status(202).json({ file, status: 'importing' });
});

// The run: start the server, send three requests one after another, shut down gracefully.

const server = app.listen(0, '127.0.0.1');
await once(server, 'listening');
const { port } = server.address() as AddressInfo;

console.log(`express-background-tasks demo: Express 5 on http://127.0.0.1:${port}, and a client calling it.

Each route responds at once and queues its slow work with res.locals.tasks.add(fn, ...args).
Watch the times: a response is sent before any of its tasks starts, so the client gets
"201" ~300 ms before "email sent". A failing task goes to onError, and the next task of the
same response still runs. (DEBUG=express-background-tasks shows the library's own trace.)
`);

const t0 = performance.now();
await send('POST', '/items/1');
await send('POST', '/items/2');
await send('POST', '/imports/contacts.csv');
log('client', `has all 3 responses; ${tasks.pending} tasks are still queued or running`);

// Graceful shutdown: stop accepting connections, then wait for every queued task.
server.close();
server.closeIdleConnections();
await tasks.drain();
log('server', 'closed, and tasks.drain() resolved: every task has settled');

/** Sends a request to the demo server and logs the response as the client sees it. */
async function send(method: string, path: string): Promise<void> {
  const response = await fetch(`http://127.0.0.1:${port}${path}`, { method });
  const body = await response.text();
  log('client', `${column(`${method} ${path}`)}  got ${response.status} ${body}`);
}

/** Middleware: logs each request as it arrives, and again once its response has been sent. */
function logRequests(req: Request, res: Response, next: NextFunction): void {
  const request = column(`${req.method} ${req.originalUrl}`);
  log('server', `${request}  request received`);
  res.on('finish', () => log('server', `${request}  response sent (${res.statusCode})`));
  next();
}

/** Prints one line of the timeline: ms since the first request, who, what. */
function log(who: 'server' | 'client' | 'task' | 'onError', what: string): void {
  const ms = Math.round(performance.now() - t0);
  console.log(`+ ${String(ms).padStart(4)} ms  ${who.padEnd(7)}  ${what}`);
}

/** Pads a request to the width of the longest one, `POST /imports/contacts.csv`. */
function column(request: string): string {
  return request.padEnd(26);
}

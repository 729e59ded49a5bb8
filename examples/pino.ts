// Background tasks logged through their request's pino-http logger. `npx tsx examples/pino.ts`
// serves one request whose two tasks log, one of them by failing, and prints pino's JSON lines:
// pino-http's "request completed", then the tasks' lines, all with the request's id.
// Copy freely: in your app, import from 'express-background-tasks'.
import { AsyncLocalStorage } from 'node:async_hooks';
import { randomUUID } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import express from 'express';
import { pino, type Logger } from 'pino';
import { pinoHttp } from 'pino-http';
import { backgroundTasks } from '../lib/index.js';

const logger = pino();

/** The logger of the task running now, set by `around`. */
const taskLogger = new AsyncLocalStorage<Logger>();

/** @return the running task's logger (its request's, with the task's name), else the app's */
function log(): Logger {
  return taskLogger.getStore() ?? logger;
}

const tasks = backgroundTasks({
  // Each task runs with a child of its request's logger: what it logs carries the request id.
  around: (info, run) => taskLogger.run(info.req.log.child({ task: info.name }), run),
  // A failure goes through the same request logger, with what identifies the task and its request.
  onError: (error, { req, name, method, url, status, waitMs, durationMs }) => {
    req.log.error({ err: error, task: name, method, url, status, waitMs, durationMs }, 'background task failed');
  },
});

const app = express();
app.use(pinoHttp({
  logger,
  // The id the load balancer gave the request, or a new one: req.id, which tasks see as `requestId`.
  genReqId: (req) => req.headers['x-request-id'] ?? randomUUID(),
  // req.log carries the request id, not the whole request, on every line but pino-http's own.
  quietReqLogger: true,
}));
app.use(tasks);
app.post('/orders/:id', (req, res) => {
  res.locals.tasks.add(sendReceipt, req.params.id).add(syncCrm, req.params.id);
  res.status(201).json({ id: req.params.id });
});

async function sendReceipt(orderId: string): Promise<void> {
  await new Promise((resolve) => setTimeout(resolve, 20)); // a mail API
  log().info({ orderId }, 'receipt sent');
}

async function syncCrm(orderId: string): Promise<void> {
  await new Promise((resolve) => setTimeout(resolve, 10));
  throw new Error(`CRM answered 503 for order ${orderId}`);
}

const server = app.listen(0, '127.0.0.1', async () => {
  const { port } = server.address() as AddressInfo;
  await fetch(`http://127.0.0.1:${port}/orders/7`, { method: 'POST', headers: { 'x-request-id': 'req-7f3a' } });
  await tasks.drain();
  server.close();
});

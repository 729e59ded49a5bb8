import assert from 'node:assert/strict';
import { once } from 'node:events';
import net from 'node:net';
import { describe, test } from 'node:test';
import type { Express, RequestHandler, Response } from 'express';
import { backgroundTasks, type BackgroundTasksOptions, defineTask, type TaskStaging } from '../lib/index.js';
import { deferred, expressVersions, listen } from './support/http.js';
import { manualStaging, rawClient } from './support/staging.js';

// A response held while its tasks are staged, used as a hostile handler would use it: it behaves
// as Node's own response does, only later.

const job = defineTask('held-job', () => {});

/** An app whose route adds the task, then runs `handler`; with `staging`, the library is mounted. */
function appWith(createApp: () => Express, handler: RequestHandler, staging?: TaskStaging, options: BackgroundTasksOptions = {}): { app: Express; tasks: ReturnType<typeof backgroundTasks> } {
  const app = createApp();
  const tasks = backgroundTasks({ transport: { send: async () => {}, ...(staging === undefined ? {} : { staging }) }, ...options });
  if (staging !== undefined) app.use(tasks);
  app.get('/', (req, res, next) => {
    (res.locals as { tasks?: { add(fn: typeof job): void } }).tasks?.add(job);
    handler(req, res, next);
  });
  return { app, tasks };
}

/** Calls `misuse`, and records the code of what it threw synchronously, or that it threw nothing. */
function thrownBy(misuse: () => unknown): string {
  try {
    misuse();
    return 'nothing thrown';
  } catch (error) {
    return `${(error as Error).name} ${(error as NodeJS.ErrnoException).code}`;
  }
}

/** What handlers may pass to `write()` and `end()` that Node refuses. */
const refusedCalls: [string, (res: Response) => unknown][] = [
  ['write()', (res) => (res.write as (...args: unknown[]) => boolean)()],
  ['write(callback)', (res) => (res.write as (...args: unknown[]) => boolean)(() => {})],
  ['write(undefined, callback)', (res) => (res.write as (...args: unknown[]) => boolean)(undefined, () => {})],
  ['write(null)', (res) => (res.write as (...args: unknown[]) => boolean)(null)],
  ['write(42)', (res) => (res.write as (...args: unknown[]) => boolean)(42)],
  ["write('x', 'no-such-encoding')", (res) => res.write('x', 'no-such-encoding' as BufferEncoding)],
  ['end(42)', (res) => (res.end as (...args: unknown[]) => Response)(42)],
  ['end({})', (res) => (res.end as (...args: unknown[]) => Response)({})],
  ["end('x', 'no-such-encoding')", (res) => res.end('x', 'no-such-encoding' as BufferEncoding)],
];

for (const [label, createApp] of expressVersions) {
  describe(`${label}: a held response`, () => {
    for (const [call, misuse] of refusedCalls) {
      test(`throws for ${call} at once, as Node does, and its handler can still answer`, async () => {
        const thrown: string[] = [];
        const handler: RequestHandler = (_req, res) => {
          thrown.push(thrownBy(() => misuse(res)));
          if (!res.writableEnded) res.end('answered');
        };
        const plain = await listen(appWith(createApp, handler).app);
        try {
          await rawClient(plain.port, 'GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n').ended;
        } finally {
          await plain.close();
        }
        const { staging, staged, store } = manualStaging();
        const { app, tasks } = appWith(createApp, handler, staging);
        const server = await listen(app);
        try {
          const client = rawClient(server.port, 'GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
          await staged;
          store();
          const raw = await client.ended;
          assert.equal(thrown[1], thrown[0], 'what Node throws');
          assert.notEqual(thrown[0], 'nothing thrown');
          assert.match(raw, /^HTTP\/1\.1 200 OK\r\n[^]*\r\n\r\nanswered$/);
          await tasks.drain();
          assert.equal(tasks.pending, 0);
        } finally {
          await server.close();
        }
      });
    }

    test('whose handler added a task but has not answered yet is closed at once when its connection is destroyed, as without the library', async () => {
      const entered = deferred();
      const { staging } = manualStaging();
      const { app, tasks } = appWith(createApp, () => entered.resolve(), staging);
      const server = await listen(app);
      try {
        const socket = net.connect(server.port, '127.0.0.1');
        socket.on('error', () => {});
        socket.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
        await entered.promise;
        server.server.closeAllConnections(); // as http-terminator does at its deadline
        const closed = await Promise.race([once(socket, 'close').then(() => true), delayed(5_000, false)]);
        assert.ok(closed, 'the connection closed');
        await tasks.drain();
        assert.equal(tasks.pending, 0);
      } finally {
        await server.close();
      }
    });
  });
}

/** Resolves with `value` after `ms`: a bound on a wait that would otherwise never end. */
function delayed<T>(ms: number, value: T): Promise<T> {
  return new Promise((resolve) => setTimeout(() => resolve(value), ms).unref());
}

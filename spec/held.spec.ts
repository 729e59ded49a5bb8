import assert from 'node:assert/strict';
import { once } from 'node:events';
import net from 'node:net';
import { Readable } from 'node:stream';
import { describe, test } from 'node:test';
import type { Express, RequestHandler, Response } from 'express';
import { backgroundTasks, type BackgroundTasksOptions, defineTask, type TaskStaging } from '../lib/index.js';
import { captureStderr, deferred, expressVersions, listen, watchProcessFaults } from './support/http.js';
import { manualStaging, rawClient, roundTrip } from './support/staging.js';

// A response held while its tasks are staged, used as a hostile handler would use it: it behaves
// as Node's own response does, only later.

const job = defineTask('held-job', () => {});

/** An app whose route adds the task, then runs `handler`; with `staging`, the library is mounted. */
function appWith(createApp: () => Express, handler: RequestHandler, staging?: TaskStaging, options: BackgroundTasksOptions = {}): { app: Express; tasks: ReturnType<typeof backgroundTasks> } {
  const app = createApp();
  const tasks = backgroundTasks({ transport: { send: async () => {}, ...(staging === undefined ? {} : { staging }) }, ...options });
  if (staging !== undefined) app.use(tasks);
  app.get('/ping', (_req, res) => void res.send('pong'));
  app.get('/:id', (req, res, next) => {
    (res.locals as { tasks?: { add(fn: typeof job): void } }).tasks?.add(job);
    handler(req, res, next);
  });
  return { app, tasks };
}

/**
 * Sends `request` (one or more requests, the last closing the connection) to the app without the
 * library, then with it: its client gets no byte before the tasks are stored, then the same bytes.
 * @return what `trace` recorded without the library and with it
 */
async function sameAsWithout(createApp: () => Express, handler: (res: Response, trace: string[]) => void, request: string): Promise<{ plain: string[]; held: string[] }> {
  const traces = { plain: [] as string[], held: [] as string[] };
  const plain = await listen(appWith(createApp, (_req, res) => handler(res, traces.plain)).app);
  let expected: string;
  try {
    expected = await rawClient(plain.port, request).ended;
  } finally {
    await plain.close();
  }
  const { staging, staged, store, released } = manualStaging();
  const { app, tasks } = appWith(createApp, (_req, res) => handler(res, traces.held), staging);
  const server = await listen(app);
  try {
    const client = rawClient(server.port, request);
    await Promise.race([staged, client.ended]);
    await roundTrip(server.port, '/ping');
    assert.equal(client.received(), '', 'nothing before the tasks are stored');
    store();
    assert.equal(normalised(await client.ended), normalised(expected));
    await tasks.drain();
    assert.equal(tasks.pending, 0);
    assert.ok(released.length > 0 && released.every((outcome) => outcome === 'released'));
  } finally {
    await server.close();
  }
  return traces;
}

/**
 * @return `raw` without its Date headers, which change from one response to the next, and with
 *   the headers of each response in one order: Node's depends on when the length was known
 */
function normalised(raw: string): string {
  return raw.replace(/^Date: .*\r\n/gim, '').replace(/(HTTP\/1\.1 \d{3} [^\r]*\r\n)((?:[^\r]+\r\n)*)\r\n/g, (_, status: string, headers: string) => `${status}${headers.split('\r\n').slice(0, -1).sort().join('\r\n')}\r\n\r\n`);
}

const get = (path: string, version = '1.1', headers = ''): string => `GET ${path} HTTP/${version}\r\nHost: x\r\n${headers}\r\n`;
const lastGet = (path: string): string => get(path, '1.1', 'Connection: close\r\n');

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
          await rawClient(plain.port, lastGet('/1')).ended;
        } finally {
          await plain.close();
        }
        const { staging, staged, store } = manualStaging();
        const { app, tasks } = appWith(createApp, handler, staging);
        const server = await listen(app);
        try {
          const client = rawClient(server.port, lastGet('/1'));
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

    const usedAsNodeAllows: [string, (res: Response, trace: string[]) => void, string][] = [
      ['corked and uncorked by its handler', (res) => {
        res.cork();
        res.write('a');
        res.write('b');
        res.uncork();
        res.end('c');
      }, lastGet('/1')],
      ['corked and never uncorked', (res) => {
        res.cork();
        res.write('a');
        res.end('b');
      }, lastGet('/1')],
      ['with writeHead(status, headers), then end(body)', (res) => {
        res.writeHead(201, { 'X-Made': 'yes', 'Content-Type': 'text/plain' });
        res.end('made');
      }, lastGet('/1')],
      ['with writeHead and a Content-Length, then write() and end()', (res) => {
        res.writeHead(200, { 'Content-Length': '4' });
        res.write('ab');
        res.end('cd');
      }, lastGet('/1')],
      ['ended twice', (res) => {
        res.end('once');
        res.end();
      }, lastGet('/1')],
      ['with callbacks on write() and end()', (res, trace) => {
        res.on('finish', () => trace.push('finish'));
        res.on('close', () => trace.push('close'));
        res.write('a', () => trace.push('write callback'));
        res.end('b', () => trace.push('end callback'));
        trace.push('end returned');
      }, lastGet('/1')],
      ['over HTTP/1.0 keep-alive, then a second request', (res) => void res.json({ ok: true }), get('/1', '1.0', 'Connection: keep-alive\r\n') + get('/2', '1.0')],
      ['over HTTP/1.0 accepting chunks (TE: chunked), ended with its body', (res) => void res.end('the body'), get('/1', '1.0', 'TE: chunked\r\nConnection: keep-alive\r\n') + get('/2', '1.0')],
      ['pipelined behind two others, each adding a task', (res) => void res.json({ url: res.req.url }), get('/1') + get('/2') + lastGet('/3')],
    ];
    for (const [how, handler, request] of usedAsNodeAllows) {
      test(`${how}: its client gets no byte before the tasks are stored, then what Node sends without the library`, async () => {
        const { plain, held } = await sameAsWithout(createApp, handler, request);
        assert.deepEqual(held, plain, 'callbacks and events in the same order');
      });
    }

    test('piping 50 MB while its tasks are being stored reads only what fits its buffers, then sends it all', async () => {
      const size = 50 * 1024 * 1024;
      const chunk = Buffer.alloc(64 * 1024, 'x');
      let produced = 0;
      const { staging, staged, store } = manualStaging();
      const { app, tasks } = appWith(createApp, (_req, res) => {
        res.setHeader('Content-Length', size);
        Readable.from((function* () {
          for (; produced < size; produced += chunk.length) yield chunk;
        })()).pipe(res);
      }, staging);
      const server = await listen(app);
      try {
        const socket = net.connect(server.port, '127.0.0.1');
        let received = 0;
        socket.on('data', (data: Buffer) => (received += data.length));
        socket.write(lastGet('/1'));
        await staged;
        await roundTrip(server.port, '/ping');
        assert.ok(produced <= 1024 * 1024, `${produced} bytes read from the stream while held`);
        assert.equal(received, 0);
        store();
        await once(socket, 'close');
        assert.ok(received > size, `${received} bytes received`);
        await tasks.drain();
        assert.equal(tasks.pending, 0);
      } finally {
        await server.close();
      }
    });

    test('whose client resets while its tasks are being stored has them released once, and nothing left pending', async () => {
      const { staging, staged, store, released } = manualStaging();
      const entered = deferred<net.Socket>();
      const { app, tasks } = appWith(createApp, (req, res) => {
        entered.resolve(req.socket);
        res.json({ ok: true });
      }, staging);
      const server = await listen(app);
      try {
        await resetWhileStaging(server.port, staged, entered.promise);
        store();
        await tasks.drain();
        assert.deepEqual(released, ['released']);
        assert.equal(tasks.pending, 0);
      } finally {
        await server.close();
      }
    });

    test('whose client resets while its tasks are being stored calls back its write() with the error, as Node does for a write to a destroyed response', async () => {
      const { staging, staged, store } = manualStaging();
      const entered = deferred<net.Socket>();
      const calledBack = deferred<unknown>();
      const { app, tasks } = appWith(createApp, (req, res) => {
        entered.resolve(req.socket);
        res.write('a', (error) => calledBack.resolve(error));
        res.end();
      }, staging);
      const server = await listen(app);
      try {
        await resetWhileStaging(server.port, staged, entered.promise);
        store();
        const error = await Promise.race([calledBack.promise, delayed(5_000, 'never called back')]);
        assert.equal((error as NodeJS.ErrnoException | undefined)?.code, 'ERR_STREAM_DESTROYED');
        await tasks.drain();
        assert.equal(tasks.pending, 0);
      } finally {
        await server.close();
      }
    });

    test('whose staging fails with an onError that throws is aborted, and the throw is reported, not raised', async () => {
      const { staging, staged, fail } = manualStaging();
      const faults = watchProcessFaults();
      const { app, tasks } = appWith(createApp, (_req, res) => void res.json({ ok: true }), staging, {
        onError: () => {
          throw new Error('onError fails too');
        },
      });
      const server = await listen(app);
      try {
        const stderr = await captureStderr(async () => {
          const client = rawClient(server.port, lastGet('/1'));
          await staged;
          fail();
          assert.equal(await client.ended, '', 'no byte: its client knows it failed');
          await tasks.drain();
        });
        assert.match(stderr, /onError fails too/);
        assert.equal(tasks.pending, 0);
        assert.deepEqual(faults.faults, []);
      } finally {
        faults.stop();
        await server.close();
      }
    });

    test('1,000 held at once are all sent once stored, with no warning and no unhandled rejection', async () => {
      const count = 1_000;
      const everyoneStaging = deferred();
      const stored = deferred();
      let staging = 0;
      const faults = watchProcessFaults();
      const warnings: Error[] = [];
      const warn = (warning: Error): void => void warnings.push(warning);
      process.on('warning', warn);
      const { app, tasks } = appWith(createApp, (req, res) => void res.json({ id: req.params.id }), {
        timeout: 30_000,
        stage: async () => {
          if (++staging === count) everyoneStaging.resolve();
          await stored.promise;
          return 'receipt';
        },
        release: async () => {},
        discard: async () => {},
      });
      const server = await listen(app);
      try {
        const clients = Array.from({ length: count }, (_, id) => rawClient(server.port, lastGet(`/${id}`)));
        await everyoneStaging.promise;
        assert.equal(clients.filter((client) => client.received() !== '').length, 0);
        stored.resolve();
        const responses = await Promise.all(clients.map((client) => client.ended));
        assert.equal(responses.filter((raw, id) => raw.startsWith('HTTP/1.1 200 OK') && raw.endsWith(`{"id":"${id}"}`)).length, count);
        await tasks.drain();
        assert.equal(tasks.pending, 0);
        await new Promise((resolve) => setImmediate(resolve));
        assert.deepEqual(warnings, []);
        assert.deepEqual(faults.faults, []);
      } finally {
        process.off('warning', warn);
        faults.stop();
        await server.close();
      }
    });

    test('whose client half-closes after its request, as `nc -N` does, gets it in full, as without the library', async () => {
      const halfClosing = async (port: number, hold?: { staged: Promise<void>; store(): void }): Promise<string> => {
        const socket = net.connect({ port, host: '127.0.0.1', allowHalfOpen: true });
        let received = '';
        socket.setEncoding('latin1');
        socket.on('data', (data: string) => (received += data));
        socket.on('error', () => {});
        socket.end(get('/1'));
        if (hold !== undefined) {
          await Promise.race([hold.staged, once(socket, 'close')]);
          await roundTrip(port, '/ping');
          assert.equal(received, '', 'nothing before the tasks are stored');
          hold.store();
        }
        if (!(await Promise.race([once(socket, 'close').then(() => true), delayed(5_000, false)]))) socket.destroy();
        return normalised(received);
      };
      const handler: RequestHandler = (_req, res) => void res.json({ ok: true });
      const plain = await listen(appWith(createApp, handler).app);
      let expected: string;
      try {
        expected = await halfClosing(plain.port);
      } finally {
        await plain.close();
      }
      const { staging, staged, store, released } = manualStaging();
      const { app, tasks } = appWith(createApp, handler, staging);
      const server = await listen(app);
      try {
        assert.equal(await halfClosing(server.port, { staged, store }), expected);
        await tasks.drain();
        assert.deepEqual(released, ['released']);
        assert.equal(tasks.pending, 0);
      } finally {
        await server.close();
      }
    });

    test('whose handler added a task but has not answered yet is closed at once when its connection is destroyed, as without the library', async () => {
      const entered = deferred();
      const { staging } = manualStaging();
      const { app, tasks } = appWith(createApp, () => entered.resolve(), staging);
      const server = await listen(app);
      try {
        const socket = net.connect(server.port, '127.0.0.1');
        socket.on('error', () => {});
        socket.write(get('/1'));
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

/**
 * Sends `GET /1`, then, once its staging has begun, resets the connection and waits until the
 * server's side of it has closed.
 */
async function resetWhileStaging(port: number, staged: Promise<void>, entered: Promise<net.Socket>): Promise<void> {
  const client = net.connect(port, '127.0.0.1');
  client.on('error', () => {});
  client.write(get('/1'));
  await staged;
  const connection = await entered;
  client.resetAndDestroy();
  if (!connection.destroyed) await new Promise((resolve) => connection.once('close', resolve)); // once() would reject on its reset
}

/** Resolves with `value` after `ms`: a bound on a wait that would otherwise never end. */
function delayed<T>(ms: number, value: T): Promise<T> {
  return new Promise((resolve) => setTimeout(() => resolve(value), ms).unref());
}

import assert from 'node:assert/strict';
import { once } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import http2 from 'node:http2';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { after, describe, test } from 'node:test';
import express, { type Express } from 'express';
import { backgroundTasks, type BackgroundTasksOptions, defineTask, type TaskStaging } from '../lib/index.js';
import { deferred, expressVersions, listen } from './support/http.js';
import { manualStaging, rawClient, roundTrip } from './support/staging.js';

// A staged response's client must not hold it in full before its tasks are stored, whatever the
// shape of the response; and once they are, it gets exactly what the handler sent.

const files = mkdtempSync(join(tmpdir(), 'ebt-durable-'));
const body = 'x'.repeat(100_000);
writeFileSync(join(files, 'file.txt'), body);
after(() => rmSync(files, { recursive: true, force: true }));

const job = defineTask('job', () => {});

/** The routes, each answering in another way Express can. */
function routes(app: Express): void {
  app.get('/json', (_req, res) => void res.json({ ok: true }));
  app.get('/send', (_req, res) => void res.send(body));
  app.get('/redirect', (_req, res) => res.redirect('/json'));
  app.get('/write-end-length', (_req, res) => {
    res.setHeader('Content-Length', body.length);
    res.write(body);
    res.end();
  });
  app.get('/write-end-chunked', (_req, res) => {
    res.write(body.slice(0, 10));
    res.write(body.slice(10));
    res.end();
  });
  app.get('/file', (_req, res) => res.sendFile(join(files, 'file.txt')));
  app.get('/download', (_req, res) => res.download(join(files, 'file.txt')));
  app.use('/static', express.static(files));
  app.get('/pipe', (_req, res) => void Readable.from([body.slice(0, 50_000), body.slice(50_000)]).pipe(res));
  app.get('/not-modified', (_req, res) => void res.status(304).end());
  app.get('/no-content', (_req, res) => void res.status(204).end());
  app.get('/flushed-headers', (_req, res) => {
    res.flushHeaders();
    res.end(body);
  });
}

const shapes = ['/json', '/send', '/redirect', '/write-end-length', '/write-end-chunked', '/file', '/download', '/static/file.txt', '/pipe', '/not-modified', '/no-content', '/flushed-headers'];

/** The app with the library mounted, staging through `staging`, and a task added by every route. */
function stagingApp(createApp: () => Express, staging: TaskStaging, options: BackgroundTasksOptions = {}): Express {
  const app = createApp();
  app.use(backgroundTasks({ transport: { send: async () => {}, staging }, ...options }));
  let first = true;
  app.use((_req, res, next) => {
    if (first) res.locals.tasks.add(job); // only the first request stages: the others are round trips
    first = false;
    next();
  });
  routes(app);
  return app;
}

/** The same response without the library: what the client must get in the end, less its date. */
async function plainResponse(createApp: () => Express, request: string): Promise<string> {
  const app = createApp();
  routes(app);
  const server = await listen(app);
  try {
    return withoutDates(await rawClient(server.port, request).ended);
  } finally {
    await server.close();
  }
}

/** @return `response` without the lines that change from one response to the next */
function withoutDates(response: string): string {
  return response.replace(/^(Date|ETag|Last-Modified): .*\r\n/gim, '');
}

for (const [label, createApp] of expressVersions) {
  describe(`${label}: a staged response`, () => {
    for (const [version, path] of [...shapes.map((path) => ['1.1', path]), ['1.0', '/write-end-chunked'], ['1.0', '/json']] as const) {
      test(`GET ${path} over HTTP/${version}: its client gets no byte before the tasks are stored, then exactly what the handler sent`, async () => {
        const request = `GET ${path} HTTP/${version}\r\nHost: x\r\nConnection: close\r\n\r\n`;
        const expected = await plainResponse(createApp, request);
        const { staging, staged, store, released } = manualStaging();
        const server = await listen(stagingApp(createApp, staging));
        try {
          const client = rawClient(server.port, request);
          await staged;
          await roundTrip(server.port);
          assert.equal(client.received(), '', 'nothing before the tasks are stored');
          store();
          assert.equal(withoutDates(await client.ended), expected);
          assert.deepEqual(released, ['released']);
        } finally {
          await server.close();
        }
      });
    }

    test('HEAD: its client gets no byte before the tasks are stored, then the headers alone', async () => {
      const request = 'HEAD /json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n';
      const expected = await plainResponse(createApp, request);
      const { staging, staged, store } = manualStaging();
      const server = await listen(stagingApp(createApp, staging));
      try {
        const client = rawClient(server.port, request);
        await staged;
        await roundTrip(server.port);
        assert.equal(client.received(), '');
        store();
        assert.equal(withoutDates(await client.ended), expected);
      } finally {
        await server.close();
      }
    });

    for (const version of ['1.0', '1.1']) {
      test(`whose staging fails is aborted before its first byte, so an HTTP/${version} client sees a failure (stagingFailure: 'abort')`, async () => {
        const { staging, staged, fail } = manualStaging();
        const server = await listen(stagingApp(createApp, staging, { onError: () => {} }));
        try {
          const client = rawClient(server.port, `GET /write-end-chunked HTTP/${version}\r\nHost: x\r\n\r\n`);
          await staged;
          fail();
          assert.equal(await client.ended, '', 'no status line: the client knows it failed');
        } finally {
          await server.close();
        }
      });
    }

    const errorsAfterEnd: [string, (res: express.Response, next: express.NextFunction) => unknown][] = [
      ['a synchronous throw', (res) => {
        res.json({ ok: true });
        throw new Error('after the end');
      }],
      ['next(error)', (res, next) => {
        res.json({ ok: true });
        next(new Error('after the end'));
      }],
    ];
    if (label === 'express 5') {
      errorsAfterEnd.push(['an async throw', async (res) => {
        res.json({ ok: true });
        await Promise.resolve();
        throw new Error('after the end');
      }]);
    }
    for (const [how, handler] of errorsAfterEnd) {
      test(`followed by ${how} reaches its client in full, as it does without the library`, async () => {
        const { staging, staged, store, released } = manualStaging();
        const app = createApp();
        app.use(backgroundTasks({ transport: { send: async () => {}, staging } }));
        app.post('/', (_req, res, next) => {
          res.locals.tasks.add(job);
          return handler(res, next);
        });
        const handled = deferred();
        app.use((error: Error, _req: express.Request, _res: express.Response, next: express.NextFunction) => {
          handled.resolve();
          next(error); // to Express's final handler, which destroys the connection of a response already sent
        });
        const server = await listen(app);
        try {
          // POST: fetch would send a GET again on a connection closed before the response began.
          const response = fetch(server.url, { method: 'POST' }).then(async (answer) => [answer.status, await answer.text()]);
          await staged;
          await handled.promise;
          await new Promise((resolve) => setImmediate(resolve)); // the final handler runs a turn later
          store();
          assert.deepEqual(await response, [200, '{"ok":true}']);
          assert.deepEqual(released, ['released']);
        } finally {
          await server.close();
        }
      });
    }

    test('refuses in the handler, as Node does, a chunk that is not a string or bytes', async () => {
      const { staging, staged, store } = manualStaging();
      const app = createApp();
      app.use(backgroundTasks({ transport: { send: async () => {}, staging } }));
      app.get('/', (_req, res) => {
        res.locals.tasks.add(job);
        const codes = [42, undefined, null].map((chunk) => {
          try {
            res.write(chunk as never);
            return 'written';
          } catch (error) {
            return (error as { code?: string }).code;
          }
        });
        res.end(codes.join());
      });
      const server = await listen(app);
      try {
        const response = fetch(server.url).then((answer) => answer.text());
        await staged;
        store();
        assert.equal(await response, 'ERR_INVALID_ARG_TYPE,ERR_INVALID_ARG_TYPE,ERR_STREAM_NULL_VALUES');
      } finally {
        await server.close();
      }
    });

    test('destroyed by its handler before its first byte closes its connection at once', async () => {
      const { staging } = manualStaging();
      const app = createApp();
      app.use(backgroundTasks({ transport: { send: async () => {}, staging } }));
      app.get('/', (_req, res) => {
        res.locals.tasks.add(job);
        res.destroy(); // an aborted long poll, say: nothing was held
      });
      const server = await listen(app);
      try {
        assert.equal(await rawClient(server.port, 'GET / HTTP/1.1\r\nHost: x\r\n\r\n').ended, '');
      } finally {
        await server.close();
      }
    });

    test('reaches its client though server.close() is called while its tasks are being stored', async () => {
      const { staging, staged, store } = manualStaging();
      const server = await listen(stagingApp(createApp, staging));
      try {
        const response = fetch(`${server.url}/json`).then(async (answer) => [answer.status, await answer.text()]);
        await staged;
        const closed = once(server.server, 'close');
        server.server.close();
        store();
        assert.deepEqual(await response, [200, '{"ok":true}']);
        await closed;
      } finally {
        server.server.closeAllConnections();
      }
    });
  });
}

test('an HTTP/2 compatibility response is staged and sent, and its tasks settle', async () => {
  const { staging, staged, store, released } = manualStaging();
  const tasks = backgroundTasks({ transport: { send: async () => {}, staging } });
  const server = http2.createServer((req, res) => {
    Object.assign(res, { locals: {} });
    tasks(req as never, res as never, () => {
      (res as unknown as { locals: { tasks: { add(fn: unknown): void } } }).locals.tasks.add(job);
      res.end('stored');
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const client = http2.connect(`http://127.0.0.1:${(server.address() as AddressInfo).port}`);
  try {
    const stream = client.request({ ':path': '/' });
    stream.setEncoding('utf8');
    let text = '';
    stream.on('data', (chunk: string) => (text += chunk));
    await staged;
    store();
    await once(stream, 'end');
    assert.equal(text, 'stored');
    await tasks.drain();
    assert.equal(tasks.pending, 0);
    assert.deepEqual(released, ['released']);
  } finally {
    client.close();
    server.close();
  }
});

import assert from 'node:assert/strict';
import { once } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { gunzipSync } from 'node:zlib';
import { after, before, describe, test } from 'node:test';
import compression from 'compression';
import express, { type Express, type RequestHandler } from 'express';
import session from 'express-session';
import helmet from 'helmet';
import { createProxyMiddleware } from 'http-proxy-middleware';
import morgan from 'morgan';
import { backgroundTasks, defineTask, type TaskQueue } from '../lib/index.js';
import { expressVersions, listen } from './support/http.js';
import { manualStaging, rawClient, roundTrip } from './support/staging.js';

// The middleware people mount beside this one, on Express 4 and 5: with a staging transport, a
// response whose task was added before its first byte reaches its client only once the task is
// stored, and then exactly as it does without the library.

const files = mkdtempSync(join(tmpdir(), 'ebt-compat-'));
/** 1 MB of text that compresses, but not to nothing: a streamed file's chunks hit backpressure. */
const text = Array.from({ length: 20_000 }, (_, line) => `line ${line}: ${(line * 2_654_435_761 % 4_294_967_296).toString(36)}\n`).join('').padEnd(1_000_000, '.');
writeFileSync(join(files, 'file.txt'), text);
after(() => rmSync(files, { recursive: true, force: true }));

/** An upstream server answering with a Content-Length, for the proxies. */
let upstream: http.Server;
before(async () => {
  upstream = http.createServer((_req, res) => {
    res.setHeader('Content-Type', 'text/plain');
    res.setHeader('X-Upstream', 'yes');
    res.setHeader('Content-Length', Buffer.byteLength(text));
    res.end(text);
  });
  upstream.listen(0, '127.0.0.1');
  await once(upstream, 'listening');
});
after(() => {
  upstream.closeAllConnections();
  upstream.close();
});
const upstreamUrl = (): string => `http://127.0.0.1:${(upstream.address() as AddressInfo).port}`;

const job = defineTask('compat-job', () => {});

/** Adds the task, when there is a queue, to requests that ask for it: the round trips do not. */
const addTask: RequestHandler = (req, res, next) => {
  if (req.get('x-add-task') !== undefined) (res.locals as { tasks?: TaskQueue }).tasks?.add(job);
  next();
};

/** The routes the middleware under test answer through. */
function routes(app: Express): void {
  app.get('/json', (_req, res) => void res.json({ text: text.slice(0, 5_000) }));
  app.get('/small-json', (_req, res) => void res.json({ ok: true }));
  app.get('/file', (_req, res) => res.sendFile(join(files, 'file.txt')));
  app.get('/stream', (_req, res) => {
    res.type('text');
    Readable.from(text.match(/[^]{1,1000}/g) as string[]).pipe(res);
  });
  app.get('/write-end', (_req, res) => {
    res.type('text');
    res.write(text.slice(0, 100));
    res.end(text.slice(100, 200));
  });
  app.get('/events', (_req, res) => {
    res.type('text/event-stream');
    res.write('data: 1\n\n');
    (res as { flush?: () => void }).flush?.(); // compression's, for server-sent events
    res.end('data: 2\n\n');
  });
  app.get('/session', (req, res) => {
    const visits = ((req.session as unknown as { visits?: number }).visits ?? 0) + 1;
    (req.session as unknown as { visits: number }).visits = visits;
    res.json({ visits });
  });
  app.get('/ping', (_req, res) => void res.send('pong'));
}

/** A session store whose `set()` and `get()` answer a few milliseconds later, as a remote one does. */
class SlowStore extends session.MemoryStore {
  override set(sid: string, data: session.SessionData, callback?: (error?: unknown) => void): void {
    setTimeout(() => super.set(sid, data, callback), 5);
  }
  override get(sid: string, callback: (error: unknown, data?: session.SessionData | null) => void): void {
    setTimeout(() => super.get(sid, callback), 5);
  }
}

const sessions = (): RequestHandler => session({ secret: 'compat', resave: false, saveUninitialized: false, store: new SlowStore() });

/** Where each piece of middleware goes: `tasks` is the library, or a no-op for the app without it. */
interface Setup {
  readonly name: string;
  readonly paths: readonly string[];
  mount(app: Express, tasks: RequestHandler): void;
}

const setups: Setup[] = [
  { name: 'compression mounted before', paths: ['/json', '/small-json', '/file', '/stream', '/write-end', '/events'], mount: (app, tasks) => app.use(compression(), tasks) },
  { name: 'compression mounted after', paths: ['/json', '/small-json', '/file', '/stream', '/write-end', '/events'], mount: (app, tasks) => app.use(tasks, compression()) },
  { name: 'express-session mounted after', paths: ['/session'], mount: (app, tasks) => app.use(tasks, sessions()) },
  { name: 'express-session mounted before', paths: ['/session'], mount: (app, tasks) => app.use(sessions(), tasks) },
  { name: 'helmet', paths: ['/json', '/file'], mount: (app, tasks) => app.use(helmet(), tasks) },
  { name: 'express.static', paths: ['/file.txt'], mount: (app, tasks) => app.use(tasks, addTask, express.static(files)) },
  {
    name: 'http-proxy-middleware',
    paths: ['/proxied'],
    mount: (app, tasks) => app.use(tasks, addTask, createProxyMiddleware({ pathFilter: '/proxied', target: upstreamUrl() })),
  },
  {
    name: 'a proxy piping http.request',
    paths: ['/piped'],
    mount: (app, tasks) => app.use(tasks, addTask).get('/piped', (_req, res) => {
      http.get(upstreamUrl(), (answer) => {
        res.writeHead(answer.statusCode as number, answer.headers);
        answer.pipe(res);
      });
    }),
  },
];

/** Builds the app: the setup's middleware, the task added, the routes. */
function appWith(createApp: () => Express, setup: Setup, tasks: RequestHandler): Express {
  const app = createApp();
  setup.mount(app, tasks);
  app.use(addTask);
  routes(app);
  return app;
}

const passThrough: RequestHandler = (_req, _res, next) => next();

/** What a client sees of a response: its status line, headers (sorted, less those that change each time) and decoded body. */
interface Seen {
  readonly status: string;
  readonly headers: readonly string[];
  readonly body: string;
}

/**
 * Reads a raw HTTP/1.1 response, framed by its Content-Length, chunks or the connection's close.
 * @param raw - its bytes, one latin1 character each
 */
function seen(raw: string): Seen {
  const split = raw.indexOf('\r\n\r\n');
  assert.ok(split > 0, `a complete head, got ${JSON.stringify(raw.slice(0, 200))}`);
  const [status = '', ...lines] = raw.slice(0, split).split('\r\n');
  const headers = lines.map((line) => line.replace(/^([^:]+):\s*/, (_, name: string) => `${name.toLowerCase()}: `));
  const header = (name: string): string | undefined => headers.find((line) => line.startsWith(`${name}: `))?.slice(name.length + 2);
  let body: Buffer = Buffer.from(raw.slice(split + 4), 'latin1');
  if (header('transfer-encoding') === 'chunked') body = dechunk(body);
  else if (header('content-length') !== undefined) assert.equal(body.length, Number(header('content-length')), 'the body its Content-Length says');
  if (header('content-encoding') === 'gzip') body = gunzipSync(body);
  const changing = /^(date|etag|last-modified|keep-alive): /;
  const stable = headers.filter((line) => !changing.test(line)).map((line) => line.replace(/connect\.sid=[^;]+/, 'connect.sid=(id)'));
  return { status, headers: stable.sort(), body: body.toString('utf8') };
}

/** @return the body of a chunked message, checked to end with its last chunk */
function dechunk(chunked: Buffer): Buffer {
  const parts: Buffer[] = [];
  let at = 0;
  for (;;) {
    const lineEnd = chunked.indexOf('\r\n', at);
    assert.ok(lineEnd >= 0, 'a chunk size line');
    const size = parseInt(chunked.subarray(at, lineEnd).toString('latin1'), 16);
    if (size === 0) return Buffer.concat(parts);
    parts.push(chunked.subarray(lineEnd + 2, lineEnd + 2 + size));
    at = lineEnd + 2 + size + 2;
  }
}

/** Resolves once the task is being staged; fails if the response ended first. */
async function stagedFirst(staged: Promise<void>, ended: Promise<string>): Promise<void> {
  await Promise.race([staged, ended.then((raw) => assert.fail(`the response ended before its task was staged: ${JSON.stringify(raw.slice(0, 100))}`))]);
}

const requestOf = (path: string, cookie = ''): string => `GET ${path} HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\nX-Add-Task: yes\r\n${cookie}Connection: close\r\n\r\n`;

for (const [label, createApp] of expressVersions) {
  describe(`${label}: beside real middleware, a staged response`, () => {
    for (const setup of setups) {
      for (const [path, closing] of setup.paths.flatMap((each) => [[each, false], [each, true]] as const)) {
        test(`${setup.name}, GET ${path}${closing ? ', server.close() while it is held' : ''}: its client gets no byte before the task is stored, then the response it gets without the library`, async () => {
          const plain = await listen(appWith(createApp, setup, passThrough));
          let expected: Seen;
          try {
            expected = seen(await rawClient(plain.port, requestOf(path)).ended);
          } finally {
            await plain.close();
          }
          const { staging, staged, store, released } = manualStaging();
          const tasks = backgroundTasks({ transport: { send: async () => {}, staging } });
          const server = await listen(appWith(createApp, setup, tasks));
          try {
            const client = rawClient(server.port, requestOf(path));
            await stagedFirst(staged, client.ended);
            await roundTrip(server.port, '/ping');
            assert.equal(client.received(), '', 'nothing before the task is stored');
            // Node's own server.close() closes the connections it counts idle: not this one.
            if (closing) server.server.close();
            store();
            assert.deepEqual(seen(await client.ended), expected);
            await tasks.drain();
            assert.deepEqual(released, ['released']);
            assert.equal(tasks.pending, 0);
          } finally {
            if (closing) server.server.closeAllConnections();
            else await server.close();
          }
        });
      }
    }

    for (const setup of setups.filter((each) => each.name.startsWith('express-session'))) {
      test(`${setup.name}: the session saved on a held response is the one its cookie brings back`, async () => {
        const tasks = backgroundTasks({ transport: { send: async () => {}, staging: { timeout: 10_000, stage: async () => 'receipt', release: async () => {}, discard: async () => {} } } });
        const server = await listen(appWith(createApp, setup, tasks));
        try {
          const first = await fetch(`${server.url}/session`, { headers: { 'x-add-task': 'yes' } });
          assert.deepEqual(await first.json(), { visits: 1 });
          const cookie = (first.headers.get('set-cookie') ?? '').split(';')[0] as string;
          assert.match(cookie, /^connect\.sid=/);
          const second = await fetch(`${server.url}/session`, { headers: { 'x-add-task': 'yes', cookie } });
          assert.deepEqual(await second.json(), { visits: 2 });
        } finally {
          await server.close();
        }
      });
    }

    test('morgan logs the status and length of a held response once it is sent, as without the library', async () => {
      const logged = async (tasks: RequestHandler, hold?: { staged: Promise<void>; store(): void }): Promise<string[]> => {
        const lines: string[] = [];
        const app = createApp();
        app.use(morgan(':method :url :status :res[content-length] :res[transfer-encoding]', { stream: { write: (line: string) => void lines.push(line.trim()) } }));
        app.use(tasks, addTask);
        routes(app);
        const server = await listen(app);
        try {
          for (const path of ['/json', '/stream', '/file']) {
            const client = rawClient(server.port, requestOf(path));
            if (hold !== undefined && path === '/json') {
              await stagedFirst(hold.staged, client.ended);
              await roundTrip(server.port, '/ping');
              assert.deepEqual(lines.filter((line) => !line.includes('/ping')), [], 'nothing logged before the task is stored');
              hold.store();
            }
            await client.ended;
          }
        } finally {
          await server.close();
        }
        return lines.filter((line) => !line.includes('/ping'));
      };
      const expected = await logged(passThrough);
      const { staging, staged, store } = manualStaging();
      let first = true;
      const stage = staging.stage;
      staging.stage = (handedOff) => (first ? ((first = false), stage(handedOff)) : Promise.resolve('receipt')); // only /json waits
      const tasks = backgroundTasks({ transport: { send: async () => {}, staging } });
      assert.deepEqual(await logged(tasks, { staged, store }), expected);
      assert.equal(expected.length, 3);
    });
  });
}

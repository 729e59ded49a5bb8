import assert from 'node:assert/strict';
import { AsyncLocalStorage } from 'node:async_hooks';
import { once } from 'node:events';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { Agent } from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { backgroundTasks, type TaskQueue } from '../lib/index.js';
import { abortedRequest, deferred, delay, expressVersions, get, rawRequest, trackResponses, withServer } from './support/http.js';

for (const [label, createApp] of expressVersions) {
  describe(`${label}: nothing queued is lost`, () => {
    it('runs tasks added by a running task, and tasks added after the response finished and its queue ran dry', async () => {
      const tasks = backgroundTasks();
      const log: string[] = [];
      const queueOfResponse = deferred<TaskQueue>();
      const app = createApp();
      app.use(tasks);
      app.get('/', (_req, res) => {
        const queue = res.locals.tasks;
        queue.add(() => {
          log.push('first');
          queue.add(() => log.push('added by first'));
        });
        res.send('ok');
        queueOfResponse.resolve(queue);
      });
      await withServer(app, async (server) => {
        await (await fetch(server.url)).text();
        await tasks.drain();
        assert.deepEqual(log, ['first', 'added by first']);
        (await queueOfResponse.promise).add(async () => {
          log.push('added after finish');
        });
        assert.equal(tasks.pending, 1);
        await tasks.drain();
        assert.deepEqual(log, ['first', 'added by first', 'added after finish']);
      });
    });

    it('runs the tasks of a handler whose client disconnected before the response', async () => {
      const tasks = backgroundTasks();
      const ran: string[] = [];
      const handlerEntered = deferred();
      const handlerDone = deferred();
      const app = createApp();
      app.use(tasks);
      app.get('/slow', (_req, res) => {
        res.locals.tasks.add(() => ran.push('queued before the disconnect'));
        res.on('close', () => {
          res.locals.tasks.add(() => ran.push('queued after the disconnect'));
          handlerDone.resolve();
        });
        handlerEntered.resolve();
      });
      await withServer(app, async (server) => {
        await abortedRequest(server.port, '/slow', handlerEntered.promise);
        await handlerDone.promise;
        await tasks.drain();
        assert.deepEqual(ran, ['queued before the disconnect', 'queued after the disconnect']);
      });
    });
  });

  describe(`${label}: pipelined requests`, () => {
    for (const when of ['before', 'after'] as const) {
      it(`runs the tasks (queued ${when} res.end()) of a pipelined response whose client left before it got the socket`, async () => {
        const tasks = backgroundTasks();
        const ran: string[] = [];
        const queued = deferred();
        const app = createApp();
        app.use(tasks);
        app.get('/slow', () => {
          // never answers: the pipelined response behind it cannot get the socket
        });
        app.get('/fast', (_req, res) => {
          if (when === 'before') res.locals.tasks.add(() => ran.push('fast task'));
          res.send('fast');
          if (when === 'after') res.locals.tasks.add(() => ran.push('fast task'));
          queued.resolve();
        });
        await withServer(app, async (server) => {
          const socket = net.connect(server.port, '127.0.0.1');
          await once(socket, 'connect');
          socket.write('GET /slow HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\nGET /fast HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n');
          await queued.promise;
          socket.resetAndDestroy();
          await tasks.drain();
          assert.deepEqual(ran, ['fast task']);
        });
      });
    }
  });

  describe(`${label}: listeners on a shared connection`, () => {
    it('adds at most one close listener to a connection, however many pipelined responses queue tasks, and warns of no leak', async () => {
      const tasks = backgroundTasks();
      const warnings: Error[] = [];
      const onWarning = (warning: Error): void => void warnings.push(warning);
      process.on('warning', onWarning);
      const count = 12;
      const ran: string[] = [];
      const allQueued = deferred();
      const release = deferred();
      let queued = 0;
      let closeListeners = 0;
      let baselineCloseListeners = 0;
      const app = createApp();
      app.use(tasks);
      app.get('/first', (req, res) => {
        // Holds the socket, so the pipelined responses behind it wait without one.
        baselineCloseListeners = req.socket.listenerCount('close');
        void release.promise.then(() => res.send('first'));
      });
      app.get('/:n', (req, res) => {
        res.locals.tasks.add(() => ran.push(String(req.params.n)));
        res.send('ok');
        if (++queued === count) {
          closeListeners = req.socket.listenerCount('close');
          allQueued.resolve();
        }
      });
      try {
        await withServer(app, async (server) => {
          const socket = net.connect(server.port, '127.0.0.1');
          await once(socket, 'connect');
          socket.write(['first', ...Array.from({ length: count }, (_, n) => String(n))].map((path) => `GET /${path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n`).join(''));
          await allQueued.promise;
          release.resolve();
          socket.resetAndDestroy();
          await tasks.drain();
        });
      } finally {
        process.off('warning', onWarning);
      }
      assert.equal(ran.length, count);
      assert.deepEqual(warnings, []);
      assert.ok(closeListeners <= baselineCloseListeners + 1, `${closeListeners} close listeners on the connection`);
    });

    it('adds no listener to the connection for tasks queued after a keep-alive response has finished', async () => {
      const tasks = backgroundTasks();
      const queues: TaskQueue[] = [];
      const sockets = new Set<net.Socket>();
      const app = createApp();
      app.use(tasks);
      app.get('/', (req, res) => {
        queues.push(res.locals.tasks);
        sockets.add(req.socket);
        res.send('ok');
      });
      await withServer(app, async (server) => {
        const agent = new Agent({ keepAlive: true, maxSockets: 1 });
        try {
          for (let i = 0; i < 12; i++) await get(server.url, agent);
          assert.equal(sockets.size, 1, 'one keep-alive connection');
          const [connection] = sockets as unknown as [net.Socket];
          const before = connection.listenerCount('close');
          let ran = 0;
          for (const queue of queues) queue.add(() => ran++);
          assert.equal(connection.listenerCount('close'), before);
          await tasks.drain();
          assert.equal(ran, 12);
        } finally {
          agent.destroy();
        }
      });
    });
  });

  describe(`${label}: drain() and pending`, () => {
    it('counts queued and running tasks, and drain() waits for tasks added while draining', async () => {
      const tasks = backgroundTasks();
      const release = deferred();
      const log: string[] = [];
      const responded = deferred();
      const app = createApp();
      app.use(tasks);
      app.get('/', (_req, res) => {
        res.locals.tasks.add(async () => {
          await release.promise;
          log.push('first');
          res.locals.tasks.add(async () => {
            await delay(10);
            log.push('added while draining');
          });
        }).add(() => log.push('second'));
        assert.equal(res.locals.tasks.size, 2);
        assert.equal(tasks.pending, 2);
        res.on('finish', () => responded.resolve());
        res.send('ok');
      });
      await withServer(app, async (server) => {
        assert.equal(tasks.pending, 0);
        await tasks.drain();
        await (await fetch(server.url)).text();
        await responded.promise;
        const drains = [tasks.drain(), tasks.drain()];
        let drained = false;
        void drains[0]?.then(() => (drained = true));
        // A window in which drain() must NOT resolve: the first task waits for `release`.
        await delay(20);
        assert.equal(drained, false, 'drain() resolved while a task was still running');
        assert.equal(tasks.pending, 2);
        release.resolve();
        await Promise.all(drains);
        assert.deepEqual(log, ['first', 'second', 'added while draining']);
        assert.equal(tasks.pending, 0);
      });
    });
  });

  describe(`${label}: runOn`, () => {
    it("with runOn: 'success', drops the queue of a response with status >= 400, including later adds", async () => {
      const tasks = backgroundTasks({ runOn: 'success' });
      const statuses = [500, 404, 201];
      const ran: string[] = [];
      const lateAdded = new Map(statuses.map((status) => [status, deferred()]));
      const app = createApp();
      app.use(tasks);
      app.get('/:status', (req, res) => {
        const status = Number(req.params.status);
        res.locals.tasks.add(() => ran.push(`task of ${status}`));
        res.status(status).send('done');
        res.on('close', () => {
          setImmediate(() => {
            res.locals.tasks.add(() => ran.push(`late task of ${status}`));
            lateAdded.get(status)?.resolve();
          });
        });
      });
      await withServer(app, async (server) => {
        for (const status of statuses) {
          await (await fetch(`${server.url}/${status}`)).text();
        }
        await Promise.all([...lateAdded.values()].map(({ promise }) => promise));
        await tasks.drain();
        assert.deepEqual(ran.sort(), ['late task of 201', 'task of 201']);
        assert.equal(tasks.pending, 0);
      });
    });

    for (const status of [402, 201]) {
      it(`with runOn: 'success', decides on the status the handler sends after the client reset the connection (${status})`, async () => {
        const tasks = backgroundTasks({ runOn: 'success' });
        const ran: string[] = [];
        const handlerEntered = deferred();
        const responded = deferred();
        const app = createApp();
        app.use(tasks);
        app.get('/pay', (req, res) => {
          res.locals.tasks.add(() => ran.push('send receipt'));
          handlerEntered.resolve();
          // The payment provider answers only after the client has gone.
          req.socket.once('close', () => {
            setTimeout(() => {
              res.status(status).json({ status });
              ran.push('handler after end()');
              responded.resolve();
            }, 30);
          });
        });
        await withServer(app, async (server) => {
          const socket = await rawRequest(server.port, '/pay');
          await handlerEntered.promise;
          socket.resetAndDestroy();
          await responded.promise;
          await tasks.drain();
        });
        assert.deepEqual(ran, status < 400 ? ['handler after end()', 'send receipt'] : ['handler after end()'], 'no task runs inside the handler\'s end()');
        assert.equal(tasks.pending, 0);
      });
    }

    it("with runOn: 'success', runs the tasks of a 200 whose headers the client had, although it left before the body ended", async () => {
      const tasks = backgroundTasks({ runOn: 'success' });
      const ran: string[] = [];
      const streaming = deferred();
      const app = createApp();
      app.use(tasks);
      app.get('/export', (req, res) => {
        res.locals.tasks.add(() => ran.push('record the download'));
        // As pipe() does: the headers and a first chunk go out, and a destroyed response is never ended.
        res.writeHead(200, { 'Content-Type': 'text/csv' });
        res.write('id,total\n'.repeat(1000));
        req.socket.once('close', () => streaming.resolve());
      });
      await withServer(app, async (server) => {
        const socket = await rawRequest(server.port, '/export');
        const [chunk] = (await once(socket, 'data')) as [Buffer];
        assert.match(chunk.toString('latin1'), /^HTTP\/1\.1 200 OK/);
        socket.resetAndDestroy();
        await streaming.promise;
        await tasks.drain();
      });
      assert.deepEqual(ran, ['record the download']);
    });

    it("by default (runOn: 'always') runs the tasks of a 500 response", async () => {
      const tasks = backgroundTasks();
      let ran = false;
      const app = createApp();
      app.use(tasks);
      app.get('/', (_req, res) => {
        res.locals.tasks.add(() => (ran = true));
        res.sendStatus(500);
      });
      await withServer(app, async (server) => {
        await (await fetch(server.url)).text();
        await tasks.drain();
        assert.equal(ran, true);
      });
    });
  });

  describe(`${label}: request context`, () => {
    for (const concurrency of [Infinity, 1]) {
      it(`runs each task in the AsyncLocalStorage context of its add() call (concurrency: ${concurrency})`, async () => {
        const requestContext = new AsyncLocalStorage<string>();
        const tasks = backgroundTasks({ concurrency });
        const seen: [string, string | undefined][] = [];
        const bothAnswered = deferred();
        const app = createApp();
        const responses = trackResponses(app);
        app.use((req, _res, next) => requestContext.run(req.path, next));
        app.use(tasks);
        app.get('/:user', (req, res) => {
          const report = (expected: string): void => {
            seen.push([expected, requestContext.getStore()]);
          };
          res.locals.tasks
            .add(report, req.path)
            .add(async (expected: string) => {
              await bothAnswered.promise;
              report(expected);
            }, req.path)
            .add(report, req.path);
          res.send('ok');
        });
        await withServer(app, async (server) => {
          await Promise.all(['/alice', '/bob'].map(async (path) => (await fetch(server.url + path)).text()));
          // With concurrency: 1 the second queue now waits for the first, and starts from its last
          // task's settling: only the context bound at add() can tell it whose request it serves.
          assert.equal(await responses.closed(), 2);
          bothAnswered.resolve();
          await tasks.drain();
          assert.equal(seen.length, 6);
          for (const [expected, store] of seen) assert.equal(store, expected);
        });
      });
    }
  });
}

describe('a response that queues nothing', () => {
  it('gets a queue but no listener on the response', async () => {
    const [, createApp] = expressVersions[0] ?? [];
    assert.ok(createApp);
    const tasks = backgroundTasks();
    const listenerCounts = deferred<[number, number]>();
    const app = createApp();
    app.get('/', (req, res, next) => {
      const before = res.listenerCount('finish') + res.listenerCount('close');
      tasks(req, res, () => {
        assert.equal(res.locals.tasks.size, 0);
        listenerCounts.resolve([before, res.listenerCount('finish') + res.listenerCount('close')]);
        next();
      });
    }, (_req, res) => {
      res.send('ok');
    });
    await withServer(app, async (server) => {
      await (await fetch(server.url)).text();
      const [before, after] = await listenerCounts.promise;
      assert.equal(after, before);
    });
  });
});

for (const [label, createApp] of expressVersions) {
  describe(`${label}: res.locals stays the app's`, () => {
    it('res.locals should be empty by default (Express\'s own test, with the middleware mounted)', async () => {
      const app = createApp();
      app.use(backgroundTasks());
      app.use((_req, res) => {
        assert.deepEqual(Object.keys(res.locals), []);
        res.end();
      });
      await withServer(app, async ({ url }) => {
        assert.equal((await fetch(url)).status, 200);
      });
    });

    it('keeps tasks out of res.json(res.locals) and out of the locals a view gets, and still takes tasks', async () => {
      const views = await mkdtemp(path.join(os.tmpdir(), 'views-'));
      await writeFile(path.join(views, 'page.txt'), '');
      const ran: string[] = [];
      const tasks = backgroundTasks();
      const app = createApp();
      app.engine('txt', (_file: string, options: object, done: (error: unknown, rendered?: string) => void) => {
        done(null, `tasks local: ${String((options as { tasks?: unknown }).tasks)}`);
      });
      app.set('views', views);
      (app.locals as Record<string, unknown>).tasks = 'the app\'s own';
      app.use(tasks);
      app.use(tasks); // mounted twice: the first queue stays
      app.get('/json', (_req, res) => {
        res.locals.tasks.add(() => ran.push('json'));
        res.locals.user = 'ada';
        res.json(res.locals);
      });
      app.get('/view', (_req, res) => {
        res.locals.tasks.add(() => ran.push('view'));
        res.render('page.txt');
      });
      try {
        await withServer(app, async ({ url }) => {
          assert.deepEqual(await (await fetch(`${url}/json`)).json(), { user: 'ada' });
          assert.equal(await (await fetch(`${url}/view`)).text(), 'tasks local: the app\'s own');
          await tasks.drain();
        });
      } finally {
        await rm(views, { recursive: true });
      }
      assert.deepEqual(ran, ['json', 'view']);
    });
  });
}

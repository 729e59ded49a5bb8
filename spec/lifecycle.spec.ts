import assert from 'node:assert/strict';
import { AsyncLocalStorage } from 'node:async_hooks';
import { once } from 'node:events';
import net from 'node:net';
import { describe, it } from 'node:test';
import { backgroundTasks, type TaskQueue } from '../lib/index.js';
import { abortedRequest, deferred, delay, expressVersions, trackResponses, withServer } from './support/http.js';

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

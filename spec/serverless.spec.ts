// Vercel's runtime puts each request's context at globalThis[Symbol.for('@vercel/request-context')],
// and @vercel/functions' waitUntil() reads it from there: `.get()` returns the current request's
// context, `{ waitUntil(promise) }`. Installing the same shape is how a spec sees what a deployed
// function would do.
import assert from 'node:assert/strict';
import { AsyncLocalStorage } from 'node:async_hooks';
import { afterEach, describe, it } from 'node:test';
import { backgroundTasks } from '../lib/index.js';
import { deferred, expressVersions, watchProcessFaults, withServer } from './support/http.js';

const REQUEST_CONTEXT = Symbol.for('@vercel/request-context');
type WithRequestContext = typeof globalThis & { [REQUEST_CONTEXT]?: { get(): unknown } };

afterEach(() => {
  Reflect.deleteProperty(globalThis, REQUEST_CONTEXT);
});

for (const [label, createApp] of expressVersions) {
  describe(`${label}: on Vercel (a simulated request context)`, () => {
    it("registers each response's tasks with the request's waitUntil(), settling once they have run; a response without tasks registers nothing", async () => {
      const contexts = new AsyncLocalStorage<{ path: string; waitUntil(promise: Promise<unknown>): void }>();
      const registered: { path: string; promise: Promise<unknown> }[] = [];
      (globalThis as WithRequestContext)[REQUEST_CONTEXT] = { get: () => contexts.getStore() };
      const ran: string[] = [];
      const release = deferred();
      const tasks = backgroundTasks();
      const app = createApp();
      app.use((req, _res, next) => {
        const path = req.path;
        contexts.run({ path, waitUntil: (promise) => void registered.push({ path, promise }) }, next);
      });
      app.use(tasks);
      app.get('/with-tasks', (_req, res) => {
        res.locals.tasks
          .add(async () => {
            await release.promise;
            ran.push('first');
          })
          .add(() => ran.push('second'));
        res.send('ok');
      });
      app.get('/without', (_req, res) => {
        res.send('ok');
      });
      await withServer(app, async ({ url }) => {
        await (await fetch(`${url}/with-tasks`)).text();
        await (await fetch(`${url}/without`)).text();
        assert.deepEqual(registered.map(({ path }) => path), ['/with-tasks'], 'one registration, by the response with tasks');
        let settled = false;
        void registered[0]?.promise.then(() => (settled = true));
        await new Promise((resolve) => setImmediate(resolve));
        assert.equal(settled, false, 'not settled while a task is running');
        release.resolve();
        await registered[0]?.promise;
        assert.deepEqual(ran, ['first', 'second'], 'the promise settles once every task of the response has');
        assert.equal(tasks.pending, 0);
      });
    });

    it('queues and runs the tasks as usual when reading the request context itself throws', async () => {
      Object.defineProperty(globalThis, REQUEST_CONTEXT, {
        configurable: true,
        get(): never {
          throw new Error('context unavailable');
        },
      });
      const ran: string[] = [];
      const tasks = backgroundTasks({ maxPending: 2 });
      const app = createApp();
      app.use(tasks);
      app.get('/', (_req, res) => {
        res.locals.tasks.add(() => ran.push('task'));
        res.send('ok');
      });
      await withServer(app, async ({ url }) => {
        for (let request = 0; request < 3; request++) {
          assert.equal((await fetch(url)).status, 200);
          await tasks.drain();
        }
      });
      assert.deepEqual(ran, ['task', 'task', 'task']);
      assert.equal(tasks.pending, 0);
    });

    it('serves and runs the tasks as usual when the request context is broken or has no waitUntil', async () => {
      for (const get of [() => { throw new Error('no context'); }, () => undefined, () => ({ waitUntil: 'later' })]) {
        (globalThis as WithRequestContext)[REQUEST_CONTEXT] = { get };
        let ran = false;
        const tasks = backgroundTasks();
        const app = createApp();
        app.use(tasks);
        app.get('/', (_req, res) => {
          res.locals.tasks.add(() => (ran = true));
          res.send('ok');
        });
        await withServer(app, async ({ url }) => {
          assert.equal((await fetch(url)).status, 200);
          await tasks.drain();
        });
        assert.equal(ran, true);
      }
    });

    it('contains a waitUntil that rejects, throws, or returns a thenable that throws: the tasks run, nothing is unhandled', async () => {
      const hostileWaitUntils: Record<string, () => unknown> = {
        rejects: () => Promise.reject(new Error('waitUntil rejected')),
        throws: () => {
          throw new Error('waitUntil threw');
        },
        'returns a thenable whose then throws': () => ({
          then() {
            throw new Error('then threw');
          },
        }),
        'returns a thenable whose then getter throws': () => ({
          get then(): never {
            throw new Error('then getter threw');
          },
        }),
      };
      for (const [behaviour, waitUntil] of Object.entries(hostileWaitUntils)) {
        (globalThis as WithRequestContext)[REQUEST_CONTEXT] = { get: () => ({ waitUntil }) };
        const faults = watchProcessFaults();
        try {
          let ran = false;
          const tasks = backgroundTasks();
          const app = createApp();
          app.use(tasks);
          app.get('/', (_req, res) => {
            res.locals.tasks.add(() => (ran = true));
            res.send('ok');
          });
          await withServer(app, async ({ url }) => {
            assert.equal((await fetch(url)).status, 200);
            await tasks.drain();
          });
          await new Promise((resolve) => setImmediate(resolve)); // unhandled rejections are reported by now
          assert.equal(ran, true, behaviour);
          assert.equal(tasks.pending, 0, behaviour);
          assert.deepEqual(faults.faults, [], behaviour);
        } finally {
          faults.stop();
        }
      }
    });
  });
}

import assert from 'node:assert/strict';
import { AsyncLocalStorage } from 'node:async_hooks';
import { describe, it } from 'node:test';
import { backgroundTasks, type TaskInfo } from '../lib/index.js';
import { expressVersions, withServer } from './support/http.js';

for (const [label, createApp] of expressVersions) {
  describe(`${label}: the around option`, () => {
    it('runs each task inside what around set up, also after the task awaits, with the task and its request', async () => {
      const scope = new AsyncLocalStorage<string>();
      const seen: string[] = [];
      const infos: TaskInfo[] = [];
      const tasks = backgroundTasks({
        around: (info, run) => {
          infos.push(info);
          return scope.run(`span of ${info.name}`, run);
        },
      });
      const app = createApp();
      app.use((req, _res, next) => {
        (req as typeof req & { id: string }).id = 'req-42';
        next();
      });
      app.use(tasks);
      app.post('/items/:id', (_req, res) => {
        res.locals.tasks
          .add(async function sendEmail() {
            seen.push(`before await: ${scope.getStore()}`);
            await new Promise((resolve) => setTimeout(resolve, 5));
            seen.push(`after await: ${scope.getStore()}`);
          })
          .add(function audit() {
            seen.push(`sync: ${scope.getStore()}`);
          });
        res.status(201).send('created');
      });
      await withServer(app, async ({ url }) => {
        assert.equal((await fetch(`${url}/items/9?src=web`, { method: 'POST' })).status, 201);
        await tasks.drain();
      });
      assert.deepEqual(seen, ['before await: span of sendEmail', 'after await: span of sendEmail', 'sync: span of audit']);
      assert.deepEqual(infos.map(({ name, method, url, status, requestId, durationMs }) => ({ name, method, url, status, requestId, durationMs })), [
        { name: 'sendEmail', method: 'POST', url: '/items/9?src=web', status: 201, requestId: 'req-42', durationMs: undefined },
        { name: 'audit', method: 'POST', url: '/items/9?src=web', status: 201, requestId: 'req-42', durationMs: undefined },
      ]);
      for (const info of infos) assert.ok(info.waitMs >= 0 && Number.isFinite(info.waitMs), `waitMs ${info.waitMs}`);
    });

    it('keeps a sync task sync under a sync around: no promise tick between consecutive tasks', async () => {
      const tasks = backgroundTasks({ around: (_info, run) => run() });
      const order: string[] = [];
      const app = createApp();
      app.use(tasks);
      app.get('/', (_req, res) => {
        res.locals.tasks
          .add(() => {
            order.push('first');
            queueMicrotask(() => order.push('microtask'));
          })
          .add(() => order.push('second'));
        res.send('ok');
      });
      await withServer(app, async ({ url }) => {
        await (await fetch(url)).text();
        await tasks.drain();
      });
      assert.deepEqual(order, ['first', 'second', 'microtask']);
    });

    it('fails a task whose around throws, rejects, calls run twice or never calls it, and runs the next one', async () => {
      const misbehaviours: Record<string, [around: (run: () => unknown) => unknown, reported: string]> = {
        throwsInAround: [() => {
          throw new Error('tracer broke');
        }, 'Error: tracer broke'],
        rejectsInAround: [() => Promise.reject(new Error('async tracer broke')), 'Error: async tracer broke'],
        runTwice: [(run) => {
          run();
          return run();
        }, 'TypeError: around called run() a second time for task runTwice: each task runs once'],
        neverRun: [() => undefined, 'TypeError: around returned without calling run() for task neverRun, so it did not run'],
        neverRunAsync: [() => Promise.resolve(), 'TypeError: around returned without calling run() for task neverRunAsync, so it did not run'],
      };
      const reported: [string, string][] = [];
      const ran: string[] = [];
      const tasks = backgroundTasks({
        around: (info, run) => (misbehaviours[info.name]?.[0] ?? ((go: () => unknown) => go()))(run),
        onError: (error, { name }) => reported.push([name, `${(error as Error).name}: ${(error as Error).message}`]),
      });
      const app = createApp();
      app.use(tasks);
      app.get('/', (_req, res) => {
        for (const name of [...Object.keys(misbehaviours), 'next']) {
          res.locals.tasks.add(Object.defineProperty(() => void ran.push(name), 'name', { value: name }));
        }
        res.send('ok');
      });
      await withServer(app, async ({ url }) => {
        await (await fetch(url)).text();
        await tasks.drain();
      });
      assert.deepEqual(ran, ['runTwice', 'next'], 'run twice ran once; the others did not run');
      assert.deepEqual(reported, Object.entries(misbehaviours).map(([name, [, message]]) => [name, message]));
    });
  });
}

describe('what onError learns of a failed task', () => {
  it('the request (method, URL, status, request id), the queue wait and how long the task ran', async () => {
    const infos: TaskInfo[] = [];
    const tasks = backgroundTasks({ timeout: 40, onError: (_error, info) => infos.push(info) });
    const [, createApp] = expressVersions[0] as (typeof expressVersions)[number];
    const app = createApp();
    app.use((req, _res, next) => {
      (req as typeof req & { id: number }).id = 17;
      next();
    });
    app.use(tasks);
    app.delete('/carts/:id', (_req, res) => {
      res.locals.tasks.add(function hangs() {
        return new Promise(() => {});
      });
      res.sendStatus(204);
    });
    await withServer(app, async ({ url }) => {
      assert.equal((await fetch(`${url}/carts/3`, { method: 'DELETE' })).status, 204);
      await tasks.drain();
    });
    const [info] = infos;
    assert.ok(info !== undefined);
    assert.deepEqual({ name: info.name, method: info.method, url: info.url, status: info.status, requestId: info.requestId }, {
      name: 'hangs', method: 'DELETE', url: '/carts/3', status: 204, requestId: '17',
    });
    assert.ok(info.waitMs >= 0, `waitMs ${info.waitMs}`);
    assert.ok(info.durationMs !== undefined && info.durationMs >= 35, `ran for ${info.durationMs} ms before its 40 ms timeout`);
  });
});

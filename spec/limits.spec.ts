import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { backgroundTasks, defineTask, QueueFullError, TimeoutError, type TaskInfo, withSignal } from '../lib/index.js';
import { deferred, delay, expressVersions, trackResponses, withServer } from './support/http.js';

for (const [label, createApp] of expressVersions) {
  describe(`${label}: timeout`, () => {
    it('reports a task still running after `timeout` as a TimeoutError and moves on', async () => {
      const reported: [unknown, string][] = [];
      const tasks = backgroundTasks({ timeout: 50, onError: (error, info: TaskInfo) => reported.push([error, info.name]) });
      const ran: string[] = [];
      const app = createApp();
      app.use(tasks);
      app.get('/', (_req, res) => {
        res.locals.tasks
          .add(function hangsForever() {
            return new Promise(() => {});
          })
          .add(async function quick() {
            ran.push('quick');
          })
          .add(() => ran.push('after'));
        res.send('ok');
      });
      await withServer(app, async (server) => {
        await (await fetch(server.url)).text();
        await tasks.drain();
        assert.deepEqual(ran, ['quick', 'after']);
        assert.equal(reported.length, 1);
        const [error, name] = reported[0] ?? [];
        assert.equal(name, 'hangsForever');
        assert.ok(error instanceof TimeoutError);
        assert.equal(error.name, 'TimeoutError');
        assert.match(error.message, /hangsForever.*50 ms/);
      });
    });
  });

  describe(`${label}: withSignal()`, () => {
    it('aborts the signal of a task still running at its timeout, with the TimeoutError as the reason', async () => {
      const reported: unknown[] = [];
      const tasks = backgroundTasks({ timeout: 30, onError: (error) => reported.push(error) });
      const reasons: unknown[] = [];
      const ran: string[] = [];
      const fetchSlowly = withSignal((signal: AbortSignal, id: string) => new Promise<void>((resolve) => {
        signal.addEventListener('abort', () => {
          reasons.push(signal.reason);
          resolve();
        });
        ran.push(`started ${id}`);
      }));
      const app = createApp();
      app.use(tasks);
      app.get('/:id', (req, res) => {
        res.locals.tasks.add(fetchSlowly, String(req.params['id'])).add(() => ran.push('next'));
        res.send('ok');
      });
      await withServer(app, async (server) => {
        await (await fetch(`${server.url}/a`)).text();
        await tasks.drain();
      });
      assert.deepEqual(ran, ['started a', 'next']);
      assert.equal(reported.length, 1);
      assert.ok(reported[0] instanceof TimeoutError);
      assert.deepEqual(reasons, reported, 'the signal aborted with the reported TimeoutError');
    });

    it('called directly, outside a queue, gets a signal that never aborts; defineTask() keeps the signal', async () => {
      const seen: boolean[] = [];
      const direct = withSignal((signal: AbortSignal, n: number) => {
        seen.push(signal.aborted);
        return n * 2;
      });
      assert.equal(direct(21), 42);
      const reasons: unknown[] = [];
      const defined = defineTask('slow-export', withSignal((signal: AbortSignal) => new Promise<void>((resolve) => {
        signal.addEventListener('abort', () => {
          reasons.push(signal.reason);
          resolve();
        });
      })));
      const tasks = backgroundTasks({ timeout: 20, onError() {} });
      const app = createApp();
      app.use(tasks);
      app.get('/', (_req, res) => {
        res.locals.tasks.add(defined);
        res.send('ok');
      });
      await withServer(app, async (server) => {
        await (await fetch(server.url)).text();
        await tasks.drain();
      });
      assert.deepEqual(seen, [false]);
      assert.equal(reasons.length, 1);
      assert.ok(reasons[0] instanceof TimeoutError);
    });
  });

  describe(`${label}: concurrency`, () => {
    it('runs at most `concurrency` tasks at once across responses, each response in order', async () => {
      const tasks = backgroundTasks({ concurrency: 2 });
      const gate = deferred();
      let running = 0;
      let mostAtOnce = 0;
      const order = new Map<number, number[]>();
      const work = async (request: number, position: number): Promise<void> => {
        mostAtOnce = Math.max(mostAtOnce, ++running);
        await gate.promise;
        await delay(2);
        order.set(request, [...(order.get(request) ?? []), position]);
        running--;
      };
      const app = createApp();
      const responses = trackResponses(app);
      app.use(tasks);
      app.get('/:n', (req, res) => {
        const n = Number(req.params.n);
        res.locals.tasks.add(work, n, 1).add(work, n, 2).add(work, n, 3);
        res.send('ok');
      });
      await withServer(app, async (server) => {
        const requests = [0, 1, 2, 3, 4, 5];
        await Promise.all(requests.map(async (n) => (await fetch(`${server.url}/${n}`)).text()));
        // Every response is flushed and every queue wants a slot; the tasks holding one wait at the gate.
        assert.equal(await responses.closed(), 6);
        assert.equal(running, 2);
        assert.equal(tasks.pending, 18);
        gate.resolve();
        await tasks.drain();
        assert.equal(mostAtOnce, 2);
        for (const n of requests) assert.deepEqual(order.get(n), [1, 2, 3]);
      });
    });

    it('lets waiting responses take turns in FIFO order with concurrency: 1', async () => {
      const tasks = backgroundTasks({ concurrency: 1 });
      const gate = deferred();
      const log: string[] = [];
      const step = async (name: string): Promise<void> => {
        await gate.promise;
        log.push(name);
      };
      const app = createApp();
      const responses = trackResponses(app);
      app.use(tasks);
      app.get('/:name', (req, res) => {
        const name = req.params.name as string;
        res.locals.tasks.add(step, `${name}1`).add(step, `${name}2`);
        res.send('ok');
      });
      await withServer(app, async (server) => {
        for (const name of ['a', 'b', 'c']) await (await fetch(`${server.url}/${name}`)).text();
        // a1 holds the slot at the gate; b and c have been flushed and wait for it, in that order.
        assert.equal(await responses.closed(), 3);
        assert.equal(tasks.pending, 6);
        assert.deepEqual(log, []);
        gate.resolve();
        await tasks.drain();
        assert.deepEqual(log, ['a1', 'b1', 'c1', 'a2', 'b2', 'c2']);
      });
    });
  });

  describe(`${label}: maxPending`, () => {
    it('throws QueueFullError from add() past `maxPending`, so the handler can answer 503', async () => {
      const tasks = backgroundTasks({ maxPending: 2 });
      const ran: number[] = [];
      const app = createApp();
      app.use(tasks);
      app.get('/', (_req, res) => {
        try {
          for (const n of [1, 2, 3]) res.locals.tasks.add(() => ran.push(n));
          res.send('queued');
        } catch (error) {
          assert.ok(error instanceof QueueFullError);
          assert.equal(error.name, 'QueueFullError');
          assert.match(error.message, /maxPending/);
          res.status(503).send('busy');
        }
      });
      await withServer(app, async (server) => {
        const response = await fetch(server.url);
        assert.equal(response.status, 503);
        await response.text();
        await tasks.drain();
        assert.deepEqual(ran, [1, 2], 'the two accepted tasks still run');
        assert.equal(tasks.pending, 0);
      });
    });
  });
}

describe('a task add() refuses is never counted', () => {
  const [, createApp] = expressVersions[0] as (typeof expressVersions)[number];
  const throwing = (): never => {
    throw new Error('hostile getter');
  };
  const hostileFunctions: [label: string, make: () => () => void][] = [
    ['a function whose withSignal() brand getter throws', () => Object.defineProperty(() => {}, Symbol.for('express-background-tasks.signalTaker'), { get: throwing })],
    ['a Proxy of a function whose get trap throws for symbols', () => new Proxy(() => {}, { get: (target, key) => (typeof key === 'symbol' ? throwing() : Reflect.get(target, key)) })],
    ['a Proxy of a defined task whose get trap throws for its retry', () => new Proxy(defineTask('hostile', () => {}), {
      get: (target, key) => (key === Symbol.for('express-background-tasks.retry') ? throwing() : Reflect.get(target, key)),
    })],
  ];
  for (const [label, make] of hostileFunctions) {
    it(`${label}: add() throws, pending stays 0, drain() and close() find nothing pending`, async () => {
      const tasks = backgroundTasks();
      const app = createApp();
      app.use(tasks);
      const thrown: unknown[] = [];
      app.get('/', (_req, res) => {
        for (let attempt = 0; attempt < 3; attempt++) {
          try {
            res.locals.tasks.add(make());
          } catch (error) {
            thrown.push(error);
          }
        }
        res.json({ pending: tasks.pending, size: res.locals.tasks.size });
      });
      await withServer(app, async ({ url }) => {
        assert.deepEqual(await (await fetch(url)).json(), { pending: 0, size: 0 });
      });
      assert.equal(thrown.length, 3);
      await tasks.drain();
      assert.deepEqual(await tasks.close({ timeout: 100 }), { drained: true, settled: 0, abandoned: 0, pending: 0 });
    });
  }
});

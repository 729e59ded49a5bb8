// defineTask() and the `transport` option, with no Redis: a transport that records what it is sent
// is a user of the public TaskTransport interface like bullmqTransport().
import assert from 'node:assert/strict';
import { AsyncLocalStorage } from 'node:async_hooks';
import { describe, it } from 'node:test';
import express from 'express';
import {
  backgroundTasks,
  defineTask,
  HandOffError,
  type BackgroundTasksOptions,
  type HandedOffTask,
  type TaskInfo,
  type TaskTransport,
} from '../lib/index.js';
import { errorWithUnreadableMessage, revokedProxy } from './support/hostile.js';
import { deferred, expressVersions, watchProcessFaults, withServer } from './support/http.js';

/** A transport that keeps what it is sent; the sends settle when the spec calls `settle()`. */
function recordingTransport(): TaskTransport & { sent: HandedOffTask[][]; sentTimes(count: number): Promise<void>; settle(): void } {
  const sent: HandedOffTask[][] = [];
  const unsettled: (() => void)[] = [];
  const waiting: [count: number, resolve: () => void][] = [];
  return {
    sent,
    send(tasks) {
      sent.push([...tasks]);
      for (const [count, resolve] of waiting) if (sent.length === count) resolve();
      const acknowledged = deferred();
      unsettled.push(acknowledged.resolve);
      return acknowledged.promise;
    },
    /** Resolves once `count` sends have been made. */
    sentTimes(count) {
      if (sent.length >= count) return Promise.resolve();
      const { promise, resolve } = deferred();
      waiting.push([count, resolve]);
      return promise;
    },
    /** Acknowledges every send made so far. */
    settle() {
      for (const acknowledge of unsettled.splice(0)) acknowledge();
    },
  };
}

describe('defineTask()', () => {
  for (const [label, createApp] of expressVersions) {
    it(`${label}: without a transport a defined task runs in this process after the response, under its defined name`, async () => {
      const events: string[] = [];
      const reported: TaskInfo[] = [];
      const sendEmail = defineTask('send-email', (to: string) => {
        events.push(`sent to ${to}`);
        if (to === 'bounce@example.com') throw new Error('mailbox full');
      });
      const tasks = backgroundTasks({ onError: (_error, info) => reported.push(info) });
      const app = createApp();
      app.use(tasks);
      app.post('/', (_req, res) => {
        res.on('finish', () => events.push('response flushed'));
        res.locals.tasks.add(sendEmail, 'ada@example.com').add(sendEmail, 'bounce@example.com');
        res.end();
      });
      await withServer(app, async ({ url }) => {
        await fetch(url, { method: 'POST' });
        await tasks.drain();
      });
      assert.deepEqual(events, ['response flushed', 'sent to ada@example.com', 'sent to bounce@example.com']);
      assert.deepEqual(reported.map((info) => info.name), ['send-email']);
      assert.equal(sendEmail.taskName, 'send-email');
      assert.equal(sendEmail.name, 'send-email');
    });
  }

  it('refuses, at add(), arguments that would not reach a worker unchanged as JSON, with or without a transport', async () => {
    const circular: Record<string, unknown> = { id: 1 };
    circular['self'] = circular;
    class Item {
      id = 1;
    }
    const refused: [args: unknown[], message: string][] = [
      [[new Date(0)], 'a Date at args[0]'],
      [['ok', { when: new Date(0) }], 'a Date at args[1].when'],
      [[[1, undefined]], 'undefined at args[0][1]'],
      [[{ id: 1n }], 'a bigint at args[0].id'],
      [[NaN], 'NaN at args[0]'],
      [[{ total: Infinity }], 'Infinity at args[0].total'],
      [[new Map()], 'a Map at args[0]'],
      [[new Item()], 'an Item at args[0]'],
      [[circular], 'a circular reference at args[0].self'],
      [[() => {}], 'a function at args[0]'],
      [[{ 'content-type': Symbol('json') }], 'a symbol at args[0]["content-type"]'],
      [[{ [Symbol('key')]: 1 }], 'a symbol key at args[0]'],
      [[undefined], 'undefined at args[0]'],
      [['2026-11-24'.match(/(\d+)-(\d+)/)], 'an array with named properties at args[0]'],
      [[[1, , 3]], 'a hole at args[0][1]'], // eslint-disable-line no-sparse-arrays
      [[new (class Items extends Array {})()], 'an Items at args[0]'],
      [[{ get total() { return 1; } }], 'a getter at args[0].total'],
      [[Object.defineProperty({ id: 1 }, 'toJSON', { value: () => 'other' })], 'a non-enumerable property at args[0].toJSON'],
      [[new Uint8Array(2)], 'a Uint8Array at args[0]'],
      [[{ items: [{ id: 1 }, [2, , 4]] }], 'a hole at args[0].items[1][1]'], // eslint-disable-line no-sparse-arrays
      [[Object.assign([1], { [Symbol('tag')]: true })], 'a symbol key at args[0]'],
      [[{ list: [circular] }], 'a circular reference at args[0].list[0].self'],
    ];
    const shared = { id: 7 };
    const readOnce = Object.defineProperty([0], 0, { get: () => 1, enumerable: true }); // items are read as JSON.stringify reads them
    const accepted: unknown[][] = [[], [null, true, 0, -1.5, '', -0], [{ a: shared, b: [shared] }], [Object.assign(Object.create(null) as object, { x: 1 })], [readOnce]];
    const store = defineTask('store', (..._values: unknown[]) => {});

    for (const transport of [undefined, recordingTransport()]) {
      const tasks = backgroundTasks({ transport });
      const app = express();
      app.use(tasks);
      app.post('/', (_req, res) => {
        const outcomes = [...refused.map(([args]) => args), ...accepted].map((args) => {
          try {
            res.locals.tasks.add(store, ...args);
            return 'queued';
          } catch (error) {
            return `${(error as Error).name}: ${(error as Error).message}`;
          }
        });
        res.json({ outcomes, size: res.locals.tasks.size });
      });
      await withServer(app, async ({ url }) => {
        const { outcomes, size } = (await (await fetch(url, { method: 'POST' })).json()) as { outcomes: string[]; size: number };
        assert.deepEqual(outcomes, [
          ...refused.map(([, where]) => `TypeError: Expected the arguments of task \`store\` to be JSON values, got ${where}`),
          ...accepted.map(() => 'queued'),
        ]);
        assert.equal(size, accepted.length, 'only the accepted tasks were queued');
        if (transport !== undefined) {
          await transport.sentTimes(1);
          transport.settle();
        }
        await tasks.drain();
      });
    }
  });

  it('refuses arguments nested more than 1,000 levels deep with a TypeError, however deep, and sends 1,000 levels intact', async () => {
    const nest = (levels: number): unknown => {
      let value: unknown = 'leaf';
      for (let level = 0; level < levels; level++) value = level % 2 === 0 ? [value] : { next: value };
      return value;
    };
    const store = defineTask('store', (..._values: unknown[]) => {});
    const transport = recordingTransport();
    const tasks = backgroundTasks({ transport });
    const app = express();
    app.use(tasks);
    app.post('/', (_req, res) => {
      const outcomes = [1_000, 1_001, 100_000].map((levels) => {
        try {
          res.locals.tasks.add(store, 'id', nest(levels));
          return 'queued';
        } catch (error) {
          return `${(error as Error).name}: ${(error as Error).message}`;
        }
      });
      res.json(outcomes);
    });
    await withServer(app, async ({ url }) => {
      const tooDeep = 'TypeError: Expected the arguments of task `store` to be JSON values, got more than 1000 levels of nesting in args[1]';
      assert.deepEqual(await (await fetch(url, { method: 'POST' })).json(), ['queued', tooDeep, tooDeep]);
      await transport.sentTimes(1);
      transport.settle();
      await tasks.drain();
    });
    assert.equal(JSON.stringify(transport.sent[0]?.[0]?.args), JSON.stringify(['id', nest(1_000)]));
  });

  for (const withTransport of [false, true]) {
    it(`captures the arguments at add(): ${withTransport ? 'the transport is sent' : 'the task runs with'} what was checked, whatever the caller changes afterwards`, async () => {
      const received: unknown[][] = [];
      const store = defineTask('store', (...values: unknown[]) => void received.push(values));
      const transport = recordingTransport();
      const tasks = backgroundTasks({ transport: withTransport ? transport : undefined });
      const order: Record<string, unknown> & { items: number[]; shipping: { city: string } } = { id: 'o-1', items: [1, 2, 3], shipping: { city: 'Oslo' } };
      const parsed: unknown = JSON.parse('{"__proto__": {"admin": true}}');
      const app = express();
      app.use(tasks);
      app.post('/', (_req, res) => {
        res.locals.tasks.add(store, order, -0, parsed);
        order.items.push(4);
        order.shipping.city = 'Bergen';
        order['when'] = new Date(0);
        res.end();
      });
      await withServer(app, async ({ url }) => {
        await fetch(url, { method: 'POST' });
        if (withTransport) {
          await transport.sentTimes(1);
          transport.settle();
        }
        await tasks.drain();
      });
      const args = withTransport ? transport.sent[0]?.[0]?.args : received[0];
      assert.ok(args !== undefined);
      assert.deepEqual(args, [{ id: 'o-1', items: [1, 2, 3], shipping: { city: 'Oslo' } }, 0, parsed]);
      assert.notEqual(args[0], order, 'a copy, not the caller\'s object');
      assert.ok(Object.is(args[1], 0), '-0 arrives as 0, as through JSON');
      assert.ok(Object.hasOwn(args[2] as object, '__proto__'), 'an own "__proto__" key stays a key');
      assert.equal(Object.getPrototypeOf(args[2]), Object.prototype, 'and does not become the prototype');
    });
  }
});

describe('the `transport` option', () => {
  for (const [label, createApp] of expressVersions) {
    it(`${label}: sends a response's defined tasks once it has been flushed, in one call, in order, before its plain functions run here; drain() waits for the transport`, async () => {
      const events: string[] = [];
      const recording = recordingTransport();
      const transport: typeof recording = {
        ...recording,
        send(tasks) {
          events.push(`sent ${tasks.length}`);
          return recording.send(tasks);
        },
      };
      const resize = defineTask('resize', (_id: string, _width: number) => {});
      const index = defineTask('index', (_id: string) => {});
      const tasks = backgroundTasks({ transport });
      const app = createApp();
      app.use(tasks);
      app.post('/:id', (req, res) => {
        const id = String(req.params.id);
        res.on('finish', () => events.push(`flushed ${id}; sent so far: ${transport.sent.length}`));
        res.locals.tasks.add(resize, id, 640).add(() => void events.push(`plain ${id}`)).add(index, id);
        res.json({ id });
      });
      await withServer(app, async ({ url }) => {
        await fetch(`${url}/a`, { method: 'POST' });
        await fetch(`${url}/b`, { method: 'POST' });
        let drained = false;
        const draining = tasks.drain().then(() => (drained = true));
        await recording.sentTimes(2);
        assert.equal(tasks.pending, 4, 'handed-off tasks count until the transport acknowledges');
        assert.equal(drained, false);
        recording.settle();
        await draining;
      });
      assert.deepEqual(recording.sent, [
        [{ name: 'resize', args: ['a', 640] }, { name: 'index', args: ['a'] }],
        [{ name: 'resize', args: ['b', 640] }, { name: 'index', args: ['b'] }],
      ]);
      assert.deepEqual(events, ['flushed a; sent so far: 0', 'sent 2', 'plain a', 'flushed b; sent so far: 1', 'sent 2', 'plain b']);
      assert.equal(tasks.pending, 0);
    });
  }

  it('sends defined tasks added after the flush in a call of their own', async () => {
    const transport = recordingTransport();
    const audit = defineTask('audit', (_step: number) => {});
    const tasks = backgroundTasks({ transport });
    const app = express();
    app.use(tasks);
    app.post('/', (_req, res) => {
      res.locals.tasks.add(audit, 1).add(() => {
        res.locals.tasks.add(audit, 2).add(audit, 3);
      });
      res.end();
    });
    await withServer(app, async ({ url }) => {
      await fetch(url, { method: 'POST' });
      await transport.sentTimes(2);
      transport.settle();
      await tasks.drain();
    });
    assert.deepEqual(transport.sent, [[{ name: 'audit', args: [1] }], [{ name: 'audit', args: [2] }, { name: 'audit', args: [3] }]]);
  });

  it("with runOn: 'success', a failed response's defined tasks are not sent", async () => {
    const transport = recordingTransport();
    const charge = defineTask('charge', (_cents: number) => {});
    const tasks = backgroundTasks({ transport, runOn: 'success' });
    const app = express();
    app.use(tasks);
    app.post('/:status', (req, res) => {
      res.locals.tasks.add(charge, 100);
      res.status(Number(req.params.status)).end();
    });
    await withServer(app, async ({ url }) => {
      await fetch(`${url}/500`, { method: 'POST' });
      await fetch(`${url}/200`, { method: 'POST' });
      await transport.sentTimes(1);
      transport.settle();
      await tasks.drain();
    });
    assert.deepEqual(transport.sent, [[{ name: 'charge', args: [100] }]]);
  });

  const failingTransports: [label: string, transport: TaskTransport][] = [
    ['throws', { send: () => { throw new Error('no route to Redis'); } }],
    ['rejects', { send: () => Promise.reject(new Error('no route to Redis')) }],
  ];
  for (const [label, transport] of failingTransports) {
    for (const fallback of ['none', 'in-process'] as const) {
      it(`a transport that ${label}: each task is reported as a HandOffError${fallback === 'in-process' ? ', then runs here' : ''} (fallback: '${fallback}')`, async () => {
        const ran: string[] = [];
        const reported: [error: unknown, name: string][] = [];
        const notify = defineTask('notify', (who: string) => void ran.push(who));
        const options: BackgroundTasksOptions = { transport, fallback, onError: (error, { name }) => reported.push([error, name]) };
        const tasks = backgroundTasks(options);
        const app = express();
        app.use(tasks);
        app.post('/', (_req, res) => {
          res.locals.tasks.add(notify, 'ada').add(notify, 'grace');
          res.end();
        });
        await withServer(app, async ({ url }) => {
          assert.equal((await fetch(url, { method: 'POST' })).status, 200);
          await tasks.drain();
        });
        const suffix = fallback === 'in-process' ? ', so it runs in this process' : '';
        assert.deepEqual(reported.map(([error, name]) => [(error as Error).message, name]), [
          [`Task notify could not be handed off${suffix}: no route to Redis`, 'notify'],
          [`Task notify could not be handed off${suffix}: no route to Redis`, 'notify'],
        ]);
        for (const [error] of reported) {
          assert.ok(error instanceof HandOffError);
          assert.equal((error.cause as Error).message, 'no route to Redis');
        }
        assert.deepEqual(ran, fallback === 'in-process' ? ['ada', 'grace'] : []);
        assert.equal(tasks.pending, 0);
      });
    }
  }

  it('a transport that fails with a hostile value: each task is still reported as a HandOffError, and nothing stays pending', { timeout: 20_000 }, async () => {
    const hostileSends: (() => unknown)[] = [
      () => Promise.reject(errorWithUnreadableMessage()),
      () => Promise.reject(revokedProxy()),
      () => {
        throw revokedProxy();
      },
      () => Object.defineProperty(Promise.resolve(), 'constructor', {
        get(): never {
          throw new Error('constructor');
        },
      }),
      () => ({
        then() {
          throw new Error('then');
        },
      }),
      revokedProxy,
    ];
    for (const send of hostileSends) {
      const watch = watchProcessFaults();
      const reported: unknown[] = [];
      const notify = defineTask('notify', () => {});
      const tasks = backgroundTasks({ transport: { send } as TaskTransport, onError: (error) => reported.push(error) });
      const app = express();
      app.use(tasks);
      app.post('/', (_req, res) => {
        res.locals.tasks.add(notify).add(notify);
        res.end();
      });
      await withServer(app, async ({ url }) => {
        assert.equal((await fetch(url, { method: 'POST' })).status, 200);
        await tasks.drain();
      });
      watch.stop();
      assert.deepEqual(watch.faults, [], `no unhandled rejection or uncaught exception from ${send}`);
      assert.equal(reported.length, 2, String(send));
      for (const error of reported) {
        assert.ok(error instanceof HandOffError);
        assert.match(error.message, /^Task notify could not be handed off: /);
      }
      assert.equal(tasks.pending, 0);
    }
  });

  it('defined tasks count toward maxPending until the transport has stored them', async () => {
    const transport = recordingTransport();
    const audit = defineTask('audit', (_step: number) => {});
    const tasks = backgroundTasks({ transport, maxPending: 2 });
    const app = express();
    app.use(tasks);
    app.post('/', (_req, res) => {
      try {
        res.locals.tasks.add(audit, 1).add(audit, 2);
        res.status(202).end();
      } catch (error) {
        res.status(503).send((error as Error).name);
      }
    });
    await withServer(app, async ({ url }) => {
      assert.equal((await fetch(url, { method: 'POST' })).status, 202);
      await transport.sentTimes(1);
      const refused = await fetch(url, { method: 'POST' });
      assert.deepEqual([refused.status, await refused.text()], [503, 'QueueFullError']);
      transport.settle();
      await tasks.drain();
      assert.equal((await fetch(url, { method: 'POST' })).status, 202, 'accepted again once stored');
      await transport.sentTimes(2);
      transport.settle();
      await tasks.drain();
    });
  });

  it("a failed hand-off's report and its fallback run keep the AsyncLocalStorage context of add()", async () => {
    const requestId = new AsyncLocalStorage<string>();
    const seen: string[] = [];
    const notify = defineTask('notify', () => void seen.push(`task in ${requestId.getStore()}`));
    const tasks = backgroundTasks({
      transport: { send: () => Promise.reject(new Error('down')) },
      fallback: 'in-process',
      onError: () => void seen.push(`report in ${requestId.getStore()}`),
    });
    const app = express();
    app.use(tasks);
    app.post('/:id', (req, res) => {
      requestId.run(String(req.params.id), () => res.locals.tasks.add(notify));
      res.end();
    });
    await withServer(app, async ({ url }) => {
      await Promise.all([fetch(`${url}/a`, { method: 'POST' }), fetch(`${url}/b`, { method: 'POST' })]);
      await tasks.drain();
    });
    assert.deepEqual(seen.sort(), ['report in a', 'report in b', 'task in a', 'task in b']);
  });
});

// defineTask() and the `transport` option, with no Redis: a transport that records what it is sent
// is a user of the public TaskTransport interface like bullmqTransport().
import assert from 'node:assert/strict';
import { AsyncLocalStorage } from 'node:async_hooks';
import { once } from 'node:events';
import net, { type Socket } from 'node:net';
import { describe, it } from 'node:test';
import express from 'express';
import fc from 'fast-check';
import {
  backgroundTasks,
  defineTask,
  HandOffError,
  type BackgroundTasksOptions,
  type HandedOffTask,
  type TaskInfo,
  type TaskStaging,
  type TaskTransport,
} from '../lib/index.js';
import { captureJsonArgs } from '../lib/definition.js';
import { errorWithUnreadableMessage, revokedProxy } from './support/hostile.js';
import { captureJsonArgsAsBefore } from './support/json-args-before.js';
import { abortedRequest, deferred, delay, endLaterWithStatus, expressVersions, rawRequest, watchProcessFaults, withServer } from './support/http.js';

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

// The worked example of docs/transports.md#example-an-outbox-table, as it is printed there.
/** Where the outbox rows live: a table with columns id, tasks (JSON) and run_after. */
interface Outbox {
  insert(tasks: readonly HandedOffTask[], runAfter: Date): Promise<string>; // resolves to the row's id
  runNow(id: string): Promise<void>;
  delete(id: string): Promise<void>;
}

const LEASE_MS = 30_000;

function outboxTransport(outbox: Outbox): TaskTransport {
  return {
    send: (tasks) => outbox.insert(tasks, new Date()),
    staging: {
      timeout: 2_000,
      stage: (tasks) => outbox.insert(tasks, new Date(Date.now() + LEASE_MS)), // the row's id is the receipt
      release: (id) => outbox.runNow(id as string),
      discard: (id) => outbox.delete(id as string),
    },
  };
}
// End of the example.

/**
 * The docs' outbox table, in memory. Each insert waits for `gate` (open by default), so that a spec
 * can hold the staging; `calls` records every call in order.
 */
function memoryOutbox({ gated = false } = {}): Outbox & {
  rows: Map<string, { tasks: HandedOffTask[]; runAfter: number }>;
  calls: string[];
  gate: Promise<void>;
  /** With `gated`, lets the inserts through: until then they wait. */
  store(): void;
  inserted(count: number): Promise<void>;
} {
  const rows = new Map<string, { tasks: HandedOffTask[]; runAfter: number }>();
  const calls: string[] = [];
  const waiting: [count: number, resolve: () => void][] = [];
  const storing = deferred();
  if (!gated) storing.resolve();
  let inserts = 0;
  let nextId = 1;
  return {
    rows,
    calls,
    gate: storing.promise,
    store: () => storing.resolve(),
    async insert(tasks, runAfter) {
      calls.push(`insert ${tasks.map((task) => task.name).join(',')}${runAfter.getTime() > Date.now() ? ' staged' : ''}`);
      inserts++;
      for (const [count, resolve] of waiting) if (inserts === count) resolve();
      await this.gate;
      const id = String(nextId++);
      rows.set(id, { tasks: [...tasks], runAfter: runAfter.getTime() });
      return id;
    },
    async runNow(id) {
      calls.push(`runNow ${id}`);
      const row = rows.get(id);
      if (row !== undefined) row.runAfter = Date.now();
    },
    async delete(id) {
      calls.push(`delete ${id}`);
      rows.delete(id);
    },
    inserted(count) {
      if (inserts >= count) return Promise.resolve();
      const { promise, resolve } = deferred();
      waiting.push([count, resolve]);
      return promise;
    },
  };
}

/** Whether `promise` is still pending after `ms`. */
async function stillPending(promise: Promise<unknown>, ms = 50): Promise<boolean> {
  let settled = false;
  void promise.then(() => (settled = true), () => (settled = true));
  await delay(ms);
  return !settled;
}

/** The first argument of each task, joined by `,`: what a spec's transport records of a call. */
function firstArgs(tasks: readonly HandedOffTask[]): string {
  return tasks.map((task) => String(task.args[0])).join(',');
}

/** Resolves once `socket` has received data matching `pattern`, with everything received so far. */
function received(socket: Socket, pattern: RegExp): Promise<string> {
  return new Promise((resolve, reject) => {
    let text = '';
    const onData = (chunk: Buffer): void => {
      text += chunk.toString();
      if (!pattern.test(text)) return;
      socket.off('data', onData).off('close', onClose);
      resolve(text);
    };
    const onClose = (): void => reject(new Error(`closed before ${pattern}; received:\n${text}`));
    socket.on('data', onData).once('close', onClose);
  });
}

describe('a transport with `staging`', () => {
  const resize = defineTask('resize', (_id: string, _width: number) => {});
  const index = defineTask('index', (_id: string) => {});

  for (const [label, createApp] of expressVersions) {
    it(`${label}: stages a response's defined tasks before its end reaches the client, and releases them once it has been flushed`, async () => {
      const outbox = memoryOutbox({ gated: true });
      const ran: string[] = [];
      const tasks = backgroundTasks({ transport: outboxTransport(outbox) });
      const app = createApp();
      app.use(tasks);
      app.post('/:id', (req, res) => {
        const id = String(req.params.id);
        res.on('finish', () => outbox.calls.push('response flushed'));
        res.locals.tasks.add(resize, id, 640).add(() => void ran.push(`plain ${id}`)).add(index, id);
        res.status(201).json({ id });
      });
      await withServer(app, async ({ url }) => {
        const response = fetch(`${url}/a`, { method: 'POST' });
        await outbox.inserted(1);
        assert.equal(await stillPending(response), true, 'no response while the tasks are not stored');
        assert.equal(tasks.pending, 3);
        outbox.store();
        assert.equal((await response).status, 201);
        await tasks.drain();
      });
      assert.deepEqual(outbox.calls, ['insert resize,index staged', 'response flushed', 'runNow 1']);
      assert.deepEqual([...outbox.rows.values()].map((row) => row.tasks), [[{ name: 'resize', args: ['a', 640] }, { name: 'index', args: ['a'] }]]);
      assert.ok((outbox.rows.get('1')?.runAfter ?? Infinity) <= Date.now(), 'released: due now');
      assert.deepEqual(ran, ['plain a']);
    });
  }

  it('sends defined tasks added after the end once the response has been flushed, in a call of their own', async () => {
    const outbox = memoryOutbox();
    const tasks = backgroundTasks({ transport: outboxTransport(outbox) });
    const app = express();
    app.use(tasks);
    app.post('/', (_req, res) => {
      res.locals.tasks.add(index, 'before');
      res.end();
      res.locals.tasks.add(index, 'after the end');
    });
    await withServer(app, async ({ url }) => {
      await fetch(url, { method: 'POST' });
      await tasks.drain();
    });
    assert.deepEqual(outbox.calls, ['insert index staged', 'runNow 1', 'insert index']);
    assert.deepEqual([...outbox.rows.values()].map((row) => row.tasks[0]?.args[0]), ['before', 'after the end']);
  });

  it("with runOn: 'success', a failed response stages nothing, nor does one whose status a wrapper of res.end sets to a failure (the staging starts after it)", async () => {
    const outbox = memoryOutbox();
    const tasks = backgroundTasks({ transport: outboxTransport(outbox), runOn: 'success' });
    const app = express();
    app.use(tasks);
    app.post('/fails', (_req, res) => {
      res.locals.tasks.add(index, 'fails');
      res.status(500).end();
    });
    app.post('/fails-later', (_req, res, next) => {
      // Another wrapper of res.end, such as a session store's, that sets the status once it has saved.
      endLaterWithStatus(res, 503, 20);
      next();
    }, (_req, res) => {
      res.locals.tasks.add(index, 'fails later');
      res.end('saved?');
    });
    await withServer(app, async ({ url }) => {
      assert.equal((await fetch(`${url}/fails`, { method: 'POST' })).status, 500);
      assert.equal((await fetch(`${url}/fails-later`, { method: 'POST' })).status, 503);
      await tasks.drain();
    });
    assert.deepEqual(outbox.calls, []);
    assert.equal(outbox.rows.size, 0);
  });

  for (const stagingFailure of ['abort', 'respond'] as const) {
    for (const fallback of ['none', 'in-process'] as const) {
      it(`when staging fails, stagingFailure: '${stagingFailure}' ${stagingFailure === 'abort' ? 'destroys the response' : 'sends the response'}; each task is a HandOffError (fallback: '${fallback}')`, async () => {
        const ran: string[] = [];
        const reported: unknown[] = [];
        const notify = defineTask('notify', (who: string) => void ran.push(who));
        const transport: TaskTransport = {
          send: () => Promise.resolve(),
          staging: { timeout: 1000, stage: () => Promise.reject(new Error('outbox full')), release: () => Promise.resolve(), discard: () => Promise.resolve() },
        };
        const tasks = backgroundTasks({ transport, stagingFailure, fallback, onError: (error) => reported.push(error) });
        const app = express();
        app.use(tasks);
        app.post('/', (_req, res) => {
          res.locals.tasks.add(notify, 'ada').add(notify, 'grace');
          res.status(201).json({ paid: true });
        });
        await withServer(app, async ({ url }) => {
          const outcome = await fetch(url, { method: 'POST' }).then((response) => response.status, (error: Error) => error.name);
          assert.equal(outcome, stagingFailure === 'abort' ? 'TypeError' : 201, 'fetch fails when the connection is destroyed');
          await tasks.drain();
        });
        const consequence = stagingFailure === 'abort'
          ? `, so its response was aborted${fallback === 'in-process' ? ' and it runs in this process' : ''}`
          : fallback === 'in-process' ? ', so it runs in this process' : '';
        assert.deepEqual(reported.map((error) => (error as Error).message), Array(2).fill(`Task notify could not be handed off${consequence}: outbox full`));
        for (const error of reported) assert.ok(error instanceof HandOffError);
        assert.deepEqual(ran, fallback === 'in-process' ? ['ada', 'grace'] : []);
        assert.equal(tasks.pending, 0);
      });
    }
  }

  it('a stage that does not settle within staging.timeout lets the response go at the timeout, and what it stores later is discarded', async () => {
    const calls: string[] = [];
    const reported: unknown[] = [];
    const stored = deferred<string>();
    const transport: TaskTransport = {
      send: () => Promise.resolve(),
      staging: {
        timeout: 100,
        stage: () => stored.promise,
        release: (receipt) => Promise.resolve(void calls.push(`release ${String(receipt)}`)),
        discard: (receipt) => Promise.resolve(void calls.push(`discard ${String(receipt)}`)),
      },
    };
    const tasks = backgroundTasks({ transport, stagingFailure: 'respond', onError: (error) => reported.push(error) });
    const app = express();
    app.use(tasks);
    app.post('/', (_req, res) => {
      res.locals.tasks.add(index, 'slow');
      res.end('ok');
    });
    await withServer(app, async ({ url }) => {
      const startedAt = performance.now();
      assert.equal(await (await fetch(url, { method: 'POST' })).text(), 'ok');
      const waited = performance.now() - startedAt;
      assert.ok(waited >= 90 && waited < 1000, `the response waited ${waited.toFixed(0)} ms`);
      assert.deepEqual(reported.map((error) => (error as Error).message), ['Task index could not be handed off: the transport did not stage it within 100 ms']);
      stored.resolve('row-7');
      await tasks.drain();
      await delay(10);
    });
    assert.deepEqual(calls, ['discard row-7']);
  });

  it('the held end behaves as Node\'s: res.end() returns res, headers count as sent, callbacks and finish come in the same order; writableEnded waits for the end to go through', async () => {
    /** What the handler sees of its own response, with and without staging. */
    const observe = async (transport: TaskTransport | undefined): Promise<unknown[]> => {
      const seen: unknown[] = [];
      const tasks = backgroundTasks({ transport });
      const app = express();
      app.use(tasks);
      app.post('/', (_req, res) => {
        res.locals.tasks.add(index, 'x');
        res.on('finish', () => seen.push('finish'));
        const returned = res.status(202).json({ ok: true }) as unknown;
        seen.push(returned === res, res.headersSent, res.writableEnded);
        try {
          res.json({ twice: true });
        } catch (error) {
          seen.push((error as { code?: string }).code);
        }
        res.end(() => seen.push('end callback'));
      });
      await withServer(app, async ({ url }) => {
        assert.deepEqual(await (await fetch(url, { method: 'POST' })).json(), { ok: true });
        await tasks.drain();
      });
      return seen;
    };
    const outbox = memoryOutbox({ gated: true });
    setTimeout(() => outbox.store(), 50);
    const staged = await observe(outboxTransport(outbox));
    const plain = await observe(undefined);
    assert.deepEqual(plain.slice(0, 4), [true, true, true, 'ERR_HTTP_HEADERS_SENT']);
    // Held, the end has not gone through: so Node does not count the response finished (idle) yet.
    assert.deepEqual(staged, [true, true, false, ...plain.slice(3)]);
    assert.ok(staged.includes('finish'));
  });

  it('chunks written before end() wait with it for the staging: the client gets no byte before', async () => {
    const outbox = memoryOutbox({ gated: true });
    const tasks = backgroundTasks({ transport: outboxTransport(outbox) });
    const app = express();
    app.use(tasks);
    app.get('/stream', (_req, res) => {
      res.locals.tasks.add(index, 'streamed');
      res.write('first chunk;');
      res.end('last chunk');
    });
    await withServer(app, async ({ port }) => {
      const socket = await rawRequest(port, '/stream');
      await outbox.inserted(1);
      assert.equal(await stillPending(received(socket, /HTTP/)), true);
      outbox.store();
      assert.match(await received(socket, /0\r\n\r\n$/), /last chunk/);
      socket.destroy();
      await tasks.drain();
    });
    assert.deepEqual(outbox.calls, ['insert index staged', 'runNow 1']);
  });

  it('holds each of two pipelined responses until its own tasks are stored', async () => {
    const outbox = memoryOutbox();
    const gates = [deferred(), deferred()];
    let insert = 0;
    const gatedInsert = outbox.insert.bind(outbox);
    outbox.insert = (tasks, runAfter) => {
      outbox.gate = (gates[insert++] as { promise: Promise<void> }).promise;
      return gatedInsert(tasks, runAfter);
    };
    const tasks = backgroundTasks({ transport: outboxTransport(outbox) });
    const app = express();
    app.use(tasks);
    app.get('/:id', (req, res) => {
      res.locals.tasks.add(index, String(req.params.id));
      res.send(`response ${req.params.id}`);
    });
    await withServer(app, async ({ port }) => {
      const socket = net.connect(port, '127.0.0.1');
      await once(socket, 'connect');
      socket.write('GET /1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\nGET /2 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n');
      await outbox.inserted(2);
      const first = received(socket, /response 1/);
      assert.equal(await stillPending(first), true);
      gates[0]?.resolve();
      assert.doesNotMatch(await first, /response 2/);
      const second = received(socket, /response 2/);
      assert.equal(await stillPending(second), true, 'the second waits for its own staging');
      gates[1]?.resolve();
      await second;
      socket.destroy();
      await tasks.drain();
    });
    assert.deepEqual(outbox.calls.filter((call) => call.startsWith('runNow')).sort(), ['runNow 1', 'runNow 2']);
  });

  it('a client that disconnects while its response is held: the tasks are still released, and nothing leaks or throws', async () => {
    const watch = watchProcessFaults();
    const outbox = memoryOutbox({ gated: true });
    const tasks = backgroundTasks({ transport: outboxTransport(outbox) });
    const app = express();
    app.use(tasks);
    app.get('/', (_req, res) => {
      res.locals.tasks.add(index, 'orphan');
      res.send('never read');
    });
    await withServer(app, async ({ port }) => {
      const socket = await rawRequest(port, '/');
      await outbox.inserted(1);
      socket.resetAndDestroy();
      await delay(20);
      outbox.store();
      await tasks.drain();
    });
    watch.stop();
    assert.deepEqual(watch.faults, []);
    assert.deepEqual(outbox.calls, ['insert index staged', 'runNow 1']);
    assert.equal(tasks.pending, 0);
  });

  it('a client that resets while its response is held: tasks added after the end are sent only once the staged ones are released, in add() order', async () => {
    const outbox = memoryOutbox({ gated: true });
    const clientLeft = deferred();
    const tasks = backgroundTasks({ transport: outboxTransport(outbox) });
    const app = express();
    app.use(tasks);
    app.get('/', async (_req, res) => {
      res.on('close', () => clientLeft.resolve());
      res.locals.tasks.add(index, 'before the end');
      res.send('never read');
      res.locals.tasks.add(index, 'after the end');
      await clientLeft.promise;
      res.locals.tasks.add(index, 'after the client left');
    });
    await withServer(app, async ({ port }) => {
      const socket = await rawRequest(port, '/');
      await outbox.inserted(1);
      socket.resetAndDestroy();
      await clientLeft.promise;
      outbox.store();
      await tasks.drain();
    });
    assert.deepEqual(outbox.calls, ['insert index staged', 'runNow 1', 'insert index,index']);
    assert.deepEqual([...outbox.rows.values()].map((row) => row.tasks.map((task) => task.args[0])), [['before the end'], ['after the end', 'after the client left']]);
  });

  it("a staging that fails after its client reset: with fallback: 'in-process', the tasks added after the end are sent after it failed, and run here after the staged ones when their send fails too", async () => {
    const calls: string[] = [];
    const ran: string[] = [];
    const reported: unknown[] = [];
    const notify = defineTask('notify', (who: string) => void ran.push(who));
    const staging = deferred();
    const refuse = deferred();
    const transport: TaskTransport = {
      send(handed) {
        calls.push(`send ${firstArgs(handed)}`);
        return Promise.reject(new Error('outbox down'));
      },
      staging: {
        timeout: 2_000,
        stage(handed) {
          calls.push(`stage ${firstArgs(handed)}`);
          staging.resolve();
          return refuse.promise.then(() => {
            calls.push('stage failed');
            throw new Error('outbox down');
          });
        },
        release: () => Promise.resolve(),
        discard: () => Promise.resolve(),
      },
    };
    const clientLeft = deferred();
    const tasks = backgroundTasks({ transport, stagingFailure: 'respond', fallback: 'in-process', onError: (error) => reported.push(error) });
    const app = express();
    app.use(tasks);
    app.get('/', (_req, res) => {
      res.on('close', () => clientLeft.resolve());
      res.locals.tasks.add(notify, 'before the end');
      res.send('never read');
      res.locals.tasks.add(notify, 'after the end');
    });
    await withServer(app, async ({ port }) => {
      const socket = await rawRequest(port, '/');
      await staging.promise;
      socket.resetAndDestroy();
      await clientLeft.promise;
      refuse.resolve();
      await tasks.drain();
    });
    assert.deepEqual(calls, ['stage before the end', 'stage failed', 'send after the end']);
    assert.deepEqual(ran, ['before the end', 'after the end']);
    assert.deepEqual(reported.map((error) => (error as Error).message), Array(2).fill('Task notify could not be handed off, so it runs in this process: outbox down'));
    assert.equal(tasks.pending, 0);
  });

  it('tasks added after the end while the staging is in progress are sent once the response has been flushed and the release has settled', async () => {
    const calls: string[] = [];
    const storing = deferred();
    const releasing = deferred();
    const acknowledge = deferred();
    const transport: TaskTransport = {
      send(handed) {
        calls.push(`send ${firstArgs(handed)}`);
        return Promise.resolve();
      },
      staging: {
        timeout: 2_000,
        stage(handed) {
          calls.push(`stage ${firstArgs(handed)}`);
          return storing.promise.then(() => 'row-1');
        },
        release(receipt) {
          calls.push(`release ${String(receipt)}`);
          releasing.resolve();
          return acknowledge.promise.then(() => void calls.push('released'));
        },
        discard: () => Promise.resolve(),
      },
    };
    const addedWhileStaging = deferred();
    const tasks = backgroundTasks({ transport });
    const app = express();
    app.use(tasks);
    app.post('/', async (_req, res) => {
      res.on('finish', () => calls.push('response flushed'));
      res.locals.tasks.add(index, 'before the end');
      res.end('ok');
      res.locals.tasks.add(index, 'after the end');
      await Promise.resolve();
      res.locals.tasks.add(index, 'while staging');
      addedWhileStaging.resolve();
    });
    await withServer(app, async ({ url }) => {
      const response = fetch(url, { method: 'POST' });
      await addedWhileStaging.promise;
      storing.resolve();
      assert.equal(await (await response).text(), 'ok');
      await releasing.promise;
      acknowledge.resolve();
      await tasks.drain();
    });
    assert.deepEqual(calls, ['stage before the end', 'response flushed', 'release row-1', 'released', 'send after the end,while staging']);
  });

  it('a client that left before the end: its tasks are sent once it has gone, and those added later are sent too, not staged', async () => {
    const outbox = memoryOutbox();
    const handlerEntered = deferred();
    const proceed = deferred();
    const tasks = backgroundTasks({ transport: outboxTransport(outbox) });
    const app = express();
    app.use(tasks);
    app.get('/', async (_req, res) => {
      res.locals.tasks.add(index, 'before');
      handlerEntered.resolve();
      await proceed.promise;
      res.locals.tasks.add(index, 'after the client left');
      res.end('nobody reads this');
    });
    await withServer(app, async ({ port }) => {
      await abortedRequest(port, '/', handlerEntered.promise);
      await outbox.inserted(1);
      proceed.resolve();
      await outbox.inserted(2);
      await tasks.drain();
    });
    assert.deepEqual(outbox.calls, ['insert index', 'insert index']);
    assert.deepEqual([...outbox.rows.values()].map((row) => row.tasks[0]?.args[0]), ['before', 'after the client left']);
  });

  it('reads `staging.timeout` once, when the middleware is created', async () => {
    let reads = 0;
    const outbox = memoryOutbox();
    const { staging, send } = outboxTransport(outbox) as TaskTransport & { staging: TaskStaging };
    const tasks = backgroundTasks({
      transport: {
        send,
        staging: {
          ...staging,
          get timeout(): number {
            if (reads++ > 0) throw new Error('read again');
            return 1000;
          },
        },
      },
    });
    const app = express();
    app.use(tasks);
    app.post('/', (_req, res) => {
      res.locals.tasks.add(index, 'x');
      res.end('ok');
    });
    await withServer(app, async ({ url }) => {
      assert.equal(await (await fetch(url, { method: 'POST' })).text(), 'ok');
      await tasks.drain();
    });
    assert.equal(reads, 1);
    assert.deepEqual(outbox.calls, ['insert index staged', 'runNow 1']);
  });

  it('a two-phase transport that fails with hostile values: each task is a HandOffError, the response goes, and nothing stays pending', { timeout: 20_000 }, async () => {
    const hostile: (() => unknown)[] = [
      () => Promise.reject(errorWithUnreadableMessage()),
      () => Promise.reject(revokedProxy()),
      () => {
        throw revokedProxy();
      },
      () => ({
        then() {
          throw new Error('then');
        },
      }),
      revokedProxy,
    ];
    const fine = (): Promise<void> => Promise.resolve();
    const cases: [label: string, staging: TaskTransport['staging'], reports: number][] = [
      ...hostile.map((stage): [string, TaskTransport['staging'], number] => [`stage ${stage}`, { timeout: 1000, stage: stage as () => PromiseLike<unknown>, release: fine, discard: fine }, 1]),
      ...hostile.map((release): [string, TaskTransport['staging'], number] => [
        `release ${release}`,
        { timeout: 1000, stage: () => Promise.resolve('receipt'), release: release as () => PromiseLike<unknown>, discard: fine },
        0,
      ]),
    ];
    for (const [label, staging, reports] of cases) {
      const watch = watchProcessFaults();
      const reported: unknown[] = [];
      const tasks = backgroundTasks({ transport: { send: fine, staging }, stagingFailure: 'respond', onError: (error) => reported.push(error) });
      const app = express();
      app.use(tasks);
      app.post('/', (_req, res) => {
        res.locals.tasks.add(index, 'x');
        res.end('done');
      });
      await withServer(app, async ({ url }) => {
        assert.equal(await (await fetch(url, { method: 'POST' })).text(), 'done', label);
        await tasks.drain();
      });
      watch.stop();
      assert.deepEqual(watch.faults, [], `no unhandled rejection or uncaught exception from ${label}`);
      assert.equal(reported.length, reports, label);
      for (const error of reported) assert.ok(error instanceof HandOffError, label);
      assert.equal(tasks.pending, 0, label);
    }
  });
});

describe('the JSON check and copy of defined-task arguments (fast-check)', () => {
  /** Turns an array into one of the shapes JSON cannot carry as it is, or that a check reads twice. */
  const reshapeArray = (items: unknown[], how: string): unknown[] => {
    const array = [...items];
    switch (how) {
      case 'hole':
        if (array.length === 0) array.length = 1;
        else Reflect.deleteProperty(array, array.length >> 1);
        return array;
      case 'named property':
        return Object.assign(array, { index: 0 });
      case 'non-enumerable item':
        return array.length === 0 ? array : Object.defineProperty(array, 0, { value: array[0], enumerable: false });
      case 'non-enumerable item and a named property':
        return array.length === 0 ? array : Object.assign(Object.defineProperty(array, 0, { value: array[0], enumerable: false }), { index: 0 });
      case 'non-enumerable named property':
        return Object.defineProperty(array, 'index', { value: 0, enumerable: false });
      case 'item getter':
        return array.length === 0 ? array : Object.defineProperty(array, 0, { get: () => 'read', enumerable: true });
      case 'symbol key':
        return Object.assign(array, { [Symbol('tag')]: true });
      default:
        return Object.setPrototypeOf(array, class Items extends Array {}.prototype) as unknown[];
    }
  };
  /** Turns an object into one of the shapes JSON cannot carry as it is. */
  const reshapeObject = (entries: Record<string, unknown>, how: string): object => {
    const object = { ...entries };
    switch (how) {
      case 'getter':
        return Object.defineProperty(object, 'total', { get: () => 1, enumerable: true });
      case 'setter':
        return Object.defineProperty(object, 'total', { set: () => {}, enumerable: true });
      case 'non-enumerable property':
        return Object.defineProperty(object, 'hidden', { value: 1, enumerable: false });
      case 'symbol key':
        return Object.assign(object, { [Symbol('key')]: 1 });
      case 'null prototype':
        return Object.assign(Object.create(null) as object, object);
      default:
        return Object.assign(new Date(0), object);
    }
  };
  const circular: Record<string, unknown> = { id: 1 };
  circular['self'] = { parent: circular };
  const notJson = fc.constantFrom<unknown>(undefined, NaN, Infinity, -Infinity, 1n, Symbol('json'), () => {}, new Date(0), new Map(), new Uint8Array(2), circular, '2026-11-24'.match(/(\d+)-(\d+)/));
  const { value } = fc.letrec<{ value: unknown; array: unknown[]; object: Record<string, unknown> }>((tie) => ({
    value: fc.oneof(
      { depthSize: 'small', withCrossShrink: true },
      fc.oneof(fc.string(), fc.boolean(), fc.constant(null), fc.integer(), fc.double(), fc.constant(-0)),
      tie('array'),
      tie('object'),
      fc.tuple(tie('array'), fc.constantFrom('hole', 'named property', 'non-enumerable item', 'non-enumerable item and a named property', 'non-enumerable named property', 'item getter', 'symbol key', 'subclass')).map(([items, how]) => reshapeArray(items, how)),
      fc.tuple(tie('object'), fc.constantFrom('getter', 'setter', 'non-enumerable property', 'symbol key', 'null prototype', 'Date')).map(([entries, how]) => reshapeObject(entries, how)),
      notJson,
    ),
    array: fc.array(tie('value'), { maxLength: 5 }),
    object: fc.dictionary(fc.oneof(fc.string(), fc.constantFrom('__proto__', 'constructor', 'toJSON', '0', 'content-type')), tie('value'), { maxKeys: 5 }),
  }));
  /** What a check made of `args`: the copy as JSON, or the error's name and message. */
  const outcome = (capture: (name: string, args: readonly unknown[]) => unknown[], args: unknown[]): string => {
    try {
      const copy = capture('store', args);
      return `copied ${JSON.stringify(copy)}, keys ${JSON.stringify(copy, (_key, item: unknown) => (item !== null && typeof item === 'object' && !Array.isArray(item) ? Object.getOwnPropertyNames(item) : item))}`;
    } catch (error) {
      return `${(error as Error).name}: ${(error as Error).message}`;
    }
  };

  it('accepts, copies and refuses exactly as the first implementation did, with the same messages', () => {
    fc.assert(
      fc.property(fc.array(value, { maxLength: 4 }), (args) => {
        assert.equal(outcome(captureJsonArgs, args), outcome(captureJsonArgsAsBefore, args));
      }),
      { numRuns: 2_000 },
    );
  });

  it('accepts and refuses large arrays as the first implementation did', () => {
    const large = (): unknown[] => Array.from({ length: 10_000 }, (_, index) => (index % 3 === 0 ? { id: index } : index));
    const cases: unknown[][] = [
      [large()],
      [Object.assign(large(), { index: 0 })],
      [Object.defineProperty(large(), 5, { value: 5, enumerable: false })],
      [Object.assign(Object.defineProperty(large(), 5, { value: 5, enumerable: false }), { index: 0 })],
      [Object.defineProperty(large(), 'index', { value: 0, enumerable: false })],
      [new Proxy(Object.assign(large(), { index: 0 }), {})],
      [new Proxy(large(), { ownKeys: (target) => [...Reflect.ownKeys(target), 'index'], getOwnPropertyDescriptor: (target, key) => (key === 'index' ? { value: 0, enumerable: true, configurable: true } : Reflect.getOwnPropertyDescriptor(target, key)) })],
    ];
    for (const args of cases) assert.equal(outcome(captureJsonArgs, args), outcome(captureJsonArgsAsBefore, args));
  });
});

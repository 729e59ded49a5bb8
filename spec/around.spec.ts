import assert from 'node:assert/strict';
import { AsyncLocalStorage } from 'node:async_hooks';
import { describe, it } from 'node:test';
import { backgroundTasks, type TaskInfo, withSignal } from '../lib/index.js';
import { expressVersions, watchProcessFaults, withServer } from './support/http.js';

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

describe('an around that calls run() late or twice', () => {
  const [, createApp] = expressVersions[0] as (typeof expressVersions)[number];

  /** Serves GET / adding `task`, and waits for the response and for `tasks` to drain (or close). */
  async function serve(tasks: ReturnType<typeof backgroundTasks>, task: () => unknown, settle: () => Promise<unknown>): Promise<void> {
    const app = createApp();
    app.use(tasks);
    app.get('/', (_req, res) => {
      res.locals.tasks.add(task);
      res.send('ok');
    });
    await withServer(app, async ({ url }) => {
      await (await fetch(url)).text();
      await settle();
    });
  }

  for (const [given, giveUp] of [
    ['its timeout', { timeout: 30 }],
    ['the close() deadline', { close: 30 }],
  ] as const) {
    it(`does not start the task when run() comes after ${given} was reported, and run() returns without throwing`, { timeout: 10_000 }, async () => {
      const faults = watchProcessFaults();
      const reported: string[] = [];
      const started: string[] = [];
      let lateRun!: (returned: unknown) => void;
      const lateRunReturned = new Promise<unknown>((resolve) => (lateRun = resolve));
      const tasks = backgroundTasks({
        ...('timeout' in giveUp && { timeout: giveUp.timeout }),
        onError: (error) => reported.push((error as Error).name),
        around: (_info, run) => new Promise((resolve) => {
          // The task is given up on first: run() comes once its failure has been reported.
          const later = setInterval(() => {
            if (reported.length === 0) return;
            clearInterval(later);
            let returned: unknown = 'threw';
            try {
              returned = run();
            } finally {
              lateRun(returned);
              resolve(returned);
            }
          }, 5);
        }),
      });
      try {
        await serve(tasks, withSignal(function hangs(signal) {
          started.push(`started, signal ${signal.aborted ? 'aborted' : 'live'}`);
        }), () => ('close' in giveUp ? tasks.close({ timeout: giveUp.close }) : tasks.drain()));
        assert.equal(await lateRunReturned, undefined);
        assert.deepEqual(started, [], 'the task never started');
        assert.deepEqual(reported, ['timeout' in giveUp ? 'TimeoutError' : 'ShutdownError']);
        assert.deepEqual(faults.faults, []);
      } finally {
        faults.stop();
      }
    });
  }

  it('fails the task once, with nothing uncaught, when run() is called a second time from a timer', async () => {
    const faults = watchProcessFaults();
    const reported: string[] = [];
    let ran = 0;
    let secondCall!: (returned: unknown) => void;
    const secondCallReturned = new Promise<unknown>((resolve) => (secondCall = resolve));
    const tasks = backgroundTasks({
      onError: (error) => reported.push(`${(error as Error).name}: ${(error as Error).message}`),
      around: (_info, run) => {
        const first = run();
        return new Promise((resolve) => setTimeout(() => {
          let returned: unknown = 'threw';
          try {
            returned = run();
          } finally {
            secondCall(returned); // a throw goes on, uncaught, as from any timer
            resolve(first);
          }
        }, 10));
      },
    });
    try {
      await serve(tasks, function twice() {
        ran++;
      }, () => tasks.drain());
      assert.equal(await secondCallReturned, undefined);
      assert.equal(ran, 1, 'the task ran once');
      assert.deepEqual(reported, ['TypeError: around called run() a second time for task twice: each task runs once']);
      assert.deepEqual(faults.faults, []);
    } finally {
      faults.stop();
    }
  });

  it('leaves a task that settled alone when run() is called again afterwards, with nothing uncaught', async () => {
    const faults = watchProcessFaults();
    const reported: unknown[] = [];
    let ran = 0;
    let secondCall!: (returned: unknown) => void;
    const secondCallReturned = new Promise<unknown>((resolve) => (secondCall = resolve));
    const tasks = backgroundTasks({
      onError: (error) => reported.push(error),
      around: (_info, run) => {
        setTimeout(() => {
          let returned: unknown = 'threw';
          try {
            returned = run();
          } finally {
            secondCall(returned); // a throw goes on, uncaught, as from any timer
          }
        }, 10);
        return run();
      },
    });
    try {
      await serve(tasks, function once() {
        ran++;
      }, () => tasks.drain());
      assert.equal(await secondCallReturned, undefined);
      assert.equal(ran, 1);
      assert.deepEqual(reported, []);
      assert.deepEqual(faults.faults, []);
    } finally {
      faults.stop();
    }
  });
});

describe('an async around handed a hostile promise by run()', () => {
  it("reports the rejection of a promise whose own then is shadowed, which an async around's return would not adopt, and nothing is unhandled", async () => {
    const [, createApp] = expressVersions[0] as (typeof expressVersions)[number];
    const faults = watchProcessFaults();
    const reported: string[] = [];
    const tasks = backgroundTasks({
      onError: (error) => reported.push((error as Error).message),
      around: async (_info, run) => {
        await new Promise(setImmediate);
        return run(); // an async function resolves with what it returns: a value whose then is not callable is not adopted
      },
    });
    const app = createApp();
    app.use(tasks);
    app.get('/', (_req, res) => {
      res.locals.tasks.add(function rejectsLater() {
        return Object.assign(new Promise((_resolve, reject) => setTimeout(reject, 5, new Error('late'))), { then: undefined });
      });
      res.send('ok');
    });
    try {
      await withServer(app, async ({ url }) => {
        await (await fetch(url)).text();
        await tasks.drain();
      });
      assert.deepEqual(reported, ['late']);
      assert.deepEqual(faults.faults, []);
    } finally {
      faults.stop();
    }
  });
});

import assert from 'node:assert/strict';
import { AsyncLocalStorage } from 'node:async_hooks';
import { describe, it } from 'node:test';
import type { ErrorRequestHandler } from 'express';
import { backgroundTasks, type TaskInfo } from '../lib/index.js';
import { type HostileOutcome, hostileOutcomes } from './support/hostile.js';
import { captureStderr, deferred, expressVersions, trackResponses, failOnProcessFaults, withServer } from './support/http.js';

for (const [label, createApp] of expressVersions) {
  describe(`${label}: a failing task`, () => {
    failOnProcessFaults();

    it('reports a sync throw and an async rejection to onError, and runs the tasks behind them', async () => {
      const reported: { error: unknown; name: string; url: string }[] = [];
      const onError = (error: unknown, { name, req }: TaskInfo): void => {
        reported.push({ error, name, url: req.originalUrl });
      };
      const tasks = backgroundTasks({ onError });
      const ran: string[] = [];
      const thrown = new Error('sync failure');
      const rejected = new Error('async failure');
      const app = createApp();
      app.use(tasks);
      app.get('/fail', (_req, res) => {
        res.locals.tasks
          .add(function throwsNow() {
            throw thrown;
          })
          .add(() => ran.push('after the throw'))
          .add(async function rejectsLater() {
            throw rejected;
          })
          .add(() => ran.push('after the rejection'))
          .add(() => Promise.reject('a plain string'));
        res.send('ok');
      });
      await withServer(app, async (server) => {
        await (await fetch(`${server.url}/fail?x=1`)).text();
        await tasks.drain();
        assert.deepEqual(ran, ['after the throw', 'after the rejection']);
        assert.deepEqual(reported, [
          { error: thrown, name: 'throwsNow', url: '/fail?x=1' },
          { error: rejected, name: 'rejectsLater', url: '/fail?x=1' },
          { error: 'a plain string', name: 'anonymous', url: '/fail?x=1' },
        ]);
      });
    });

    it('writes the task name and the stack to stderr by default, and the server keeps serving', async () => {
      const tasks = backgroundTasks();
      const app = createApp();
      app.use(tasks);
      app.get('/', (_req, res) => {
        res.locals.tasks.add(async function sendInvoice() {
          throw new Error('smtp down');
        });
        res.send('ok');
      });
      await withServer(app, async (server) => {
        const stderr = await captureStderr(async () => {
          await (await fetch(server.url)).text();
          await tasks.drain();
        });
        assert.match(stderr, /task sendInvoice failed: Error: smtp down\n\s+at sendInvoice/);
        const again = await fetch(server.url);
        assert.equal(again.status, 200);
        await again.text();
        await tasks.drain();
      });
    });

    it('survives thrown values that cannot be turned into text, and runs every task behind them', async () => {
      const tasks = backgroundTasks();
      const ran: string[] = [];
      const unprintable = {
        toString() {
          throw new Error('no text for you');
        },
      };
      const app = createApp();
      app.use(tasks);
      app.get('/', (_req, res) => {
        res.locals.tasks
          .add(function throwsBareObject() {
            throw Object.create(null);
          })
          .add(() => ran.push('after the sync throw'))
          .add(async function rejectsUnprintable() {
            throw unprintable;
          })
          .add(() => ran.push('after the rejection'));
        res.send('ok');
      });
      await withServer(app, async (server) => {
        const stderr = await captureStderr(async () => {
          await (await fetch(server.url)).text();
          await tasks.drain();
        });
        assert.deepEqual(ran, ['after the sync throw', 'after the rejection']);
        assert.match(stderr, /task throwsBareObject failed/);
        assert.match(stderr, /task rejectsUnprintable failed/);
        assert.equal(tasks.pending, 0);
      });
    });

    it("calls onError in the failed task's own AsyncLocalStorage context, also with concurrency: 1", async () => {
      const requestContext = new AsyncLocalStorage<string>();
      const seen: string[] = [];
      const bothAnswered = deferred();
      const tasks = backgroundTasks({
        concurrency: 1,
        onError: (_error, { req }) => seen.push(`${req.path} sees ${requestContext.getStore()}`),
      });
      const app = createApp();
      const responses = trackResponses(app);
      app.use((req, _res, next) => requestContext.run(req.path, next));
      app.use(tasks);
      app.get('/:name', (_req, res) => {
        res.locals.tasks
          .add(async () => {
            await bothAnswered.promise;
          })
          .add(function failsNow() {
            throw new Error('sync');
          })
          .add(async function failsLater() {
            throw new Error('async');
          });
        res.send('ok');
      });
      await withServer(app, async (server) => {
        await Promise.all(['/a', '/b'].map(async (path) => (await fetch(server.url + path)).text()));
        // The second queue waits for the slot, and will start from the first queue's settling.
        assert.equal(await responses.closed(), 2);
        bothAnswered.resolve();
        await tasks.drain();
        assert.deepEqual(seen.sort(), ['/a sees /a', '/a sees /a', '/b sees /b', '/b sees /b']);
      });
    });

    const brokenSinks: [label: string, verb: string, message: string, onError: () => unknown][] = [
      ['throws', 'threw', 'the logger is broken', () => {
        throw new Error('the logger is broken');
      }],
      ['rejects (an async onError)', 'rejected', 'log sink down', async () => {
        throw new Error('log sink down');
      }],
      ['returns a thenable whose then getter throws', 'threw', 'hostile then', () => ({
        get then(): never {
          throw new Error('hostile then');
        },
      })],
    ];
    for (const [sinkLabel, verb, message, onError] of brokenSinks) {
      it(`contains an onError that ${sinkLabel}, reports it on stderr, and runs the next task`, async () => {
        const tasks = backgroundTasks({ onError });
        const ran: string[] = [];
        const app = createApp();
        app.use(tasks);
        app.get('/', (_req, res) => {
          res.locals.tasks
            .add(function failing() {
              throw new Error('task failure');
            })
            .add(async function failingLater() {
              throw new Error('async task failure');
            })
            .add(() => ran.push('next'));
          res.send('ok');
        });
        await withServer(app, async (server) => {
          const stderr = await captureStderr(async () => {
            await (await fetch(server.url)).text();
            await tasks.drain();
            await onErrorSettled();
          });
          assert.deepEqual(ran, ['next']);
          assert.match(stderr, new RegExp(`onError ${verb} while reporting task failing: Error: ${message}`));
          assert.match(stderr, new RegExp(`onError ${verb} while reporting task failingLater: Error: ${message}`));
          assert.match(stderr, /the task's own error: Error: async task failure/);
        });
      });
    }

    it('contains whatever a task returns or rejects with, however hostile, and keeps the one slot of concurrency: 1 turning', { timeout: 20_000 }, async () => {
      const outcomes = hostileOutcomes();
      const reported: string[] = [];
      const tasks = backgroundTasks({ concurrency: 1, onError: (_error, { name }) => reported.push(name) });
      const ran: string[] = [];
      const app = createApp();
      app.use(tasks);
      app.get('/hostile', (_req, res) => {
        for (const { name, task } of outcomes) {
          res.locals.tasks.add(Object.defineProperty(() => task(), 'name', { value: name })).add(() => ran.push(`after ${name}`));
        }
        res.send('ok');
      });
      app.get('/next', (_req, res) => {
        res.locals.tasks.add(() => ran.push('next response'));
        res.send('ok');
      });
      await withServer(app, async (server) => {
        await (await fetch(`${server.url}/hostile`)).text();
        await tasks.drain();
        await (await fetch(`${server.url}/next`)).text();
        await tasks.drain();
      });
      assert.deepEqual(ran, [...outcomes.map(({ name }) => `after ${name}`), 'next response']);
      assert.deepEqual(reported, outcomes.filter(({ fails }) => fails).map(({ name }) => name));
      assert.equal(tasks.pending, 0);
    });

    it('keeps no timeout timer, nor a slot, for a task whose promise fails as soon as it is awaited (a throwing constructor getter)', async () => {
      const [{ task: promiseWithThrowingConstructor }] = hostileOutcomes().filter(({ name }) => name === 'promiseWithThrowingConstructor') as [HostileOutcome];
      const reported: string[] = [];
      const tasks = backgroundTasks({ timeout: 60_000, concurrency: 1, onError: (_error, { name }) => reported.push(name) });
      const ran: string[] = [];
      const app = createApp();
      app.use(tasks);
      app.get('/', (_req, res) => {
        res.locals.tasks.add(function settlesAtOnce() {
          return promiseWithThrowingConstructor();
        }).add(() => ran.push('behind it'));
        res.send('ok');
      });
      const timersBefore = process.getActiveResourcesInfo().filter((kind) => kind === 'Timeout').length;
      await withServer(app, async (server) => {
        await (await fetch(server.url)).text();
        await tasks.drain();
        assert.deepEqual(await tasks.close({ timeout: 1_000 }), { drained: true, settled: 0, abandoned: 0, pending: 0 });
      });
      assert.deepEqual(reported, ['settlesAtOnce']);
      assert.deepEqual(ran, ['behind it']);
      const timersAfter = process.getActiveResourcesInfo().filter((kind) => kind === 'Timeout').length;
      assert.ok(timersAfter <= timersBefore, `no timer keeps the process alive (${timersAfter} timers, ${timersBefore} before)`);
    });

    for (const setup of ['plain', 'around', 'timeout'] as const) {
      it(`reports a failing task although reading the request's id throws, and keeps the slot of concurrency: 1 turning (${setup})`, { timeout: 10_000 }, async () => {
        const reported: [name: string, requestId: string | undefined][] = [];
        const tasks = backgroundTasks({
          concurrency: 1,
          onError: (_error, info) => reported.push([info.name, info.requestId]),
          ...(setup === 'around' ? { around: (_info: unknown, run: () => unknown) => run() } : {}),
          ...(setup === 'timeout' ? { timeout: 20 } : {}),
        });
        const ran: string[] = [];
        const app = createApp();
        app.use((req, _res, next) => {
          Object.defineProperty(req, 'id', {
            get(): never {
              throw new Error('id getter exploded');
            },
          });
          next();
        });
        app.use(tasks);
        app.get('/:n', (req, res) => {
          res.locals.tasks
            .add(setup === 'timeout' ? function hangs() {
              return new Promise(() => {});
            } : function fails() {
              throw new Error('task failure');
            })
            .add(() => ran.push(String(req.params['n'])));
          res.send('ok');
        });
        await withServer(app, async (server) => {
          await (await fetch(`${server.url}/1`)).text();
          await tasks.drain();
          await (await fetch(`${server.url}/2`)).text();
          await tasks.drain();
        });
        const name = setup === 'timeout' ? 'hangs' : 'fails';
        assert.deepEqual(reported, [[name, undefined], [name, undefined]]);
        assert.deepEqual(ran, ['1', '2']);
      });
    }

    it('still runs the tasks of a response that ended in an error (next(err))', async () => {
      const reportedByExpress: unknown[] = [];
      const tasks = backgroundTasks();
      const ran: string[] = [];
      const app = createApp();
      app.use(tasks);
      app.get('/', (_req, res, next) => {
        res.locals.tasks.add(() => ran.push('audit log'));
        next(new Error('handler failed'));
      });
      const handleError: ErrorRequestHandler = (error, _req, res, _next) => {
        reportedByExpress.push(error);
        res.status(500).send('failed');
      };
      app.use(handleError);
      await withServer(app, async (server) => {
        const response = await fetch(server.url);
        assert.equal(response.status, 500);
        await response.text();
        await tasks.drain();
        assert.deepEqual(ran, ['audit log']);
        assert.equal(reportedByExpress.length, 1);
      });
    });
  });
}

/** Lets the promise jobs of a rejected `onError` run, so their stderr report is captured. */
function onErrorSettled(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

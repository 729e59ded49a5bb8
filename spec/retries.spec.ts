import assert from 'node:assert/strict';
import diagnostics from 'node:diagnostics_channel';
import { afterEach, describe, it, mock } from 'node:test';
import { format } from 'node:util';
import createDebug from 'debug';
import express from 'express';
import {
  backgroundTasks,
  defineTask,
  type HandedOffTask,
  PermanentError,
  QueueFullError,
  ShutdownError,
  type TaskInfo,
  type TaskTraceContext,
  TimeoutError,
  withSignal,
} from '../lib/index.js';
import { deferred, expressVersions, failOnProcessFaults, withServer } from './support/http.js';

/** A task that fails `failures` times, then succeeds; `runs` counts its calls. */
function flaky(failures: number): { task: () => Promise<void>; runs: number } {
  const state = {
    runs: 0,
    async task(): Promise<void> {
      state.runs++;
      if (state.runs <= failures) throw new Error(`failure ${state.runs}`);
    },
  };
  return state;
}

/** The timers of this process now, by kind, to prove none was left behind. */
function timersNow(): number {
  return process.getActiveResourcesInfo().filter((kind) => kind === 'Timeout').length;
}

for (const [label, createApp] of expressVersions) {
  describe(`${label}: retries`, () => {
    failOnProcessFaults();

    it('runs a task that fails twice three times with attempts: 3, and never calls onError', async () => {
      const reported: unknown[] = [];
      const tasks = backgroundTasks({ retry: { attempts: 3, backoff: { type: 'fixed', delay: 5 } }, onError: (error) => reported.push(error) });
      const sendEmail = flaky(2);
      const app = createApp();
      app.use(tasks);
      app.get('/', (_req, res) => {
        res.locals.tasks.add(sendEmail.task);
        res.send('ok');
      });
      await withServer(app, async ({ url }) => {
        assert.equal(await (await fetch(url)).text(), 'ok');
        await tasks.drain();
      });
      assert.equal(sendEmail.runs, 3);
      assert.deepEqual(reported, []);
      assert.equal(tasks.pending, 0);
    });

    it('calls onError once, with attempt: 2 and the last error, when attempts: 2 are not enough', async () => {
      const reported: [unknown, TaskInfo][] = [];
      const tasks = backgroundTasks({ retry: { attempts: 2 }, onError: (error, info) => reported.push([error, info]) });
      let runs = 0;
      const app = createApp();
      app.use(tasks);
      app.get('/', (_req, res) => {
        // A synchronous throw is retried as a rejection is.
        res.locals.tasks.add(function chargeCard() {
          throw new Error(`declined ${++runs}`);
        });
        res.send('ok');
      });
      await withServer(app, async ({ url }) => {
        await (await fetch(url)).text();
        await tasks.drain();
      });
      assert.equal(runs, 2);
      assert.equal(reported.length, 1);
      const [[error, info]] = reported as [[Error, TaskInfo]];
      assert.equal(error.message, 'declined 2');
      assert.equal(info.attempt, 2);
      assert.equal(info.name, 'chargeCard');
    });

    it('stops at once on a PermanentError, and reports it with attempt: 1', async () => {
      const reported: [unknown, TaskInfo][] = [];
      const tasks = backgroundTasks({ retry: { attempts: 5 }, onError: (error, info) => reported.push([error, info]) });
      let runs = 0;
      const gone = new PermanentError('order 7 no longer exists');
      const app = createApp();
      app.use(tasks);
      app.get('/', (_req, res) => {
        res.locals.tasks.add(async () => {
          runs++;
          throw gone;
        });
        res.send('ok');
      });
      await withServer(app, async ({ url }) => {
        await (await fetch(url)).text();
        await tasks.drain();
      });
      assert.equal(runs, 1);
      assert.deepEqual(reported.map(([error, info]) => [error, info.attempt]), [[gone, 1]]);
    });

    it("uses a defined task's own retry over the middleware's, and { attempts: 1 } turns retries off", async () => {
      const runs = { ownRetry: 0, noRetry: 0, plain: 0 };
      const reported: string[] = [];
      const tasks = backgroundTasks({ retry: { attempts: 2 }, onError: (_error, info) => reported.push(`${info.name} ${info.attempt}`) });
      const ownRetry = defineTask('ownRetry', async () => {
        if (++runs.ownRetry < 4) throw new Error('not yet');
      }, { retry: { attempts: 4 } });
      const noRetry = defineTask('noRetry', () => {
        runs.noRetry++;
        throw new Error('once');
      }, { retry: { attempts: 1 } });
      const app = createApp();
      app.use(tasks);
      app.get('/', (_req, res) => {
        res.locals.tasks.add(ownRetry).add(noRetry).add(function plain() {
          runs.plain++;
          throw new Error('twice');
        });
        res.send('ok');
      });
      await withServer(app, async ({ url }) => {
        await (await fetch(url)).text();
        await tasks.drain();
      });
      assert.deepEqual(runs, { ownRetry: 4, noRetry: 1, plain: 2 });
      assert.deepEqual(reported, ['noRetry 1', 'plain 2']);
    });

    it("starts a response's later tasks only once the retried task has finally settled", async () => {
      const order: string[] = [];
      const tasks = backgroundTasks({ retry: { attempts: 3, backoff: { type: 'fixed', delay: 10 } }, onError() {} });
      let attempts = 0;
      const app = createApp();
      app.use(tasks);
      app.get('/', (_req, res) => {
        res.locals.tasks
          .add(async function reserveStock() {
            order.push(`reserveStock ${++attempts}`);
            if (attempts < 3) throw new Error('busy');
          })
          .add(() => order.push('sendConfirmation'));
        res.send('ok');
      });
      await withServer(app, async ({ url }) => {
        await (await fetch(url)).text();
        await tasks.drain();
      });
      assert.deepEqual(order, ['reserveStock 1', 'reserveStock 2', 'reserveStock 3', 'sendConfirmation']);
    });

    it('holds no concurrency slot while waiting to retry: another response runs meanwhile, and the wait counts in pending', async () => {
      const order: string[] = [];
      const firstAttempt = deferred();
      const failFirst = deferred();
      const tasks = backgroundTasks({ concurrency: 1, retry: { attempts: 2, backoff: { type: 'fixed', delay: 100 } } });
      let attempts = 0;
      let pendingSeen = -1;
      const app = createApp();
      app.use(tasks);
      app.get('/first', (_req, res) => {
        res.locals.tasks.add(async () => {
          order.push(`first, attempt ${++attempts}`);
          if (attempts === 1) {
            firstAttempt.resolve();
            await failFirst.promise;
            throw new Error('try again');
          }
        });
        res.send('ok');
      });
      app.get('/second', (_req, res) => {
        res.locals.tasks.add(() => {
          order.push('second');
          pendingSeen = tasks.pending;
        });
        res.send('ok');
      });
      await withServer(app, async ({ url }) => {
        await (await fetch(`${url}/first`)).text();
        await firstAttempt.promise;
        await (await fetch(`${url}/second`)).text(); // its task waits for the one slot
        failFirst.resolve();
        await tasks.drain();
      });
      assert.deepEqual(order, ['first, attempt 1', 'second', 'first, attempt 2']);
      assert.equal(pendingSeen, 2, 'the task waiting to retry still counts');
    });

    it('counts a task waiting to retry against maxPending, and drain() waits for its last attempt', async () => {
      const failed = deferred();
      const tasks = backgroundTasks({ maxPending: 1, retry: { attempts: 2, backoff: { type: 'fixed', delay: 50 } } });
      let runs = 0;
      const app = createApp();
      app.use(tasks);
      app.get('/retried', (_req, res) => {
        res.locals.tasks.add(() => {
          if (++runs === 1) {
            failed.resolve();
            throw new Error('again');
          }
        });
        res.send('ok');
      });
      app.get('/more', (_req, res) => {
        try {
          res.locals.tasks.add(() => {});
          res.send('queued');
        } catch (error) {
          res.status(503).send(error instanceof QueueFullError ? 'full' : 'other');
        }
      });
      await withServer(app, async ({ url }) => {
        await (await fetch(`${url}/retried`)).text();
        await failed.promise;
        assert.equal(await (await fetch(`${url}/more`)).text(), 'full');
        assert.equal(tasks.pending, 1);
        await tasks.drain();
        assert.equal(runs, 2);
        assert.equal(tasks.pending, 0);
      });
    });

    it('applies timeout and the signal to each attempt', async () => {
      const reasons: unknown[] = [];
      const reported: unknown[] = [];
      const tasks = backgroundTasks({ timeout: 30, retry: { attempts: 2 }, onError: (error) => reported.push(error) });
      const callWebhook = withSignal((signal: AbortSignal) => {
        if (reasons.length > 0) return Promise.resolve(signal.aborted);
        return new Promise<void>((resolve) => {
          signal.addEventListener('abort', () => {
            reasons.push(signal.reason);
            resolve();
          });
        });
      });
      const app = createApp();
      app.use(tasks);
      app.get('/', (_req, res) => {
        res.locals.tasks.add(callWebhook);
        res.send('ok');
      });
      await withServer(app, async ({ url }) => {
        await (await fetch(url)).text();
        await tasks.drain();
      });
      assert.equal(reasons.length, 1);
      assert.ok(reasons[0] instanceof TimeoutError, 'the first attempt timed out');
      assert.deepEqual(reported, [], 'the second, with a fresh signal, succeeded');
    });

    it('gives each attempt to around and the tracing channel, with its number', async () => {
      const seen: string[] = [];
      const channel = diagnostics.tracingChannel<unknown, TaskTraceContext>('express-background-tasks:task');
      const subscribers = {
        start: (context: TaskTraceContext) => seen.push(`start ${context.attempt}`),
        end() {},
        asyncStart() {},
        asyncEnd() {},
        error: (context: TaskTraceContext) => seen.push(`error ${context.attempt}`),
      };
      const tasks = backgroundTasks({
        retry: { attempts: 3 },
        around: (info, run) => {
          seen.push(`around ${info.attempt}`);
          return run();
        },
      });
      const task = flaky(2);
      const app = createApp();
      app.use(tasks);
      app.get('/', (_req, res) => {
        res.locals.tasks.add(task.task);
        res.send('ok');
      });
      channel.subscribe(subscribers);
      try {
        await withServer(app, async ({ url }) => {
          await (await fetch(url)).text();
          await tasks.drain();
        });
      } finally {
        channel.unsubscribe(subscribers);
      }
      assert.deepEqual(seen, ['start 1', 'around 1', 'error 1', 'start 2', 'around 2', 'error 2', 'start 3', 'around 3']);
    });

    it('traces each retry with DEBUG', async () => {
      const lines: string[] = [];
      const log = createDebug.log;
      const enabled = createDebug.disable();
      createDebug.enable('express-background-tasks');
      createDebug.log = (...args: unknown[]) => lines.push(format(...args));
      try {
        const tasks = backgroundTasks({ retry: { attempts: 3 }, onError() {} });
        const app = createApp();
        app.use(tasks);
        app.get('/', (_req, res) => {
          res.locals.tasks.add(async function syncCrm() {
            throw new Error('503');
          });
          res.send('ok');
        });
        await withServer(app, async ({ url }) => {
          await (await fetch(url)).text();
          await tasks.drain();
        });
      } finally {
        createDebug.log = log;
        createDebug.disable();
        if (enabled !== '') createDebug.enable(enabled);
      }
      const expected = [
        /started syncCrm \(GET \/ → 200\), after \d+\.\dms in the queue/,
        /failed syncCrm, attempt 1 of 3, retrying in 0 ms: Error: 503/,
        /started syncCrm .*, attempt 2 of 3/,
        /failed syncCrm, attempt 2 of 3, retrying in 0 ms/,
        /started syncCrm .*, attempt 3 of 3/,
        /failed syncCrm \(GET \/ → 200\) at attempt 3: Error: 503/,
      ];
      let next = 0;
      for (const line of lines) if (next < expected.length && expected[next]?.test(line.split('\n')[0] as string)) next++;
      assert.equal(next, expected.length, `missing ${expected[next]} in:\n${lines.join('\n')}`);
    });

    it('waits within the jitter bounds of an exponential backoff (real timers)', async () => {
      const startedAt: number[] = [];
      const tasks = backgroundTasks({ retry: { attempts: 3, backoff: { type: 'exponential', delay: 40 } }, onError() {} });
      const app = createApp();
      app.use(tasks);
      app.get('/', (_req, res) => {
        res.locals.tasks.add(async () => {
          startedAt.push(performance.now());
          throw new Error('down');
        });
        res.send('ok');
      });
      await withServer(app, async ({ url }) => {
        await (await fetch(url)).text();
        await tasks.drain();
      });
      const [first, second, third] = startedAt as [number, number, number];
      // 20 to 40 ms, then 40 to 80 ms; a timer may fire up to 1 ms early by the performance clock.
      assert.ok(second - first >= 19, `first wait ${second - first} ms`);
      assert.ok(third - second >= 39, `second wait ${third - second} ms`);
    });

    it("sends a defined task's retry with it to a transport, and retries it here when fallback: 'in-process' runs it here; runOn: 'success' drops it as before", async () => {
      const sent: HandedOffTask[][] = [];
      const reported: string[] = [];
      let runs = 0;
      const notify = defineTask('notify', () => {
        if (++runs === 1) throw new Error('once');
      }, { retry: { attempts: 2 } });
      const tasks = backgroundTasks({
        transport: { send: (handedOff) => (sent.push([...handedOff]), Promise.reject(new Error('queue down'))) },
        fallback: 'in-process',
        runOn: 'success',
        onError: (error) => reported.push((error as Error).name),
      });
      const app = createApp();
      app.use(tasks);
      app.get('/:status', (req, res) => {
        res.locals.tasks.add(notify);
        res.sendStatus(Number(req.params['status']));
      });
      await withServer(app, async ({ url }) => {
        await (await fetch(`${url}/500`)).text();
        await (await fetch(`${url}/200`)).text();
        await tasks.drain();
      });
      assert.deepEqual(sent, [[{ name: 'notify', args: [], retry: { attempts: 2, backoff: { type: 'fixed', delay: 0 } } }]], 'the failed response sent nothing');
      assert.deepEqual(reported, ['HandOffError'], 'the run here failed once, then succeeded');
      assert.equal(runs, 2);
    });

    it('abandons a task waiting for its next attempt at the close() deadline, as a ShutdownError saying how many attempts ran', async () => {
      const reported: [unknown, TaskInfo][] = [];
      const tasks = backgroundTasks({ retry: { attempts: 3, backoff: { type: 'fixed', delay: 60_000 } }, onError: (error, info) => reported.push([error, info]) });
      const failed = deferred();
      let runs = 0;
      const app = createApp();
      app.use(tasks);
      app.get('/', (_req, res) => {
        res.locals.tasks
          .add(function notifyPartner() {
            runs++;
            failed.resolve();
            throw new Error('partner down');
          })
          .add(function behindIt() {});
        res.send('ok');
      });
      const timersBefore = timersNow();
      await withServer(app, async ({ url }) => {
        await (await fetch(url)).text();
        await failed.promise;
        const closing = Date.now();
        const summary = await tasks.close({ timeout: 100 });
        assert.ok(Date.now() - closing < 2_000, 'within the deadline, not the backoff');
        assert.deepEqual(summary, { drained: false, settled: 0, abandoned: 2, pending: 0 });
      });
      assert.equal(runs, 1);
      const [[error, info], [behind]] = reported as [[Error, TaskInfo], [Error]];
      assert.ok(error instanceof ShutdownError);
      assert.match(error.message, /notifyPartner was abandoned at shutdown: waiting for its next attempt 100 ms after close\(\), after 1 of 3 attempts had failed/);
      assert.equal(info.attempt, 1);
      assert.ok(behind instanceof ShutdownError);
      assert.equal(tasks.pending, 0);
      assert.ok(timersNow() <= timersBefore, 'no retry timer is left to keep the process alive');
    });
  });
}

describe('retry backoff arithmetic (fake timers)', () => {
  afterEach(() => {
    mock.timers.reset();
    mock.restoreAll();
  });

  it('waits delay × 2^(n − 1) before the n-th retry, jittered between half of it and all of it', async () => {
    const attemptStarted: number[] = [];
    const hold = deferred();
    const tasks = backgroundTasks({ retry: { attempts: 4, backoff: { type: 'exponential', delay: 1_000 } }, onError() {} });
    const app = express();
    app.use(tasks);
    app.get('/', (_req, res) => {
      res.locals.tasks.add(async () => {
        attemptStarted.push(attemptStarted.length + 1);
        if (attemptStarted.length === 1) await hold.promise;
        throw new Error('down');
      });
      res.send('ok');
    });
    await withServer(app, async ({ url }) => {
      await (await fetch(url)).text();
      // The HTTP exchange is over: from here on setTimeout() is fake, and Math.random() chosen.
      mock.timers.enable({ apis: ['setTimeout'] });
      const randoms = [0, 0.999_999_9, 0.5];
      mock.method(Math, 'random', () => randoms.shift());
      const turn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));
      const waitsFor = async (ms: number, attempt: number): Promise<void> => {
        mock.timers.tick(ms - 1);
        await turn();
        assert.equal(attemptStarted.length, attempt - 1, `attempt ${attempt} not before ${ms} ms`);
        mock.timers.tick(1);
        await turn();
        assert.equal(attemptStarted.length, attempt, `attempt ${attempt} after ${ms} ms`);
      };
      hold.resolve();
      await turn();
      await waitsFor(500, 2); // 1,000 ms, random 0: half
      await turn();
      await waitsFor(2_000, 3); // 2,000 ms, random ~1: all of it
      await turn();
      await waitsFor(3_000, 4); // 4,000 ms, random 0.5: three quarters
      mock.timers.reset();
      await tasks.drain();
    });
  });
});

describe('retry options', () => {
  it('are checked by backgroundTasks() and defineTask(), naming the option', () => {
    const cases: [options: unknown, error: typeof TypeError | typeof RangeError, message: RegExp][] = [
      [3, TypeError, /^Expected `retry` to be an object such as \{ attempts: 3/],
      [{ attempts: '3' }, TypeError, /^Expected `retry\.attempts` to be a number of runs in all, the first included, such as 3, got `3` \(string\)$/],
      [{ attempts: 0 }, RangeError, /^Expected `retry\.attempts` to be a whole number of runs from 1 \(no retry\) to 100, got `0` \(number\)$/],
      [{ attempts: 2.5 }, RangeError, /retry\.attempts/],
      [{ attempts: Infinity }, RangeError, /retry\.attempts/],
      [{ atempts: 3 }, TypeError, /^Expected `retry\.atempts` to be an option of `retry` \(did you mean `attempts`\?\)/],
      [{ attempts: 3, backoff: 1_000 }, TypeError, /^Expected `retry\.backoff` to be an object such as \{ type: 'exponential', delay: 1_000 \}/],
      [{ attempts: 3, backoff: { type: 'linear', delay: 1 } }, TypeError, /^Expected `retry\.backoff\.type` to be 'fixed' or 'exponential', got `linear`/],
      [{ attempts: 3, backoff: { type: 'fixed' } }, TypeError, /^Expected `retry\.backoff\.delay` to be a number of milliseconds, got `undefined`/],
      [{ attempts: 3, backoff: { type: 'fixed', delay: -1 } }, RangeError, /^Expected `retry\.backoff\.delay` to be a number of milliseconds from 0 to 2147483647, got `-1`/],
      [{ attempts: 3, backoff: { type: 'fixed', delay: 1, jitter: 0 } }, TypeError, /^Expected `retry\.backoff\.jitter` to be an option of `retry\.backoff`/],
    ];
    for (const [retry, error, message] of cases) {
      assert.throws(() => backgroundTasks({ retry } as never), (thrown: Error) => thrown instanceof error && message.test(thrown.message), `backgroundTasks({ retry: ${format(retry)} })`);
      assert.throws(() => defineTask('task', () => {}, { retry } as never), (thrown: Error) => thrown instanceof error && message.test(thrown.message), `defineTask(…, { retry: ${format(retry)} })`);
    }
    assert.throws(() => defineTask('task', () => {}, { retrys: 3 } as never), /^TypeError: Expected `retrys` to be an option of defineTask\(\) \(did you mean `retry`\?\)/);
  });

  it('are never mutated', () => {
    const retry = Object.freeze({ attempts: 3, backoff: Object.freeze({ type: 'fixed' as const, delay: 10 }) });
    backgroundTasks({ retry });
    defineTask('frozen', () => {}, Object.freeze({ retry }));
  });
});

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { inspect } from 'node:util';
import { runInNewContext } from 'node:vm';
import type { NextFunction, Request, RequestHandler, Response } from 'express';
import { backgroundTasks, defineTask, QueueFullError, type BackgroundTasksOptions, type CloseOptions, withSignal } from '../lib/index.js';
import { bullmqTransport, createWorker, type BullmqTransportOptions, type CreateWorkerOptions } from '../lib/bullmq.js';
import { taskSpans, type TaskSpansOptions } from '../lib/otel.js';
import { piscinaTransport, type PiscinaTransportOptions } from '../lib/piscina.js';
import { expressVersions, withServer } from './support/http.js';

describe('bad input is refused at once', () => {
  const invalidOptions: [options: unknown, error: typeof TypeError | typeof RangeError, message: string][] = [
    ['fast', TypeError, 'Expected `options` to be an object such as { timeout: 30_000, concurrency: 4 }, got `fast` (string)'],
    [null, TypeError, 'Expected `options` to be an object such as { timeout: 30_000, concurrency: 4 }, got `null` (object)'],
    [[{ timeout: 5 }], TypeError, 'Expected `options` to be a plain object such as { timeout: 30_000, concurrency: 4 }, not an array, a Map or another built-in object, got `[ { timeout: 5 } ]` (object)'],
    [{ onError: 'log' }, TypeError, 'Expected `onError` to be a function, got `log` (string)'],
    [{ timeout: 'soon' }, TypeError, 'Expected `timeout` to be a number of milliseconds, got `soon` (string)'],
    [{ timeout: 0 }, RangeError, 'Expected `timeout` to be a number of milliseconds from 1 to 2147483647, or Infinity, got `0` (number)'],
    [{ timeout: -5 }, RangeError, '`timeout`'],
    [{ timeout: 0.5 }, RangeError, 'got `0.5` (number)'],
    [{ timeout: NaN }, RangeError, 'got `NaN` (number)'],
    [{ timeout: 2 ** 31 }, RangeError, '`timeout`'],
    [{ concurrency: 0 }, RangeError, 'Expected `concurrency` to be a positive integer or Infinity, got `0` (number)'],
    [{ concurrency: 1.5 }, RangeError, '`concurrency`'],
    [{ concurrency: '4' }, TypeError, 'Expected `concurrency` to be a positive integer or Infinity, got `4` (string)'],
    [{ maxPending: -1 }, RangeError, 'Expected `maxPending` to be a positive integer or Infinity, got `-1` (number)'],
    [{ maxPending: 10n }, TypeError, 'got `10n` (bigint)'],
    [{ runOn: 'never' }, TypeError, "Expected `runOn` to be 'always' or 'success', got `never` (string)"],
    [{ transport: {} }, TypeError, "Expected `transport` to be a transport: a job queue with a send() method, such as bullmqTransport({ queue }), or an object with kind: 'runner' and a run() method, such as piscinaTransport({ filename }), got `{}` (object)"],
    [{ transport: { run() {} } }, TypeError, "Expected `transport` to be a job queue with a send() method, or, as it has run(), one declaring kind: 'runner'"],
    [{ transport: { kind: 'runner', send() {} } }, TypeError, "Expected `transport.kind` to be 'job-queue' (an object with send(), such as bullmqTransport({ queue })) or 'runner' (an object with run(), such as piscinaTransport({ filename })), got `runner` (string)"],
    [{ transport: { kind: 'threads', run() {} } }, TypeError, 'Expected `transport.kind` to be'],
    [{ transport: null }, TypeError, 'got `null` (object)'],
    [{ transport: [{ kind: 'runner', run() {}, tasks: ['resize'] }, 'redis'] }, TypeError, 'Expected `transport[1]` to be a transport'],
    [{ transport: { kind: 'runner', run() {}, tasks: 'resize' } }, TypeError, 'Expected `transport.tasks` to be an array of task names, got `resize` (string)'],
    [{ transport: [{ kind: 'runner', run() {}, tasks: [''] }] }, TypeError, 'Expected `transport[0].tasks` to be an array of task names'],
    [{ transport: [{ kind: 'runner', run() {} }, { send() {} }] }, TypeError, 'Expected `transport[0]` to be a transport listing the tasks it takes (`tasks`), as it comes before the last'],
    [{ transport: [{ send() {}, tasks: ['a'] }, { send() {} }] }, TypeError, 'Expected `transport[1]` to be the only transport that stores tasks (a job queue)'],
    [{ fallback: 'retry' }, TypeError, "Expected `fallback` to be 'none' or 'in-process', got `retry` (string)"],
    [{ concurency: 4, timout: 100 }, TypeError, 'Expected `concurency` to be an option of backgroundTasks() (did you mean `concurrency`?), got `4` (number)'],
    [{ timout: 100 }, TypeError, 'Expected `timout` to be an option of backgroundTasks() (did you mean `timeout`?), got `100` (number)'],
    [{ maxpending: 10 }, TypeError, 'Expected `maxpending` to be an option of backgroundTasks() (did you mean `maxPending`?), got `10` (number)'],
    [{ on_error: 'log' }, TypeError, 'Expected `on_error` to be an option of backgroundTasks() (did you mean `onError`?), got `log` (string)'],
    [{ retries: 3 }, TypeError, 'Expected `retries` to be an option of backgroundTasks() (onError, around, timeout, concurrency, maxPending, runOn, transport, fallback, stagingFailure, retry), got `3` (number)'],
    [{ around: 'span' }, TypeError, 'Expected `around` to be a function (info, run) => run(), got `span` (string)'],
    [{ stagingFailure: 'retry' }, TypeError, "Expected `stagingFailure` to be 'abort' or 'respond', got `retry` (string)"],
    [{ transport: { send() {}, staging: { timeout: 10, stage() {} } } }, TypeError, 'Expected `transport.staging` to be an object with stage(), release() and discard() methods and a timeout, got `{ timeout: 10, stage: [Function: stage] }` (object)'],
    [{ transport: { send() {}, staging: null } }, TypeError, 'Expected `transport.staging` to be an object with stage(), release() and discard() methods and a timeout, got `null` (object)'],
    [{ transport: { send() {}, staging: { stage() {}, release() {}, discard() {} } } }, TypeError, 'Expected `transport.staging.timeout` to be a number of milliseconds, got `undefined` (undefined)'],
    [{ transport: { send() {}, staging: { timeout: Infinity, stage() {}, release() {}, discard() {} } } }, RangeError, 'Expected `transport.staging.timeout` to be a number of milliseconds from 1 to 2147483647, got `Infinity` (number)'],
  ];
  for (const [options, ErrorClass, message] of invalidOptions) {
    it(`backgroundTasks(${JSON.stringify(options, (_key, value: unknown) => (typeof value === 'bigint' ? `${value}n` : value))}) throws a ${ErrorClass.name} naming the option`, () => {
      assert.throws(() => backgroundTasks(options as BackgroundTasksOptions), (error: unknown) => {
        assert.ok(error instanceof ErrorClass, `a ${ErrorClass.name}`);
        assert.ok(error.message.includes(message), error.message);
        return true;
      });
    });
  }

  it('accepts every valid option, Infinity included, and never mutates the options object', () => {
    const options = Object.freeze({ onError() {}, timeout: 1000, concurrency: Infinity, maxPending: 10, runOn: 'success' } as const);
    const middleware = backgroundTasks(options);
    assert.equal(middleware.name, 'backgroundTasksMiddleware');
    assert.equal(backgroundTasks({ timeout: Infinity, maxPending: Infinity, concurrency: 1 }).pending, 0);
    assert.equal(backgroundTasks(undefined).pending, 0);
    const staging = Object.freeze({ timeout: 1000, stage: async () => 'receipt', release: async () => {}, discard: async () => {} });
    assert.equal(backgroundTasks(Object.freeze({ transport: Object.freeze({ send: async () => {}, staging }), stagingFailure: 'respond', fallback: 'in-process' } as const)).pending, 0);
  });

  const invalidCloseOptions: [options: unknown, error: typeof TypeError | typeof RangeError, message: string][] = [
    ['soon', TypeError, 'Expected `options` to be an object such as { server, timeout: 10_000 }, got `soon` (string)'],
    [{ timeout: 0 }, RangeError, 'Expected `timeout` to be a number of milliseconds from 1 to 2147483647, or Infinity, got `0` (number)'],
    [{ timout: 5000 }, TypeError, 'Expected `timout` to be an option of close() (did you mean `timeout`?), got `5000` (number)'],
    [{ server: 3000 }, TypeError, 'Expected `server` to be the http.Server that app.listen() returned, got `3000` (number)'],
    [{ server: { close() {} } }, TypeError, 'Expected `server` to be the http.Server that app.listen() returned, got `{ close: [Function: close] }` (object)'],
    [{ server: { close() {}, listening: true } }, TypeError, 'Expected `server` to be the http.Server that app.listen() returned, got `{ close: [Function: close], listening: true }` (object)'],
  ];
  for (const [options, ErrorClass, message] of invalidCloseOptions) {
    it(`close(${JSON.stringify(options)}) throws a ${ErrorClass.name} at once, and does not start closing`, () => {
      const middleware = backgroundTasks();
      assert.throws(() => middleware.close(options as Parameters<typeof middleware.close>[0]), (error: unknown) => {
        assert.ok(error instanceof ErrorClass, `a ${ErrorClass.name}`);
        assert.equal(error.message, message);
        return true;
      });
    });
  }

  for (const [label, createApp] of expressVersions) {
    it(`${label}: close({ server: app }), the app instead of its server, throws a short TypeError saying what to pass`, () => {
      const middleware = backgroundTasks();
      const app = createApp();
      assert.throws(() => middleware.close({ server: app as unknown as CloseOptions['server'] }), {
        name: 'TypeError',
        message: 'Expected `server` to be the http.Server that app.listen() returned, got the Express app (function): pass const server = app.listen(port)',
      });
    });
  }

  // Each reads its options by destructuring, which finds inherited and non-enumerable keys too.
  const bullmqQueue = { add: async () => ({}), addBulk: async () => [] } as unknown as BullmqTransportOptions['queue'];
  const optionTakers: [owner: string, example: string, take: (options: unknown) => unknown, misspelled: string, meant: string, required?: object][] = [
    ['backgroundTasks()', '{ timeout: 30_000, concurrency: 4 }', (options) => backgroundTasks(options as BackgroundTasksOptions), 'concurency', 'concurrency'],
    ['close()', '{ server, timeout: 10_000 }', (options) => backgroundTasks().close(options as CloseOptions), 'timout', 'timeout'],
    ['bullmqTransport()', '{ queue }', (options) => bullmqTransport(options as BullmqTransportOptions), 'jobOption', 'jobOptions', { queue: bullmqQueue }],
    ['taskSpans()', '{ newTrace: true }', (options) => taskSpans(options as TaskSpansOptions), 'newTrce', 'newTrace'],
    ['piscinaTransport()', "{ filename: new URL('./tasks.js', import.meta.url) }", (options) => piscinaTransport(options as PiscinaTransportOptions), 'maxThread', 'maxThreads', { filename: '/srv/app/tasks.js' }],
  ];
  for (const [owner, example, take, misspelled, meant, required = {}] of optionTakers) {
    for (const [shape, options, shown] of [
      ['an array', [required], `[ ${Object.keys(required).length === 0 ? '{}' : inspect(required, { depth: 0 })} ]`],
      ['a Map', new Map(Object.entries({ ...required, [meant]: 1 })), 'Map('],
      ['a Date', new Date(0), '1970-01-01T00:00:00.000Z'],
    ] as const) {
      it(`${owner} refuses ${shape} for its options with a TypeError asking for a plain object`, () => {
        assert.throws(() => take(options), (error: unknown) => {
          assert.ok(error instanceof TypeError, String(error));
          const expected = `Expected \`options\` to be a plain object such as ${example}, not an array, a Map or another built-in object, got \``;
          assert.ok(error.message.startsWith(expected) && error.message.includes(shown) && error.message.endsWith('(object)'), error.message);
          return true;
        });
      });
    }

    it(`${owner} refuses a misspelled option that its options inherit, naming it and the option it misspells`, () => {
      const options = Object.assign(Object.create({ [misspelled]: 1 }) as object, required);
      assert.throws(() => take(options), {
        name: 'TypeError',
        message: `Expected \`${misspelled}\` to be an option of ${owner} (did you mean \`${meant}\`?; inherited from the prototype of \`options\`), got \`1\` (number)`,
      });
    });

    it(`${owner} refuses a misspelled option that is not enumerable, naming it and the option it misspells`, () => {
      const options = Object.defineProperty({ ...required }, misspelled, { value: 1, enumerable: false });
      assert.throws(() => take(options), {
        name: 'TypeError',
        message: `Expected \`${misspelled}\` to be an option of ${owner} (did you mean \`${meant}\`?), got \`1\` (number)`,
      });
    });
  }

  it('backgroundTasks() reads an option its options inherit, as destructuring does, and takes plain objects of any kind', () => {
    const res = respondWith(backgroundTasks(Object.create({ maxPending: 1 }) as BackgroundTasksOptions));
    res.locals.tasks.add(() => {});
    assert.throws(() => res.locals.tasks.add(() => {}), QueueFullError, 'the inherited maxPending: 1 applies');
    class Settings {
      timeout = 1000;
      get concurrency(): number {
        return 2;
      }
    }
    const nullPrototype = Object.assign(Object.create(null) as object, { timeout: 1000 });
    const otherRealm = runInNewContext('({ timeout: 1000, concurrency: 2 })') as BackgroundTasksOptions;
    for (const options of [new Settings(), nullPrototype, otherRealm, Object.freeze({ timeout: 1000 })]) {
      assert.equal(backgroundTasks(options).pending, 0);
    }
    assert.throws(() => backgroundTasks(runInNewContext('({ timout: 1000 })') as BackgroundTasksOptions), { name: 'TypeError', message: /^Expected `timout` to be an option of backgroundTasks\(\) \(did you mean `timeout`\?\)/ });
    class WithMethod {
      timeout = 1000;
      describe(): string {
        return 'a second';
      }
    }
    assert.throws(() => backgroundTasks(new WithMethod()), { name: 'TypeError', message: /^Expected `describe` to be an option of backgroundTasks\(\) \(onError, .*; inherited from the prototype of `options`\), got `\[Function: describe\]` \(function\)$/ });
  });

  it('add() and defineTask() refuse a generator function of another realm (vm) too', () => {
    const generator = runInNewContext('(function* poll() {})') as () => void;
    const asyncGenerator = runInNewContext('(async function* poll() {})') as () => void;
    for (const fn of [generator, asyncGenerator]) {
      assert.throws(() => defineTask('poll', fn), /not a generator/);
      assert.throws(() => checkAdd(fn), /not a generator/);
    }
  });

  it('withSignal() refuses a non-function', () => {
    assert.throws(() => withSignal('fetch' as never), { name: 'TypeError', message: 'Expected `fn` to be a function taking an AbortSignal first, got `fetch` (string)' });
  });

  it('makes `pending` read-only', () => {
    const middleware = backgroundTasks();
    assert.throws(() => {
      (middleware as { pending: number }).pending = 5;
    }, TypeError);
  });

  for (const [label, createApp] of expressVersions) {
    it(`${label}: add() with a non-function throws a TypeError in the handler, and queues nothing`, async () => {
      const tasks = backgroundTasks();
      const thrown: unknown[] = [];
      const app = createApp();
      app.use(tasks);
      app.get('/', (_req, res) => {
        for (const notAFunction of [123, 'sendEmail', undefined, { name: 'task' }]) {
          try {
            res.locals.tasks.add(notAFunction as () => void);
          } catch (error) {
            thrown.push(error);
          }
        }
        res.json({ size: res.locals.tasks.size, pending: tasks.pending });
      });
      await withServer(app, async (server) => {
        assert.deepEqual(await (await fetch(server.url)).json(), { size: 0, pending: 0 });
        assert.equal(thrown.length, 4);
        for (const error of thrown) assert.ok(error instanceof TypeError);
        assert.equal((thrown[0] as Error).message, 'Expected `fn` to be a function, got `123` (number)');
      });
    });
  }

  for (const [label, createApp] of expressVersions) {
    it(`${label}: add() with a generator function throws a TypeError that says its body would never run, and queues nothing`, async () => {
      const tasks = backgroundTasks();
      const thrown: unknown[] = [];
      const app = createApp();
      app.use(tasks);
      app.get('/', (_req, res) => {
        const generators = [function* poll() {}, async function* stream() {}, (function* bound() {}).bind(null)];
        for (const generator of generators) {
          try {
            res.locals.tasks.add(generator as () => void);
          } catch (error) {
            thrown.push(error);
          }
        }
        res.json({ size: res.locals.tasks.size, pending: tasks.pending });
      });
      await withServer(app, async (server) => {
        assert.deepEqual(await (await fetch(server.url)).json(), { size: 0, pending: 0 });
      });
      assert.deepEqual(thrown.map((error) => [(error as Error).name, (error as Error).message]), [
        ['TypeError', `Expected \`fn\` to be a function that is not a generator (calling a generator function only creates an iterator: its body would never run), got \`[GeneratorFunction: poll]\` (function)`],
        ['TypeError', `Expected \`fn\` to be a function that is not a generator (calling a generator function only creates an iterator: its body would never run), got \`[AsyncGeneratorFunction: stream]\` (function)`],
        ['TypeError', `Expected \`fn\` to be a function that is not a generator (calling a generator function only creates an iterator: its body would never run), got \`[Function: bound bound] GeneratorFunction\` (function)`],
      ]);
    });

    it(`${label}: app.use(backgroundTasks), the factory not called, fails each request with a TypeError naming the fix instead of hanging`, async () => {
      const reached: string[] = [];
      const app = createApp();
      app.use(backgroundTasks as unknown as RequestHandler);
      app.get('/', (_req, res) => {
        reached.push('handler');
        res.end();
      });
      app.use((error: Error, _req: Request, res: Response, _next: NextFunction) => {
        res.status(500).json({ name: error.name, message: error.message });
      });
      await withServer(app, async ({ url }) => {
        for (let request = 0; request < 2; request++) {
          const response = await fetch(url, { signal: AbortSignal.timeout(5_000) });
          assert.equal(response.status, 500);
          assert.deepEqual(await response.json(), {
            name: 'TypeError',
            message: 'Expected `backgroundTasks` to be called before it is mounted, got the function itself, which Express called with ' +
              'the request: write app.use(backgroundTasks()), not app.use(backgroundTasks)',
          });
        }
      });
      assert.deepEqual(reached, [], 'the route never ran without its queue');
    });
  }

  const invalidDefinitions: [name: unknown, fn: unknown, message: string][] = [
    ['', () => {}, 'Expected `name` to be a non-empty string, got `` (string)'],
    [42, () => {}, 'Expected `name` to be a non-empty string, got `42` (number)'],
    ['send-email', 'sendEmail', 'Expected `fn` to be a function, got `sendEmail` (string)'],
    ['poll', function* poll() {}, 'Expected `fn` to be a function that is not a generator (calling a generator function only creates an iterator: its body would never run), got `[GeneratorFunction: poll]` (function)'],
    ['stream', async function* stream() {}, 'Expected `fn` to be a function that is not a generator (calling a generator function only creates an iterator: its body would never run), got `[AsyncGeneratorFunction: stream]` (function)'],
  ];
  for (const [name, fn, message] of invalidDefinitions) {
    it(`defineTask(${JSON.stringify(name)}, ${typeof fn}) throws a TypeError: ${message}`, () => {
      assert.throws(() => defineTask(name as string, fn as () => void), { name: 'TypeError', message });
    });
  }

  const queue = { add: async () => ({}), addBulk: async () => [] } as unknown as BullmqTransportOptions['queue'];
  const invalidTransports: [options: unknown, error: typeof TypeError | typeof RangeError, message: string][] = [
    [undefined, TypeError, 'Expected `options` to be an object such as { queue }, got `undefined` (undefined)'],
    [{ queue: 'tasks' }, TypeError, 'Expected `queue` to be a BullMQ Queue, got `tasks` (string)'],
    [{ queue, jobOptions: 3 }, TypeError, 'Expected `jobOptions` to be an object of BullMQ job options, got `3` (number)'],
    [{ queue, timeout: '5s' }, TypeError, 'Expected `timeout` to be a number of milliseconds, got `5s` (string)'],
    [{ queue, timeout: 0 }, RangeError, 'Expected `timeout` to be a number of milliseconds from 1 to 2147483647, got `0` (number)'],
    [{ queue, timeout: Infinity }, RangeError, 'Expected `timeout` to be a number of milliseconds from 1 to 2147483647, got `Infinity` (number)'],
    [{ queue, timout: 5_000 }, TypeError, 'Expected `timout` to be an option of bullmqTransport() (did you mean `timeout`?), got `5000` (number)'],
    [{ queue, jobOption: { attempts: 3 } }, TypeError, 'Expected `jobOption` to be an option of bullmqTransport() (did you mean `jobOptions`?), got `{ attempts: 3 }` (object)'],
    [{ queue, attempts: 3 }, TypeError, 'Expected `attempts` to be an option of bullmqTransport() (queue, jobOptions, timeout, stage, lease), got `3` (number)'],
    [{ queue, stage: 'yes' }, TypeError, 'Expected `stage` to be a boolean, got `yes` (string)'],
    [{ queue, lease: 0 }, RangeError, 'Expected `lease` to be a number of milliseconds from 1 to 2147483647, got `0` (number)'],
    [{ queue, lease: '30s' }, TypeError, 'Expected `lease` to be a number of milliseconds, got `30s` (string)'],
    [{ queue, stage: false, lease: 1000 }, TypeError, 'Expected `lease` to be left out with stage: false (nothing is staged), got `1000` (number)'],
    [{ queue, jobOptions: { delay: 5000 } }, TypeError, 'Expected `jobOptions.delay` to be left out while staging (the delay is the lease); pass stage: false to delay jobs, got `5000` (number)'],
    [{ queue: { add: async () => ({}) } }, TypeError, 'Expected `queue` to be a BullMQ Queue, got `{ add: [AsyncFunction: add] }` (object)'],
  ];
  for (const [options, ErrorClass, message] of invalidTransports) {
    it(`bullmqTransport() throws a ${ErrorClass.name}: ${message}`, () => {
      assert.throws(() => bullmqTransport(options as BullmqTransportOptions), { name: ErrorClass.name, message });
    });
  }

  const greet = defineTask('greet', () => {});
  const connection = { host: '127.0.0.1', port: 1 };
  const invalidWorkers: [options: unknown, message: string][] = [
    [null, 'Expected `options` to be an object, got `null` (object)'],
    [{ queueName: '', connection, tasks: [greet] }, 'Expected `queueName` to be a non-empty string, got `` (string)'],
    [{ queueName: 'tasks', connection, backend: 'postgres', tasks: [greet] }, 'Expected `backend` to be a BullMQ backend factory such as createPostgresBackend, got `postgres` (string)'],
    [{ queueName: 'tasks', connection, tasks: greet }, 'Expected `tasks` to be an array of defineTask() definitions, got `[Function: greet] { taskName: \'greet\' }` (function)'],
    [{ queueName: 'tasks', connection, tasks: [greet, function sendEmail() {}] }, 'Expected `tasks[1]` to be a task made by defineTask(), got `[Function: sendEmail]` (function)'],
    [{ queueName: 'tasks', connection, tasks: [greet, defineTask('greet', () => {})] }, 'Expected `tasks[1]` to be a task whose name no other task has, got `greet` (string)'],
  ];
  for (const [options, message] of invalidWorkers) {
    it(`createWorker() throws a TypeError before connecting: ${message}`, () => {
      assert.throws(() => createWorker(options as CreateWorkerOptions), { name: 'TypeError', message });
    });
  }
});

/** Calls `add(fn)` on a queue of a response that is never sent, as a handler would. */
function checkAdd(fn: () => void): void {
  respondWith(backgroundTasks()).locals.tasks.add(fn);
}

/** @return a response that `middleware` has given its queue, and that is never sent */
function respondWith(middleware: ReturnType<typeof backgroundTasks>): Response {
  const res = { locals: {} } as unknown as Response;
  middleware({ socket: {} } as unknown as Request, res, () => {});
  return res;
}

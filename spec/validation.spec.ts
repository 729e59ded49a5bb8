import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { backgroundTasks, defineTask, type BackgroundTasksOptions } from '../lib/index.js';
import { bullmqTransport, createWorker, type BullmqTransportOptions, type CreateWorkerOptions } from '../lib/bullmq.js';
import { expressVersions, withServer } from './support/http.js';

describe('bad input is refused at once', () => {
  const invalidOptions: [options: unknown, error: typeof TypeError | typeof RangeError, message: string][] = [
    ['fast', TypeError, 'Expected `options` to be an object, got `fast` (string)'],
    [null, TypeError, 'Expected `options` to be an object, got `null` (object)'],
    [[{ timeout: 5 }], TypeError, 'Expected `options` to be an object, got `[ { timeout: 5 } ]` (object)'],
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
    [{ transport: {} }, TypeError, 'Expected `transport` to be a transport: an object with either a send() method, such as bullmqTransport({ queue }), or a run() method, such as piscinaTransport({ filename }), got `{}` (object)'],
    [{ transport: null }, TypeError, 'got `null` (object)'],
    [{ transport: { send() {}, run() {} } }, TypeError, 'Expected `transport` to be a transport: an object with either a send() method'],
    [{ transport: [{ run() {}, tasks: ['resize'] }, 'redis'] }, TypeError, 'Expected `transport[1]` to be a transport'],
    [{ transport: { run() {}, tasks: 'resize' } }, TypeError, 'Expected `transport.tasks` to be an array of task names, got `resize` (string)'],
    [{ transport: [{ run() {}, tasks: [''] }] }, TypeError, 'Expected `transport[0].tasks` to be an array of task names'],
    [{ transport: [{ run() {} }, { send() {} }] }, TypeError, 'Expected `transport[0]` to be a transport listing the tasks it takes (`tasks`), as it comes before the last'],
    [{ transport: [{ send() {}, tasks: ['a'] }, { send() {} }] }, TypeError, 'Expected `transport[1]` to be the only transport that stores tasks (one with send())'],
    [{ fallback: 'retry' }, TypeError, "Expected `fallback` to be 'none' or 'in-process', got `retry` (string)"],
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

  const invalidDefinitions: [name: unknown, fn: unknown, message: string][] = [
    ['', () => {}, 'Expected `name` to be a non-empty string, got `` (string)'],
    [42, () => {}, 'Expected `name` to be a non-empty string, got `42` (number)'],
    ['send-email', 'sendEmail', 'Expected `fn` to be a function, got `sendEmail` (string)'],
  ];
  for (const [name, fn, message] of invalidDefinitions) {
    it(`defineTask(${JSON.stringify(name)}, ${typeof fn}) throws a TypeError: ${message}`, () => {
      assert.throws(() => defineTask(name as string, fn as () => void), { name: 'TypeError', message });
    });
  }

  const queue = { add: async () => ({}) } as unknown as BullmqTransportOptions['queue'];
  const invalidTransports: [options: unknown, error: typeof TypeError | typeof RangeError, message: string][] = [
    [undefined, TypeError, 'Expected `options` to be an object, got `undefined` (undefined)'],
    [{ queue: 'tasks' }, TypeError, 'Expected `queue` to be a BullMQ Queue, got `tasks` (string)'],
    [{ queue, jobOptions: 3 }, TypeError, 'Expected `jobOptions` to be an object of BullMQ job options, got `3` (number)'],
    [{ queue, timeout: '5s' }, TypeError, 'Expected `timeout` to be a number of milliseconds, got `5s` (string)'],
    [{ queue, timeout: 0 }, RangeError, 'Expected `timeout` to be a number of milliseconds from 1 to 2147483647, got `0` (number)'],
    [{ queue, timeout: Infinity }, RangeError, 'Expected `timeout` to be a number of milliseconds from 1 to 2147483647, got `Infinity` (number)'],
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

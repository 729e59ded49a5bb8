// Random programs against one real server: requests whose handlers queue tasks of every kind
// (sync, async, throwing, rejecting, hanging, hostile returns, self-re-adding, failing a few times
// then succeeding, failing permanently), at every moment (in the handler, after the end, later),
// under random `timeout`, `concurrency`, `maxPending`, `runOn`, `retry` and `around`, some of whose clients
// reset the connection before the response; each program ends with drain() or with close() and a
// deadline of 1-50 ms, which may cut tasks short. fast-check shrinks a
// failing program and prints its seed; re-run one with FUZZ_SEED=<seed>.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import express, { type RequestHandler } from 'express';
import fc from 'fast-check';
import { backgroundTasks, type BackgroundTasksMiddleware, type CloseSummary, PermanentError, QueueFullError, type RetryOptions, ShutdownError, type TaskQueue, withSignal } from '../lib/index.js';
import { hostileOutcomes } from './support/hostile.js';
import { deferred, delay, rawRequest, watchProcessFaults, withServer } from './support/http.js';

const hostile = hostileOutcomes();
const kinds = ['sync', 'async', 'throws', 'rejects', 'hangs', 'hostile', 're-adds', 'flaky', 'permanent'] as const;
type Kind = (typeof kinds)[number];

interface TaskPlan {
  readonly kind: Kind;
  /** Which hostile outcome, or how many times the task re-adds itself or fails before it succeeds. */
  readonly variant: number;
  readonly when: 'in the handler' | 'after the end' | 'later';
}

interface RequestPlan {
  readonly status: number;
  /** The client resets the connection while the handler waits; the handler answers after. */
  readonly resets: boolean;
  readonly tasks: readonly TaskPlan[];
}

interface Program {
  readonly timeout: number;
  readonly concurrency: number;
  readonly maxPending: number;
  readonly runOn: 'always' | 'success';
  readonly retry: RetryOptions | undefined;
  /** An `around` that calls `run` at once, or after a turn of the event loop, or none. */
  readonly around: 'none' | 'sync' | 'async';
  /** How the program ends once its handlers are done: `drain()`, or `close()` with this deadline, ms. */
  readonly closeAfter: 'drain' | number;
  readonly requests: readonly RequestPlan[];
}

const program: fc.Arbitrary<Program> = fc.record({
  timeout: fc.constantFrom(50, 100, Infinity), // well above the tasks' own 0-2 ms, even on a busy machine
  concurrency: fc.constantFrom(1, 2, 3, Infinity),
  maxPending: fc.constantFrom(2, 5, 12, Infinity),
  runOn: fc.constantFrom('always' as const, 'success' as const),
  retry: fc.option(
    fc.record({
      attempts: fc.constantFrom(1, 2, 3),
      backoff: fc.record({ type: fc.constantFrom('fixed' as const, 'exponential' as const), delay: fc.constantFrom(0, 2, 8) }),
    }),
    { nil: undefined },
  ),
  around: fc.constantFrom('none' as const, 'sync' as const, 'async' as const),
  closeAfter: fc.constantFrom('drain' as const, 'drain' as const, 1, 10, 50),
  requests: fc.array(
    fc.record({
      status: fc.constantFrom(200, 201, 404, 500),
      resets: fc.boolean(),
      tasks: fc.array(
        fc.record({
          kind: fc.constantFrom(...kinds),
          variant: fc.nat(hostile.length - 1),
          when: fc.constantFrom('in the handler' as const, 'after the end' as const, 'later' as const),
        }),
        { maxLength: 6 },
      ),
    }),
    { minLength: 1, maxLength: 5 },
  ),
});

describe('scheduler invariants under random programs (fast-check, one real server)', () => {
  it('runs every accepted task once unless dropped by design, within the limits, and settles drain()', { timeout: 60_000 }, async (t) => {
    const seed = Number(process.env['FUZZ_SEED'] ?? Date.now() % 2 ** 31);
    t.diagnostic(`seed ${seed} (FUZZ_SEED=${seed} replays it)`);
    let mounted: BackgroundTasksMiddleware | undefined;
    let handle: RequestHandler = (_req, _res, next) => next();
    const app = express();
    app.use((req, res, next) => (mounted as BackgroundTasksMiddleware)(req, res, next));
    app.get('/:request', (req, res, next) => handle(req, res, next));
    const totals = { programs: 0, requests: 0, tasks: 0, checks: 0 };
    await withServer(app, async (server) => {
      await fc.assert(
        fc.asyncProperty(program, async (plan) => {
          const run = new ProgramRun(plan);
          mounted = run.middleware;
          handle = (req, res) => run.handle(Number(req.params['request']), res.locals.tasks, (status) => res.status(status).send('done'), req.socket);
          await run.play(server.port, `${server.url}/`);
          totals.programs++;
          totals.requests += plan.requests.length;
          totals.tasks += run.added.size;
          totals.checks += run.check();
        }),
        { seed, numRuns: Number(process.env['FUZZ_RUNS'] ?? 300), interruptAfterTimeLimit: 25_000, markInterruptAsFailure: false },
      );
    });
    t.diagnostic(`${totals.programs} programs, ${totals.requests} requests, ${totals.tasks} tasks, ${totals.checks} invariant checks`);
    assert.ok(totals.programs >= 20, `at least 20 programs ran in the time limit (${totals.programs})`);
  });
});

/** What one added task did, as the spec saw it. */
interface TaskRecord {
  readonly request: number;
  /** How many of its runs fail before one succeeds: 0, a few, or all of them (Infinity). */
  readonly failures: number;
  /** Whether its failure is a PermanentError, which is not retried. */
  readonly permanent: boolean;
  accepted: boolean;
  starts: number;
  reports: number;
}

/** One program played against the server: its middleware, its records, and its invariants. */
class ProgramRun {
  readonly middleware: BackgroundTasksMiddleware;
  readonly added = new Map<string, TaskRecord>();
  readonly #plan: Program;
  readonly #faults = watchProcessFaults();
  readonly #warnings: Error[] = [];
  readonly #onWarning = (warning: Error): void => void this.#warnings.push(warning);
  readonly #handled: Promise<void>[];
  readonly #handlersDone: ((() => void) | undefined)[];
  readonly #entered: { promise: Promise<void>; resolve: () => void }[];
  readonly #accepted: string[][];
  readonly #started: string[][];
  #running = 0;
  /** What `close()` resolved with, for a program that ends with it. */
  #summary: CloseSummary | undefined = undefined;
  /** How many tasks were reported as `ShutdownError`s. */
  #shutdownReports = 0;
  /** The timers of the process when the program started. */
  readonly #timersBefore = timersNow();
  #limitsBroken: string[] = [];
  #nextId = 0;

  constructor(plan: Program) {
    this.#plan = plan;
    const { timeout, concurrency, maxPending, runOn, retry } = plan;
    const around = plan.around === 'none' ? undefined : plan.around === 'sync'
      ? (_info: unknown, run: () => unknown) => run()
      : async (_info: unknown, run: () => unknown) => {
        await new Promise(setImmediate);
        return run();
      };
    this.middleware = backgroundTasks({ timeout, concurrency, maxPending, runOn, retry, around, onError: (error, { name }) => this.#reported(name, error) });
    const handlers = plan.requests.map(() => deferred());
    this.#handled = handlers.map(({ promise }) => promise);
    this.#handlersDone = handlers.map(({ resolve }) => resolve);
    this.#entered = plan.requests.map(() => deferred());
    this.#accepted = plan.requests.map(() => []);
    this.#started = plan.requests.map(() => []);
    process.on('warning', this.#onWarning);
  }

  /** Sends every request at once, then waits for the handlers, the late adds and `drain()`. */
  async play(port: number, url: string): Promise<void> {
    try {
      await Promise.all(this.#plan.requests.map(async ({ resets }, request) => {
        if (!resets) {
          await (await fetch(url + request)).text();
          return;
        }
        const socket = await rawRequest(port, `/${request}`);
        await this.#entered[request]?.promise;
        socket.resetAndDestroy();
      }));
      await Promise.all(this.#handled);
      const { closeAfter } = this.#plan;
      if (closeAfter === 'drain') {
        const drained = await Promise.race([this.middleware.drain().then(() => true), sleep(10_000, false, { ref: false })]);
        assert.ok(drained, `drain() resolved (pending ${this.middleware.pending})`);
      } else {
        this.#summary = await this.middleware.close({ timeout: closeAfter });
        // A task abandoned at the deadline still finishes its own work, and its own timers, here;
        // a timer of the library's own left behind would still be there after that.
        for (let waited = 0; (this.#running > 0 || timersNow() > this.#timersBefore) && waited < 200; waited++) await sleep(1);
      }
    } finally {
      this.#faults.stop();
      process.off('warning', this.#onWarning);
    }
  }

  /** The handler of request `request`: queues its tasks around `respond`. */
  handle(request: number, queue: TaskQueue, respond: (status: number) => void, connection: NodeJS.EventEmitter): void {
    const plan = this.#plan.requests[request] as RequestPlan;
    const at = (when: TaskPlan['when']): void => {
      for (const task of plan.tasks) if (task.when === when) this.#add(queue, request, task);
    };
    at('in the handler');
    const answer = (): void => {
      respond(plan.status);
      at('after the end');
      setImmediate(() => {
        at('later');
        this.#handlersDone[request]?.();
      });
    };
    if (!plan.resets) {
      answer();
      return;
    }
    connection.once('close', () => setImmediate(answer));
    this.#entered[request]?.resolve();
  }

  /**
   * Asserts the invariants of the program just played.
   * @return how many checks were made
   */
  check(): number {
    let checks = 0;
    const expect = (ok: boolean, message: () => string): void => {
      checks++;
      assert.ok(ok, message());
    };
    expect(this.#faults.faults.length === 0, () => `no unhandled rejection or uncaught exception: ${this.#faults.faults.map(String).join('; ')}`);
    expect(this.#warnings.length === 0, () => `no process warning: ${this.#warnings.map(String).join('; ')}`);
    expect(this.#limitsBroken.length === 0, () => this.#limitsBroken.join('; '));
    expect(this.middleware.pending === 0, () => `pending is 0 once drained, not ${this.middleware.pending}`);
    expect(timersNow() <= this.#timersBefore, () => `no timer left behind: ${timersNow()} timers, ${this.#timersBefore} before the program`);
    const attempts = this.#plan.retry?.attempts ?? 1;
    const closed = this.#summary !== undefined;
    if (this.#summary !== undefined) {
      const { abandoned, pending } = this.#summary;
      expect(pending === 0 && abandoned === this.#shutdownReports, () => `close() resolved with ${JSON.stringify(this.#summary)}, ${this.#shutdownReports} ShutdownErrors reported`);
    }
    for (const [id, task] of this.added) {
      const dropped = this.#plan.runOn === 'success' && (this.#plan.requests[task.request] as RequestPlan).status >= 400;
      const runs = task.permanent ? 1 : Math.min(task.failures + 1, attempts);
      const starts = task.accepted && !dropped ? runs : 0;
      const reports = starts > 0 && (task.permanent || task.failures >= attempts) ? 1 : 0;
      if (closed && (task.starts < starts || task.reports > reports)) {
        // Cut short by the deadline: fewer runs, and reported once, as a ShutdownError.
        expect(task.starts <= starts && task.reports === 1, () => `task ${id}, cut short by close(), started ${task.starts} times of ${starts}, reported ${task.reports} times`);
        continue;
      }
      expect(task.starts === starts, () => `task ${id} started ${task.starts} times, not ${starts}`);
      expect(task.reports === reports, () => `task ${id} was reported ${task.reports} times, not ${reports}`);
    }
    this.#plan.requests.forEach((plan, request) => {
      if (closed || (this.#plan.runOn === 'success' && plan.status >= 400)) return;
      // A retried task runs again before the next one starts: its runs are next to each other.
      const accepted = this.#accepted[request] ?? [];
      const started = (this.#started[request] ?? []).filter((id, index, all) => id !== all[index - 1]);
      expect(started.join() === accepted.join(), () => `request ${request} started [${started}] in the order added [${accepted}], each task's runs together`);
    });
    return checks;
  }

  /** Adds one planned task; a QueueFullError past `maxPending` refuses it, as documented. */
  #add(queue: TaskQueue, request: number, plan: TaskPlan): void {
    const id = `t${this.#nextId++}`;
    const kind: Kind = plan.kind === 'hangs' && this.#plan.timeout === Infinity ? 'async' : plan.kind;
    const outcome = hostile[plan.variant % hostile.length] as (typeof hostile)[number];
    const alwaysFails = kind === 'throws' || kind === 'rejects' || kind === 'hangs' || kind === 'permanent' || (kind === 'hostile' && outcome.fails);
    const failures = alwaysFails ? Infinity : kind === 'flaky' ? plan.variant % 3 : 0;
    const record: TaskRecord = { request, failures, permanent: kind === 'permanent', accepted: false, starts: 0, reports: 0 };
    this.added.set(id, record);
    const body = this.#body(kind, outcome.task, () => {
      for (let times = plan.variant % 3; times > 0; times--) this.#add(queue, request, { ...plan, kind: 'sync' });
    }, () => record.starts <= failures);
    // Through withSignal() for the hanging kind: each attempt's timeout aborts its signal.
    const task = withSignal(Object.defineProperty((signal: AbortSignal) => {
      record.starts++;
      this.#started[request]?.push(id);
      this.#checkLimits(`start of ${id}`);
      return body(signal);
    }, 'name', { value: id }));
    try {
      queue.add(task);
    } catch (error) {
      assert.ok(error instanceof QueueFullError, `add() threw only QueueFullError, not ${String(error)}`);
      return;
    } finally {
      this.#checkLimits(`add of ${id}`);
    }
    record.accepted = true;
    this.#accepted[request]?.push(id);
  }

  /** The task's own work, holding one of the spec's running count while it runs. */
  #body(kind: Kind, hostileTask: () => unknown, reAdd: () => void, failsThisTime: () => boolean): (signal: AbortSignal) => unknown {
    const sync = (work: () => void) => (): void => {
      this.#running++;
      try {
        work();
      } finally {
        this.#running--;
      }
    };
    const async = (fail: boolean) => async (): Promise<void> => {
      this.#running++;
      await delay(Math.floor(Math.random() * 3));
      this.#running--;
      if (fail) throw new Error('async failure');
    };
    switch (kind) {
      case 'sync':
        return sync(() => {});
      case 're-adds':
        return sync(reAdd);
      case 'throws':
        return sync(() => {
          throw new Error('sync failure');
        });
      case 'async':
        return async(false);
      case 'rejects':
        return async(true);
      case 'hangs':
        return (signal) => {
          this.#running++;
          // A timed-out attempt no longer counts against `concurrency`; it is reported only when it is the last.
          signal.addEventListener('abort', () => this.#running--, { once: true });
          return new Promise(() => {});
        };
      case 'hostile':
        return hostileTask;
      case 'flaky':
        return () => async(failsThisTime())();
      case 'permanent':
        return sync(() => {
          throw new PermanentError('no use trying again');
        });
    }
  }

  /** Records a report. */
  #reported(name: string, error: unknown): void {
    try {
      if (error instanceof ShutdownError) this.#shutdownReports++;
    } catch {
      // A hostile task's own error (a revoked Proxy): not a ShutdownError.
    }
    const task = this.added.get(name);
    if (task === undefined) {
      this.#limitsBroken.push(`onError got an unknown task ${name}`);
      return;
    }
    task.reports++;
  }

  /** Pending within [0, maxPending], running within `concurrency`. */
  #checkLimits(when: string): void {
    const { pending } = this.middleware;
    if (pending < 0 || pending > this.#plan.maxPending) this.#limitsBroken.push(`pending ${pending} at the ${when}`);
    if (this.#running > this.#plan.concurrency) this.#limitsBroken.push(`${this.#running} tasks running at the ${when}`);
  }
}

/** @return how many timers the process holds now */
function timersNow(): number {
  return process.getActiveResourcesInfo().filter((kind) => kind === 'Timeout').length;
}

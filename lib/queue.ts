import type { Request, Response } from 'express';
import { captureJsonArgs, checkTaskFunction, definedName, retryOf } from './definition.js';
import { messageOf, ShutdownError } from './errors.js';
import { HandOff } from './handoff.js';
import { type EndListener, type Hold, holdResponse, statusIsFinal, watchEnd, whenFlushed } from './lifecycle.js';
import type { Retry, Settings } from './options.js';
import type { ActiveQueue, Runnable, Scheduler } from './scheduler.js';
import { type Abandon, debug, report, reportInScope, runTask, settleCall, Task, taskInfo, taskName, type TaskRun, taskTracing } from './task.js';

/**
 * The queue at `res.locals.tasks`: functions to call after this response has been sent.
 * @public
 */
export interface TaskQueue {
  /**
   * Queues `fn(...args)` to run after the response has been flushed, after the tasks queued before it.
   * The arguments are type-checked against `fn`. A task made by `defineTask()` that a `transport`
   * stores is handed off instead, with the response's other defined tasks, in order: staged before
   * the response's end when added before it and the transport has `staging`, otherwise sent after
   * the flush. One that a transport runs (on threads) runs there, in its turn.
   * @param fn - a function, sync or async; called with `this` undefined, so bind methods first
   * @param args - the arguments to call it with; JSON values only when `fn` is a defined task
   * @return this queue, for chaining
   * @throws {TypeError} when `fn` is not a function, or is a defined task given arguments that are not JSON
   * @throws {QueueFullError} when `maxPending` tasks are already pending
   * @example
   * res.locals.tasks.add(sendConfirmationEmail, req.params.id);
   */
  add<A extends unknown[]>(fn: (this: void, ...args: A) => unknown, ...args: A): this;
  /** Tasks of this response that have not started, nor been handed off, yet. */
  readonly size: number;
}

/**
 * Where a response's queue stands:
 * `open` (nothing queued yet) → `awaiting-flush` → (`awaiting-end`) → `idle` ⇄ `active` (a turn
 * scheduled, waiting for a slot, or running, or a failed task waiting for its next attempt), or →
 * `dropped` when `runOn: 'success'` refuses it.
 * `awaiting-end`: with `runOn: 'success'`, the connection closed before the handler ended the
 * response, so its final status is still to come.
 */
type Phase = 'open' | 'awaiting-flush' | 'awaiting-end' | 'idle' | 'active' | 'dropped';

/**
 * How long, with `runOn: 'success'`, a queue whose client left waits for the handler to end the
 * response and so set its final status. Long enough for a slow upstream call to fail (the handler
 * then answers 5xx and the tasks are dropped), short enough that responses nobody ends do not hold
 * their tasks for long. Past it the tasks are dropped: no status says the request succeeded.
 */
const END_WAIT_MS = 30_000;

/**
 * The tasks of one response, run one after another once the response has been flushed. A queue
 * runs in turns: a turn runs the tasks queued when it starts; tasks added meanwhile (by a task
 * re-adding itself, say) wait for the next turn, after the event loop has turned.
 * @internal
 */
export class ResponseQueue implements TaskQueue, Runnable, ActiveQueue, EndListener {
  nextWaiting: Runnable | undefined = undefined;
  readonly #scheduler: Scheduler;
  readonly #req: Request;
  readonly #res: Response;
  #phase: Phase = 'open';
  #head: Task | undefined = undefined;
  #tail: Task | undefined = undefined;
  #size = 0;
  /** The last task the current turn runs: the tail when the turn started. */
  #lastOfTurn: Task | undefined = undefined;
  /** Whether the async task now running is the last of its turn. */
  #turnEnding = false;
  /** With a two-phase transport, what holds the response back from its first byte. */
  readonly #hold: Hold | undefined = undefined;
  /** The defined tasks on their way to the transport; made by the first. */
  #handOff: HandOff | undefined = undefined;
  #onSettled: (() => void) | undefined = undefined;
  /** In `awaiting-end`, the timer that stops waiting for the handler's end. */
  #endTimer: NodeJS.Timeout | undefined = undefined;
  /** Tasks of this response queued, running or being handed off. */
  #pending = 0;
  /** The task that returned a promise and has not settled yet, and the way to give up on it. */
  #running: Task | undefined = undefined;
  #abandonRunning: Abandon | undefined = undefined;
  /** The failed task waiting for its next attempt (holding no slot), and the timer that queues it again. */
  #retrying: Task | undefined = undefined;
  #retryTimer: NodeJS.Timeout | undefined = undefined;
  #onRetry: ((task: Task, delayMs: number) => void) | undefined = undefined;
  /** Resolves the promise given to the platform's `waitUntil()`, where there is one. */
  #settledForPlatform: (() => void) | undefined = undefined;

  constructor(scheduler: Scheduler, req: Request, res: Response) {
    this.#scheduler = scheduler;
    this.#req = req;
    this.#res = res;
    // Before the middleware mounted later wraps res.end: this response may be held for a staging.
    if (scheduler.settings.staging !== undefined) this.#hold = holdResponse(req, res);
  }

  get size(): number {
    return this.#size + (this.#handOff?.size ?? 0);
  }

  add<A extends unknown[]>(fn: (this: void, ...args: A) => unknown, ...args: A): this {
    checkTaskFunction(fn);
    const durableName = definedName(fn);
    // A defined task keeps a copy of its arguments: what runs or is sent is what was checked.
    const captured = durableName === undefined ? args : captureJsonArgs(durableName, args);
    if (this.#phase === 'dropped') {
      debug('dropped %s: response status %d', taskName(fn), this.#res.statusCode);
      return this;
    }
    if (this.#scheduler.closed) {
      refuseAfterClose(fn, this.#req, this.#res, this.#scheduler.settings);
      return this;
    }
    // Everything that reads the function or the transport, and so can throw, before it counts.
    const task = new Task(fn as (...args: never[]) => unknown, captured);
    const { settings } = this.#scheduler;
    task.retry = durableName === undefined ? settings.retry : retryOf(fn) ?? settings.retry;
    const transport = durableName === undefined ? undefined : settings.transportFor(durableName);
    task.runner = transport?.kind === 'runner' ? transport : undefined;
    this.#scheduler.admit(fn);
    if (this.#pending++ === 0) {
      this.#scheduler.active.add(this);
      this.#settledForPlatform = keepPlatformAwake();
    }
    if (transport !== undefined && task.runner === undefined) {
      this.#handOff ??= new HandOff(settings, this.#req, this.#res, this.#hold, {
        settle: (count) => this.#settle(count),
        runHere: (tasks) => this.#runHere(tasks),
        refused: () => this.#verdict() === 'drop',
      });
      this.#handOff.add(task);
    } else {
      this.#append(task);
      this.#size++;
      if (this.#phase === 'idle') {
        // Never run a task inside the add() call that queued it.
        this.#phase = 'active';
        setImmediate(() => this.#startTurn());
      }
    }
    if (debug.enabled) debug('queued %s', taskName(fn));

    if (this.#phase === 'open') {
      this.#phase = 'awaiting-flush';
      whenFlushed(this.#res, () => this.#flushed());
    }
    return this;
  }

  /** The handler's `res.end()` has gone through, its client gone: decide on its status. */
  ended(): void {
    if (this.#phase === 'awaiting-end') {
      clearTimeout(this.#endTimer);
      setImmediate(() => this.#start()); // not inside the handler's end(): the handler goes on first
    }
  }

  /**
   * At the deadline of `close()`: reports every task still queued (in-process, or waiting for the
   * transport), the one waiting for its next attempt, and the one running, as a `ShutdownError`,
   * aborts the running task's signal, and counts them all settled. Tasks the transport already
   * has are left to its timeout.
   * @return how many tasks were abandoned
   */
  abandon(deadlineMs: number): number {
    const { settings } = this.#scheduler;
    if (this.#verdict() === 'undecided' && this.#running === undefined) {
      // No status says the request succeeded: dropped, as its tasks would be at the end of the wait.
      clearTimeout(this.#endTimer);
      this.#drop(`the handler had not ended the response at the close() deadline, ${deadlineMs} ms after close()`);
      return 0;
    }
    const retrying = this.#retrying;
    if (retrying !== undefined) {
      clearTimeout(this.#retryTimer);
      this.#retrying = this.#retryTimer = undefined;
      const attempts = `${retrying.attempt} of ${(retrying.retry as Retry).attempts} attempts`;
      const error = new ShutdownError(`Task ${taskName(retrying.fn)} was abandoned at shutdown: waiting for its next attempt ${deadlineMs} ms after close(), after ${attempts} had failed`);
      reportInScope(retrying, error, { req: this.#req, res: this.#res, settings });
      this.#settle(1);
    }
    const abandoned = retrying === undefined ? 0 : 1;
    const queued: Task[] = this.#handOff?.abandon() ?? [];
    for (let task = this.#head; task !== undefined; task = task.next) queued.push(task);
    this.#head = this.#tail = undefined;
    this.#size = 0;
    for (const task of queued) {
      const error = new ShutdownError(`Task ${taskName(task.fn)} was abandoned at shutdown: still queued ${deadlineMs} ms after close()`);
      reportInScope(task, error, { req: this.#req, res: this.#res, settings });
    }
    if (queued.length > 0) this.#settle(queued.length);
    const running = this.#running;
    if (running === undefined) return abandoned + queued.length;
    (this.#abandonRunning as Abandon)(new ShutdownError(`Task ${taskName(running.fn)} was abandoned at shutdown: still running ${deadlineMs} ms after close()`));
    return abandoned + queued.length + 1;
  }

  /**
   * Runs the turn's tasks while they settle synchronously; stops at the first one that returns a
   * promise, and ends the turn after its last task.
   */
  run(): void {
    const run: TaskRun = {
      req: this.#req,
      res: this.#res,
      settings: this.#scheduler.settings,
      traced: taskTracing.hasSubscribers,
      debugging: debug.enabled,
      settled: (this.#onSettled ??= () => this.#settledAsync()),
      retry: (this.#onRetry ??= (task, delayMs) => this.#retryLater(task, delayMs)),
    };
    for (let task = this.#head; task !== undefined; task = this.#head) {
      this.#head = task.next;
      if (this.#head === undefined) this.#tail = undefined;
      this.#size--;
      const lastOfTurn = task === this.#lastOfTurn;
      const abandon = runTask(task, run);
      if (abandon !== undefined) {
        this.#running = task;
        this.#abandonRunning = abandon;
        this.#turnEnding = lastOfTurn;
        return;
      }
      if (task === this.#retrying) {
        this.#waitToRetry();
        return;
      }
      this.#settle(1);
      if (lastOfTurn) break;
    }
    this.#endTurn();
  }

  /**
   * After an async task: end the turn, or give the slot back and queue up for it again, so that
   * with a `concurrency` limit the responses waiting take turns.
   */
  #settledAsync(): void {
    this.#running = this.#abandonRunning = undefined;
    if (this.#retrying !== undefined) {
      this.#waitToRetry();
      return;
    }
    this.#settle(1);
    if (this.#turnEnding || this.#head === undefined) {
      this.#endTurn();
    } else {
      this.#scheduler.releaseSlot();
      this.#scheduler.requestSlot(this);
    }
  }

  /** A failed task is to run again after `delayMs`: it stays pending, and the tasks behind it wait. */
  #retryLater(task: Task, delayMs: number): void {
    this.#retrying = task;
    this.#retryTimer = setTimeout(() => this.#retryNow(), delayMs);
  }

  /**
   * Ends the turn of a task waiting for its next attempt and frees its slot, while the queue stays
   * `active`: tasks added meanwhile wait behind it.
   */
  #waitToRetry(): void {
    this.#lastOfTurn = undefined;
    this.#turnEnding = false;
    this.#scheduler.releaseSlot();
  }

  /** The backoff is over: the task goes back first in line, and its queue asks for a slot. */
  #retryNow(): void {
    const task = this.#retrying as Task;
    this.#retrying = this.#retryTimer = undefined;
    task.attempt++;
    task.next = this.#head;
    this.#head = task;
    this.#tail ??= task;
    this.#size++;
    this.#startTurn();
  }

  /** Starts a turn: the tasks queued now, once a slot is free. Called with a task queued. */
  #startTurn(): void {
    this.#lastOfTurn = this.#tail;
    this.#scheduler.requestSlot(this);
  }

  /**
   * Frees the slot; tasks added during the turn get another after I/O and timers have had theirs,
   * so a task that re-adds itself cannot starve the server.
   */
  #endTurn(): void {
    this.#lastOfTurn = undefined;
    this.#turnEnding = false;
    if (this.#head === undefined) this.#phase = 'idle';
    else setImmediate(() => this.#startTurn());
    this.#scheduler.releaseSlot();
  }

  /** The response has been flushed, or its connection closed. Runs inside on-finished: must not throw. */
  #flushed(): void {
    if (this.#verdict() === 'undecided') {
      // Decide on the status the handler sends, not the 200 a client that left early would leave
      // behind. Once the headers are out, or end() called, the status can no longer change.
      this.#phase = 'awaiting-end';
      watchEnd(this.#res, this);
      this.#endTimer = setTimeout(() => this.#start(), END_WAIT_MS).unref();
      return;
    }
    this.#start();
  }

  /**
   * Releases or hands off the defined tasks and starts the first turn, unless `runOn: 'success'`
   * refuses the response.
   */
  #start(): void {
    const verdict = this.#verdict();
    if (verdict !== 'run') {
      this.#drop(verdict === 'drop'
        ? `response status ${this.#res.statusCode}`
        : `the handler did not end the response within ${END_WAIT_MS} ms of its client leaving`);
      return;
    }
    this.#handOff?.flushed();
    if (this.#head === undefined) {
      this.#phase = 'idle';
    } else {
      this.#phase = 'active';
      this.#startTurn();
    }
  }

  /**
   * Whether this response's tasks run, the one place `runOn` is decided: `run`; `drop` (`runOn:
   * 'success'` and a final status of 400 or more); or `undecided` (`runOn: 'success'`, and the
   * status can still change: the handler has not ended the response).
   */
  #verdict(): 'run' | 'drop' | 'undecided' {
    if (this.#scheduler.settings.runOn === 'always') return 'run';
    if (!statusIsFinal(this.#res)) return 'undecided';
    return this.#res.statusCode >= 400 ? 'drop' : 'run';
  }

  /** `runOn: 'success'` refuses the response: its tasks are dropped, unreported. */
  #drop(reason: string): void {
    debug('dropped %d task(s): %s', this.size, reason);
    this.#settle(this.#size);
    this.#head = this.#tail = undefined;
    this.#size = 0;
    this.#phase = 'dropped';
    this.#handOff?.drop();
  }

  /** Counts `count` of this response's tasks settled; a queue with none pending leaves the active set. */
  #settle(count: number): void {
    if (count === 0) return;
    this.#pending -= count;
    if (this.#pending === 0) {
      this.#scheduler.active.delete(this);
      this.#settledForPlatform?.();
      this.#settledForPlatform = undefined;
    }
    this.#scheduler.settle(count);
  }

  /** Appends `task` to the tasks that run in this process. */
  #append(task: Task): void {
    if (this.#tail === undefined) this.#head = task;
    else this.#tail.next = task;
    this.#tail = task;
  }

  /**
   * Runs here, after this response's other tasks, defined tasks the transport could not take; once
   * `close()` has given up or finished, nothing would run them: they are reported instead.
   */
  #runHere(tasks: Task[]): void {
    if (this.#scheduler.closed) {
      for (const task of tasks) {
        const error = new ShutdownError(`Task ${taskName(task.fn)} was abandoned at shutdown: its hand-off failed after close() had given up or finished`);
        reportInScope(task, error, { req: this.#req, res: this.#res, settings: this.#scheduler.settings });
      }
      this.#settle(tasks.length);
      return;
    }
    for (const task of tasks) this.#append(task);
    this.#size += tasks.length;
    if (this.#phase === 'idle') {
      this.#phase = 'active';
      this.#startTurn();
    }
  }
}

/**
 * Reports a task added after `close()` has resolved: nothing would run it before the process exits.
 * @private
 */
function refuseAfterClose(fn: (...args: never[]) => unknown, req: Request, res: Response, settings: Settings): void {
  const task = new Task(fn, []);
  const error = new ShutdownError(`Task ${taskName(fn)} was added after close() had given up or finished, so it does not run`);
  if (reportingRefusal) {
    // An onError that adds a task for each refusal would refuse and report forever.
    process.stderr.write(`express-background-tasks: ${error.message} (added by onError while it was reporting a refused task)\n`);
    return;
  }
  reportingRefusal = true;
  try {
    report(error, taskInfo(task, req, res, false), settings);
  } finally {
    reportingRefusal = false;
  }
}

/** Set while `onError` reports a refused task, so that a task it adds then is not reported again. */
let reportingRefusal = false;

/**
 * Where the platform may freeze the instance once the response is sent (Vercel), registers a
 * promise with the request context's `waitUntil()`, as `@vercel/functions` finds it, so the
 * instance lives until this response's tasks have settled.
 * @return the function that resolves that promise, or `undefined` off such a platform
 * @private
 */
function keepPlatformAwake(): (() => void) | undefined {
  try {
    const requestContext = (globalThis as { [REQUEST_CONTEXT]?: { get?: () => { waitUntil?: unknown } | undefined } })[REQUEST_CONTEXT];
    if (requestContext === undefined) return undefined;
    const waitUntil = requestContext.get?.()?.waitUntil;
    if (typeof waitUntil !== 'function') return undefined;
    let settled!: () => void;
    const tasksSettled = new Promise<void>((resolve) => (settled = resolve));
    // What it returns is observed too: a rejection of it must not go unhandled.
    const failed = (error: unknown): void => debug('the platform waitUntil() failed: %s', messageOf(error));
    void settleCall(() => (waitUntil as (promise: Promise<void>) => unknown)(tasksSettled), () => {}, failed);
    return settled;
  } catch (error) {
    debug('the platform request context failed: %s', messageOf(error));
    return undefined;
  }
}

/** Where Vercel's runtime puts the request context (`@vercel/functions` reads it from there). */
const REQUEST_CONTEXT = Symbol.for('@vercel/request-context');

import type { Socket } from 'node:net';
import type { Request, Response } from 'express';
import onFinished from 'on-finished';
import { checkJsonArgs, definedName } from './definition.js';
import { HandOffError, invalid, messageOf, ShutdownError } from './errors.js';
import type { Settings, TaskTransport } from './options.js';
import type { ActiveQueue, Runnable, Scheduler } from './scheduler.js';
import { type Abandon, debug, report, runTask, Task, taskInfo, taskName, type TaskRun, taskTracing, whenSettled } from './task.js';

/**
 * The queue at `res.locals.tasks`: functions to call after this response has been sent.
 * @public
 */
export interface TaskQueue {
  /**
   * Queues `fn(...args)` to run after the response has been flushed, after the tasks queued before it.
   * The arguments are type-checked against `fn`. A task made by `defineTask()` that a `transport`
   * stores is handed off instead, with the response's other defined tasks, in order; one that a
   * transport runs (on threads) runs there, in its turn.
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
 * scheduled, waiting for a slot, or running), or → `dropped` when `runOn: 'success'` refuses it.
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
export class ResponseQueue implements TaskQueue, Runnable, ActiveQueue {
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
  /** Defined tasks waiting to be handed to the transport; allocated by the first. */
  #toHandOff: Task[] | undefined = undefined;
  #onSettled: (() => void) | undefined = undefined;
  /** Tasks of this response queued, running or being handed off. */
  #pending = 0;
  /** The task that returned a promise and has not settled yet, and the way to give up on it. */
  #running: Task | undefined = undefined;
  #abandonRunning: Abandon | undefined = undefined;

  constructor(scheduler: Scheduler, req: Request, res: Response) {
    this.#scheduler = scheduler;
    this.#req = req;
    this.#res = res;
  }

  get size(): number {
    return this.#size;
  }

  add<A extends unknown[]>(fn: (this: void, ...args: A) => unknown, ...args: A): this {
    if (typeof fn !== 'function') {
      throw new TypeError(invalid('fn', 'a function', fn));
    }
    const durableName = definedName(fn);
    if (durableName !== undefined) checkJsonArgs(durableName, args);
    if (this.#phase === 'dropped') {
      debug('dropped %s: response status %d', taskName(fn), this.#res.statusCode);
      return this;
    }
    if (this.#scheduler.closed) {
      refuseAfterClose(fn, this.#req, this.#res, this.#scheduler.settings);
      return this;
    }
    this.#scheduler.admit(fn);
    if (this.#pending++ === 0) {
      this.#scheduler.active.add(this);
      if (this.#scheduler.closing) this.closing();
    }
    const task = new Task(fn as (...args: never[]) => unknown, args);
    const transport = durableName === undefined ? undefined : this.#scheduler.settings.transportFor(durableName);
    const handedOff = transport !== undefined && 'send' in transport;
    if (handedOff) {
      (this.#toHandOff ??= []).push(task);
    } else {
      task.runner = transport;
      this.#append(task);
    }
    this.#size++;
    if (debug.enabled) debug('queued %s', taskName(fn));

    if (this.#phase === 'open') {
      this.#phase = 'awaiting-flush';
      whenFlushed(this.#res, () => this.#flushed());
    } else if (this.#phase === 'idle' || this.#phase === 'active') {
      if (handedOff) {
        // Added after the flush: these go off in a job of their own.
        if (this.#toHandOff?.length === 1) setImmediate(() => this.#handOff());
      } else if (this.#phase === 'idle') {
        // Never run a task inside the add() call that queued it.
        this.#phase = 'active';
        setImmediate(() => this.#startTurn());
      }
    }
    return this;
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
    this.#settle(1);
    if (this.#turnEnding || this.#head === undefined) {
      this.#endTurn();
    } else {
      this.#scheduler.releaseSlot();
      this.#scheduler.requestSlot(this);
    }
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
    if (this.#scheduler.settings.dropOnFailure && !this.#res.writableEnded) {
      // Decide on the status the handler sends, not the 200 a client that left early would leave behind.
      this.#phase = 'awaiting-end';
      whenEnded(this.#res, () => this.#start());
      return;
    }
    this.#start();
  }

  /** Hands off the defined tasks and starts the first turn, unless `runOn: 'success'` refuses the response. */
  #start(): void {
    if (this.#scheduler.settings.dropOnFailure && (!this.#res.writableEnded || this.#res.statusCode >= 400)) {
      if (this.#res.writableEnded) debug('dropped %d task(s): response status %d', this.#size, this.#res.statusCode);
      else debug('dropped %d task(s): the handler did not end the response within %d ms of its client leaving', this.#size, END_WAIT_MS);
      this.#settle(this.#size);
      this.#head = this.#tail = undefined;
      this.#toHandOff = undefined;
      this.#size = 0;
      this.#phase = 'dropped';
      return;
    }
    if (this.#toHandOff !== undefined) this.#handOff();
    if (this.#head === undefined) {
      this.#phase = 'idle';
    } else {
      this.#phase = 'active';
      this.#startTurn();
    }
  }

  /**
   * At the start of `close()`: a response not sent yet tells its client to close the connection.
   */
  closing(): void {
    if (!this.#res.headersSent) this.#res.setHeader('Connection', 'close');
  }

  /**
   * At the deadline of `close()`: reports every task still queued, and the one running, as a
   * `ShutdownError`, aborts the running task's signal, and counts them all settled. Tasks being
   * handed off are left to their transport's timeout.
   * @return how many tasks were abandoned
   */
  abandon(deadlineMs: number): number {
    const { settings } = this.#scheduler;
    const queued: Task[] = [...(this.#toHandOff ?? [])];
    for (let task = this.#head; task !== undefined; task = task.next) queued.push(task);
    this.#head = this.#tail = this.#toHandOff = undefined;
    this.#size = 0;
    for (const task of queued) {
      const error = new ShutdownError(`Task ${taskName(task.fn)} was abandoned at shutdown: still queued ${deadlineMs} ms after close()`);
      task.runInAsyncScope(report, undefined, error, taskInfo(task, this.#req, this.#res, false), settings);
    }
    if (queued.length > 0) this.#settle(queued.length);
    const running = this.#running;
    if (running === undefined) return queued.length;
    (this.#abandonRunning as Abandon)(new ShutdownError(`Task ${taskName(running.fn)} was abandoned at shutdown: still running ${deadlineMs} ms after close()`));
    return queued.length + 1;
  }

  /** Counts `count` of this response's tasks settled; a queue with none pending leaves the active set. */
  #settle(count: number): void {
    this.#pending -= count;
    if (this.#pending === 0) this.#scheduler.active.delete(this);
    this.#scheduler.settle(count);
  }

  /** Appends `task` to the tasks that run in this process. */
  #append(task: Task): void {
    if (this.#tail === undefined) this.#head = task;
    else this.#tail.next = task;
    this.#tail = task;
  }

  /**
   * Sends the defined tasks queued so far to the transport. They stay pending (and `drain()`
   * waits) until the transport has settled, whatever it returns or throws.
   */
  #handOff(): void {
    const tasks = this.#toHandOff as Task[]; // called only when a task is waiting
    this.#toHandOff = undefined;
    this.#size -= tasks.length;
    // Set: tasks are put aside for a transport only when there is one.
    const transport = this.#scheduler.settings.transport as TaskTransport;
    let sent: unknown;
    try {
      // A defined task's function is named after it.
      sent = transport.send(tasks.map((task) => ({ name: task.fn.name, args: task.args })));
    } catch (error) {
      this.#handOffFailed(tasks, error);
      return;
    }
    void whenSettled(
      sent,
      () => {
        if (debug.enabled) debug('handed off %d task(s): %s', tasks.length, tasks.map((task) => taskName(task.fn)).join(', '));
        this.#settle(tasks.length);
      },
      (error) => this.#handOffFailed(tasks, error),
    );
  }

  /**
   * Reports each task the transport refused; with `fallback: 'in-process'`, then runs them here.
   */
  #handOffFailed(tasks: Task[], cause: unknown): void {
    const { settings } = this.#scheduler;
    const fallback = settings.runLocallyOnHandOffFailure;
    const reason = messageOf(cause);
    for (const task of tasks) {
      const name = taskName(task.fn);
      const error = new HandOffError(`Task ${name} could not be handed off${fallback ? ', so it runs in this process' : ''}: ${reason}`, { cause });
      task.runInAsyncScope(report, undefined, error, taskInfo(task, this.#req, this.#res, false), settings);
    }
    if (!fallback) {
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
  const error = new ShutdownError(`Task ${taskName(fn)} was added after close() had resolved, so it does not run`);
  report(error, taskInfo(task, req, res, false), settings);
}

/**
 * Calls `callback` once every byte of `res` has been handed to the OS, or its connection closed.
 * on-finished counts a response as finished as soon as `res.end()` was called, so a task queued
 * after `res.json()` would start while a slow client is still reading; for that case wait for
 * the response's `close`, which Node emits after `finish` or when the connection drops.
 * @private
 */
function whenFlushed(res: Response, callback: () => void): void {
  if (res.writableFinished || res.destroyed) {
    setImmediate(callback);
    return;
  }
  if (res.socket === null) callback = orOnConnectionClose(res, callback);
  if (!res.writableEnded) onFinished(res, callback);
  else res.once('close', callback);
}

/**
 * Calls `callback` once the handler has called `res.end()` (directly or through `send`, `json`,
 * `redirect`…), or after `END_WAIT_MS` if it never does.
 * @private
 */
function whenEnded(res: Response, callback: () => void): void {
  const end = res.end;
  let ended = false;
  const endThenDecide = function (this: Response, ...args: Parameters<Response['end']>): Response {
    try {
      return end.apply(this, args);
    } finally {
      notify();
    }
  } as Response['end'];
  const notify = (): void => {
    if (ended) return;
    ended = true;
    clearTimeout(timer);
    if (res.end === endThenDecide) res.end = end;
    callback();
  };
  const timer = setTimeout(notify, END_WAIT_MS).unref();
  res.end = endThenDecide;
}

/**
 * A pipelined response waits for the responses before it to release the socket. If the client
 * goes away meanwhile, Node never gives it the socket nor emits its `close`: only the
 * connection's `close` tells. Wraps `callback` to run once, on whichever comes first.
 * @private
 */
function orOnConnectionClose(res: Response, callback: () => void): () => void {
  const connection = res.req.socket;
  let called = false;
  const once = (): void => {
    if (called) return;
    called = true;
    forgetCloseWaiter(connection, once);
    callback();
  };
  if (connection.destroyed) setImmediate(once);
  else addCloseWaiter(connection, once);
  return once;
}

/**
 * The callbacks waiting for each connection's `close`: one listener per connection, however many
 * pipelined responses wait on it, so no client can make it warn of a leak.
 * @private
 */
const closeWaiters = new WeakMap<Socket, Set<() => void>>();

/**
 * Calls `waiter` when `connection` closes.
 * @private
 */
function addCloseWaiter(connection: Socket, waiter: () => void): void {
  let waiters = closeWaiters.get(connection);
  if (waiters === undefined) {
    waiters = new Set();
    closeWaiters.set(connection, waiters);
    connection.once('close', runCloseWaiters);
  }
  waiters.add(waiter);
}

/**
 * Stops waiting for `connection` to close; the last waiter removes the listener.
 * @private
 */
function forgetCloseWaiter(connection: Socket, waiter: () => void): void {
  const waiters = closeWaiters.get(connection);
  if (waiters === undefined || !waiters.delete(waiter) || waiters.size !== 0) return;
  closeWaiters.delete(connection);
  connection.removeListener('close', runCloseWaiters);
}

/**
 * The one `close` listener of a connection with waiters.
 * @private
 */
function runCloseWaiters(this: Socket): void {
  const waiters = closeWaiters.get(this);
  closeWaiters.delete(this);
  if (waiters !== undefined) for (const waiter of waiters) waiter();
}

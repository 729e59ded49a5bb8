import type { Request, Response } from 'express';
import onFinished from 'on-finished';
import { captureJsonArgs, checkTaskFunction, definedName } from './definition.js';
import { describeError, HandOffError } from './errors.js';
import type { TaskTransport } from './options.js';
import type { Runnable, Scheduler } from './scheduler.js';
import { debug, report, runTask, Task, taskName, taskTracing } from './task.js';

/**
 * The queue at `res.locals.tasks`: functions to call after this response has been sent.
 * @public
 */
export interface TaskQueue {
  /**
   * Queues `fn(...args)` to run after the response has been flushed, after the tasks queued before it.
   * The arguments are type-checked against `fn`. With a `transport`, a task made by `defineTask()`
   * is handed off instead, with the response's other defined tasks, in order.
   * @param fn - a function, sync or async; called with `this` undefined, so bind methods first
   * @param args - the arguments to call it with. When `fn` is a defined task: JSON values only,
   *   copied here, so that what runs or is sent is what was checked
   * @return this queue, for chaining
   * @throws {TypeError} when `fn` is not a function, or is a generator function (its body would
   *   never run), or is a defined task given arguments that are not JSON
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
 * `open` (nothing queued yet) → `awaiting-flush` → `idle` ⇄ `active` (starting, waiting for a slot,
 * or running), or → `dropped` when `runOn: 'success'` refuses a failed response.
 */
type Phase = 'open' | 'awaiting-flush' | 'idle' | 'active' | 'dropped';

/**
 * The tasks of one response, run one after another once the response has been flushed.
 * @internal
 */
export class ResponseQueue implements TaskQueue, Runnable {
  nextWaiting: Runnable | undefined = undefined;
  readonly #scheduler: Scheduler;
  readonly #req: Request;
  readonly #res: Response;
  #phase: Phase = 'open';
  #head: Task | undefined = undefined;
  #tail: Task | undefined = undefined;
  #size = 0;
  /** Defined tasks waiting to be handed to the transport; allocated by the first. */
  #toHandOff: Task[] | undefined = undefined;
  #onSettled: (() => void) | undefined = undefined;

  constructor(scheduler: Scheduler, req: Request, res: Response) {
    this.#scheduler = scheduler;
    this.#req = req;
    this.#res = res;
  }

  get size(): number {
    return this.#size;
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
    this.#scheduler.admit(fn);
    const task = new Task(fn as (...args: never[]) => unknown, captured);
    const handedOff = durableName !== undefined && this.#scheduler.settings.transport !== undefined;
    if (handedOff) (this.#toHandOff ??= []).push(task);
    else this.#append(task);
    this.#size++;
    if (debug.enabled) debug('queued %s', taskName(fn));

    if (this.#phase === 'open') {
      this.#phase = 'awaiting-flush';
      whenFlushed(this.#res, () => this.#flushed());
    } else if (handedOff && this.#phase !== 'awaiting-flush') {
      // Added after the flush: these go off in a job of their own.
      if (this.#toHandOff?.length === 1) setImmediate(() => this.#handOff());
    } else if (this.#phase === 'idle') {
      // Never run a task inside the add() call that queued it.
      this.#phase = 'active';
      setImmediate(() => this.#scheduler.requestSlot(this));
    }
    return this;
  }

  /**
   * Runs queued tasks while they settle synchronously; stops at the first one that returns a
   * promise, and gives up its slot when the queue is empty.
   */
  run(): void {
    const { settings } = this.#scheduler;
    const traced = taskTracing.hasSubscribers;
    const debugging = debug.enabled;
    this.#onSettled ??= () => this.#settledAsync();
    for (let task = this.#head; task !== undefined; task = this.#head) {
      this.#head = task.next;
      if (this.#head === undefined) this.#tail = undefined;
      this.#size--;
      if (!runTask(task, this.#req, settings, this.#onSettled, traced, debugging)) return;
      this.#scheduler.settle(1);
    }
    this.#phase = 'idle';
    this.#scheduler.releaseSlot();
  }

  /**
   * After an async task: give the slot back and, if more tasks are queued, queue up for it again,
   * so that with a `concurrency` limit the responses waiting take turns.
   */
  #settledAsync(): void {
    this.#scheduler.settle(1);
    this.#scheduler.releaseSlot();
    if (this.#head === undefined) this.#phase = 'idle';
    else this.#scheduler.requestSlot(this);
  }

  /** The response has been flushed, or its connection closed. Runs inside on-finished: must not throw. */
  #flushed(): void {
    if (this.#scheduler.settings.dropOnFailure && this.#res.statusCode >= 400) {
      debug('dropped %d task(s): response status %d', this.#size, this.#res.statusCode);
      this.#scheduler.settle(this.#size);
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
      this.#scheduler.requestSlot(this);
    }
  }

  /** Appends `task` to the tasks that run in this process. */
  #append(task: Task): void {
    if (this.#tail === undefined) this.#head = task;
    else this.#tail.next = task;
    this.#tail = task;
  }

  /**
   * Sends the defined tasks queued so far to the transport. They stay pending (and `drain()`
   * waits) until the transport has settled.
   */
  #handOff(): void {
    const tasks = this.#toHandOff as Task[]; // called only when a task is waiting
    this.#toHandOff = undefined;
    this.#size -= tasks.length;
    // Set: tasks are put aside for a transport only when there is one.
    const transport = this.#scheduler.settings.transport as TaskTransport;
    let sent: PromiseLike<unknown>;
    try {
      // A defined task's function is named after it.
      sent = transport.send(tasks.map((task) => ({ name: task.fn.name, args: task.args })));
    } catch (error) {
      sent = Promise.reject(error);
    }
    Promise.resolve(sent).then(
      () => {
        if (debug.enabled) debug('handed off %d task(s): %s', tasks.length, tasks.map((task) => taskName(task.fn)).join(', '));
        this.#scheduler.settle(tasks.length);
      },
      (error: unknown) => this.#handOffFailed(tasks, error),
    );
  }

  /**
   * Reports each task the transport refused; with `fallback: 'in-process'`, then runs them here.
   */
  #handOffFailed(tasks: Task[], cause: unknown): void {
    const { settings } = this.#scheduler;
    const fallback = settings.runLocallyOnHandOffFailure;
    for (const task of tasks) {
      const name = taskName(task.fn);
      const error = new HandOffError(
        `Task ${name} could not be handed off${fallback ? ', so it runs in this process' : ''}: ` +
          (cause instanceof Error ? cause.message : describeError(cause)),
        { cause },
      );
      task.runInAsyncScope(report, undefined, error, name, this.#req, settings);
    }
    if (!fallback) {
      this.#scheduler.settle(tasks.length);
      return;
    }
    for (const task of tasks) this.#append(task);
    this.#size += tasks.length;
    if (this.#phase === 'idle') {
      this.#phase = 'active';
      this.#scheduler.requestSlot(this);
    }
  }
}

/**
 * Calls `callback` once every byte of `res` has been handed to the OS, or its connection closed.
 * on-finished counts a response as finished as soon as `res.end()` was called, so a task queued
 * after `res.json()` would start while a slow client is still reading; for that case wait for
 * the response's `close`, which Node emits after `finish` or when the connection drops.
 * @private
 */
function whenFlushed(res: Response, callback: () => void): void {
  if (res.socket === null) callback = orOnConnectionClose(res, callback);
  if (!res.writableEnded) onFinished(res, callback);
  else if (res.writableFinished || res.destroyed) setImmediate(callback);
  else res.once('close', callback);
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
    connection.removeListener('close', once);
    callback();
  };
  if (connection.destroyed) setImmediate(once);
  else connection.once('close', once);
  return once;
}

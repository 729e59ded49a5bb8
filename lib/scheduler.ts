import { QueueFullError } from './errors.js';
import type { Settings } from './options.js';
import { taskName } from './task.js';

/**
 * What the scheduler needs of a response's queue: a way to start it and a link for the wait list.
 * @internal
 */
export interface Runnable {
  /** Runs the queue's tasks; calls `releaseSlot()` when it stops. */
  run(): void;
  /** The next queue waiting for a slot. */
  nextWaiting: Runnable | undefined;
}

/**
 * What `close()` needs of a response's queue that holds pending tasks.
 * @internal
 */
export interface ActiveQueue {
  /**
   * Reports the queue's tasks as abandoned and stops waiting for them.
   * @param deadlineMs - how long `close()` waited, for the reports
   * @return how many tasks were abandoned
   */
  abandon(deadlineMs: number): number;
}

/**
 * The state one middleware instance shares across its responses: how many tasks are pending,
 * which queues hold one of the `concurrency` slots, which wait for one, and who awaits `drain()`.
 * @internal
 */
export class Scheduler {
  /** Tasks queued or running, across all responses. */
  pending = 0;
  /** Tasks settled (run, failed, handed off, dropped or abandoned) since the middleware was made. */
  settledCount = 0;
  /** The queues with a pending task. */
  readonly active = new Set<ActiveQueue>();
  /** Set once `close()` has drained or reached its deadline: tasks added later are reported, not run, and no queue starts. */
  closed = false;
  readonly settings: Settings;
  #running = 0;
  #waitingHead: Runnable | undefined = undefined;
  #waitingTail: Runnable | undefined = undefined;
  #starting = false;
  #idle: Promise<void> | undefined = undefined;
  #resolveIdle: (() => void) | undefined = undefined;

  constructor(settings: Settings) {
    this.settings = settings;
  }

  /**
   * Counts one more pending task: `fn`, about to be queued.
   * @throws {QueueFullError} when `maxPending` tasks are already pending
   */
  admit(fn: { name: string }): void {
    if (this.pending >= this.settings.maxPending) {
      throw new QueueFullError(`Cannot queue task ${taskName(fn)}: ${this.pending} tasks are pending, the limit set by \`maxPending\``);
    }
    this.pending++;
  }

  /**
   * Counts `count` tasks as settled (or dropped); resolves `drain()` when none is left.
   */
  settle(count: number): void {
    this.pending -= count;
    this.settledCount += count;
    if (this.pending === 0 && this.#resolveIdle !== undefined) {
      const resolveIdle = this.#resolveIdle;
      this.#idle = this.#resolveIdle = undefined;
      resolveIdle();
    }
  }

  /**
   * Runs `queue` now if a slot is free, otherwise once the queues waiting before it have had theirs.
   */
  requestSlot(queue: Runnable): void {
    if (this.#waitingTail === undefined) this.#waitingHead = queue;
    else this.#waitingTail.nextWaiting = queue;
    this.#waitingTail = queue;
    this.#startWaiting();
  }

  /**
   * Frees the slot of a queue that stopped running, and hands it to the longest-waiting queue.
   */
  releaseSlot(): void {
    this.#running--;
    this.#startWaiting();
  }

  /**
   * @return a promise that resolves once no task is pending
   */
  drain(): Promise<void> {
    if (this.pending === 0) return Promise.resolve();
    return (this.#idle ??= new Promise((resolve) => {
      this.#resolveIdle = resolve;
    }));
  }

  /**
   * Starts waiting queues while slots are free. A queue may finish synchronously and release its
   * slot from inside `run()`; the `#starting` guard turns that recursion into this loop, so a long
   * line of synchronous queues cannot overflow the stack.
   */
  #startWaiting(): void {
    if (this.#starting) return;
    this.#starting = true;
    try {
      while (this.#running < this.settings.concurrency && this.#waitingHead !== undefined && !this.closed) {
        const queue = this.#waitingHead;
        this.#waitingHead = queue.nextWaiting;
        if (this.#waitingHead === undefined) this.#waitingTail = undefined;
        queue.nextWaiting = undefined;
        this.#running++;
        queue.run();
      }
    } finally {
      this.#starting = false;
    }
  }
}

import type { Request, Response } from 'express';
import { HandOffError, messageOf } from './errors.js';
import type { Hold } from './lifecycle.js';
import type { Settings, TaskStaging, TaskTransport } from './options.js';
import { debug, handedOff, reportInScope, settleCall, type Task, taskName } from './task.js';

/**
 * What the queue of a response does for its hand-off.
 * @internal
 */
export interface ResponseSide {
  /** Counts tasks as settled. */
  settle(count: number): void;
  /** Runs tasks the transport could not take in this process. */
  runHere(tasks: Task[]): void;
  /** Whether `runOn: 'success'` refuses the response, now that its status is final. */
  refused(): boolean;
}

/**
 * Where the staged tasks of a response stand: `none` staged; `staging` (the transport has them,
 * the response's end waits); `stored` (waiting for the flush, or for `runOn`'s verdict);
 * `releasing` (until `release()` settles); `over` (released or discarded, or the staging failed).
 */
type Staging = 'none' | 'staging' | 'stored' | 'releasing' | 'over';

/**
 * The defined tasks of one response on their way to the `transport`. With a two-phase transport,
 * the tasks queued before the response's first byte are staged while the response is held back
 * from it, then released once the response has been flushed, or discarded when `runOn: 'success'`
 * refuses it. Tasks queued later, or with a one-phase transport, are sent once it has been flushed
 * and what was staged has been released (or its staging failed): never before the staged tasks.
 * Tasks the transport could not take are reported as `HandOffError`s and, with `fallback:
 * 'in-process'`, given back to run here. A task counts as pending until the transport has settled.
 * @internal
 */
export class HandOff {
  readonly #settings: Settings;
  readonly #req: Request;
  readonly #res: Response;
  /** What the response's queue does for its hand-off. */
  readonly #response: ResponseSide;
  /** Defined tasks not given to the transport yet. */
  #queued: Task[] = [];
  #staging: Staging = 'none';
  #staged: Task[] = [];
  #receipt: unknown = undefined;
  /** What to do with the staged tasks once stored: decided by the flush (or `runOn`) before they were. */
  #thenStaged: 'release' | 'discard' | undefined = undefined;
  /** The response's hold, with a two-phase transport. */
  readonly #hold: Hold | undefined;
  /** Whether the response is held back from its first byte until the staging settles. */
  #holding = false;
  /** Whether the response has been flushed and accepted: tasks queued from now on are sent, after any staging. */
  #sending = false;

  constructor(settings: Settings, req: Request, res: Response, hold: Hold | undefined, response: ResponseSide) {
    this.#hold = hold;
    this.#settings = settings;
    this.#req = req;
    this.#res = res;
    this.#response = response;
  }

  /** Defined tasks not given to the transport yet. */
  get size(): number {
    return this.#queued.length;
  }

  /**
   * Queues a defined task; once the response has been flushed, it goes off in a call of its own.
   * With a two-phase transport, the first task queued before the response has started holds the
   * response back from its first byte, when the tasks are staged.
   */
  add(task: Task): void {
    if (this.#queued.push(task) === 1 && this.#sending) setImmediate(() => this.#send());
    // Once the response has started, too late to hold it: sent after the flush.
    if (this.#hold === undefined || this.#holding || this.#staging !== 'none' || this.#sending) return;
    this.#holding = this.#hold.begin(() => this.#stage());
  }

  /**
   * The response is about to send its first byte: stage the tasks queued so far. A response
   * `runOn: 'success'` will refuse stores nothing, and goes at once. After an early close the
   * response counts as flushed already: its tasks are sent instead.
   */
  #stage(): void {
    const staging = this.#settings.staging;
    if (staging === undefined || this.#queued.length === 0 || this.#sending || this.#response.refused()) {
      this.#letEndThrough(true);
      return;
    }
    const tasks = this.#queued;
    this.#queued = [];
    this.#staged = tasks;
    this.#staging = 'staging';
    const { stagingTimeout } = this.#settings;
    const timer = setTimeout(() => this.#stagingFailed(new Error(`the transport did not stage it within ${stagingTimeout} ms`)), stagingTimeout);
    void settleCall(
      () => staging.stage(tasks.map(handedOff)),
      (receipt) => {
        clearTimeout(timer);
        this.#stored(receipt);
      },
      (error) => {
        clearTimeout(timer);
        this.#stagingFailed(error);
      },
    );
  }

  /**
   * The response has been flushed (or its connection closed) and its tasks are to run: release
   * what is staged, once stored, and send the rest after it.
   */
  flushed(): void {
    this.#sending = true;
    this.#afterStaging('release');
    this.#send();
  }

  /**
   * At the `close()` deadline: gives up the tasks not given to the transport yet. Those it has
   * (staged, or being sent) are left to it and its timeout.
   * @return the tasks given up, for the caller to report
   */
  abandon(): Task[] {
    const tasks = this.#queued;
    this.#queued = [];
    return tasks;
  }

  /** `runOn: 'success'` refused the response: forget its tasks, and discard those staged, once stored. */
  drop(): void {
    this.#response.settle(this.#queued.length);
    this.#queued = [];
    this.#afterStaging('discard');
  }

  /** Releases or discards the staged tasks now if they are stored, otherwise once they are. */
  #afterStaging(outcome: 'release' | 'discard'): void {
    if (this.#staging === 'stored') this.#finishStaging(outcome);
    else if (this.#staging === 'staging') this.#thenStaged = outcome;
  }

  /** The transport has stored the staged tasks: let the response's end through. */
  #stored(receipt: unknown): void {
    if (this.#staging !== 'staging') {
      // Stored after the timeout: they were reported and dealt with as not handed off.
      debug('discarding tasks the transport staged after its timeout');
      this.#call('discard', receipt, []);
      return;
    }
    if (debug.enabled) debug('staged %d task(s): %s', this.#staged.length, names(this.#staged));
    this.#staging = 'stored';
    this.#receipt = receipt;
    this.#letEndThrough(true);
    if (this.#thenStaged !== undefined) this.#finishStaging(this.#thenStaged);
  }

  /**
   * The transport refused to stage the tasks, or timed out: let the response's end through, or
   * abort it (`stagingFailure`), then report the tasks.
   */
  #stagingFailed(cause: unknown): void {
    if (this.#staging !== 'staging') return;
    this.#staging = 'over';
    const tasks = this.#staged;
    this.#staged = [];
    if (this.#thenStaged === 'discard') {
      // Refused by `runOn: 'success'` meanwhile: nothing to report, nothing to run.
      this.#letEndThrough(true);
      this.#response.settle(tasks.length);
      return;
    }
    const aborted = this.#holding && this.#settings.stagingFailure === 'abort';
    this.#letEndThrough(!aborted);
    this.#failed(tasks, cause, aborted);
    // Then the tasks queued since: should their send fail too, they fall back behind these.
    if (this.#sending) this.#send();
  }

  /** Releases or discards the stored tasks. */
  #finishStaging(outcome: 'release' | 'discard'): void {
    this.#staging = outcome === 'release' ? 'releasing' : 'over';
    this.#call(outcome, this.#receipt, this.#staged);
    this.#staged = [];
    this.#receipt = undefined;
  }

  /**
   * Calls `release()` or `discard()`; `tasks` stay pending until it settles. When it fails the tasks
   * stay staged, and their lease runs them. Once a release has settled, the tasks queued since go.
   */
  #call(outcome: 'release' | 'discard', receipt: unknown, tasks: Task[]): void {
    const staging = this.#settings.staging as TaskStaging; // only staged tasks get here
    const done = (): void => {
      this.#response.settle(tasks.length);
      if (this.#staging !== 'releasing') return;
      this.#staging = 'over';
      this.#send();
    };
    const failed = (error: unknown): void => {
      debug('%s failed: %s; the staged task(s) run when their lease runs out', outcome, messageOf(error));
      done();
    };
    void settleCall(
      () => (outcome === 'release' ? staging.release(receipt) : staging.discard(receipt)),
      () => {
        if (debug.enabled && tasks.length > 0) debug('%s %d task(s): %s', outcome === 'release' ? 'released' : 'discarded', tasks.length, names(tasks));
        done();
      },
      failed,
    );
  }

  /**
   * Sends the tasks queued so far to the transport. While the staged tasks are not released yet
   * they wait: a transport may store a send before a release called earlier (BullMQ's promotions
   * go a turn later), and its workers would then run them before the tasks added before them.
   */
  #send(): void {
    const tasks = this.#queued;
    if (tasks.length === 0) return; // given up on by close() since this send was scheduled
    if (this.#staging === 'staging' || this.#staging === 'releasing') return; // sent once settled
    this.#queued = [];
    // Set: tasks are put aside for a transport only when there is one.
    const transport = this.#settings.transport as TaskTransport;
    void settleCall(
      () => transport.send(tasks.map(handedOff)),
      () => {
        if (debug.enabled) debug('handed off %d task(s): %s', tasks.length, names(tasks));
        this.#response.settle(tasks.length);
      },
      (error) => this.#failed(tasks, error, false),
    );
  }

  /**
   * Reports each task the transport could not take; with `fallback: 'in-process'`, then runs them here.
   * @param aborted - whether the response was aborted for it
   */
  #failed(tasks: Task[], cause: unknown, aborted: boolean): void {
    const settings = this.#settings;
    const inProcess = settings.fallback === 'in-process';
    const reason = messageOf(cause);
    const consequence = aborted
      ? `, so its response was aborted${inProcess ? ' and it runs in this process' : ''}`
      : inProcess ? ', so it runs in this process' : '';
    for (const task of tasks) {
      const name = taskName(task.fn);
      const error = new HandOffError(`Task ${name} could not be handed off${consequence}: ${reason}`, { cause });
      reportInScope(task, error, { req: this.#req, res: this.#res, settings });
    }
    if (inProcess) this.#response.runHere(tasks);
    else this.#response.settle(tasks.length);
  }

  /** Stops holding the response back: sends what it wrote, or aborts it. */
  #letEndThrough(send: boolean): void {
    if (!this.#holding) return;
    this.#holding = false;
    this.#hold?.release(send);
  }
}

/**
 * @return the tasks' names, for `debug`
 * @private
 */
function names(tasks: readonly Task[]): string {
  return tasks.map((task) => taskName(task.fn)).join(', ');
}

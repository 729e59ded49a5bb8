import type { Socket } from 'node:net';
import type { Request, Response } from 'express';
import { HandOffError, messageOf } from './errors.js';
import type { Settings, TaskStaging, TaskTransport } from './options.js';
import { debug, handedOff, reportInScope, settleCall, type Task, taskName } from './task.js';

/**
 * Where the staged tasks of a response stand: `none` staged; `staging` (the transport has them,
 * the response's end waits); `stored` (waiting for the flush, or for `runOn`'s verdict);
 * `releasing` (until `release()` settles); `over` (released or discarded, or the staging failed).
 */
type Staging = 'none' | 'staging' | 'stored' | 'releasing' | 'over';

/**
 * The defined tasks of one response on their way to the `transport`. With a two-phase transport,
 * the tasks queued when the handler ends the response are staged while the bytes of that end wait
 * here, then released once the response has been flushed, or discarded when `runOn: 'success'`
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
  /** Counts tasks as settled. */
  readonly #settle: (count: number) => void;
  /** Runs tasks the transport could not take in this process. */
  readonly #runHere: (tasks: Task[]) => void;
  /** Defined tasks not given to the transport yet. */
  #queued: Task[] = [];
  #staging: Staging = 'none';
  #staged: Task[] = [];
  #receipt: unknown = undefined;
  /** What to do with the staged tasks once stored: decided by the flush (or `runOn`) before they were. */
  #thenStaged: 'release' | 'discard' | undefined = undefined;
  /** Whether the bytes of the response's end are held until the staging settles. */
  #holding = false;
  /** Whether the response has been flushed and accepted: tasks queued from now on are sent, after any staging. */
  #sending = false;

  constructor(settings: Settings, req: Request, res: Response, settle: (count: number) => void, runHere: (tasks: Task[]) => void) {
    this.#settings = settings;
    this.#req = req;
    this.#res = res;
    this.#settle = settle;
    this.#runHere = runHere;
  }

  /** Defined tasks not given to the transport yet. */
  get size(): number {
    return this.#queued.length;
  }

  /** Queues a defined task; once the response has been flushed, it goes off in a call of its own. */
  add(task: Task): void {
    if (this.#queued.push(task) === 1 && this.#sending) setImmediate(() => this.#send());
  }

  /**
   * The handler is ending the response: with a two-phase transport and tasks to stage, hold the
   * bytes the end is about to write.
   */
  ending(): void {
    if (this.#settings.staging === undefined || this.#queued.length === 0 || this.#sending) return;
    const connection = this.#req.socket as Socket | null; // null only for a request made up in a test
    if (connection === null || this.#res.destroyed) return;
    holdEnd(connection, this.#res);
    this.#holding = true;
  }

  /**
   * The handler's end has gone through: stage the tasks queued so far. A response `runOn:
   * 'success'` will refuse stores nothing, and its end goes at once. After an early close the
   * response counts as flushed already: its tasks are sent instead.
   */
  ended(): void {
    const staging = this.#settings.staging;
    if (staging === undefined || this.#queued.length === 0 || this.#sending) return;
    if (this.#settings.runOn === 'success' && this.#res.statusCode >= 400) {
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
    this.#settle(this.#queued.length);
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
      this.#settle(tasks.length);
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
      this.#settle(tasks.length);
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
        this.#settle(tasks.length);
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
    if (inProcess) this.#runHere(tasks);
    else this.#settle(tasks.length);
  }

  /** Stops holding the bytes of the response's end: sends them, or aborts the response. */
  #letEndThrough(send: boolean): void {
    if (!this.#holding) return;
    this.#holding = false;
    letEndThrough(this.#req.socket, this.#res, send);
  }
}

/**
 * @return the tasks' names, for `debug`
 * @private
 */
function names(tasks: readonly Task[]): string {
  return tasks.map((task) => taskName(task.fn)).join(', ');
}

/**
 * The responses of a connection whose end is held, each with the `write()` calls kept back, and the
 * connection's own `write`, which one wrapper per connection calls for everything else.
 * @private
 */
interface Holds {
  readonly write: Socket['write'];
  readonly held: Map<Response, unknown[][]>;
}

/**
 * The connections that have had a response whose end was held. The wrapper of their `write` stays
 * once installed: taking it off again would change the socket's shape after each response, which
 * slows down every access Node's HTTP code makes to the socket.
 * @private
 */
const holding = new WeakMap<Socket, Holds>();

/** How many responses have their end held, across all connections. */
let heldEnds = 0;

/**
 * @return whether some response's end is held: its connection must not be closed as idle, which
 *   Node would, as its response counts as finished
 * @internal
 */
export function holdingAnEnd(): boolean {
  return heldEnds > 0;
}

/**
 * Keeps back what `res` writes to its connection from now on: the bytes of its `end()`, and of an
 * end that another wrapper of `res.end` (compression, a session store) writes later. `res.end()`
 * itself runs as Node runs it (headers sent, its callback called on `finish`), and `finish` comes
 * once the bytes have been written. A pipelined response that has no socket yet is caught when it
 * gets it; the responses before it on the connection write as usual.
 * @private
 */
function holdEnd(connection: Socket, res: Response): void {
  let holds = holding.get(connection);
  if (holds === undefined) {
    holds = { write: connection.write, held: new Map() };
    holding.set(connection, holds);
    connection.write = writeOrHold as Socket['write'];
  }
  holds.held.set(res, []);
  heldEnds++;
}

/**
 * The `write` of a connection that has had a held response: keeps back what a held response writes.
 * @private
 */
function writeOrHold(this: Socket, ...args: unknown[]): boolean {
  const holds = holding.get(this) as Holds; // installed along with its entry, which stays
  if (holds.held.size !== 0) {
    for (const [res, held] of holds.held) {
      if (res.socket === this) {
        held.push(args);
        return true;
      }
    }
  }
  return (holds.write as (...args: unknown[]) => boolean).apply(this, args);
}

/**
 * Writes what `res` was kept from writing, unless its connection has closed meanwhile; or, when
 * `send` is false, destroys the response, so that its client never receives it in full.
 * @private
 */
function letEndThrough(connection: Socket, res: Response, send: boolean): void {
  const holds = holding.get(connection) as Holds; // held by the caller
  const held = holds.held.get(res) as unknown[][];
  holds.held.delete(res);
  heldEnds--;
  if (!send) {
    res.destroy();
  } else if (!connection.destroyed && held.length > 0) {
    // In one go, as end() itself writes them.
    connection.cork();
    for (const args of held) (holds.write as (...args: unknown[]) => boolean).apply(connection, args);
    connection.uncork();
  }
}

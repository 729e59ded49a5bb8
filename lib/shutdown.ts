import type { Server as HttpServer } from 'node:http';
import { Server, type Socket } from 'node:net';
import { checkOptions, checkTimeout, type TaskRunner } from './options.js';
import type { Scheduler } from './scheduler.js';
import { debug, settleCall, withDeadline } from './task.js';
import { describeError, invalid } from './errors.js';

/**
 * Options of `close()`.
 * @public
 */
export interface CloseOptions {
  /**
   * The server to close with the tasks: `close()` then stops it accepting connections, closes each
   * keep-alive connection as soon as its last response has been flushed (never cutting a response,
   * pipelined ones and slow readers included), and waits (within `timeout`) for the requests in flight, whose
   * handlers may still add tasks, before it waits for the tasks. Without it, close the server
   * yourself first (`server.close()`, terminus, http-terminator), and call `close()` once the
   * requests in flight are done.
   * @default none
   */
  readonly server?: Server | undefined;
  /**
   * Milliseconds to wait for the pending tasks before giving up on them: each still queued or
   * running is then reported to `onError` as a `ShutdownError`, running tasks made by
   * `withSignal()` have their signal aborted, and tasks running on a thread pool are stopped.
   * Runner transports (the thread pool) are then closed, waiting 1 s for them at the most.
   * Keep it below your platform's grace period (Kubernetes' `terminationGracePeriodSeconds`, 30 s
   * by default), minus the time the server takes to answer the requests in flight.
   * @default 10000
   */
  readonly timeout?: number | undefined;
}

/**
 * What `close()` resolves with.
 * @public
 */
export interface CloseSummary {
  /** Whether every task settled before the deadline. */
  readonly drained: boolean;
  /** Tasks that settled between the call and the resolution: ran, failed, timed out, handed off or dropped. */
  readonly settled: number;
  /** Tasks given up on at the deadline, each reported as a `ShutdownError`. */
  readonly abandoned: number;
  /** Tasks still pending at the resolution: hand-offs their transport had not settled yet. */
  readonly pending: number;
}

/**
 * Shuts down one middleware instance's tasks: pending tasks (and tasks the requests in flight
 * add) run up to the deadline, and the rest are reported.
 * @internal
 */
export function closeTasks(scheduler: Scheduler, options: CloseOptions | undefined): Promise<CloseSummary> {
  if (options === undefined) options = {};
  checkOptions('close()', options, ['server', 'timeout'], '{ server, timeout: 10_000 }');
  const { server, timeout = 10_000 } = options;
  const timeoutMs = checkTimeout(timeout, true);
  if (server !== undefined) checkServer(server);
  const settledBefore = scheduler.settledCount;
  debug('closing: %d task(s) pending, deadline in %d ms', scheduler.pending, timeoutMs);
  const drained = (async (): Promise<true> => {
    if (server !== undefined) await closeServer(server);
    // A task added as the last ones settle (an async onError's retry) would start after close()
    // resolved: closed is set only at an instant when nothing is pending.
    while (scheduler.pending > 0) await scheduler.drain();
    scheduler.closed = true;
    return true;
  })();
  const atDeadline = (): false => {
    // From this instant no queue starts and no task is accepted: what is left is given up on.
    scheduler.closed = true;
    return false;
  };
  return withDeadline(drained, timeoutMs, atDeadline).then(async (inTime) => {
    let abandoned = 0;
    if (!inTime) for (const queue of [...scheduler.active]) abandoned += queue.abandon(timeoutMs);
    await closeRunners(scheduler.settings.runners);
    const summary: CloseSummary = {
      drained: inTime,
      settled: scheduler.settledCount - settledBefore - abandoned,
      abandoned,
      pending: scheduler.pending,
    };
    debug('closed: %o', summary);
    return summary;
  });
}

/**
 * Checks the `server` option: a `net.Server`, as `app.listen()` returns one (http, https and http2
 * servers are), since closing it relies on its events and connections.
 * @throws {TypeError} otherwise; a short one, saying what to pass, for the Express app itself
 * @private
 */
function checkServer(server: unknown): void {
  if (server instanceof Server) return;
  const expectation = 'the http.Server that app.listen() returned';
  if (typeof server === 'function' && typeof (server as { listen?: unknown }).listen === 'function') {
    throw new TypeError(`Expected \`server\` to be ${expectation}, got the Express app (function): pass const server = app.listen(port)`);
  }
  throw new TypeError(invalid('server', expectation, server));
}

/**
 * Closes what runs the runners' tasks (their threads), now that none of them is pending, waiting
 * `RUNNER_CLOSE_MS` at the most: a runner whose `close()` never settles must not hold the process
 * past the deadline. Never rejects: a failure is traced with `debug`.
 * @private
 */
async function closeRunners(runners: readonly TaskRunner[]): Promise<void> {
  if (runners.length === 0) return;
  const late = (): void => debug('a transport did not close within %d ms', RUNNER_CLOSE_MS);
  await withDeadline(Promise.all(runners.map(closeRunner)), RUNNER_CLOSE_MS, late, true);
}

/** How long `close()` waits for the runners' own `close()` (a thread pool's takes milliseconds). */
const RUNNER_CLOSE_MS = 1_000;

/**
 * Closes one runner. Never rejects.
 * @private
 */
function closeRunner(runner: TaskRunner): Promise<void> {
  return settleCall(() => runner.close?.(), () => {}, (error) => debug('closing a transport failed: %s', describeError(error)));
}

/**
 * Stops `server` accepting connections and resolves once its last connection has closed.
 * @private
 */
async function closeServer(server: Server): Promise<void> {
  // Not events.once(): it rejects at the server's first 'error' (a failed accept), not a reason to fail.
  const closed = new Promise((resolve) => server.once('close', resolve));
  if (server.listening) server.close(); // closes the connections idle now
  else if ((await connectionsOf(server)) === 0) return; // closed already, and every connection gone
  // Every other keep-alive connection then closes once idle for `keepAliveTimeout`: 1 ms (plus the
  // 1 s margin Node 20 adds).
  // Node starts that timer only once the connection's last response has been flushed, pipelined
  // ones included, so no response in flight is cut, as a `Connection: close` header or closing
  // connections Node calls idle would (a response whose `end()` was called counts as idle).
  if ('keepAliveTimeout' in server) (server as HttpServer).keepAliveTimeout = 1;
  // Node leaves a timed-out connection to the server's 'timeout' listeners when there are some
  // (`server.setTimeout(ms, callback)` adds one): close the idle ones ourselves then.
  if (server.listenerCount('timeout') === 0) return void (await closed);
  server.on('timeout', destroyIfIdle);
  try {
    await closed;
  } finally {
    server.off('timeout', destroyIfIdle);
  }
}

/**
 * Destroys `socket` when it timed out as an idle keep-alive connection, after its last response
 * was flushed; a connection with a request in flight times out on `server.timeout` instead.
 * @private
 */
function destroyIfIdle(this: HttpServer, socket: Socket): void {
  // An idle keep-alive connection times out after `keepAliveTimeout` (Node 20 adds a margin of
  // 1 s); one with a request in flight only after `server.timeout`, which is left alone.
  if ((socket.timeout ?? Infinity) <= this.keepAliveTimeout + 1_000) socket.destroy();
}

/**
 * @return how many connections `server` still has
 * @private
 */
function connectionsOf(server: Server): Promise<number> {
  return new Promise((resolve) => server.getConnections((_error, count) => resolve(count ?? 0)));
}

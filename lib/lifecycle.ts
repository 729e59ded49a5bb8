import type { Socket } from 'node:net';
import type { Request, Response } from 'express';
import onFinished from 'on-finished';
import { describeError } from './errors.js';
import { debug } from './task.js';

/**
 * Everything the library knows of the HTTP lifecycle of a response: when it has been flushed, when
 * its handler ends it, and holding its bytes back until its tasks are stored.
 */

/**
 * A response that can be held back from its first byte: once `begin()` was called, what its
 * handler writes waits, in order, until `release()`.
 * @internal
 */
export interface Hold {
  /**
   * Holds the response back from now on, unless it has started already.
   * @param starting - called at its first `write()`, `end()` or `flushHeaders()`, once the headers
   *   are fixed: the response's tasks are to be stored now
   * @return whether it is held
   */
  begin(starting: () => void): boolean;
  /**
   * Stops holding: writes what the handler wrote meanwhile, as it wrote it, or, when `send` is
   * false, destroys the response, so that its client receives none of it.
   */
  release(send: boolean): void;
}

/**
 * Makes `res` one that can be held back from its first byte. Call it as the middleware runs, so
 * that the wrappers other middleware mounted later put on `res.end` (a session store saving first,
 * say) run before this one, as they would before Node's. Once held, the response's `write()`,
 * `end()` and `flushHeaders()` are kept, in order, until `release()`, as compression keeps them: Node's and
 * Express's state stays truthful. The headers are fixed at the first of them, as Node fixes them
 * (`headersSent` is then true), but none of its bytes reach the connection, and `end()` is not
 * called yet, so Node does not count the response as finished and `server.close()` does not close
 * its connection as idle. A `destroy()` of its connection without an error (Express's final
 * handler, after an error thrown once the response was ended), or an `end()` (Node's, when the
 * client half-closes after its request), waits until what was held has been written, as it would
 * have been written before.
 * @internal
 */
export function holdResponse(req: Request, res: Response): Hold {
  const inner = { write: res.write, end: res.end, flushHeaders: res.flushHeaders, flush: (res as Flushable).flush };
  const held: [keyof typeof inner, unknown[]][] = [];
  let holding = false;
  let started = false; // a byte, or the headers, went through before it was held
  let starting: () => void = () => {};
  let heldBytes = 0;
  let refusedWrite = false;
  const connection = req.httpVersionMajor === 1 ? (req.socket as Socket | null) : null; // HTTP/2 shields its socket

  const keep = (method: keyof typeof inner, args: unknown[], fromEnd: boolean): void => {
    if (!res.headersSent) fixHeaders(req, res, args, fromEnd);
    const first = held.length === 0;
    held.push([method, args]);
    if (!first) return;
    // Only once something is held: before, a destroy() (an aborted long poll) loses nothing.
    if (connection !== null) deferClosing(connection);
    starting();
  };
  /** `res[method]`, passed through until the hold begins, then kept by `hold`. */
  const wrap = (method: 'write' | 'end' | 'flushHeaders', hold: (args: unknown[]) => unknown) =>
    function (this: Response, ...args: unknown[]): unknown {
      if (holding) return hold(args);
      started = true;
      return (inner[method] as (...args: unknown[]) => unknown).apply(this, args);
    };
  res.write = wrap('write', (args) => {
    checkChunk(args[0], args[1], false);
    keep('write', args, false);
    heldBytes += byteLength(args[0], args[1]);
    if (heldBytes < (res.writableHighWaterMark ?? 16_384)) return true;
    refusedWrite = true;
    return false;
  }) as Response['write'];
  res.end = wrap('end', (args) => {
    checkChunk(args[0], args[1], true);
    keep('end', args, true);
    return res;
  }) as Response['end'];
  res.flushHeaders = wrap('flushHeaders', () => keep('flushHeaders', [], false)) as Response['flushHeaders'];
  const innerFlush = inner.flush;
  if (innerFlush !== undefined) {
    // compression's, mounted before: it would send what its stream has, and the headers with it
    (res as Flushable).flush = function (this: Response): void {
      if (!holding || (held.length === 0 && !res.headersSent)) return innerFlush.call(this); // nothing to send yet
      keep('flush', [], false);
    };
  }

  return {
    begin(onStart: () => void): boolean {
      if (holding || started || res.headersSent || res.destroyed) return false;
      holding = true;
      starting = onStart;
      return true;
    },
    release(send: boolean): void {
      if (!holding) return;
      holding = false; // the wrappers stay, passing through: others may have wrapped them since
      started = true;
      const deferring = connection !== null && held.length > 0;
      if (!send) {
        // Behind responses still being sent on its connection: Node's destroy() closes it once they are.
        if (deferring && res.socket === null) releaseClosing(connection);
        else if (deferring && abortConnection(connection)) return;
        res.destroy();
        return;
      }
      // Even to a destroyed response: Node then calls each write's callback with the error.
      try {
        for (const [method, args] of held) (inner[method] as (...args: unknown[]) => unknown).apply(res, args);
      } catch (error) {
        debug('writing a held response failed: %s', describeError(error));
        res.destroy(error as Error);
      }
      if (refusedWrite && !res.destroyed && res.writableNeedDrain === false) res.emit('drain');
      if (deferring) releaseClosing(connection);
    },
  };
}

/**
 * Calls `callback` once every byte of `res` has been handed to the OS, or its connection closed.
 * on-finished counts a response as finished as soon as `res.end()` was called, so a task queued
 * after `res.json()` would start while a slow client is still reading; for that case wait for
 * the response's `close`, which Node emits after `finish` or when the connection drops.
 * @internal
 */
export function whenFlushed(res: Response, callback: () => void): void {
  if (res.writableFinished || res.destroyed) {
    setImmediate(callback);
    return;
  }
  if (res.socket === null) callback = orOnConnectionClose(res, callback);
  if (!res.writableEnded) onFinished(res, callback);
  else res.once('close', callback);
}

/**
 * @return whether the response's status can no longer change: its headers are fixed, or the
 *   handler has ended it (on a destroyed connection, `end()` sends no headers)
 * @internal
 */
export function statusIsFinal(res: Response): boolean {
  return res.headersSent || res.writableEnded;
}

/**
 * What watches the handler's end of a response.
 * @internal
 */
export interface EndListener {
  /** Called once the handler's `res.end()` has gone through, or thrown. */
  ended(): void;
}

/**
 * Has `listener` called after the handler's `res.end()` (called directly or through `send`,
 * `json`, `redirect`…). Only the first end is watched; `res.end` is then put back.
 * @internal
 */
export function watchEnd(res: Response, listener: EndListener): void {
  const end = res.end;
  let watching = true;
  const watchedEnd = function (this: Response, ...args: Parameters<Response['end']>): Response {
    if (!watching) return end.apply(this, args); // a reference kept by another wrapper of res.end
    watching = false;
    if (res.end === watchedEnd) res.end = end;
    try {
      return end.apply(this, args);
    } finally {
      listener.ended();
    }
  } as Response['end'];
  res.end = watchedEnd;
}

/**
 * A response with compression's `flush()`, which sends what its compressing stream holds so far.
 * @private
 */
type Flushable = Response & { flush?: (this: Response) => void };

/**
 * Throws, as Node's own `write()` and `end()` do, for a chunk or an encoding they refuse; held, it
 * would throw only later, out of the handler's reach.
 * @private
 */
function checkChunk(chunk: unknown, encoding: unknown, fromEnd: boolean): void {
  if (fromEnd && (!chunk || typeof chunk === 'function')) return; // end(), end(callback)
  if (typeof chunk !== 'string' && !(chunk instanceof Uint8Array)) {
    const error = new TypeError(`The "chunk" argument must be of type string or an instance of Buffer or Uint8Array, got ${describeError(chunk)}`);
    (error as NodeJS.ErrnoException).code = chunk === null ? 'ERR_STREAM_NULL_VALUES' : 'ERR_INVALID_ARG_TYPE';
    throw error;
  }
  if (typeof encoding === 'string' && encoding !== '' && encoding !== 'buffer' && !Buffer.isEncoding(encoding)) {
    const error = new TypeError(`Unknown encoding: ${encoding}`);
    (error as NodeJS.ErrnoException).code = 'ERR_UNKNOWN_ENCODING';
    throw error;
  }
}

/**
 * Fixes the headers as Node does at a response's first `write()` or `end()`: with the length of
 * the body when `end()` holds all of it and nothing else frames it.
 * @private
 */
function fixHeaders(req: Request, res: Response, args: unknown[], fromEnd: boolean): void {
  const [chunk, encoding] = args;
  const framed = res.hasHeader('content-length') || res.hasHeader('transfer-encoding') || res.hasHeader('trailer');
  const hasBody = req.method !== 'HEAD' && res.statusCode !== 204 && res.statusCode !== 304 && res.statusCode >= 200;
  // Node frames by length whenever it could chunk: HTTP/1.1, or HTTP/1.0 with `TE: chunked`.
  if (fromEnd && !framed && hasBody && res.useChunkedEncodingByDefault === true) res.setHeader('Content-Length', typeof chunk === 'function' ? 0 : byteLength(chunk, encoding));
  res.writeHead(res.statusCode);
}

/**
 * @return the bytes `chunk` takes: a string's in its `encoding`, nothing for no chunk
 * @private
 */
function byteLength(chunk: unknown, encoding: unknown): number {
  if (typeof chunk === 'string') return Buffer.byteLength(chunk, typeof encoding === 'string' ? (encoding as BufferEncoding) : 'utf8');
  return chunk instanceof Uint8Array ? chunk.byteLength : 0;
}

/**
 * Each connection with a held response: its own `destroy` and `end`, how many of its responses are
 * held, and whether a `destroy()` or an `end()` (with its arguments) waits for them.
 * @private
 */
interface HeldConnection {
  readonly destroy: Socket['destroy'];
  readonly end: Socket['end'];
  held: number;
  destroyWaiting: boolean;
  endWaiting: unknown[] | undefined;
}

/**
 * The connections that have had a held response. The wrappers of their `destroy` and `end` stay
 * once installed: taking them off again would change the socket's shape after each response.
 * @private
 */
const heldConnections = new WeakMap<Socket, HeldConnection>();

/**
 * Makes a `destroy()` of `connection` without an error, and an `end()`, wait while one of its
 * responses is held.
 * @private
 */
function deferClosing(connection: Socket): void {
  const record = heldConnections.get(connection);
  if (record !== undefined) {
    record.held++;
    return;
  }
  heldConnections.set(connection, { destroy: connection.destroy, end: connection.end, held: 1, destroyWaiting: false, endWaiting: undefined });
  connection.destroy = destroyUnlessHeld;
  connection.end = endUnlessHeld as Socket['end'];
}

/**
 * The `destroy` of a connection that has had a held response.
 * @private
 */
function destroyUnlessHeld(this: Socket, error?: Error): Socket {
  const record = heldConnections.get(this) as HeldConnection; // installed along with its record
  if (record.held === 0 || error !== undefined) return record.destroy.call(this, error);
  record.destroyWaiting = true;
  return this;
}

/**
 * The `end` of a connection that has had a held response.
 * @private
 */
function endUnlessHeld(this: Socket, ...args: unknown[]): Socket {
  const record = heldConnections.get(this) as HeldConnection; // installed along with its record
  if (record.held === 0) return (record.end as (...args: unknown[]) => Socket).apply(this, args);
  record.endWaiting ??= args;
  return this;
}

/**
 * One held response of `connection` has been written: once none is held, an `end()` or a
 * `destroy()` that waited goes through, after what they wrote.
 * @private
 */
function releaseClosing(connection: Socket): void {
  const record = heldConnections.get(connection) as HeldConnection; // deferred for this response
  if (--record.held > 0) return;
  const { endWaiting, destroyWaiting } = record;
  record.endWaiting = undefined;
  record.destroyWaiting = false;
  if (endWaiting !== undefined) (record.end as (...args: unknown[]) => Socket).apply(connection, endWaiting);
  if (destroyWaiting) record.destroy.call(connection);
}

/**
 * One held response of `connection` is not to be sent: destroys the connection at once, so that
 * its client knows the response failed (HTTP/1.0 included: no byte of it was sent).
 * @return whether there was such a connection
 * @private
 */
function abortConnection(connection: Socket | null): boolean {
  const record = connection === null ? undefined : heldConnections.get(connection);
  if (record === undefined) return false;
  record.held--;
  record.destroyWaiting = false;
  record.endWaiting = undefined;
  record.destroy.call(connection as Socket);
  return true;
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

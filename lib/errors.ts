/*!
 * express-background-tasks
 * MIT Licensed
 */

import { inspect } from 'node:util';

/** The brand of a `PermanentError`, on its prototype: `Symbol.for`, so each build recognises the other's. */
const PERMANENT = Symbol.for('express-background-tasks.permanent');

/**
 * Reported to `onError` when a task is still running after `timeout` ms. The queue stops waiting
 * for it; a task made by `withSignal()` has its signal aborted with this error as the reason.
 * @public
 */
export class TimeoutError extends Error {
  override name = 'TimeoutError' as const;
}

/**
 * Thrown by `tasks.add()` when `maxPending` tasks are already queued or running.
 * @public
 */
export class QueueFullError extends Error {
  override name = 'QueueFullError' as const;
}

/**
 * Reported to `onError` for each task that `close()` gave up on at its deadline: still running
 * (its signal is aborted), still queued (it never ran), or waiting to be retried.
 * @public
 */
export class ShutdownError extends Error {
  override name = 'ShutdownError' as const;
}

/**
 * Throw it from a task to say that running it again cannot help (the record is gone, the address
 * refuses mail): the task is not retried, whatever its `retry` says, and the error goes to
 * `onError` at once. Recognised across the ES module and CommonJS builds, and from a thread of the
 * pool; a worker made by `createWorker()` does not retry the task either.
 * @example
 * if (response.status === 404) throw new PermanentError(`order ${id} no longer exists`);
 * @public
 */
export class PermanentError extends Error {
  override name = 'PermanentError' as const;
  static {
    Object.defineProperty(this.prototype, PERMANENT, { value: true });
  }
}

/**
 * Reported to `onError`, once per task, when the `transport` could not take a response's defined
 * tasks. Its `cause` is the transport's error.
 * @public
 */
export class HandOffError extends Error {
  override name = 'HandOffError' as const;
}

/**
 * Builds the one message format used for every invalid argument or option:
 * ``Expected `timeout` to be a number of milliseconds, got `soon` (string)``.
 * @param name - the argument or option, as the user wrote it
 * @param expectation - what it should have been
 * @param value - what it was
 * @internal
 */
export function invalid(name: string, expectation: string, value: unknown): string {
  const shown = typeof value === 'string' ? value : inspect(value, { depth: 1, breakLength: Infinity });
  return `Expected \`${name}\` to be ${expectation}, got \`${shown}\` (${typeof value})`;
}

/**
 * @return the error's stack, or the thrown value as text when it is not an Error. Never throws,
 *   whatever was thrown (`Object.create(null)`, a throwing `toString`, a revoked proxy).
 * @internal
 */
export function describeError(error: unknown): string {
  try {
    if (error instanceof Error && typeof error.stack === 'string') return error.stack;
    return typeof error === 'object' && error !== null ? inspect(error, { depth: 1 }) : String(error);
  } catch {
    return `a thrown ${typeof error} that cannot be shown`;
  }
}

/**
 * @return the error's `message`, or the thrown value as text when it is not an Error. Never
 *   throws: a revoked proxy breaks `instanceof`, and a `message` getter can throw.
 * @internal
 */
export function messageOf(error: unknown): string {
  try {
    if (error instanceof Error) return String(error.message);
  } catch {
    // shown as a value below
  }
  return describeError(error);
}

/**
 * @return whether `error` is a `PermanentError` (of either build). Never throws: a revoked proxy
 *   or a throwing getter counts as an ordinary failure.
 * @internal
 */
export function isPermanent(error: unknown): boolean {
  try {
    return (typeof error === 'object' || typeof error === 'function') && error !== null &&
      (error as { [PERMANENT]?: unknown })[PERMANENT] === true;
  } catch {
    return false;
  }
}

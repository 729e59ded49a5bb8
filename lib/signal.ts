import { invalid } from './errors.js';

/**
 * The brand of a task made by `withSignal()`: the function that takes the signal. `Symbol.for`, so
 * the ESM and the CommonJS build recognise each other's tasks.
 */
const SIGNAL_TAKER = Symbol.for('express-background-tasks.signalTaker');

/** What a task made by `withSignal()` gets when it is called directly, outside a queue. */
const neverAborted = new AbortController().signal;

/**
 * Makes a task that receives an `AbortSignal` as its first argument, before the arguments given to
 * `tasks.add()`. The signal aborts when the task's `timeout` passes, and at the deadline of
 * `close()`, with the `TimeoutError` or `ShutdownError` as its `reason`; pass it on to `fetch`,
 * database drivers, `setTimeout` from `node:timers/promises`… so the work stops too. `add()` still
 * type-checks the other arguments against `fn`. Works with `defineTask()` too.
 * @param fn - the task, taking the signal first; called with `this` undefined
 * @return a function that calls `fn` with a signal that never aborts when called directly, and
 *   with the task's own signal when a queue runs it
 * @throws {TypeError} when `fn` is not a function
 * @example
 * const sendReceipt = withSignal(async (signal, orderId: string) => {
 *   await fetch(`${mailer}/receipts/${orderId}`, { method: 'POST', signal });
 * });
 * res.locals.tasks.add(sendReceipt, req.params.id);
 * @public
 */
export function withSignal<A extends unknown[], R>(fn: (this: void, signal: AbortSignal, ...args: A) => R): (this: void, ...args: A) => R {
  if (typeof fn !== 'function') {
    throw new TypeError(invalid('fn', 'a function taking an AbortSignal first', fn));
  }
  const task = (...args: A): R => fn(neverAborted, ...args);
  return Object.defineProperties(task, {
    name: { value: fn.name },
    [SIGNAL_TAKER]: { value: fn },
  });
}

/**
 * @return the function a task made by `withSignal()` wraps, or `undefined` for any other function
 * @internal
 */
export function signalTaker(fn: object): ((signal: AbortSignal, ...args: unknown[]) => unknown) | undefined {
  const taker: unknown = (fn as { [SIGNAL_TAKER]?: unknown })[SIGNAL_TAKER];
  return typeof taker === 'function' ? (taker as (signal: AbortSignal, ...args: unknown[]) => unknown) : undefined;
}

/**
 * Carries the brand of a task made by `withSignal()` over to a function that wraps it.
 * @internal
 */
export function keepSignalTaker(wrapper: object, wrapped: object): void {
  const taker = signalTaker(wrapped);
  if (taker !== undefined) Object.defineProperty(wrapper, SIGNAL_TAKER, { value: taker });
}

import { invalid } from './errors.js';

/**
 * A function with a name every process agrees on, made by `defineTask()`. Calling it calls the
 * function it wraps; `tasks.add()` runs it in this process, or hands it to the `transport`.
 * @public
 */
export interface DefinedTask<A extends unknown[] = never, R = unknown> {
  (this: void, ...args: A): R;
  /** The name given to `defineTask()`: what a job stores and a worker looks up. */
  readonly taskName: string;
}

/**
 * The brand of a defined task. `Symbol.for`, so the ESM and the CommonJS build recognise each
 * other's tasks when an app loads both.
 */
const TASK_NAME = Symbol.for('express-background-tasks.taskName');

/**
 * Names a task so that it can leave the process: with a `transport` configured, `tasks.add()` hands
 * it off (a BullMQ job, say) for a worker holding the same definition to run. Without one it runs
 * in this process like any function. Its arguments must be JSON values either way, so that adding
 * a transport later is a configuration change, not a rewrite.
 * @param name - unique among the tasks a worker runs; keep it stable across deploys
 * @param fn - the task, sync or async; called with `this` undefined
 * @return a function that calls `fn`, named `name`
 * @throws {TypeError} when `name` is not a non-empty string or `fn` is not a function
 * @example
 * export const sendConfirmationEmail = defineTask('send-confirmation-email', async (id: string) => {
 *   await mailer.send(id);
 * });
 * @public
 */
export function defineTask<A extends unknown[], R>(name: string, fn: (this: void, ...args: A) => R): DefinedTask<A, R> {
  if (typeof name !== 'string' || name === '') {
    throw new TypeError(invalid('name', 'a non-empty string', name));
  }
  if (typeof fn !== 'function') {
    throw new TypeError(invalid('fn', 'a function', fn));
  }
  const task = (...args: A): R => fn(...args);
  return Object.defineProperties(task, {
    name: { value: name },
    taskName: { value: name, enumerable: true },
    [TASK_NAME]: { value: name },
  }) as DefinedTask<A, R>;
}

/**
 * @return the name of a task made by `defineTask()`, or `undefined` for any other function
 * @internal
 */
export function definedName(fn: object): string | undefined {
  const name: unknown = (fn as { [TASK_NAME]?: unknown })[TASK_NAME];
  return typeof name === 'string' ? name : undefined;
}

/**
 * Checks that `args` survive `JSON.stringify` and `JSON.parse` unchanged, as they must to reach a
 * worker: no `undefined`, function, symbol, bigint, `NaN`/`Infinity`, class instance (a `Date`
 * would arrive as a string, a `Map` as `{}`) or circular reference.
 * @param name - the task's name, for the message
 * @param args - the arguments given to `tasks.add()`
 * @throws {TypeError} naming the task and where in `args` the first such value sits
 * @internal
 */
export function checkJsonArgs(name: string, args: readonly unknown[]): void {
  const problem = findNonJson(args, 'args', []);
  if (problem !== undefined) {
    throw new TypeError(`Expected the arguments of task \`${name}\` to be JSON values, got ${problem}`);
  }
}

/**
 * @return what is wrong and where, or `undefined` when `value` is plain JSON
 * @private
 */
function findNonJson(value: unknown, path: string, ancestors: object[]): string | undefined {
  switch (typeof value) {
    case 'string':
    case 'boolean':
      return undefined;
    case 'number':
      return Number.isFinite(value) ? undefined : `${value} at ${path}`;
    case 'object':
      break;
    default:
      return `${typeof value === 'undefined' ? 'undefined' : `a ${typeof value}`} at ${path}`;
  }
  if (value === null) return undefined;
  if (ancestors.includes(value)) return `a circular reference at ${path}`;

  ancestors.push(value);
  let problem: string | undefined;
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length && problem === undefined; i++) {
      problem = findNonJson(value[i], `${path}[${i}]`, ancestors);
    }
  } else {
    const prototype: unknown = Object.getPrototypeOf(value);
    if (prototype !== Object.prototype && prototype !== null) {
      problem = `${describeInstance(value)} at ${path}`;
    } else if (Object.getOwnPropertySymbols(value).length > 0) {
      problem = `a symbol key at ${path}`;
    } else {
      for (const [key, item] of Object.entries(value)) {
        problem = findNonJson(item, /^[A-Za-z_$][\w$]*$/.test(key) ? `${path}.${key}` : `${path}[${JSON.stringify(key)}]`, ancestors);
        if (problem !== undefined) break;
      }
    }
  }
  ancestors.pop();
  return problem;
}

/**
 * @return "a Date", "a Map", "an instance of Foo"…
 * @private
 */
function describeInstance(value: object): string {
  const name: unknown = value.constructor?.name;
  if (typeof name !== 'string' || name === '') return 'an object with a prototype';
  return `${/^[AEIOU]/.test(name) ? 'an' : 'a'} ${name}`;
}

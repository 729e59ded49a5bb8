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
 * What TypeScript shows in place of a task parameter type that JSON cannot carry, with the reason:
 * `defineTask('remind', (when: Date) => …)` fails to compile with
 * `… ...args: unknown[] & [when: NotJsonValue<"a Date: pass date.toISOString()">] …`.
 */
declare const notJsonValue: unique symbol;
interface NotJsonValue<Reason extends string> {
  readonly [notJsonValue]: Reason;
}

/**
 * `T` with each part that does not survive `JSON.stringify` and `JSON.parse` replaced by a
 * `NotJsonValue`, as far as types can tell: `undefined`, functions, bigints, symbols, `Date`, `Map`,
 * `Set`, class instances with methods. Plain interfaces and type aliases pass; so do optional
 * properties and parameters (JSON leaves them out), `unknown` and `any`. What types cannot tell
 * (`NaN`, a class with fields only, a property set to `undefined`) is refused by `add()`.
 */
type JsonOnly<T> =
  unknown extends T ? T
  : T extends string | number | boolean | null ? T
  : T extends undefined ? NotJsonValue<'undefined: leave the property or argument out, or pass null'>
  : T extends bigint ? NotJsonValue<'a bigint: pass String(value)'>
  : T extends symbol ? NotJsonValue<'a symbol'>
  : T extends (...args: never) => unknown ? NotJsonValue<'a function: JSON carries no code'>
  : T extends Date ? NotJsonValue<'a Date: pass date.toISOString()'>
  : T extends ReadonlyMap<unknown, unknown> ? NotJsonValue<'a Map: pass Object.fromEntries(map)'>
  : T extends ReadonlySet<unknown> ? NotJsonValue<'a Set: pass [...set]'>
  : T extends readonly (infer E)[] ? JsonOnlyArray<E>
  : T extends object ? JsonOnlyObject<T>
  : NotJsonValue<'not a JSON value'>;

/** An interface, not an alias, so that recursive payload types (a `JsonValue` of one's own) resolve lazily. */
// eslint-disable-next-line @typescript-eslint/no-empty-object-type -- its members come from the supertype
interface JsonOnlyArray<E> extends ReadonlyArray<JsonOnly<E>> {}

/**
 * Each property (or tuple element) checked. An optional one may be `undefined`: TypeScript reads
 * `note?: string` as `string | undefined`, and JSON leaves such a property out.
 */
type JsonOnlyObject<T> = {
  [K in keyof T]: K extends symbol ? NotJsonValue<'a symbol key'>
    : Partial<Pick<T, K>> extends Pick<T, K> ? JsonOnlyOrMissing<T[K]>
    : JsonOnly<T[K]>;
};
type JsonOnlyOrMissing<T> = T extends undefined ? T : JsonOnly<T>;

/**
 * The brand of a defined task. `Symbol.for`, so the ESM and the CommonJS build recognise each
 * other's tasks when an app loads both.
 */
const TASK_NAME = Symbol.for('express-background-tasks.taskName');

/**
 * Names a task so that it can leave the process: with a `transport` configured, `tasks.add()` hands
 * it off (a BullMQ job, say) for a worker holding the same definition to run. Without one it runs
 * in this process like any function. Its arguments must be JSON values either way, so that adding
 * a transport later is a configuration change, not a rewrite: TypeScript refuses `fn` when a
 * parameter type is not JSON (a `Date`, a `Map`, a function, `undefined`…), and `add()` checks
 * the values.
 * @param name - unique among the tasks a worker runs; keep it stable across deploys
 * @param fn - the task, sync or async; called with `this` undefined
 * @return a function that calls `fn`, named `name`
 * @throws {TypeError} when `name` is not a non-empty string or `fn` is not a function
 * @example
 * export const sendConfirmationEmail = defineTask('sendConfirmationEmail', async (id: string) => {
 *   await mailer.send(id);
 * });
 * @public
 */
export function defineTask<A extends unknown[] & JsonOnlyObject<A>, R>(name: string, fn: (this: void, ...args: A) => R): DefinedTask<A, R> {
  if (typeof name !== 'string' || name === '') {
    throw new TypeError(invalid('name', 'a non-empty string', name));
  }
  if (typeof fn !== 'function') {
    throw new TypeError(invalid('fn', 'a function', fn));
  }
  const task = (...args: A): R => fn(...args);
  // Not configurable: the name a job stores is `task.name`, so it must stay the defined name.
  return Object.defineProperties(task, {
    name: { value: name, configurable: false },
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
 * would arrive as a string, a `Map` as `{}`), getter, array hole or named array property (a
 * RegExp match loses its `index`), or circular reference. `-0` is let through: it arrives as `0`.
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
  const isArray = Array.isArray(value);
  const prototype: unknown = Object.getPrototypeOf(value);
  if (isArray ? prototype !== Array.prototype : prototype !== Object.prototype && prototype !== null) {
    return `${describeInstance(value)} at ${path}`;
  }

  ancestors.push(value);
  const problem = isArray ? findInItems(value, path, ancestors) : findInProperties(value, path, ancestors);
  ancestors.pop();
  return problem;
}

/**
 * @return the first problem among an array's items, or with the array itself
 * @private
 */
function findInItems(array: unknown[], path: string, ancestors: object[]): string | undefined {
  for (let index = 0; index < array.length; index++) {
    const problem = Object.hasOwn(array, index)
      ? findInProperty(array, String(index), `${path}[${index}]`, ancestors)
      : `a hole at ${path}[${index}]`;
    if (problem !== undefined) return problem;
  }
  // The items and `length`, nothing else.
  return Reflect.ownKeys(array).length === array.length + 1 ? undefined : `an array with named properties at ${path}`;
}

/**
 * @return the first problem among a plain object's properties
 * @private
 */
function findInProperties(object: object, path: string, ancestors: object[]): string | undefined {
  for (const key of Reflect.ownKeys(object)) {
    if (typeof key === 'symbol') return `a symbol key at ${path}`;
    const problem = findInProperty(object, key, /^[A-Za-z_$][\w$]*$/.test(key) ? `${path}.${key}` : `${path}[${JSON.stringify(key)}]`, ancestors);
    if (problem !== undefined) return problem;
  }
  return undefined;
}

/**
 * @return what is wrong with one own property: an accessor, a property JSON skips, or its value
 * @private
 */
function findInProperty(object: object, key: string, where: string, ancestors: object[]): string | undefined {
  const descriptor = Object.getOwnPropertyDescriptor(object, key) as PropertyDescriptor;
  if (descriptor.get !== undefined || descriptor.set !== undefined) return `a getter at ${where}`;
  if (descriptor.enumerable !== true) return `a non-enumerable property at ${where}`;
  return findNonJson(descriptor.value, where, ancestors);
}

/**
 * @return "a Date", "a Uint8Array", "an Item"…
 * @private
 */
function describeInstance(value: object): string {
  const name: unknown = value.constructor?.name;
  if (typeof name !== 'string' || name === '') return 'an object with a prototype';
  return `${/^[AEIO]/.test(name) ? 'an' : 'a'} ${name}`;
}

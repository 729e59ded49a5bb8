import { inspect, type InspectOptions, types } from 'node:util';
import { invalid } from './errors.js';
import { checkOptions, checkRetry, type Retry, type RetryOptions } from './options.js';
import { keepSignalTaker } from './signal.js';

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
 * Options of `defineTask()`.
 * @public
 */
export interface DefineTaskOptions {
  /**
   * How this task is retried when it fails, wherever it runs (in this process, on the thread pool,
   * on a worker); it replaces the middleware's `retry` for this task. `{ attempts: 1 }` turns
   * retries off for it.
   * @default the middleware's `retry`
   * @example
   * defineTask('sendWebhook', send, { retry: { attempts: 5, backoff: { type: 'exponential', delay: 500 } } })
   */
  readonly retry?: RetryOptions | undefined;
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

/** Where a defined task keeps its own `retry`, checked. */
const RETRY = Symbol.for('express-background-tasks.retry');

/**
 * Names a task so that it can leave the process: with a `transport` configured, `tasks.add()` hands
 * it off (a BullMQ job, say) for a worker holding the same definition to run. Without one it runs
 * in this process like any function. Its arguments must be JSON values either way, so that adding
 * a transport later is a configuration change, not a rewrite: TypeScript refuses `fn` when a
 * parameter type is not JSON (a `Date`, a `Map`, a function, `undefined`…), and `add()` checks
 * the values.
 * @param name - unique among the tasks a worker runs; keep it stable across deploys
 * @param fn - the task, sync or async; called with `this` undefined
 * @param options - `{ retry }`: how the task is retried, in place of the middleware's `retry`
 * @return a function that calls `fn`, named `name`
 * @throws {TypeError} when `name` is not a non-empty string, `fn` is not a function or is a
 *   generator function, or `options` is not `{ retry }` with a valid `retry`
 * @throws {RangeError} when `retry.attempts` or `retry.backoff.delay` is out of range
 * @example
 * export const sendConfirmationEmail = defineTask('sendConfirmationEmail', async (id: string) => {
 *   await mailer.send(id);
 * });
 * @public
 */
export function defineTask<A extends unknown[] & JsonOnlyObject<A>, R>(
  name: string,
  fn: (this: void, ...args: A) => R,
  options?: DefineTaskOptions,
): DefinedTask<A, R> {
  if (typeof name !== 'string' || name === '') {
    throw new TypeError(invalid('name', 'a non-empty string', name));
  }
  checkTaskFunction(fn);
  if (options !== undefined) checkOptions('defineTask()', options, ['retry'], "{ retry: { attempts: 3 } }");
  const retry = checkRetry(options?.retry, 'retry');
  const task = (...args: A): R => fn(...args);
  keepSignalTaker(task, fn);
  // Not configurable: the name a job stores is `task.name`, so it must stay the defined name.
  return Object.defineProperties(task, {
    name: { value: name, configurable: false },
    taskName: { value: name, enumerable: true },
    [TASK_NAME]: { value: name },
    [RETRY]: { value: retry },
  }) as DefinedTask<A, R>;
}

/**
 * @return the `retry` a defined task was given, or `undefined` (as for any other function)
 * @internal
 */
export function retryOf(fn: object): Retry | undefined {
  return (fn as { [RETRY]?: Retry })[RETRY];
}

/**
 * Checks that `fn` can be a task: a function whose body runs when it is called.
 * @param fn - what was given to `tasks.add()` or `defineTask()`
 * @throws {TypeError} when `fn` is not a function, or is a generator function
 * @internal
 */
export function checkTaskFunction(fn: unknown): void {
  if (typeof fn !== 'function') {
    throw new TypeError(invalid('fn', 'a function', fn));
  }
  // The prototype rather than `fn.constructor`, which a function can shadow: one read, and bound
  // generator functions have it too.
  const prototype: unknown = Object.getPrototypeOf(fn);
  if (prototype === GENERATOR_FUNCTION || prototype === ASYNC_GENERATOR_FUNCTION || (prototype !== Function.prototype && prototype !== ASYNC_FUNCTION && isForeignGenerator(fn))) {
    throw new TypeError(invalid('fn', 'a function that is not a generator (calling a generator function only creates an iterator: its body would never run)', fn));
  }
}

/**
 * @return whether `fn` is a generator function of another realm (`vm.runInNewContext()`), whose
 *   prototype is not this realm's: checked only for functions that inherit from neither
 *   `Function.prototype` nor this realm's async functions', so an ordinary function pays a comparison
 * @private
 */
function isForeignGenerator(fn: object): boolean {
  const tag = Object.prototype.toString.call(fn);
  return tag === '[object GeneratorFunction]' || tag === '[object AsyncGeneratorFunction]';
}

/** What generator functions (also bound ones) inherit from. */
const GENERATOR_FUNCTION: unknown = Object.getPrototypeOf(function* () {});
const ASYNC_GENERATOR_FUNCTION: unknown = Object.getPrototypeOf(async function* () {});
const ASYNC_FUNCTION: unknown = Object.getPrototypeOf(async function () {});

/**
 * @return the name of a task made by `defineTask()`, or `undefined` for any other function
 * @internal
 */
export function definedName(fn: object): string | undefined {
  const name: unknown = (fn as { [TASK_NAME]?: unknown })[TASK_NAME];
  return typeof name === 'string' ? name : undefined;
}

/**
 * Copies `args` while checking that they survive `JSON.stringify` and `JSON.parse` unchanged, as
 * they must to reach a worker: no `undefined`, function, symbol, bigint, `NaN`/`Infinity`, class
 * instance (a `Date` would arrive as a string, a `Map` as `{}`), getter or symbol key of an
 * object, array hole or named array property (a RegExp match loses its `index`), circular
 * reference, or more than `MAX_DEPTH` levels of nesting. The copy is what runs or is sent, so a change the caller makes
 * after `add()` cannot slip past the check. It is what a worker would parse: `-0` becomes `0`, and
 * an object reached twice is copied twice.
 * @param name - the task's name, for the message
 * @param args - the arguments given to `tasks.add()`
 * @return the copy
 * @throws {TypeError} naming the task and where in `args` the first such value sits
 * @internal
 */
export function captureJsonArgs(name: string, args: readonly unknown[]): unknown[] {
  const captured: unknown[] = [];
  // An explicit stack, not recursion: however deep the value, the check cannot overflow the call stack.
  const frames: Frame[] = [{ source: args, copy: captured, keys: undefined, length: args.length, next: 0, key: 0 }];
  // The sources on the path from `args` down, for the circular-reference check in constant time:
  // a scan of `frames` for every object would let a deep, wide value cost depth × objects.
  const onPath = new Set<object>();
  while (frames.length > 0) {
    const frame = frames[frames.length - 1] as Frame;
    // Copies the frame's values up to its first array or object, which is entered next.
    const child = frame.keys === undefined ? copyItems(name, frames, frame) : copyProperties(name, frames, frame);
    if (child !== undefined) {
      if (onPath.has(child.source)) throw refused(name, 'a circular reference', frames, child.key);
      const entered = enter(name, frames, child.key, child.source);
      store(frame, child.key, entered.copy);
      frames.push(entered);
      onPath.add(child.source);
      continue;
    }
    // An array holds its items and `length`, nothing else (`args`, a rest parameter, always does).
    if (frame.keys === undefined && frames.length > 1 && hasNamedProperties(frame)) {
      throw refused(name, 'an array with named properties', frames, undefined);
    }
    frames.pop();
    onPath.delete(frame.source);
  }
  return captured;
}

/**
 * Levels of arrays and objects an argument may nest. `JSON.stringify` overflows V8's default stack
 * past about 4,000 levels (fewer when called deep in a stack), and decoders elsewhere often stop
 * at 1,000 (Lua's cjson, Python's recursion limit); real arguments nest a handful.
 */
const MAX_DEPTH = 1000;

/**
 * An array or plain object of the arguments being copied, and how far its copy has got.
 * @private
 */
interface Frame {
  readonly source: object;
  readonly copy: unknown[] | Record<string, unknown>;
  /** The own keys of an object; `undefined` for an array, whose keys are its indexes. */
  readonly keys: readonly string[] | undefined;
  readonly length: number;
  /** The index of the key to copy next. */
  next: number;
  /** Where the source sits in its parent. */
  readonly key: string | number;
}

/**
 * An array or object found in the innermost frame's source, to be entered.
 * @private
 */
interface Child {
  readonly source: object;
  readonly key: string | number;
}

/**
 * Copies the items of an array frame, from `frame.next`, while they are JSON primitives.
 * @return the first item that is an array or object (`frame.next` then points past it), or
 *   `undefined` once every item has been copied
 * @throws {TypeError} at a hole or a value JSON cannot carry
 * @private
 */
function copyItems(name: string, frames: readonly Frame[], frame: Frame): Child | undefined {
  const source = frame.source as unknown[];
  const copy = frame.copy as unknown[];
  const isArgs = frames.length === 1; // a rest parameter: no holes, nothing to read twice
  for (let index = frame.next; index < frame.length; index++) {
    if (!isArgs && !Object.hasOwn(source, index)) throw refused(name, 'a hole', frames, index);
    // Read as JSON.stringify reads an item (a getter on an index runs, once, here): a property
    // descriptor per item would cost V8's slow path.
    const value = source[index];
    if (typeof value === 'object' && value !== null) {
      frame.next = index + 1;
      return { source: value, key: index };
    }
    const problem = primitiveProblem(value);
    if (problem !== undefined) throw refused(name, problem, frames, index);
    copy.push(value === 0 ? 0 : value); // JSON has no -0
  }
  frame.next = frame.length;
  return undefined;
}

/**
 * Copies the properties of an object frame, from `frame.next`, while they are JSON primitives.
 * @return the first value that is an array or object (`frame.next` then points past it), or
 *   `undefined` once every property has been copied
 * @throws {TypeError} at a getter, a non-enumerable property or a value JSON cannot carry
 * @private
 */
function copyProperties(name: string, frames: readonly Frame[], frame: Frame): Child | undefined {
  const keys = frame.keys as readonly string[];
  for (let index = frame.next; index < frame.length; index++) {
    const key = keys[index] as string;
    const value = ownValue(name, frames, key);
    if (typeof value === 'object' && value !== null) {
      frame.next = index + 1;
      return { source: value, key };
    }
    const problem = primitiveProblem(value);
    if (problem !== undefined) throw refused(name, problem, frames, key);
    store(frame, key, value === 0 ? 0 : value); // JSON has no -0
  }
  frame.next = frame.length;
  return undefined;
}

/**
 * Whether an array, its items copied, has keys besides them, as `Object.keys()` counts: its
 * enumerable named properties do not make up for its items that are not enumerable. `Object.keys()`
 * of a large array costs a string per item (a second for 5 million), so a large one is first
 * asked with `util.inspect()`, which lists an array's enumerable named properties without its
 * items. When it lists none, `Object.values()` counts the enumerable items as `Object.keys()` would,
 * without a string per item (reading them again: a getter on an item runs a second time); any
 * other answer (a named property, a format of another Node version) falls back to `Object.keys()`.
 * A Proxy is always asked directly, as `inspect()` would read its target rather than its traps.
 * @private
 */
function hasNamedProperties({ source, length }: Frame): boolean {
  if (length >= INSPECTED_FROM && !types.isProxy(source) && inspect(source, NAMED_PROPERTIES_ONLY) === `[ ... ${length} more items ]`) {
    return Object.values(source).length !== length;
  }
  return Object.keys(source).length !== length;
}

/** The length from which an array's named properties are looked for with `util.inspect()`. */
const INSPECTED_FROM = 1024;

/** `util.inspect()` options that show none of an array's items, and its other keys in brief. */
const NAMED_PROPERTIES_ONLY: InspectOptions = { maxArrayLength: 0, depth: 0, maxStringLength: 0, breakLength: Infinity, customInspect: false, getters: false, showHidden: false, showProxy: false };

/**
 * @return the value of the property `key` of the innermost frame's source, an object
 * @throws {TypeError} at a getter or a non-enumerable property
 * @private
 */
function ownValue(name: string, frames: readonly Frame[], key: string): unknown {
  const { source } = frames[frames.length - 1] as Frame;
  // Listed by getOwnPropertyNames(), so there (unless a Proxy lies: then it counts as non-enumerable).
  const descriptor: PropertyDescriptor = Object.getOwnPropertyDescriptor(source, key) ?? {};
  if (descriptor.get !== undefined || descriptor.set !== undefined) throw refused(name, 'a getter', frames, key);
  if (descriptor.enumerable !== true) throw refused(name, 'a non-enumerable property', frames, key);
  return descriptor.value;
}

/**
 * Checks an array or object about to be copied.
 * @param key - where it sits in the innermost frame's source
 * @return its frame, holding an empty copy
 * @throws {TypeError} at a class instance, a symbol key or too deep a nesting
 * @private
 */
function enter(name: string, frames: readonly Frame[], key: string | number, value: object): Frame {
  const isArray = Array.isArray(value);
  const prototype: unknown = Object.getPrototypeOf(value);
  if (isArray ? prototype !== Array.prototype : prototype !== Object.prototype && prototype !== null) {
    throw refused(name, describeInstance(value), frames, key);
  }
  if (Object.getOwnPropertySymbols(value).length > 0) throw refused(name, 'a symbol key', frames, key);
  if (frames.length > MAX_DEPTH) {
    const argument = (frames[1] as Frame).key; // nested that deep, it is inside an argument
    throw new TypeError(`Expected the arguments of task \`${name}\` to be JSON values, got more than ${MAX_DEPTH} levels of nesting in args[${argument}]`);
  }
  if (isArray) return { source: value, copy: [], keys: undefined, length: value.length, next: 0, key };
  // String keys and symbols apart: `Reflect.ownKeys()` takes V8's slow path.
  const keys = Object.getOwnPropertyNames(value);
  return { source: value, copy: {}, keys, length: keys.length, next: 0, key };
}

/**
 * @return what is wrong with a value that is not an object, or `undefined` when it is JSON
 * @private
 */
function primitiveProblem(value: unknown): string | undefined {
  switch (typeof value) {
    case 'string':
    case 'boolean':
      return undefined;
    case 'number':
      return Number.isFinite(value) ? undefined : String(value);
    case 'undefined':
      return 'undefined';
    default:
      return value === null ? undefined : `a ${typeof value}`;
  }
}

/**
 * Sets `value` at `key` of the frame's copy. Items come in index order, so an array's copy grows
 * by `push()` and stays packed.
 * @private
 */
function store(frame: Frame, key: string | number, value: unknown): void {
  if (frame.keys === undefined) (frame.copy as unknown[]).push(value);
  // An own "__proto__" key (JSON.parse makes one) must stay a key, not become the prototype.
  else if (key === '__proto__') Object.defineProperty(frame.copy, key, { value, enumerable: true, writable: true, configurable: true });
  else (frame.copy as Record<string, unknown>)[key] = value;
}

/**
 * @param problem - what was found, e.g. "a Date"
 * @param frames - the arrays and objects that hold it, outermost first
 * @param key - its key in the innermost one, or `undefined` when the problem is that one itself
 * @return the error naming the task and where in `args` the problem sits
 * @private
 */
function refused(name: string, problem: string, frames: readonly Frame[], key: string | number | undefined): TypeError {
  let path = 'args';
  for (const frame of frames.slice(1)) path += pathSegment(frame.key);
  if (key !== undefined) path += pathSegment(key);
  return new TypeError(`Expected the arguments of task \`${name}\` to be JSON values, got ${problem} at ${path}`);
}

/**
 * @return `[0]`, `.email` or `["content-type"]`
 * @private
 */
function pathSegment(key: string | number): string {
  if (typeof key === 'number') return `[${key}]`;
  return /^[A-Za-z_$][\w$]*$/.test(key) ? `.${key}` : `[${JSON.stringify(key)}]`;
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

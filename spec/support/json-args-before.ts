// The check and copy of a defined task's arguments as it was written first: a frame per value,
// a property descriptor per key, Object.keys() per array. Kept here only as the oracle that the
// faster lib/definition.ts captureJsonArgs() is checked against (spec/defined-tasks.spec.ts): the
// same values accepted and copied, the same refused with the same message.

/**
 * @return the copy of `args`, as the first implementation made it
 * @throws {TypeError} as the first implementation did
 */
export function captureJsonArgsAsBefore(name: string, args: readonly unknown[]): unknown[] {
  const captured: unknown[] = [];
  // An explicit stack, not recursion: however deep the value, the check cannot overflow the call stack.
  const frames: Frame[] = [{ source: args, copy: captured, keys: undefined, length: args.length, next: 0, key: 0 }];
  // The sources on the path from `args` down, for the circular-reference check in constant time:
  // a scan of `frames` for every object would let a deep, wide value cost depth × objects.
  const onPath = new Set<object>();
  while (frames.length > 0) {
    const frame = frames[frames.length - 1] as Frame;
    if (frame.next === frame.length) {
      // An array holds its items and `length`, nothing else (`args`, a rest parameter, always does).
      if (frame.keys === undefined && frames.length > 1 && Object.keys(frame.source).length !== frame.length) {
        throw refused(name, 'an array with named properties', frames, undefined);
      }
      frames.pop();
      onPath.delete(frame.source);
      continue;
    }
    const key = frame.keys === undefined ? frame.next : frame.keys[frame.next] as string;
    frame.next++;
    const value = frames.length === 1 ? args[key as number] : ownValue(name, frames, key);
    if (typeof value === 'object' && value !== null) {
      if (onPath.has(value)) throw refused(name, 'a circular reference', frames, key);
      const child = enter(name, frames, key, value);
      store(frame, key, child.copy);
      frames.push(child);
      onPath.add(value);
    } else {
      const problem = primitiveProblem(value);
      if (problem !== undefined) throw refused(name, problem, frames, key);
      store(frame, key, value === 0 ? 0 : value); // JSON has no -0
    }
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
 * @return the value at `key` of the innermost frame's source
 * @throws {TypeError} at a hole, a getter or a non-enumerable property
 * @private
 */
function ownValue(name: string, frames: readonly Frame[], key: string | number): unknown {
  const { source, keys } = frames[frames.length - 1] as Frame;
  if (keys === undefined) {
    // Read as JSON.stringify reads an item (a getter on an index runs, once, here): a property
    // descriptor per item would cost V8's slow path.
    if (!Object.hasOwn(source, key)) throw refused(name, 'a hole', frames, key);
    return (source as unknown[])[key as number];
  }
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

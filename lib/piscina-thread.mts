/*!
 * express-background-tasks/piscina: what each thread of the pool runs
 * MIT Licensed
 */

// An ES module in both builds (.mts), so that it can import() the tasks module, whichever kind it is.
import { readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { inspect } from 'node:util';
import { definedName, type DefinedTask } from './definition.js';
import { describeError, isPermanent, messageOf } from './errors.js';

/**
 * What the main thread sends a thread for each task.
 * @internal
 */
export interface ThreadTask {
  /** The `file:` URL of the module that exports the definitions. */
  readonly module: string;
  /** The task's defined name. */
  readonly name: string;
  /** Its arguments, JSON values. */
  readonly args: readonly unknown[];
}

/**
 * What a thread resolves with when its task threw a `PermanentError`: a thrown error crosses to
 * the main thread as a structured clone, which keeps its message and stack but not its class.
 * @internal
 */
export interface PermanentFailure {
  readonly permanent: { readonly message: string; readonly stack: string | undefined };
}

/**
 * Runs one task: finds it by its name among the definitions the module exports (loaded once per
 * thread) and awaits it. What it returns stays in the thread.
 * @return nothing, or a `PermanentFailure` when the task threw a `PermanentError`
 * @throws {Error} when the module cannot be loaded, exports no definitions, or none by that name;
 *   whatever else the task throws
 * @internal
 */
export async function runTask({ module, name, args }: ThreadTask): Promise<PermanentFailure | undefined> {
  const tasks = await tasksOf(module);
  const task = tasks.get(name);
  if (task === undefined) {
    throw new Error(`Task ${name} is not exported by the tasks module ${module}, which exports ${[...tasks.keys()].join(', ')}: export its defineTask() definition there`);
  }
  try {
    await task(...args);
  } catch (error) {
    if (!isPermanent(error)) throw sendable(name, error);
    const { message, stack } = error as Error;
    return { permanent: { message: String(message), stack: typeof stack === 'string' ? stack : undefined } };
  }
  return undefined;
}

/**
 * @return the names of the definitions the module exports, once this thread has loaded it
 * @throws {Error} when the module cannot be loaded or exports no definitions
 * @internal
 */
export async function listTasks({ module }: Pick<ThreadTask, 'module'>): Promise<string[]> {
  return [...(await tasksOf(module)).keys()];
}

/**
 * @return what a task threw, when the thread can send it back as it is (a structured clone), or
 *   else an Error that says what it was: piscina takes a `null` or `undefined` error for none, and
 *   what it cannot clone (a Symbol, a function, a Proxy, an object with a method) arrives as `{}`
 */
function sendable(name: string, thrown: unknown): unknown {
  if (thrown !== null && thrown !== undefined) {
    try {
      structuredClone(thrown);
      return thrown;
    } catch {
      // described below
    }
  }
  // A function is shown by its name, as inspect() does, rather than by its source.
  const shown = typeof thrown === 'function' ? inspect(thrown, { depth: 0 }) : describeError(thrown);
  return new Error(`Task ${name} failed with ${shown}, not an Error`);
}

/** The definitions of each module this thread has loaded, by name. */
const loaded = new Map<string, Promise<ReadonlyMap<string, DefinedTask<unknown[]>>>>();

/**
 * @return the definitions `module` exports, by name; loaded on the first call, and again after a
 *   failure (the file may have been built since)
 */
function tasksOf(module: string): Promise<ReadonlyMap<string, DefinedTask<unknown[]>>> {
  let tasks = loaded.get(module);
  if (tasks === undefined) {
    tasks = load(module);
    loaded.set(module, tasks);
    tasks.catch(() => loaded.delete(module));
  }
  return tasks;
}

/**
 * Imports `module` and collects the definitions it exports.
 * @throws {Error} when it cannot be imported, exports none, or exports two by the same name
 */
async function load(module: string): Promise<ReadonlyMap<string, DefinedTask<unknown[]>>> {
  await (tsxRegistered ??= registerTsx());
  let exports: Record<string, unknown>;
  try {
    exports = (await import(module)) as Record<string, unknown>;
  } catch (error) {
    const hint = /\.[mc]?ts$/.test(module) || (error as { code?: unknown } | null)?.code === 'ERR_UNKNOWN_FILE_EXTENSION'
      ? ' (TypeScript needs a loader in the threads too: run the process with tsx, or compile the module and point `filename` at the .js)'
      : '';
    throw new Error(`Cannot load the tasks module ${module} in a pool thread${hint}: ${messageOf(error)}`, { cause: error });
  }
  const tasks = new Map<string, DefinedTask<unknown[]>>();
  for (const value of Object.values(exports)) {
    const name = typeof value === 'function' ? definedName(value) : undefined;
    if (name === undefined) continue;
    if (tasks.has(name) && tasks.get(name) !== value) {
      throw new Error(`The tasks module ${module} exports two different definitions named ${name}: give each task a name of its own`);
    }
    tasks.set(name, value as DefinedTask<unknown[]>);
  }
  if (tasks.size === 0) {
    throw new Error(`The tasks module ${module} exports no defineTask() definitions: export each task the pool runs, e.g. export const makeThumbnail = defineTask('make-thumbnail', ...)`);
  }
  return tasks;
}

/** Registers tsx's hooks in this thread, once, when the process runs through tsx. */
let tsxRegistered: Promise<void> | undefined;

/**
 * When the process runs through tsx (its threads inherit its `execArgv`), registers tsx's ES module
 * hooks in this thread, so that it loads TypeScript as the main thread does. On Node 20 tsx
 * registers them in the main thread only (privatenumber/tsx#354); where it does so in threads too,
 * registering again is harmless.
 */
async function registerTsx(): Promise<void> {
  const loader = process.execArgv.find((arg) => arg === 'tsx' || arg.endsWith('=tsx') || /[/\\]tsx[/\\]/.test(arg));
  if (loader === undefined) return;
  // Found as Node found the flag's module: a path as it is, a package name from the working directory.
  const from = /[/\\]/.test(loader) ? loader.replace(/^--[\w-]+=/, '') : path.join(process.cwd(), 'index.js');
  let api: string;
  try {
    const manifest = createRequire(from).resolve('tsx/package.json');
    const { exports } = JSON.parse(await readFile(manifest, 'utf8')) as { exports: Record<string, { import: { default: string } }> };
    api = pathToFileURL(path.join(path.dirname(manifest), exports['./esm/api']?.import.default ?? '')).href;
  } catch {
    return; // not tsx after all: a TypeScript module then fails to load, with a hint
  }
  const { register } = (await import(api)) as { register(): unknown };
  register();
}

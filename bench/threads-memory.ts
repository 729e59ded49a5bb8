/**
 * Child process (run with `--expose-gc`) of bench/threads.ts: the memory a pool's threads take.
 * Measures the process's RSS, starts a pool of `<threads>` threads, has each load the tasks module
 * and run a task, and measures again. Usage: `threads-memory.ts <library url> <threads>`; reports
 * the growth in bytes over IPC.
 */
import { report } from './child.js';

if (globalThis.gc === undefined) throw new Error('bench/threads-memory.ts needs --expose-gc');
const gc = globalThis.gc;
const [libraryUrl, threadsArgument] = process.argv.slice(2) as [string, string];
const threads = Number(threadsArgument);
const { piscinaTransport } = (await import(libraryUrl.replace(/index\.js$/, 'piscina.js'))) as typeof import('../lib/piscina.js');
const tasksModule = new URL('threads-tasks.mjs', import.meta.url);

const before = rss();
const transport = piscinaTransport({ filename: tasksModule, minThreads: threads, maxThreads: threads, execArgv: [] });
await transport.ready;
// Long enough that each task holds its thread while the others start: every thread loads the module.
const { signal } = new AbortController();
await Promise.all(Array.from({ length: threads }, () => transport.run({ name: 'burn', args: [2_000_000] }, { signal })));
const grown = rss() - before;
await transport.close?.();
report(grown);

/** @return the process's resident set after a full collection of this thread's heap */
function rss(): number {
  gc();
  gc();
  return process.memoryUsage().rss;
}

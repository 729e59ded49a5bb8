// The CPU-heavy task of `npm run demo -- --threads`, in a module of its own: each thread of the
// pool loads this module (a .ts file, through tsx, in development) and runs the task by its name.
// Copy freely: in your app, import from 'express-background-tasks'.
import { threadId } from 'node:worker_threads';
import { defineTask } from '../lib/index.js';

/**
 * Stands in for resizing a photo: `cpuMs` of synchronous work, which on the main thread would stop
 * every response behind it. `t0` (ms since the epoch) lets the thread print on the demo's timeline.
 */
export const makeThumbnail = defineTask('make-thumbnail', (photo: string, cpuMs: number, t0: number) => {
  log(t0, `makeThumbnail(${photo}) started on thread ${threadId}: ${cpuMs} ms of CPU`);
  const end = performance.now() + cpuMs;
  let pixels = 0;
  while (performance.now() < end) pixels++;
  log(t0, `makeThumbnail(${photo}) finished (${pixels.toLocaleString('en-US')} loop turns)`);
});

/** Prints one line of the demo's timeline, in ms since `t0`. */
function log(t0: number, what: string): void {
  const ms = Math.round(performance.timeOrigin + performance.now() - t0);
  console.log(`+ ${String(ms).padStart(4)} ms  ${'thread'.padEnd(7)}  ${what}`);
}

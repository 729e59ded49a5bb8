// The tasks of the thread-pool benchmark (bench/threads.ts). The pool's threads load this module as
// compiled JavaScript, as in production, with no tsx in the threads; the in-process variant and the
// calibration run the same functions. It imports the library bench/library.ts compiles.
import { defineTask } from '../.tmp/bench/dist/index.js';

/** Synchronous CPU work: `iterations` turns of a loop whose result is used, so none is skipped. */
export const burn = defineTask('burn', (iterations) => {
  let value = 1;
  for (let turn = 0; turn < iterations; turn++) value = (value * 48271 + turn) % 2147483647;
  if (value < 0) throw new Error('unreachable: keeps the loop from being optimised away');
});

/** A trivial task: what a pool hand-off costs on its own. */
export const noop = defineTask('noop', () => {});

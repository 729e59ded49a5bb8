// The tasks the thread-pool servers run. Threads load this module as compiled JavaScript, as in
// production; it imports the library that bench/run.ts compiles.
import { defineTask } from '../.tmp/bench/dist/index.js';

/** The defined no-op that `piscinaTransport()` runs. */
export const noop = defineTask('noop', () => {});

/** The same no-op, for the pool run by hand. */
export function plainNoop() {}

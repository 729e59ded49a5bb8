/**
 * The thread-pool benchmark (issue 10): about 10 ms of synchronous CPU work per request, in this
 * process or on a piscina pool, against bare Express. Each server runs in its own child process
 * (`bench/threads-server.ts`); this process sends the load.
 */
import type { ChildProcess } from 'node:child_process';
import { Agent, request } from 'node:http';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import type { DefinedTask } from '../lib/index.js';
import { runChild, startChild, stopChild } from './child.js';
import { median, percentile } from './stats.js';
import type { ThreadServerReady } from './threads-server.js';

/** The servers compared, in measuring order: each pool variant next to what it is compared with. */
export const threadVariants = [
  { id: 'bare', label: 'bare Express 5, no task', threads: 0 },
  { id: 'pool1', label: 'the task on the pool, 1 thread', threads: 1 },
  { id: 'inProcess', label: 'the task in this process', threads: 0 },
  { id: 'pool2', label: 'the task on the pool, 2 threads', threads: 2 },
] as const;

/** The name of one thread-benchmark server. */
export type ThreadVariantId = (typeof threadVariants)[number]['id'];

/** How the thread benchmark loads the servers. */
export interface ThreadSettings {
  /** The task's length the calibration aims at, ms. */
  readonly taskMs: number;
  /** Requests per second of the paced runs, each with a task. */
  readonly rate: number;
  /** Seconds per paced run. */
  readonly seconds: number;
  readonly rounds: number;
  /** Requests of the burst that measures how many tasks per second a server gets through. */
  readonly burst: number;
  /** Keep-alive connections of the burst. */
  readonly connections: number;
  /** No-op tasks one response queues to time a hand-off to the pool. */
  readonly noops: number;
  /** The pool sizes whose memory is measured. */
  readonly memoryThreads: readonly number[];
}

/** One server's numbers, one entry per round. */
export interface ThreadVariantRuns {
  /** p99 response time at the paced rate, from each request's scheduled start, ms. */
  readonly p99: number[];
  /** Tasks completed per second at the paced rate, until the last had run. */
  readonly tasksPerSecond: number[];
  /** Tasks completed per second of a burst, until the last had run (no entries for bare Express). */
  readonly capacity: number[];
}

/** What the thread benchmark measured. */
export interface ThreadsResult {
  readonly settings: ThreadSettings;
  /** How long the task took in the in-process server's own thread, ms. */
  readonly taskMs: number;
  readonly runs: Record<ThreadVariantId, ThreadVariantRuns>;
  /** µs per no-op task, one response's tasks one after another: on the 1-thread pool, and in process. */
  readonly handOff: { readonly pool: number[]; readonly inProcess: number[] };
  /** RSS growth per thread of a pool of each size, bytes. */
  readonly memory: readonly { readonly threads: number; readonly bytesPerThread: number }[];
}

/**
 * Calibrates the task, starts the servers, and measures them round after round: a paced run each
 * (Poisson arrivals, the same schedule for all in a round), a burst each but bare Express, and the
 * hand-off cost; then the memory per thread. Every child is stopped before this returns or throws.
 * @param libraryUrl - the compiled library, from `buildLibrary()`
 * @param settings - rates, durations, rounds
 * @param progress - called with a line of text after each measurement
 * @return the measurements
 */
export async function benchThreads(libraryUrl: string, settings: ThreadSettings, progress: (line: string) => void): Promise<ThreadsResult> {
  const iterations = await calibrate(settings.taskMs);
  const servers: { readonly id: ThreadVariantId; readonly child: ChildProcess; readonly port: number; readonly taskMs: number }[] = [];
  try {
    for (const { id } of threadVariants) {
      const { child, message } = await startChild<ThreadServerReady>('threads-server.ts', [id, libraryUrl, String(iterations)]);
      servers.push({ id, child, port: message.port, taskMs: message.taskMs });
    }
    for (const { port } of servers) await pacedRun(port, settings.rate, 1, 0); // warm-up
    const runs = Object.fromEntries(threadVariants.map(({ id }) => [id, { p99: [], tasksPerSecond: [], capacity: [] }])) as unknown as Record<ThreadVariantId, ThreadVariantRuns>;
    const handOff = { pool: [] as number[], inProcess: [] as number[] };
    for (let round = 0; round < settings.rounds; round++) {
      const order = round % 2 === 0 ? servers : [...servers].reverse();
      for (const { id, port } of order) {
        const paced = await pacedRun(port, settings.rate, settings.seconds, round + 1);
        runs[id].p99.push(paced.p99);
        runs[id].tasksPerSecond.push(paced.tasksPerSecond);
        let line = `threads ${round + 1}/${settings.rounds} ${id.padEnd(9)} p99 ${paced.p99.toFixed(2)} ms  ${paced.tasksPerSecond.toFixed(1)} tasks/s`;
        if (id !== 'bare') {
          const capacity = await burst(port, settings.burst, settings.connections);
          runs[id].capacity.push(capacity);
          line += `  burst ${capacity.toFixed(1)} tasks/s`;
        }
        if (id === 'pool1' || id === 'inProcess') {
          const micros = await perNoop(port, settings.noops);
          handOff[id === 'pool1' ? 'pool' : 'inProcess'].push(micros);
          line += `  no-op ${micros.toFixed(1)} µs`;
        }
        progress(line);
      }
    }
    const memory = [];
    for (const threads of settings.memoryThreads) {
      const grown = await runChild<number>('threads-memory.ts', [libraryUrl, String(threads)], ['--expose-gc']);
      memory.push({ threads, bytesPerThread: grown / threads });
      progress(`threads memory: ${threads} thread(s), ${(grown / threads / 2 ** 20).toFixed(1)} MiB each`);
    }
    const taskMs = servers.find(({ id }) => id === 'inProcess')?.taskMs ?? NaN;
    return { settings, taskMs, runs, handOff, memory };
  } finally {
    await Promise.all(servers.map(({ child }) => stopChild(child)));
  }
}

/**
 * @param taskMs - how long the task should take
 * @return the iterations of the task's loop that take about `taskMs` in this process: a warm-up,
 *   then the median of several timed runs (single runs of 10 ms vary by 2× on a shared machine)
 */
async function calibrate(taskMs: number): Promise<number> {
  const { burn } = (await import(new URL('threads-tasks.mjs', import.meta.url).href)) as { burn: DefinedTask<[number]> };
  const probe = 1_000_000;
  for (let run = 0; run < 5; run++) burn(probe);
  const lengths: number[] = [];
  for (let run = 0; run < 9; run++) {
    const startedAt = performance.now();
    burn(probe);
    lengths.push(performance.now() - startedAt);
  }
  return Math.round((probe * taskMs) / median(lengths));
}

/**
 * Sends `GET /task` at `rate` requests per second on average, with exponentially distributed gaps
 * (Poisson arrivals, as independent clients make them; an even spacing would slip each request
 * between two tasks), seeded so that every server of a round gets the same schedule.
 * @return the p99 response time from each request's scheduled start, and the tasks completed
 *   per second from the first request until the last task had run
 */
async function pacedRun(port: number, rate: number, seconds: number, seed: number): Promise<{ p99: number; tasksPerSecond: number }> {
  const random = mulberry32(seed);
  const schedule: number[] = [];
  for (let at = 0; ;) {
    at += (-Math.log(1 - random()) / rate) * 1000;
    if (at > seconds * 1000) break;
    schedule.push(at);
  }
  return withAgent(64, async (agent) => {
    const before = await completed(port, agent);
    const startedAt = performance.now();
    const responseTimes = await Promise.all(schedule.map(async (at) => {
      await sleep(Math.max(0, startedAt + at - performance.now()));
      await getText(port, '/task', agent);
      return performance.now() - (startedAt + at);
    }));
    const tasks = (await completed(port, agent)) - before;
    return { p99: percentile(responseTimes, 99), tasksPerSecond: tasks / ((performance.now() - startedAt) / 1000) };
  });
}

/**
 * Sends `count` `GET /task` over `connections` keep-alive connections, each as soon as the one
 * before it on its connection was answered.
 * @return tasks completed per second, from the first request until the last task had run
 */
async function burst(port: number, count: number, connections: number): Promise<number> {
  return withAgent(connections, async (agent) => {
    const before = await completed(port, agent);
    const startedAt = performance.now();
    let sent = 0;
    await Promise.all(Array.from({ length: connections }, async () => {
      while (sent < count) {
        sent++;
        await getText(port, '/task', agent);
      }
    }));
    const tasks = (await completed(port, agent)) - before;
    return tasks / ((performance.now() - startedAt) / 1000);
  });
}

/**
 * @return µs per task for `count` no-op tasks queued on one response, run one after another
 */
async function perNoop(port: number, count: number): Promise<number> {
  return withAgent(1, async (agent) => {
    await completed(port, agent);
    const startedAt = performance.now();
    await getText(port, `/noops/${count}`, agent);
    await completed(port, agent);
    return ((performance.now() - startedAt) * 1000) / count;
  });
}

/**
 * Runs `use` with keep-alive connections of its own, closed after it: a connection kept between two
 * measurements could be closed by the server's `keepAliveTimeout` just as it is reused.
 */
async function withAgent<T>(connections: number, use: (agent: Agent) => Promise<T>): Promise<T> {
  const agent = new Agent({ keepAlive: true, maxSockets: connections });
  try {
    return await use(agent);
  } finally {
    agent.destroy();
  }
}

/** @return the tasks the server has run so far, once none is pending */
async function completed(port: number, agent: Agent): Promise<number> {
  return (JSON.parse(await getText(port, '/drain', agent)) as { completed: number }).completed;
}

/** One GET; resolves with the body, rejects on an error or a non-2xx status. */
function getText(port: number, path: string, agent: Agent): Promise<string> {
  return new Promise((resolve, reject) => {
    request({ host: '127.0.0.1', port, path, agent }, (response) => {
      let body = '';
      response.setEncoding('utf8');
      response.on('data', (chunk: string) => (body += chunk));
      response.on('end', () => ((response.statusCode ?? 0) < 300 ? resolve(body) : reject(new Error(`${path}: status ${response.statusCode}`))));
    }).on('error', reject).end();
  });
}

/**
 * @param seed - any integer
 * @return a small, fast, seeded generator of numbers in [0, 1)
 */
function mulberry32(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let value = Math.imul(state ^ (state >>> 15), 1 | state);
    value = (value + Math.imul(value ^ (value >>> 7), 61 | value)) ^ value;
    return ((value ^ (value >>> 14)) >>> 0) / 4294967296;
  };
}

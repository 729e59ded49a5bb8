import type { ChildProcess } from 'node:child_process';
import { Agent, request as httpRequest } from 'node:http';
import { performance } from 'node:perf_hooks';
import autocannon from 'autocannon';
import { request, startChild, stopChild } from './child.js';
import { summarizeProfile, type CallFrame, type CpuProfile, type ProfileSummary } from './profile.js';
import type { ServerReady } from './servers.js';
import { percentile } from './stats.js';
import { pacedVariants, variants, type VariantId } from './variants.js';

/** How hard and how long the load generator pushes. */
export interface LoadSettings {
  /** Concurrent keep-alive connections. */
  readonly connections: number;
  /** Seconds per variant per round. */
  readonly seconds: number;
  /** Seconds of unrecorded load per server before the first round, so the JIT has warmed up. */
  readonly warmupSeconds: number;
  /** Seconds of load a server is profiled for, when a target it is part of was missed. */
  readonly profileSeconds: number;
  /** Rounds of the fixed-rate latency comparison (`pacedVariants`, in turn). */
  readonly pacedRounds: number;
  /** The fixed rate of that comparison, as a share of bare Express's median throughput. */
  readonly pacedShare: number;
  /**
   * Rounds. Each runs every variant once, in the cycle of `variants` rotated by one place from the
   * previous round and walked backwards in every other round, so no variant keeps a favoured slot.
   */
  readonly rounds: number;
}

/** One variant's numbers, one entry per round. */
export interface VariantRuns {
  /** Requests per second. */
  readonly throughput: number[];
  /** 99th percentile response time at full load, ms. */
  readonly p99: number[];
  /** Median response time at the fixed rate, ms (only `pacedVariants`). */
  readonly pacedP50: number[];
  /** 99th percentile response time at the fixed rate, ms (only `pacedVariants`). */
  readonly pacedP99: number[];
}

/**
 * Starts each server variant in its own child process (all at once) and loads them in turn from
 * this process, round after round. Every child is stopped before this returns or throws.
 * @param libraryUrl - the compiled library, from `buildLibrary()`
 * @param redisPort - the Redis on 127.0.0.1 of the BullMQ variants
 * @param settings - connections, durations, rounds
 * @param progress - called with a line of text after each measurement
 * @return each variant's numbers, round by round
 * @throws {Error} when a server fails to start or a run sees errors or non-2xx responses
 */
export async function benchHttp(libraryUrl: string, redisPort: number, settings: LoadSettings, progress: (line: string) => void): Promise<Record<VariantId, VariantRuns>> {
  const servers: { readonly id: VariantId; readonly child: ChildProcess; readonly port: number }[] = [];
  try {
    const started = await Promise.allSettled(variants.map(async ({ id }) => ({ id, ...(await startChild<ServerReady>('servers.ts', [id, libraryUrl, String(redisPort)])) })));
    for (const outcome of started) {
      if (outcome.status === 'fulfilled') servers.push({ id: outcome.value.id, child: outcome.value.child, port: outcome.value.message.port });
    }
    const failed = started.find((outcome) => outcome.status === 'rejected');
    if (failed !== undefined) throw failed.reason;
    for (const { port } of servers) await load(port, settings.connections, settings.warmupSeconds);
    const runs = Object.fromEntries(variants.map(({ id }) => [id, { throughput: [], p99: [], pacedP50: [], pacedP99: [] }])) as unknown as Record<VariantId, VariantRuns>;
    for (let round = 0; round < settings.rounds; round++) {
      const first = round % servers.length;
      const order = [...servers.slice(first), ...servers.slice(0, first)];
      if (round % 2 === 1) order.reverse();
      for (const { id, port } of order) {
        const measured = await load(port, settings.connections, settings.seconds);
        runs[id].throughput.push(measured.throughput);
        runs[id].p99.push(measured.p99);
        progress(`round ${round + 1}/${settings.rounds} ${id.padEnd(13)} ${measured.throughput.toFixed(0).padStart(6)} req/s  p99 ${measured.p99.toFixed(2)} ms`);
      }
    }
    // Under full load, latency only mirrors throughput (closed loop). At a fixed rate the server
    // keeps up, so a response that waited for its task, or for a staging, shows in p50 and p99.
    const rate = Math.round(settings.pacedShare * percentile(runs.bare.throughput, 50));
    const paced = servers.filter(({ id }) => pacedVariants.includes(id));
    for (let round = 0; round < settings.pacedRounds; round++) {
      for (const { id, port } of round % 2 === 0 ? paced : [...paced].reverse()) {
        const { p50, p99 } = await pacedLatency(port, settings.connections, settings.seconds * 2, rate);
        runs[id].pacedP50.push(p50);
        runs[id].pacedP99.push(p99);
        progress(`paced ${round + 1}/${settings.pacedRounds} ${id.padEnd(16)} ${rate} req/s offered  p50 ${p50.toFixed(2)} ms  p99 ${p99.toFixed(2)} ms`);
      }
    }
    return runs;
  } finally {
    await Promise.all(servers.map(({ child }) => stopChild(child)));
  }
}

/**
 * Profiles one server variant under the same load as the benchmark, after a warm-up, and sums up
 * the CPU time of its task code: the library's modules, the variant's own middleware and
 * on-finished listener, and what they call, except what they call back into Express (`next()`
 * leads on to the route and `res.send('ok')`, which every variant runs alike).
 * @param libraryUrl - the compiled library, from `buildLibrary()`
 * @param redisPort - the Redis on 127.0.0.1 of the BullMQ variants
 * @param id - the variant
 * @param settings - connections and durations
 * @return the server's CPU time, the task code's share of it and its heaviest functions
 */
export async function profileServer(libraryUrl: string, redisPort: number, id: VariantId, settings: LoadSettings): Promise<ProfileSummary> {
  const { child, message } = await startChild<ServerReady>('servers.ts', [id, libraryUrl, String(redisPort)]);
  try {
    await load(message.port, settings.connections, settings.warmupSeconds);
    await request(child, 'start-profile');
    await load(message.port, settings.connections, settings.profileSeconds);
    const profile = await request<CpuProfile>(child, 'stop-profile');
    const libraryDirectory = new URL('.', libraryUrl).href;
    return summarizeProfile(profile, (frame) => frame.url.startsWith(libraryDirectory) || classifyVariantFrame(frame));
  } finally {
    await stopChild(child);
  }
}

/** The URL profiles give the server variants' module. */
const serversUrl = new URL('servers.ts', import.meta.url).href;

/** Where Express and its router live; task code calling into them is calling back into Express. */
const express = /\/node_modules\/(express|router)\//;

/**
 * @return `true` for the named functions of `bench/servers.ts` other than the route, `false` for
 *   the route and for Express, `undefined` for the rest
 */
function classifyVariantFrame(frame: CallFrame): boolean | undefined {
  if (frame.url === serversUrl && frame.functionName !== '') return frame.functionName !== 'sendOk';
  return express.test(frame.url) ? false : undefined;
}

/**
 * Sends `GET /` at an even `rate` (an open loop: each request leaves on schedule, whether or not
 * earlier ones were answered) over up to `connections` keep-alive connections. autocannon's own
 * rate limit sends each second's budget in one burst, which would measure full load again.
 * @return the median and p99 response times in ms, from each request's scheduled start
 * @throws {Error} on a failed request or a non-2xx response
 */
async function pacedLatency(port: number, connections: number, seconds: number, rate: number): Promise<{ p50: number; p99: number }> {
  const agent = new Agent({ keepAlive: true, maxSockets: connections });
  const responseTimes: number[] = [];
  const total = Math.round(rate * seconds);
  const startedAt = performance.now();
  const inFlight: Promise<void>[] = [];
  try {
    for (let sent = 0; sent < total;) {
      const due = Math.min(total, Math.floor(((performance.now() - startedAt) / 1000) * rate));
      for (; sent < due; sent++) {
        const scheduledAt = startedAt + (sent / rate) * 1000;
        inFlight.push(get(port, agent).then(() => {
          responseTimes.push(performance.now() - scheduledAt);
        }));
      }
      await new Promise((resolve) => setTimeout(resolve, 1));
    }
    await Promise.all(inFlight);
  } finally {
    agent.destroy();
  }
  return { p50: percentile(responseTimes, 50), p99: percentile(responseTimes, 99) };
}

/** One `GET /` over `agent`; rejects on an error or a non-2xx status. */
function get(port: number, agent: Agent): Promise<void> {
  return new Promise((resolve, reject) => {
    httpRequest({ host: '127.0.0.1', port, path: '/', agent }, (response) => {
      response.resume();
      response.on('end', () => ((response.statusCode ?? 0) < 300 ? resolve() : reject(new Error(`status ${response.statusCode}`))));
    }).on('error', reject).end();
  });
}

/**
 * Runs autocannon against `http://127.0.0.1:<port>/` as fast as the server answers.
 * Response times come from autocannon's per-response event rather than its histogram, which
 * rounds them to whole milliseconds — too coarse to compare p99s within 5 %.
 * @return requests per second and the p99 response time in ms
 * @throws {Error} on connection errors, timeouts or non-2xx responses
 */
export async function load(port: number, connections: number, seconds: number): Promise<{ throughput: number; p99: number }> {
  const responseTimes: number[] = [];
  const result = await new Promise<autocannon.Result>((resolve, reject) => {
    const instance = autocannon({ url: `http://127.0.0.1:${port}/`, connections, duration: seconds }, (error: unknown, done) => {
      if (error) reject(error instanceof Error ? error : new Error(String(error)));
      else resolve(done);
    });
    instance.on('response', (_client, _status, _bytes, responseTime) => {
      responseTimes.push(responseTime);
    });
  });
  if (result.errors > 0 || result.non2xx > 0 || responseTimes.length === 0) {
    throw new Error(`port ${port}: ${result.errors} errors, ${result.non2xx} non-2xx responses, ${responseTimes.length} responses`);
  }
  return { throughput: result.requests.total / result.duration, p99: percentile(responseTimes, 99) };
}

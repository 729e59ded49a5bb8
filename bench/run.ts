/**
 * `npm run bench`: builds the library, runs the HTTP, queue, memory and thread-pool benchmarks
 * (each in child processes on 127.0.0.1), profiles what missed its target, and writes
 * `docs/benchmarks.md` with its chart `docs/benchmarks.svg`. The BullMQ variants need
 * `redis-server` installed, or `REDIS_URL`.
 */
import { writeFileSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { Queue } from 'bullmq';
import { startRedis } from '../spec/support/redis.js';
import { runChild } from './child.js';
import type { Evidence } from './explain.js';
import { benchHttp, profileServer, type LoadSettings } from './http.js';
import { buildLibrary } from './library.js';
import type { MemoryResult } from './memory.js';
import { summarizeProfile, type CallFrame, type CpuProfile } from './profile.js';
import type { QueueResult } from './queue.js';
import { renderPage } from './report.js';
import { evaluateTargets, type Target } from './targets.js';
import { benchThreads, type ThreadSettings } from './threads.js';
import { variants, type VariantId } from './variants.js';
import type { Redis } from '../spec/support/redis.js';

/** Sized so that the whole run stays under four minutes on a 2-core machine. */
const settings: LoadSettings = { connections: 50, seconds: 1, warmupSeconds: 1, rounds: 12, profileSeconds: 1.5, pacedRounds: 4, pacedShare: 0.25 };
/** 50 tasks of 10 ms a second: half of one core, which the event loop alone can still keep up with. */
const threadSettings: ThreadSettings = { taskMs: 10, rate: 50, seconds: 3, rounds: 5, burst: 150, connections: 16, noops: 2000, memoryThreads: [1, 2, 4] };

const startedAt = performance.now();
const redis = await startRedis();
if (typeof redis === 'string') throw new Error(`The BullMQ variants need Redis: ${redis}`);
log('building lib/ (tsconfig.build.json) into .tmp/bench/dist');
const libraryUrl = buildLibrary();
log(`HTTP: ${settings.rounds} rounds × ${variants.length} variants × ${settings.seconds} s, ${settings.connections} connections; Redis on port ${redis.port}`);
const http = await benchHttp(libraryUrl, redis.port, settings, log);
log('queue: 1,000,000 tasks through one response queue and through a plain loop');
const queue = await runChild<QueueResult>('queue.ts', [libraryUrl, 'measure'], ['--expose-gc']);
log('memory: heap per queued task');
const memory = await runChild<MemoryResult>('memory.ts', [libraryUrl], ['--expose-gc']);
log(`thread pool: a ${threadSettings.taskMs} ms CPU task per request, ${threadSettings.rate} req/s, ${threadSettings.rounds} rounds`);
const threads = await benchThreads(libraryUrl, threadSettings, log);
const measurements = { http, queue, memory, threads };
const targets = evaluateTargets(measurements);
const evidence = await profileMisses(targets);
const jobs = new Queue('bench-hand-off', { connection: { host: redis.host, port: redis.port } });
await jobs.obliterate({ force: true });
await jobs.close();
await redis.stop();
const seconds = (performance.now() - startedAt) / 1000;

const { markdown, svg } = renderPage({ date: new Date(), seconds, settings, measurements, targets, evidence });
writeFileSync(new URL('../docs/benchmarks.md', import.meta.url), markdown);
writeFileSync(new URL('../docs/benchmarks.svg', import.meta.url), svg);
for (const { label, measured, unit, met } of targets) {
  log(`${met ? 'met   ' : 'MISSED'} ${label}: ${measured.median.toFixed(unit === '×' ? 3 : 0)}${unit === '×' ? '×' : ' bytes'}`);
}
log(`wrote docs/benchmarks.md and docs/benchmarks.svg in ${seconds.toFixed(0)} s`);

/**
 * Profiles what each missed target measures: the server variants it compares (bare Express has
 * no task code to look at) or the queue's run of sync tasks.
 * @param judged - the targets, judged
 * @return the profiles, for the page
 */
async function profileMisses(judged: readonly Target[]): Promise<Evidence> {
  const missed = judged.filter((target) => !target.met);
  const variantsToProfile = new Set<VariantId>(missed.flatMap((target) => target.servers ?? []).filter((id) => id !== 'bare'));
  const servers: Evidence['servers'] = {};
  for (const id of variantsToProfile) {
    log(`profiling server ${id}`);
    servers[id] = await profileServer(libraryUrl, (redis as Redis).port, id, settings);
  }
  if (!missed.some((target) => target.id === 'sync')) return { servers };
  log('profiling the queue with sync tasks');
  const profile = await runChild<CpuProfile>('queue.ts', [libraryUrl, 'profile'], ['--expose-gc']);
  const queueModule = new URL('queue.js', libraryUrl).href;
  const isRunLoop = (frame: CallFrame): true | undefined => (frame.url === queueModule && frame.functionName === 'run') || undefined;
  return { servers, queue: summarizeProfile(profile, isRunLoop) };
}

/** Prints a progress line with the seconds elapsed. */
function log(line: string): void {
  console.log(`[${((performance.now() - startedAt) / 1000).toFixed(0).padStart(3)} s] ${line}`);
}

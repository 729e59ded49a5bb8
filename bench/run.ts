/**
 * `npm run bench` (`npm run bench -- --quick` for a short run): compiles lib/ as `npm run build`
 * does, then measures each comparison side by side, each server in a child process of its own,
 * loaded by autocannon in rounds whose order alternates. The figure that matters on a shared
 * machine is the server's CPU time per response (all its threads, its tasks included); each round
 * gives a ratio, and the table shows the median ratio with the lowest and highest of the rounds.
 */
import { execFileSync, fork, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { cpus } from 'node:os';
import { createRequire } from 'node:module';
import { fileURLToPath, pathToFileURL } from 'node:url';
import autocannon from 'autocannon';
import { startPostgres } from '../spec/support/postgres.js';
import { startRedis } from '../spec/support/redis.js';

const quick = process.argv.includes('--quick');
const load = { rounds: quick ? 3 : 8, seconds: quick ? 1 : 2, connections: 20 };

/** A store BullMQ runs on, started as the specs start it. */
interface Engine {
  readonly name: string;
  readonly label: string;
  start(): Promise<{ url: string; stop(): Promise<void> } | string>;
}

const engines: Engine[] = [
  {
    name: 'redis',
    label: 'BullMQ on Redis',
    async start() {
      const redis = await startRedis();
      return typeof redis === 'string' ? redis : { url: `redis://${redis.host}:${redis.port}`, stop: () => redis.stop() };
    },
  },
  { name: 'postgres', label: 'BullMQ on PostgreSQL', start: startPostgres },
];

/** Servers measured in the same rounds, and the rows they give: `[subject, baseline, label]`. */
interface Group {
  readonly variants: readonly string[];
  readonly rows: readonly (readonly [string, string, string])[];
  readonly engine?: Engine;
}

const groups: Group[] = [
  { variants: ['mounted', 'bare'], rows: [['mounted', 'bare', 'a response queueing nothing: `backgroundTasks()` mounted vs bare Express']] },
  { variants: ['task', 'onFinished'], rows: [['task', 'onFinished', '1 no-op task vs the same with hand-rolled `on-finished`']] },
  { variants: ['retry', 'task'], rows: [['retry', 'task', '1 no-op task with a `retry` setting vs without']] },
  ...engines.map((engine): Group => ({
    engine,
    variants: ['staged', 'awaitAdd', 'definedInProcess'],
    rows: [
      ['staged', 'awaitAdd', `${engine.label}: staged hand-off vs \`await queue.add()\` before responding`],
      ['staged', 'definedInProcess', `${engine.label}: staged hand-off vs the same defined task in-process`],
    ],
  })),
  { variants: ['pool', 'poolByHand'], rows: [['pool', 'poolByHand', 'thread pool: `piscinaTransport()` vs `pool.run()` by hand']] },
];

/** One variant's figures in one round. */
interface Run {
  readonly cpuMicros: number;
  readonly throughput: number;
  readonly p99: number;
}

const children = new Set<ChildProcess>();
process.once('exit', () => children.forEach((child) => child.kill('SIGKILL')));
const startedAt = Date.now();
const libraryUrl = buildLibrary();
const lines = [
  `${load.rounds} rounds × ${load.seconds} s per server, ${load.connections} connections; Node ${process.version}, ${cpus().length} CPUs (${cpus()[0]?.model ?? 'unknown'})`,
  '',
  '| Comparison | CPU per response, µs | CPU ratio (range) | req/s ratio (range) | p99, ms |',
  '| --- | --- | --- | --- | --- |',
];
for (const group of groups) {
  const engine = await group.engine?.start();
  if (typeof engine === 'string') {
    for (const [, , label] of group.rows) lines.push(`| ${label} | skipped: ${engine} | | | |`);
    continue;
  }
  try {
    const runs = await measure(group, engine?.url);
    for (const [subject, baseline, label] of group.rows) {
      if (typeof runs === 'string') {
        lines.push(`| ${label} | skipped: ${runs} | | | |`);
        continue;
      }
      const [ours, theirs] = [runs.get(subject) ?? [], runs.get(baseline) ?? []];
      const cpu = ratios(theirs.map((run) => run.cpuMicros), ours.map((run) => run.cpuMicros));
      const throughput = ratios(ours.map((run) => run.throughput), theirs.map((run) => run.throughput));
      const micros = `${median(ours.map((run) => run.cpuMicros)).toFixed(0)} vs ${median(theirs.map((run) => run.cpuMicros)).toFixed(0)}`;
      const p99 = `${median(ours.map((run) => run.p99))} vs ${median(theirs.map((run) => run.p99))}`;
      lines.push(`| ${label} | ${micros} | ${cpu} | ${throughput} | ${p99} |`);
    }
  } finally {
    await engine?.stop();
  }
}
console.log(`\n${lines.join('\n')}\n\n(${((Date.now() - startedAt) / 1000).toFixed(0)} s)`);

/**
 * Starts a group's servers, warms each up, then loads them one after another, round after round:
 * each round starts one place further along the list and every other round walks it backwards,
 * so that no server keeps a favoured slot. Every child is stopped before this returns.
 * @return each variant's runs, or why the group was skipped
 */
async function measure(group: Group, engineUrl: string | undefined): Promise<Map<string, Run[]> | string> {
  const servers = await Promise.all(group.variants.map((variant) => startServer(variant, [libraryUrl, ...(group.engine ? [group.engine.name, engineUrl ?? ''] : [])])));
  try {
    const skipped = servers.find((server) => 'skipped' in server);
    if (skipped !== undefined && 'skipped' in skipped) return skipped.skipped;
    const ready = servers as { variant: string; child: ChildProcess; port: number }[];
    for (const { port } of ready) await autocannon({ url: `http://127.0.0.1:${port}/`, connections: load.connections, duration: 1 });
    const runs = new Map(group.variants.map((variant) => [variant, [] as Run[]]));
    for (let round = 0; round < load.rounds; round++) {
      const shift = round % ready.length;
      const order = [...ready.slice(shift), ...ready.slice(0, shift)];
      if (round % 2 === 1) order.reverse();
      for (const { variant, child, port } of order) {
        const before = await cpuOf(child);
        const result = await autocannon({ url: `http://127.0.0.1:${port}/`, connections: load.connections, duration: load.seconds });
        const cpuMicros = ((await cpuOf(child)) - before) / result.requests.total;
        if (result.errors > 0 || result.non2xx > 0) throw new Error(`${variant}: ${result.errors} errors, ${result.non2xx} non-2xx responses`);
        runs.get(variant)?.push({ cpuMicros, throughput: result.requests.average, p99: result.latency.p99 });
        console.log(`round ${round + 1}/${load.rounds} ${variant.padEnd(16)} ${cpuMicros.toFixed(0).padStart(5)} µs CPU/response ${result.requests.average.toFixed(0).padStart(6)} req/s  p99 ${result.latency.p99} ms`);
      }
    }
    return runs;
  } finally {
    await Promise.all(servers.map(async ({ child }) => {
      const exited = once(child, 'exit');
      child.kill();
      await exited;
    }));
  }
}

/** Forks bench/server.ts for `variant` and waits for it to listen, or to say why it cannot. */
async function startServer(variant: string, args: string[]): Promise<{ variant: string; child: ChildProcess } & ({ port: number } | { skipped: string })> {
  const child = fork(fileURLToPath(new URL('server.ts', import.meta.url)), [variant, ...args], { execArgv: ['--import', 'tsx'] });
  children.add(child);
  child.once('exit', () => children.delete(child));
  const [message] = (await Promise.race([once(child, 'message'), once(child, 'exit').then(() => [{ skipped: `${variant} exited` }])])) as [{ port: number } | { skipped: string }];
  return { variant, child, ...message };
}

/** @return the child's CPU time so far in µs, once its tasks have drained */
async function cpuOf(child: ChildProcess): Promise<number> {
  const answer = once(child, 'message');
  child.send('cpu');
  return ((await answer) as [number])[0];
}

/** @return `median× (lowest–highest)` of the round-by-round ratios */
function ratios(numerators: readonly number[], denominators: readonly number[]): string {
  const values = numerators.map((value, round) => value / (denominators[round] ?? NaN));
  return `${median(values).toFixed(2)}× (${Math.min(...values).toFixed(2)}–${Math.max(...values).toFixed(2)})`;
}

/** @return the median of `values` */
function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return ((sorted[(sorted.length - 1) >> 1] ?? NaN) + (sorted[sorted.length >> 1] ?? NaN)) / 2;
}

/**
 * Compiles lib/ with tsconfig.build.json into .tmp/bench/dist (not dist/, which `npm run build`
 * deletes), so that the figures are those of the shipped JavaScript.
 * @return the file URL of the compiled index.js
 */
function buildLibrary(): string {
  const outDir = fileURLToPath(new URL('../.tmp/bench/dist', import.meta.url));
  const tsc = createRequire(import.meta.url).resolve('typescript/bin/tsc');
  execFileSync(process.execPath, [tsc, '-p', 'tsconfig.build.json', '--outDir', outDir, '--declaration', 'false'], { cwd: fileURLToPath(new URL('..', import.meta.url)), stdio: 'inherit' });
  return pathToFileURL(`${outDir}/index.js`).href;
}

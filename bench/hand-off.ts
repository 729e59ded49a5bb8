/**
 * npx tsx bench/hand-off.ts: what handing a response's task to BullMQ costs, against bare Express
 * and against running a plain function or the same defined task in-process, in the same run. Each server runs in its
 * own child process; autocannon loads them in turn, round after round, rotating the order.
 * Needs redis-server installed, or REDIS_URL. No worker runs: the jobs wait in Redis, and the
 * queue is emptied at the end.
 */
import { Queue } from 'bullmq';
import { startRedis } from '../spec/support/redis.js';
import { startChild, stopChild } from './child.js';
import { load } from './http.js';
import { buildLibrary } from './library.js';
import { formatInterval } from './markdown.js';
import { median, ratio } from './stats.js';

const variants = [
  { id: 'bare', label: 'bare Express 5' },
  { id: 'plain', label: '1 plain no-op function, in-process' },
  { id: 'inProcess', label: '1 defined no-op task, in-process' },
  { id: 'handOff', label: '1 defined no-op task, handed off to BullMQ' },
] as const;
const connections = 10;
const seconds = 5;
const rounds = 5;

const redis = await startRedis();
if (typeof redis === 'string') throw new Error(redis);
const libraryUrl = buildLibrary();
const servers = await Promise.all(variants.map(async ({ id }) => {
  const { child, message } = await startChild<{ port: number }>('hand-off-server.ts', [id, libraryUrl, String(redis.port)]);
  return { id, child, port: message.port };
}));
const throughput: Record<string, number[]> = Object.fromEntries(variants.map(({ id }) => [id, []]));
const p99: Record<string, number[]> = Object.fromEntries(variants.map(({ id }) => [id, []]));
try {
  for (const { port } of servers) await load(port, connections, 2); // warm-up
  for (let round = 0; round < rounds; round++) {
    const order = [...servers.slice(round % servers.length), ...servers.slice(0, round % servers.length)];
    for (const { id, port } of order) {
      const measured = await load(port, connections, seconds);
      throughput[id]?.push(measured.throughput);
      p99[id]?.push(measured.p99);
      console.error(`round ${round + 1}/${rounds} ${id.padEnd(9)} ${measured.throughput.toFixed(0).padStart(6)} req/s  p99 ${measured.p99.toFixed(2)} ms`);
    }
  }
} finally {
  await Promise.all(servers.map(({ child }) => stopChild(child)));
  const queue = new Queue('bench-hand-off', { connection: { host: redis.host, port: redis.port } });
  await queue.obliterate({ force: true });
  await queue.close();
  await redis.stop();
}

const rows = variants.map(({ id, label }) => {
  const versusBare = ratio(throughput[id] ?? [], throughput['bare'] ?? []);
  return `| ${label} | ${median(throughput[id] ?? []).toFixed(0)} | ${id === 'bare' ? '1' : `${versusBare.median.toFixed(2)}× (${formatInterval(versusBare, '×')})`} | ${median(p99[id] ?? []).toFixed(1)} |`;
});
console.log(`${connections} connections, ${seconds} s per server per round, ${rounds} rounds, Node ${process.version}\n`);
console.log('| Server | req/s (median) | ÷ bare Express | p99 ms (median) |\n| --- | --- | --- | --- |');
console.log(rows.join('\n'));

/**
 * node --expose-gc --import tsx bench/add.ts: what one `tasks.add()` costs, in ns, for a plain
 * function and for a defined task whose arguments are checked (and copied) as JSON. A round of a
 * case sends `REQUESTS` requests one after another; each handler times `ADDS` adds on its
 * response's queue, and the tasks (no-ops) run before the next request, as in an app whose
 * responses queue a few tasks each. Rounds rotate through the cases; the median round is reported.
 */
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import { performance } from 'node:perf_hooks';
import express from 'express';
import { buildLibrary, importLibrary } from './library.js';
import { median } from './stats.js';

const ADDS = 1_000;
const REQUESTS = 20;
const ROUNDS = 15;

const library = await importLibrary(buildLibrary());
const noop = (..._args: unknown[]): void => {};
const defined = library.defineTask('noop', noop);
const typical = ['id-123', { email: 'a@b.c', items: [1, 2, 3] }];
const larger = [{
  id: 'order-42',
  customer: { id: 7, name: 'Ada', email: 'ada@example.com', tier: 'gold', newsletter: true },
  items: Array.from({ length: 50 }, (_, index) => ({ sku: `sku-${index}`, quantity: index % 3, cents: 199 * index })),
}];
const cases = [
  { label: "plain function, `('id-123', { email: 'a@b.c', items: [1, 2, 3] })`", fn: noop, args: typical },
  { label: 'defined task, the same arguments', fn: defined, args: typical },
  { label: 'defined task, an order of 50 items (about 170 JSON values)', fn: defined, args: larger },
];

const middleware = library.backgroundTasks();
const app = express();
app.use(middleware);
app.get('/:case', (req, res) => {
  const { fn, args } = cases[Number(req.params.case)] as (typeof cases)[number];
  const { tasks } = res.locals;
  const startedAt = performance.now();
  for (let add = 0; add < ADDS; add++) tasks.add(fn, ...args);
  res.json((performance.now() - startedAt) * 1e6 / ADDS);
});
const server = app.listen(0, '127.0.0.1');
await once(server, 'listening');
const { port } = server.address() as AddressInfo;

const nsPerAdd: number[][] = cases.map(() => []);
for (let round = -1; round < ROUNDS; round++) { // round -1 warms up
  for (let index = 0; index < cases.length; index++) {
    const which = (index + Math.max(round, 0)) % cases.length;
    globalThis.gc?.();
    let ns = 0;
    for (let request = 0; request < REQUESTS; request++) {
      ns += (await (await fetch(`http://127.0.0.1:${port}/${which}`)).json()) as number;
      await middleware.drain();
    }
    if (round >= 0) nsPerAdd[which]?.push(ns / REQUESTS);
  }
}
server.close();

console.log(`${REQUESTS} requests of ${ADDS} adds per round, ${ROUNDS} rounds, Node ${process.version}\n`);
console.log('| `add()` of | ns per add (median) | range |\n| --- | --- | --- |');
for (const [index, { label }] of cases.entries()) {
  const runs = nsPerAdd[index] ?? [];
  console.log(`| ${label} | ${median(runs).toFixed(0)} | ${Math.min(...runs).toFixed(0)}–${Math.max(...runs).toFixed(0)} |`);
}

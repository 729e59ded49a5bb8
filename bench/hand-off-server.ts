/**
 * Child process of bench/hand-off.ts: one server on 127.0.0.1, port 0, whose route queues one
 * no-op task (a plain function, or a defined task) and answers `res.send('ok')`. Usage: `hand-off-server.ts <variant> <library
 * url> <redis port>`; reports `{ port }` over IPC.
 */
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import { Queue } from 'bullmq';
import express from 'express';
import { report } from './child.js';
import { importLibrary } from './library.js';

const [variant, libraryUrl, redisPort] = process.argv.slice(2) as [string, string, string];
const library = await importLibrary(libraryUrl);
const { bullmqTransport } = (await import(libraryUrl.replace(/index\.js$/, 'bullmq.js'))) as typeof import('../lib/bullmq.js');
function noop(): void {}
const definedNoop = library.defineTask('noop', noop);

const app = express();
if (variant === 'plain' || variant === 'inProcess') app.use(library.backgroundTasks());
if (variant === 'handOff') {
  const queue = new Queue('bench-hand-off', { connection: { host: '127.0.0.1', port: Number(redisPort), maxRetriesPerRequest: 1 }, skipWaitingForReady: true });
  await queue.waitUntilReady();
  app.use(library.backgroundTasks({ transport: bullmqTransport({ queue }) })); // a failed hand-off goes to stderr
}
app.get('/', (_req, res) => {
  if (variant === 'plain') res.locals.tasks.add(noop);
  else if (variant !== 'bare') res.locals.tasks.add(definedNoop);
  res.send('ok');
});
const server = app.listen(0, '127.0.0.1');
await once(server, 'listening');
report({ port: (server.address() as AddressInfo).port });

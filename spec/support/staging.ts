import { once } from 'node:events';
import net from 'node:net';
import type { TaskStaging } from '../../lib/index.js';
import { deferred } from './http.js';

/** A staging whose `stage()` resolves only once the spec says so. */
export function manualStaging(): { staging: TaskStaging; staged: Promise<void>; store(): void; fail(): void; released: string[] } {
  const called = deferred();
  const outcome = deferred<boolean>();
  const released: string[] = [];
  const staging: TaskStaging = {
    timeout: 10_000,
    stage: async () => {
      called.resolve();
      if (!(await outcome.promise)) throw new Error('the store is down');
      return 'receipt';
    },
    release: async () => void released.push('released'),
    discard: async () => void released.push('discarded'),
  };
  return { staging, staged: called.promise, store: () => outcome.resolve(true), fail: () => outcome.resolve(false), released };
}

/** A raw client: what it has received so far (each byte as one latin1 character), and when the server closed. */
export function rawClient(port: number, request: string): { received: () => string; ended: Promise<string> } {
  const socket = net.connect(port, '127.0.0.1');
  let data = '';
  socket.setEncoding('latin1');
  socket.on('data', (chunk: string) => (data += chunk));
  socket.on('error', () => {});
  socket.write(request);
  return { received: () => data, ended: once(socket, 'close').then(() => data) };
}

/**
 * Resolves after a request to `path` on another connection has gone there and back: a byte the
 * server had written to the first connection before has reached its client by then.
 */
export async function roundTrip(port: number, path = '/json'): Promise<void> {
  await (await fetch(`http://127.0.0.1:${port}${path}`, { headers: { connection: 'close' } })).text();
}

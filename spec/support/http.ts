import assert from 'node:assert/strict';
import { afterEach, beforeEach } from 'node:test';
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import net from 'node:net';
import { Agent, type Server, request } from 'node:http';
import express, { type Express } from 'express';
import express4 from 'express4';

/** Each HTTP spec runs against both supported majors. */
export const expressVersions: readonly (readonly [label: string, create: () => Express])[] = [
  ['express 5', () => express()],
  ['express 4', () => express4()],
];

/** A running app on 127.0.0.1 and an ephemeral port. */
export interface Running {
  readonly server: Server;
  readonly port: number;
  readonly url: string;
  /** Closes the server and every connection still open. */
  close(): Promise<void>;
}

/** Starts `app` on 127.0.0.1, port 0. */
export async function listen(app: Express): Promise<Running> {
  const server = app.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as AddressInfo;
  return {
    server,
    port,
    url: `http://127.0.0.1:${port}`,
    async close() {
      server.closeAllConnections();
      server.close();
      await once(server, 'close');
    },
  };
}

/**
 * Starts `app` on 127.0.0.1, port 0, runs `use` against it, then closes the server and every
 * connection still open, whether `use` passed or threw.
 */
export async function withServer<T>(app: Express, use: (server: Running) => Promise<T>): Promise<T> {
  const server = await listen(app);
  try {
    return await use(server);
  } finally {
    await server.close();
  }
}

/** A promise with its resolve function outside, to await an event a handler or task signals. */
export function deferred<T = void>(): { promise: Promise<T>; resolve: (value: T) => void } {
  let resolve!: (value: T) => void;
  const promise = new Promise<T>((r) => {
    resolve = r;
  });
  return { promise, resolve };
}

/**
 * Mount first: `closed()` resolves, with their count, once all the responses `app` has begun so far
 * have emitted 'close' on the server, which Node does after 'finish' (every byte handed to the OS)
 * or when the connection drops. Await it, not a sleep, when a spec needs the server side done.
 */
export function trackResponses(app: Express): { closed(): Promise<number> } {
  const closing: Promise<unknown>[] = [];
  app.use((_req, res, next) => {
    closing.push(once(res, 'close'));
    next();
  });
  return {
    async closed() {
      await Promise.all(closing);
      return closing.length;
    },
  };
}

/** Resolves after `ms`: only for waiting out a period in which something must NOT happen. */
export function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Opens a raw TCP connection to the app and sends a GET request without reading anything yet. */
export async function rawRequest(port: number, path: string, extraHeaders = ''): Promise<net.Socket> {
  const socket = net.connect(port, '127.0.0.1');
  await once(socket, 'connect');
  socket.write(`GET ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n${extraHeaders}\r\n`);
  return socket;
}

/**
 * Holds `count` request handlers until all of them have arrived, then lets them go on together, in
 * one turn of the event loop: each handler awaits `wait()`; the spec awaits `arrived`, then calls
 * `open()`.
 */
export function handlerGate(count: number): { wait(): Promise<void>; readonly arrived: Promise<void>; open(): void } {
  const arrived = deferred();
  const gate = deferred();
  let waiting = 0;
  return {
    wait() {
      if (++waiting === count) arrived.resolve();
      return gate.promise;
    },
    arrived: arrived.promise,
    open: () => gate.resolve(),
  };
}

/**
 * Opens a raw TCP connection to the app and sends an empty POST request, reading nothing until
 * the caller resumes the socket: a slow client.
 */
export async function pausedPost(port: number, path: string): Promise<net.Socket> {
  const socket = net.connect(port, '127.0.0.1');
  await once(socket, 'connect');
  socket.pause();
  socket.write(`POST ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n`);
  return socket;
}

/**
 * Wraps `res.end` as a session store saving first does: the end goes through `ms` later, with the
 * status set to `status` then.
 */
export function endLaterWithStatus(res: express.Response, status: number, ms: number): void {
  const end = res.end;
  res.end = function endOnceSaved(this: express.Response, ...args: unknown[]) {
    setTimeout(() => {
      res.statusCode = status;
      (end as (...args: unknown[]) => unknown).apply(this, args);
    }, ms);
    return this;
  } as express.Response['end'];
}

/**
 * Sends a request, waits until the handler has it (`handlerEntered`), then resets the connection
 * before any response byte is read. Waiting first makes sure the server saw the request at all.
 */
export async function abortedRequest(port: number, path: string, handlerEntered: Promise<void>): Promise<void> {
  const socket = await rawRequest(port, path);
  await handlerEntered;
  socket.resetAndDestroy();
  await once(socket, 'close');
}

/** Records every unhandled rejection and uncaught exception while a spec runs. */
/**
 * In a describe(): each test of it fails when an unhandled rejection or an uncaught exception
 * happened while it ran.
 */
export function failOnProcessFaults(): void {
  let watch: ReturnType<typeof watchProcessFaults>;
  beforeEach(() => {
    watch = watchProcessFaults();
  });
  afterEach(() => {
    watch.stop();
    assert.deepEqual(watch.faults, [], 'no unhandled rejection or uncaught exception');
  });
}

export function watchProcessFaults(): { faults: unknown[]; stop(): void } {
  const faults: unknown[] = [];
  const record = (fault: unknown): void => {
    faults.push(fault);
  };
  process.on('unhandledRejection', record);
  process.on('uncaughtException', record);
  return {
    faults,
    stop() {
      process.off('unhandledRejection', record);
      process.off('uncaughtException', record);
    },
  };
}

/** Captures what is written to stderr while `run` runs; stderr is restored afterwards. */
export async function captureStderr(run: () => Promise<void>): Promise<string> {
  const chunks: string[] = [];
  const write = process.stderr.write;
  process.stderr.write = ((chunk: string | Uint8Array) => {
    chunks.push(String(chunk));
    return true;
  }) as typeof process.stderr.write;
  try {
    await run();
  } finally {
    process.stderr.write = write;
  }
  return chunks.join('');
}

/** GETs `url` over `agent` (keep-alive connections); resolves with the body read in full, rejects on any error. */
export function get(url: string, agent: Agent): Promise<string> {
  return new Promise((resolve, reject) => {
    request(url, { agent }, (response) => {
      let body = '';
      response.setEncoding('utf8');
      response.on('data', (chunk: string) => (body += chunk));
      response.on('end', () => (response.complete ? resolve(body) : reject(new Error(`incomplete response from ${url}`))));
      response.on('error', reject);
    }).on('error', reject).end();
  });
}

/** Sends `count` GETs to `url(i)` over `connections` keep-alive connections; resolves with the bodies. */
export async function load(count: number, connections: number, url: (i: number) => string): Promise<string[]> {
  const agent = new Agent({ keepAlive: true, maxSockets: connections });
  const bodies: string[] = [];
  let next = 0;
  const client = async (): Promise<void> => {
    while (next < count) {
      const i = next++;
      bodies[i] = await get(url(i), agent);
    }
  };
  try {
    await Promise.all(Array.from({ length: connections }, client));
  } finally {
    agent.destroy();
  }
  return bodies;
}

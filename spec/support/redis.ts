import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { once } from 'node:events';
import net, { type AddressInfo } from 'node:net';
import { Queue } from 'bullmq';

/** A real Redis server for the BullMQ specs. */
export interface Redis {
  readonly host: string;
  readonly port: number;
  /** Stops the server if the specs started it. */
  stop(): Promise<void>;
}

/**
 * The Redis the BullMQ specs run against: `$REDIS_URL` when set (`.ci/run` starts one), otherwise a
 * `redis-server` started here on 127.0.0.1 and a free port. Without either it resolves to the reason
 * the specs are skipped, except under `CI`, where a missing Redis fails the run.
 */
export async function startRedis(): Promise<Redis | string> {
  const url = process.env['REDIS_URL'];
  if (url !== undefined && url !== '') {
    const { hostname, port } = new URL(url);
    return { host: hostname, port: Number(port || 6379), stop: async () => {} };
  }
  if (spawnSync('redis-server', ['--version']).error !== undefined) {
    const reason = 'redis-server is not installed and REDIS_URL is not set (apt-get install redis-server)';
    if (process.env['CI']) throw new Error(`The BullMQ specs need Redis: ${reason}`);
    return reason;
  }
  const port = await freePort();
  const server = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  await waitForOutput(server, /Ready to accept connections/);
  return {
    host: '127.0.0.1',
    port,
    async stop() {
      server.kill('SIGKILL');
      if (server.exitCode === null && server.signalCode === null) await once(server, 'exit');
    },
  };
}

/**
 * A BullMQ queue with a name of its own, so specs never see each other's jobs, connected. It fails
 * fast when Redis is down, as docs/bullmq.md recommends for the web side.
 */
export async function uniqueQueue(redis: Redis): Promise<Queue> {
  const queue = new Queue(`spec-${randomUUID()}`, {
    connection: { host: redis.host, port: redis.port, maxRetriesPerRequest: 1 },
    skipWaitingForReady: true,
  });
  await queue.waitUntilReady();
  return queue;
}

/**
 * Resolves once `child`'s stdout has printed a line matching `pattern`, with the match.
 * @throws when the child exits first
 */
export function waitForOutput(child: ChildProcess, pattern: RegExp): Promise<RegExpMatchArray> {
  return new Promise((resolve, reject) => {
    let text = '';
    const onData = (chunk: Buffer): void => {
      text += chunk.toString();
      const match = text.match(pattern);
      if (match !== null) {
        child.stdout?.removeListener('data', onData);
        child.removeListener('exit', onExit);
        resolve(match);
      }
    };
    const onExit = (code: number | null): void => reject(new Error(`exited (${code}) before printing ${pattern}; printed:\n${text}`));
    child.stdout?.on('data', onData);
    child.once('exit', onExit);
  });
}

/** A port nothing listens on right now, on 127.0.0.1. */
export async function freePort(): Promise<number> {
  const server = net.createServer().listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as AddressInfo;
  server.close();
  await once(server, 'close');
  return port;
}

/**
 * A TCP proxy on 127.0.0.1 to a server the specs run against (Redis, PostgreSQL), whose connections
 * can be cut or left hanging (a network blip, a partition) and let through again.
 */
export interface TcpProxy {
  readonly port: number;
  /** Destroys every connection through it, and each new one until `restore()`: refused at once. */
  cut(): void;
  /** Stops passing bytes either way, and holds each new connection without an answer until `restore()`. */
  hang(): void;
  /** Destroys the connections left hanging, and lets new ones through. */
  restore(): void;
  close(): Promise<void>;
}

/** Starts a `TcpProxy` to the server at `target`. */
export async function tcpProxy(target: { readonly host: string; readonly port: number }): Promise<TcpProxy> {
  const sockets = new Set<net.Socket>();
  let state: 'up' | 'cut' | 'hanging' = 'up';
  const server = net.createServer((client) => {
    if (state === 'cut') return void client.destroy();
    sockets.add(client);
    client.on('error', () => client.destroy()).on('close', () => sockets.delete(client));
    if (state === 'hanging') return;
    const upstream = net.connect(target.port, target.host);
    const drop = (): void => {
      client.destroy();
      upstream.destroy();
      sockets.delete(upstream);
    };
    sockets.add(upstream);
    client.on('close', drop).pipe(upstream);
    upstream.on('error', drop).on('close', drop).pipe(client);
  }).listen(0, '127.0.0.1');
  await once(server, 'listening');
  const destroyAll = (): void => {
    for (const socket of sockets) socket.destroy();
  };
  return {
    port: (server.address() as net.AddressInfo).port,
    cut() {
      state = 'cut';
      destroyAll();
    },
    hang() {
      state = 'hanging';
      for (const socket of sockets) {
        socket.unpipe();
        socket.pause();
      }
    },
    restore() {
      if (state === 'hanging') destroyAll();
      state = 'up';
    },
    async close() {
      destroyAll();
      server.close();
      await once(server, 'close');
    },
  };
}

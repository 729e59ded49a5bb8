import { execFile, spawn } from 'node:child_process';
import { once } from 'node:events';
import { readdirSync } from 'node:fs';
import { chown, mkdtemp } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { createPostgresBackend, Queue, type PostgresPoolConfig } from 'bullmq';
import { freePort } from './redis.js';

const run = promisify(execFile);

/** A real PostgreSQL server for the BullMQ specs, its database holding BullMQ's schema. */
export interface Postgres {
  readonly host: string;
  readonly port: number;
  /** The connection string, e.g. `postgres://postgres@127.0.0.1:5432/postgres`. */
  readonly url: string;
  /** Stops the server and removes its files, if the specs started it. */
  stop(): Promise<void>;
}

/**
 * The PostgreSQL the BullMQ specs run against: `$DATABASE_URL` when set, otherwise a cluster made
 * here (`initdb` in a temporary directory, `pg_ctl start` on 127.0.0.1 and a free port, as the
 * `postgres` user when run as root, since `initdb` refuses root). Either way BullMQ's migrations
 * are run once. Without either it resolves to the reason the specs are skipped, except under `CI`,
 * where a missing PostgreSQL fails the run.
 */
export async function startPostgres(): Promise<Postgres | string> {
  const url = process.env['DATABASE_URL'];
  if (url !== undefined && url !== '') {
    const { hostname, port } = new URL(url);
    await migrate(url);
    return { host: hostname, port: Number(port || 5432), url, stop: async () => {} };
  }
  const bin = serverBin();
  if (bin === undefined) {
    const reason = 'PostgreSQL is not installed and DATABASE_URL is not set (apt-get install postgresql)';
    if (process.env['CI']) throw new Error(`The BullMQ specs on PostgreSQL need it: ${reason}`);
    return reason;
  }
  const dir = await mkdtemp(path.join(os.tmpdir(), 'spec-postgres-'));
  const user = process.getuid?.() === 0 ? await uidsOf('postgres') : undefined;
  if (user !== undefined) await chown(dir, user.uid, user.gid);
  const data = path.join(dir, 'data');
  const pgCtl = path.join(bin, 'pg_ctl');
  const port = await freePort();
  await run(path.join(bin, 'initdb'), ['--pgdata', data, '--auth', 'trust', '--username', 'postgres', '--no-sync', '--encoding', 'UTF8', '--locale', 'C'], user ?? {});
  // fsync off: a spec's server never outlives a crash, and staging waits for every commit.
  const options = `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1 -c fsync=off`;
  await run(pgCtl, ['--silent', '--pgdata', data, 'start', '--wait', '--log', path.join(dir, 'log'), '--options', options], user ?? {});
  // Stops the server and removes its files once its stdin closes: at stop(), or when this process
  // ends, however it ends (a spec file that times out is killed, and its server must not outlive it).
  const watchdog = spawn('sh', ['-c', 'read _; "$0" --silent --pgdata "$1" stop --wait --mode immediate; rm -rf "$2"', pgCtl, data, dir], {
    stdio: ['pipe', 'ignore', 'ignore'],
    ...user,
  });
  const started = `postgres://postgres@127.0.0.1:${port}/postgres`;
  const stop = async (): Promise<void> => {
    if (watchdog.exitCode !== null || watchdog.signalCode !== null) return;
    watchdog.stdin.end();
    await once(watchdog, 'exit');
  };
  await migrate(started).catch(async (error: unknown) => {
    await stop();
    throw error;
  });
  return { host: '127.0.0.1', port, url: started, stop };
}

/**
 * BullMQ's PostgreSQL connection options for `url`, failing fast while the server is down or
 * unreachable, as docs/postgresql.md recommends for the web side.
 */
export function postgresConnection(url: string): PostgresPoolConfig {
  return { connectionString: url, connectionTimeoutMillis: 1000, query_timeout: 5000 };
}

/**
 * A BullMQ queue named `name` on the PostgreSQL at `url`, not waited for. It fails fast while the
 * server is down or unreachable, unless `patient`: then it is left at BullMQ's defaults, and waits.
 * Typed as a Redis queue, which is what the specs and the bench share between engines.
 */
export function postgresQueue(url: string, name: string, patient = false): Queue {
  const connection = patient ? { connectionString: url } : postgresConnection(url);
  return new Queue(name, { connection, skipWaitingForReady: true }, createPostgresBackend) as unknown as Queue;
}

/** Runs BullMQ's migrations in the database at `url`: queues and workers then only check them. */
async function migrate(url: string): Promise<void> {
  const queue = new Queue('migrate', { connection: { connectionString: url, migrate: true } }, createPostgresBackend);
  try {
    await queue.waitUntilReady();
  } finally {
    await queue.close();
  }
}

/** The directory of Debian's newest PostgreSQL server binaries, or undefined when none is installed. */
function serverBin(): string | undefined {
  const root = '/usr/lib/postgresql';
  let versions: string[];
  try {
    versions = readdirSync(root);
  } catch {
    return undefined;
  }
  const newest = versions.filter((version) => /^\d+$/.test(version)).sort((a, b) => Number(b) - Number(a))[0];
  return newest === undefined ? undefined : path.join(root, newest, 'bin');
}

/** The user and group ids of `name`, to run a command as that user. */
async function uidsOf(name: string): Promise<{ uid: number; gid: number }> {
  const id = async (flag: string): Promise<number> => Number((await run('id', [flag, name])).stdout.trim());
  return { uid: await id('-u'), gid: await id('-g') };
}

import assert from 'node:assert/strict';
import { fork } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { Agent, request } from 'node:http';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import type { Express } from 'express';
import { backgroundTasks, type BackgroundTasksMiddleware, type CloseSummary, defineTask, ShutdownError, type TaskInfo, type TaskQueue, type TaskRunner, withSignal } from '../lib/index.js';
import { deferred, expressVersions, get, handlerGate, listen, watchProcessFaults, withServer } from './support/http.js';
import { startRedis } from './support/redis.js';

for (const [label, createApp] of expressVersions) {
  describe(`${label}: close()`, () => {
    it('resolves once the tasks have run, leaving the connections to the server: no Connection: close, which would cut pipelined responses', async () => {
      const tasks = backgroundTasks();
      const ran: string[] = [];
      const holding = deferred();
      const release = deferred();
      const app = createApp();
      app.use(tasks);
      app.get('/:name', async (req, res) => {
        res.locals.tasks.add(() => ran.push(String(req.params['name'])));
        if (req.params['name'] === 'held') {
          holding.resolve();
          await release.promise;
        }
        res.send('ok');
      });
      await withServer(app, async ({ url }) => {
        const agent = new Agent({ keepAlive: true });
        try {
          const before = await getHeaders(`${url}/before`, agent);
          const held = getHeaders(`${url}/held`, agent);
          await holding.promise;
          const closed = tasks.close();
          assert.equal(tasks.close(), closed, 'a second call returns the same promise');
          const after = await getHeaders(`${url}/after`, agent);
          release.resolve();
          assert.equal(before['connection'], 'keep-alive');
          assert.equal(after['connection'], 'keep-alive');
          assert.equal((await held)['connection'], 'keep-alive');
          assert.deepEqual(await closed, { drained: true, settled: 2, abandoned: 0, pending: 0 } satisfies CloseSummary);
          assert.deepEqual(ran.sort(), ['after', 'before', 'held']);
        } finally {
          agent.destroy();
        }
      });
    });

    it('at the deadline reports each task still running or queued as a ShutdownError, aborting the running one\'s signal', async () => {
      const reported: [error: unknown, info: TaskInfo][] = [];
      const tasks = backgroundTasks({ onError: (error, info) => reported.push([error, info]) });
      const started = deferred();
      const ran: string[] = [];
      let reason: unknown;
      const syncHold = withSignal((signal: AbortSignal, order: string) => {
        ran.push(order);
        started.resolve();
        return new Promise<void>((resolve) => {
          signal.addEventListener('abort', () => {
            reason = signal.reason;
            resolve();
          });
        });
      });
      const app = createApp();
      app.use(tasks);
      app.post('/orders/:id', (req, res) => {
        res.locals.tasks.add(Object.defineProperty(syncHold, 'name', { value: 'exportOrder' }), String(req.params['id'])).add(function notifyWarehouse() {
          ran.push('notify');
        });
        res.status(202).end();
      });
      await withServer(app, async ({ url }) => {
        assert.equal((await fetch(`${url}/orders/7`, { method: 'POST' })).status, 202);
        await started.promise;
        const summary = await tasks.close({ timeout: 50 });
        assert.deepEqual(summary, { drained: false, settled: 0, abandoned: 2, pending: 0 } satisfies CloseSummary);
      });
      assert.deepEqual(ran, ['7'], 'the queued task never ran');
      assert.ok(reason instanceof ShutdownError, 'the running task learnt why through its signal');
      assert.deepEqual(reported.map(([error, { name, method, url }]) => [(error as Error).name, name, method, url]), [
        ['ShutdownError', 'notifyWarehouse', 'POST', '/orders/7'],
        ['ShutdownError', 'exportOrder', 'POST', '/orders/7'],
      ]);
      assert.match((reported[1]?.[0] as Error).message, /^Task exportOrder was abandoned at shutdown: still running 50 ms after close\(\)$/);
      assert.equal(tasks.pending, 0);
    });

    it('at the deadline starts none of the tasks still queued, though abandoning the running one frees their slot', async () => {
      const reported: [string, string][] = [];
      const tasks = backgroundTasks({ concurrency: 1, onError: (error, { name }) => reported.push([name, (error as Error).message]) });
      const ran: string[] = [];
      const holding = deferred();
      const app = createApp();
      app.use(tasks);
      app.get('/a', (_req, res) => {
        res.locals.tasks.add(function hangs() {
          holding.resolve();
          return new Promise(() => {});
        });
        res.send('ok');
      });
      app.get('/b', (_req, res) => {
        res.locals.tasks
          .add(function writeAuditRow() {
            ran.push('writeAuditRow');
          })
          .add(async function chargeCard() {
            ran.push('chargeCard');
          });
        res.send('ok');
      });
      await withServer(app, async ({ url }) => {
        await (await fetch(`${url}/a`)).text();
        await holding.promise;
        await (await fetch(`${url}/b`)).text();
        const summary = await tasks.close({ timeout: 50 });
        assert.deepEqual(summary, { drained: false, settled: 0, abandoned: 3, pending: 0 } satisfies CloseSummary);
      });
      assert.deepEqual(ran, []);
      assert.deepEqual(reported.map(([name, message]) => [name, message.replace(/ \d+ ms after/, ' N ms after')]).sort(), [
        ['chargeCard', 'Task chargeCard was abandoned at shutdown: still queued N ms after close()'],
        ['hangs', 'Task hangs was abandoned at shutdown: still running N ms after close()'],
        ['writeAuditRow', 'Task writeAuditRow was abandoned at shutdown: still queued N ms after close()'],
      ]);
    });

    it('reports, and does not run, the tasks added while it gives up on the others, or after a drain it then sees undone', async () => {
      const reported: string[] = [];
      let retried = 0;
      const tasks = backgroundTasks({
        onError: async (error, { name }) => {
          reported.push(`${(error as Error).name} ${name}`);
          if (name === 'charge' && retried++ === 0) {
            await null;
            queue?.add(function retryCharge() {});
          }
        },
      });
      let queue: TaskQueue | undefined;
      const started = deferred();
      const cleanup = withSignal((signal: AbortSignal) => new Promise<void>((resolve) => {
        started.resolve();
        signal.addEventListener('abort', () => {
          queue?.add(function cleanUpAfterAbort() {});
          resolve();
        });
      }));
      const app = createApp();
      app.use(tasks);
      app.get('/', (_req, res) => {
        queue = res.locals.tasks;
        queue.add(Object.defineProperty(cleanup, 'name', { value: 'export' })).add(function charge() {});
        res.send('ok');
      });
      await withServer(app, async ({ url }) => {
        await (await fetch(url)).text();
        await started.promise;
        const summary = await tasks.close({ timeout: 50 });
        await new Promise((resolve) => setImmediate(resolve));
        assert.equal(summary.pending, 0);
        assert.equal(tasks.pending, 0);
      });
      assert.deepEqual(reported.sort(), ['ShutdownError charge', 'ShutdownError cleanUpAfterAbort', 'ShutdownError export', 'ShutdownError retryCharge']);
    });

    it('with a transport, reports the defined tasks added after the flush that the deadline catches before their hand-off', async () => {
      const watch = watchProcessFaults();
      const reported: string[] = [];
      const notify = defineTask('notify', (_orderId: string) => {});
      const sent: string[] = [];
      const transport = {
        send: async (handedOff: readonly { name: string }[]) => void sent.push(...handedOff.map(({ name }) => `sent ${name}`)),
      };
      const tasks = backgroundTasks({ transport, onError: (error, { name }) => reported.push(`${(error as Error).name} ${name}`) });
      const holding = deferred();
      let queue: TaskQueue | undefined;
      const app = createApp();
      app.use(tasks);
      app.get('/', (_req, res) => {
        queue = res.locals.tasks;
        queue.add(function hangs() {
          holding.resolve();
          return new Promise(() => {});
        });
        res.send('ok');
      });
      await withServer(app, async ({ url }) => {
        await (await fetch(url)).text();
        await holding.promise;
        // Due at the deadline's instant, and first: the hand-off it schedules comes after the deadline.
        setTimeout(() => queue?.add(notify, 'order-1'), 30);
        const closed = tasks.close({ timeout: 30 });
        await closed;
        await new Promise((resolve) => setTimeout(resolve, 20));
      });
      watch.stop();
      assert.deepEqual(watch.faults, []);
      assert.deepEqual(reported.filter((line) => line.endsWith('hangs')), ['ShutdownError hangs']);
      assert.deepEqual([...sent, ...reported.filter((line) => line.endsWith('notify'))], ['ShutdownError notify'], 'the late defined task reported, not handed off after the deadline');
      assert.equal(tasks.pending, 0);
    });

    it('resolves soon after its deadline although a runner transport\'s close() never settles', { timeout: 10_000 }, async () => {
      const reported: string[] = [];
      const runner: TaskRunner = {
        kind: 'runner',
        run: () => new Promise(() => {}),
        close: () => new Promise(() => {}),
      };
      const render = defineTask('render', () => {});
      const tasks = backgroundTasks({ transport: runner, onError: (error, { name }) => reported.push(`${(error as Error).name} ${name}`) });
      const app = createApp();
      app.use(tasks);
      app.get('/', (_req, res) => {
        res.locals.tasks.add(render);
        res.send('ok');
      });
      await withServer(app, async ({ url }) => {
        await (await fetch(url)).text();
        const startedAt = performance.now();
        const summary = await tasks.close({ timeout: 50 });
        const waited = performance.now() - startedAt;
        assert.deepEqual(summary, { drained: false, settled: 0, abandoned: 1, pending: 0 } satisfies CloseSummary);
        assert.ok(waited < 50 + 1_500, `resolved ${waited.toFixed(0)} ms after the call`);
      });
      assert.deepEqual(reported, ['ShutdownError render']);
    });

    it('reports as abandoned the defined tasks whose hand-off fails after its deadline, rather than queue them to run (fallback: \'in-process\')', { timeout: 10_000 }, async () => {
      const reported: string[] = [];
      const failedLate = deferred();
      const job = defineTask('job', () => {});
      const transport = { send: () => new Promise((_resolve, reject) => setTimeout(() => reject(new Error('send failed late')), 100)) };
      const tasks = backgroundTasks({
        transport,
        fallback: 'in-process',
        onError: (error, { name }) => {
          reported.push(`${(error as Error).name} ${name}`);
          if ((error as Error).name === 'ShutdownError') failedLate.resolve();
        },
      });
      const app = createApp();
      app.use(tasks);
      app.get('/', (_req, res) => {
        res.locals.tasks.add(job);
        res.send('ok');
      });
      await withServer(app, async ({ url }) => {
        await (await fetch(url)).text();
        assert.deepEqual(await tasks.close({ timeout: 20 }), { drained: false, settled: 0, abandoned: 0, pending: 1 } satisfies CloseSummary);
        await failedLate.promise;
        await tasks.drain();
      });
      assert.deepEqual(reported, ['HandOffError job', 'ShutdownError job']);
      assert.equal(tasks.pending, 0);
    });

    it('with { server }, lets a response whose end is held for staging reach its client', { timeout: 10_000 }, async () => {
      const job = defineTask('job', () => {});
      const staging = { timeout: 2_000, stage: () => new Promise((resolve) => setTimeout(resolve, 100, 'receipt')), release: async () => {}, discard: async () => {} };
      const tasks = backgroundTasks({ transport: { send: async () => {}, staging } });
      const inFlight = deferred();
      const app = createApp();
      app.use(tasks);
      app.get('/', (_req, res) => {
        res.locals.tasks.add(job);
        inFlight.resolve();
        setTimeout(() => res.send('stored'), 50);
      });
      const server = await listen(app);
      try {
        const response = fetch(server.url).then(async (answer) => [answer.status, await answer.text()]);
        await inFlight.promise;
        const summary = await tasks.close({ server: server.server, timeout: 3_000 });
        assert.deepEqual(await response, [200, 'stored']);
        assert.deepEqual(summary, { drained: true, settled: 1, abandoned: 0, pending: 0 } satisfies CloseSummary);
      } finally {
        server.server.closeAllConnections();
      }
    });

    it('reports the tasks added after it resolved, and does not run them', async () => {
      const reported: string[] = [];
      const tasks = backgroundTasks({ onError: (error, { name }) => reported.push(`${(error as Error).name} ${name}`) });
      let ran = false;
      const app = createApp();
      app.use(tasks);
      app.get('/', (_req, res) => {
        res.locals.tasks.add(function lateAudit() {
          ran = true;
        });
        res.send('ok');
      });
      await tasks.close();
      await withServer(app, async ({ url }) => {
        await (await fetch(url)).text();
      });
      assert.deepEqual(reported, ['ShutdownError lateAudit']);
      assert.equal(ran, false);
      assert.equal(tasks.pending, 0);
    });

    it('with { server }, closes it and waits for the requests in flight, whose handlers add tasks after the call', async () => {
      const tasks = backgroundTasks();
      const ran: string[] = [];
      const inFlight = deferred();
      const app = createApp();
      app.use(tasks);
      app.get('/', async (_req, res) => {
        inFlight.resolve();
        await new Promise((resolve) => setTimeout(resolve, 50));
        res.locals.tasks.add(() => ran.push('added after close()'));
        res.send('ok');
      });
      const server = await listen(app);
      try {
        const response = fetch(server.url);
        await inFlight.promise;
        const summary = await tasks.close({ server: server.server, timeout: 5_000 });
        assert.equal((await response).status, 200);
        assert.deepEqual(summary, { drained: true, settled: 1, abandoned: 0, pending: 0 } satisfies CloseSummary);
        assert.deepEqual(ran, ['added after close()']);
        assert.equal(server.server.listening, false);
      } finally {
        server.server.closeAllConnections();
      }
    });
  });
}

for (const [label, createApp] of expressVersions) {
  describe(`${label}: close({ server }) never cuts a response that server.close() would deliver`, () => {
    it('delivers in full six 16 MB responses that end after it began', { timeout: 30_000 }, async () => {
      const tasks = backgroundTasks();
      const ran: string[] = [];
      const together = handlerGate(6);
      const big = Buffer.alloc(16 * 2 ** 20, 'x');
      const app = createApp();
      app.use(tasks);
      app.get('/:i', async (req, res) => {
        await together.wait();
        res.locals.tasks.add(() => ran.push(String(req.params['i'])));
        res.send(big);
      });
      const server = await listen(app);
      try {
        const bodies = Array.from({ length: 6 }, (_, i) => fetch(`${server.url}/${i}`).then(async (answer) => (await answer.arrayBuffer()).byteLength));
        await together.arrived;
        const closed = tasks.close({ server: server.server, timeout: 20_000 });
        together.open();
        assert.deepEqual(await Promise.all(bodies), Array(6).fill(big.length));
        assert.deepEqual(await closed, { drained: true, settled: 6, abandoned: 0, pending: 0 } satisfies CloseSummary);
        assert.equal(ran.length, 6);
      } finally {
        server.server.closeAllConnections();
      }
    });

    it('keeps the connection of a client that does not read a response ending after it began, and its task waits for the flush', async () => {
      const reported: string[] = [];
      const tasks = backgroundTasks({ onError: (error) => reported.push((error as Error).name) });
      let ran = false;
      const arrived = deferred();
      const closing = deferred();
      const handled = deferred();
      const app = createApp();
      app.use(tasks);
      app.get('/', async (_req, res) => {
        arrived.resolve();
        await closing.promise;
        res.locals.tasks.add(() => (ran = true));
        res.send(Buffer.alloc(64 * 2 ** 20, 'x')); // more than the kernel's buffers hold
        handled.resolve();
      });
      const server = await listen(app);
      const client = net.connect(server.port, '127.0.0.1');
      try {
        client.pause(); // never reads
        client.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
        await arrived.promise;
        const closed = tasks.close({ server: server.server, timeout: 300 });
        closing.resolve();
        await handled.promise;
        const summary = await closed;
        assert.equal(client.destroyed, false, 'the connection is still there');
        assert.equal(ran, false, 'not run before its response was flushed');
        assert.deepEqual(summary, { drained: false, settled: 0, abandoned: 1, pending: 0 } satisfies CloseSummary);
        assert.deepEqual(reported, ['ShutdownError']);
      } finally {
        client.destroy();
        server.server.closeAllConnections();
      }
    });

    it('delivers ten pipelined responses when it is called as the first request arrives', async () => {
      const tasks = backgroundTasks();
      const ran: string[] = [];
      let closed: Promise<CloseSummary> | undefined;
      const app = createApp();
      app.use(tasks);
      app.get('/:i', (req, res) => {
        closed ??= tasks.close({ server: server.server, timeout: 5_000 });
        res.locals.tasks.add(() => ran.push(String(req.params['i'])));
        setImmediate(() => res.send(`r${req.params['i']}`));
      });
      const server = await listen(app);
      try {
        const client = net.connect(server.port, '127.0.0.1');
        let received = '';
        client.setEncoding('latin1');
        client.on('data', (chunk: string) => (received += chunk));
        client.write(Array.from({ length: 10 }, (_, i) => `GET /${i} HTTP/1.1\r\nHost: x\r\n\r\n`).join(''));
        await once(client, 'close');
        assert.deepEqual(received.match(/r\d$|r\d(?=HTTP)/g), Array.from({ length: 10 }, (_, i) => `r${i}`));
        assert.deepEqual(await closed, { drained: true, settled: 10, abandoned: 0, pending: 0 } satisfies CloseSummary);
        assert.equal(ran.length, 10);
      } finally {
        server.server.closeAllConnections();
      }
    });

    it("closes a keep-alive connection once idle although the server has a 'timeout' listener (server.setTimeout(ms, callback))", { timeout: 10_000 }, async () => {
      const { tasks, app, arrived, closing } = answeringOnceClosing(createApp);
      const server = await listen(app);
      server.server.setTimeout(60_000, () => {}); // a user callback that leaves the socket alone
      const client = net.connect(server.port, '127.0.0.1');
      try {
        client.resume();
        const clientClosed = once(client, 'close');
        client.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
        await arrived;
        const closed = tasks.close({ server: server.server, timeout: 4_000 });
        closing.resolve();
        assert.deepEqual(await closed, { drained: true, settled: 1, abandoned: 0, pending: 0 } satisfies CloseSummary);
        await clientClosed;
        assert.equal(server.server.listenerCount('timeout'), 1, 'only the user\'s listener is left');
      } finally {
        client.destroy();
        server.server.closeAllConnections();
      }
    });

    it("resolves, once its connections are closed, although the server emits an 'error' meanwhile (a failed accept, EMFILE)", async () => {
      const { tasks, app, arrived, closing } = answeringOnceClosing(createApp);
      const server = await listen(app);
      const serverErrors: string[] = [];
      server.server.on('error', (error: NodeJS.ErrnoException) => serverErrors.push(String(error.code)));
      try {
        const response = fetch(server.url, { headers: { connection: 'close' } }).then((answer) => answer.text());
        await arrived;
        const closed = tasks.close({ server: server.server, timeout: 5_000 });
        server.server.emit('error', Object.assign(new Error('accept EMFILE'), { code: 'EMFILE' }));
        closing.resolve();
        assert.equal(await response, 'ok');
        assert.deepEqual(await closed, { drained: true, settled: 1, abandoned: 0, pending: 0 } satisfies CloseSummary);
        assert.deepEqual(serverErrors, ['EMFILE']);
      } finally {
        server.server.closeAllConnections();
      }
    });

    it("with runOn: 'success', drops at its deadline the tasks of responses their handler never ended, without reporting them", async () => {
      const reported: string[] = [];
      const tasks = backgroundTasks({ runOn: 'success', onError: (error) => reported.push((error as Error).name) });
      const waiting = handlerGate(3);
      const app = createApp();
      app.use(tasks);
      app.get('/poll', (_req, res) => {
        res.locals.tasks.add(() => {});
        void waiting.wait(); // a long poll nobody ends
      });
      const server = await listen(app);
      try {
        const clients = Array.from({ length: 3 }, () => {
          const client = net.connect(server.port, '127.0.0.1');
          client.write('GET /poll HTTP/1.1\r\nHost: x\r\n\r\n');
          return client;
        });
        await waiting.arrived;
        for (const client of clients) client.resetAndDestroy();
        const summary = await tasks.close({ server: server.server, timeout: 300 });
        assert.deepEqual(summary, { drained: false, settled: 3, abandoned: 0, pending: 0 } satisfies CloseSummary);
        assert.deepEqual(reported, []);
      } finally {
        server.server.closeAllConnections();
      }
    });
  });
}

/**
 * An app whose `GET /`, once it has arrived, waits for `closing` to resolve, then adds a task and
 * answers `ok`: a request in flight when `close()` is called.
 */
function answeringOnceClosing(createApp: () => Express): { tasks: BackgroundTasksMiddleware; app: Express; arrived: Promise<void>; closing: { resolve(): void } } {
  const tasks = backgroundTasks();
  const arrived = deferred();
  const closing = deferred();
  const app = createApp();
  app.use(tasks);
  app.get('/', async (_req, res) => {
    arrived.resolve();
    await closing.promise;
    res.locals.tasks.add(() => {});
    res.send('ok');
  });
  return { tasks, app, arrived: arrived.promise, closing };
}

const redisOrReason = await startRedis();
after(() => (typeof redisOrReason === 'string' ? undefined : redisOrReason.stop()));

describe('close() of a server under steady keep-alive load, on SIGTERM (child process)', { timeout: 60_000 }, () => {
  const variants = [[100, 3_000, false], [10_000, 1_000, false], [100, 3_000, true]] as const;
  for (const [taskMs, deadlineMs, staged] of variants) {
    const skip = staged && typeof redisOrReason === 'string' ? redisOrReason : false;
    it(`${taskMs < deadlineMs ? 'completes' : 'reports as abandoned'} the task of every request answered (tasks of ${taskMs} ms, deadline ${deadlineMs} ms${staged ? ', a defined task staged on BullMQ too' : ''}), delivers every response its handler sent, and exits within the deadline`, { skip }, async (t) => {
      const dir = mkdtempSync(join(tmpdir(), 'ebt-close-'));
      const reportFile = join(dir, 'report.json');
      const env = staged && typeof redisOrReason !== 'string' ? { ...process.env, REDIS_HOST: redisOrReason.host, REDIS_PORT: String(redisOrReason.port) } : process.env;
      const child = fork('spec/fixtures/shutdown-under-load.ts', [reportFile, String(taskMs), String(deadlineMs)], { execArgv: ['--import', 'tsx'], stdio: 'inherit', env });
      try {
        const [{ port }] = (await once(child, 'message')) as [{ port: number }];
        const exited = once(child, 'exit');
        const answered = new Set<string>();
        let answeredAfterSigterm = 0;
        let signalled = false;
        const agent = new Agent({ keepAlive: true, maxSockets: 8 });
        let next = 0;
        const client = async (): Promise<void> => {
          // Each client sends requests back to back until the server no longer takes them.
          for (let sent = 0; sent < 500; sent++) {
            const id = `r${next++}`;
            const body = await get(`http://127.0.0.1:${port}/work/${id}`, agent).catch(() => undefined);
            if (body === undefined) return;
            assert.equal(body, id);
            answered.add(id);
            if (signalled) answeredAfterSigterm++;
            if (answered.size === 80 && !signalled) {
              signalled = true;
              child.kill('SIGTERM');
            }
          }
        };
        await Promise.all(Array.from({ length: 8 }, client));
        agent.destroy();
        const [code] = (await exited) as [number];
        const report = JSON.parse(readFileSync(reportFile, 'utf8')) as {
          completed: string[]; abandoned: string[]; failed: string[]; summary: CloseSummary; answeredAfterSignal: number; elapsedMs: number; handled: string[];
        };
        const unanswered = report.handled.filter((id) => !answered.has(id));
        const accounted = new Set([...report.completed, ...report.abandoned]);
        const lost = [...answered].filter((id) => !accounted.has(id));
        t.diagnostic(`answered ${answered.size} (${answeredAfterSigterm} after SIGTERM as the client saw it, ${report.answeredAfterSignal} as the server did), ` +
          `completed ${report.completed.length}, abandoned ${report.abandoned.length}, lost ${lost.length}, ` +
          `${unanswered.length} of ${report.handled.length} sent by their handler not received in full, exit ${code} after ${report.elapsedMs.toFixed(0)} ms`);
        assert.deepEqual(unanswered, [], 'every response a handler sent reached its client in full');
        assert.ok(signalled, 'SIGTERM was sent under load');
        assert.deepEqual(lost, [], 'every answered request has its task completed or reported abandoned');
        assert.deepEqual(report.failed, []);
        assert.equal(report.completed.length + report.abandoned.length, accounted.size, 'no task both completed and abandoned');
        assert.ok(report.elapsedMs < deadlineMs + 1_000, `exited ${report.elapsedMs.toFixed(0)} ms after SIGTERM`);
        if (taskMs < deadlineMs) {
          assert.equal(code, 0);
          assert.deepEqual(report.abandoned, []);
          assert.equal(report.summary.drained, true);
        } else {
          assert.equal(code, 1);
          assert.equal(report.summary.abandoned, report.abandoned.length);
          assert.ok(report.abandoned.length > 0);
        }
      } finally {
        child.kill('SIGKILL');
        rmSync(dir, { recursive: true, force: true });
      }
    });
  }
});

/** GETs `url` over `agent`; resolves with the response headers once the body has been read. */
function getHeaders(url: string, agent: Agent): Promise<Record<string, string | string[] | undefined>> {
  return new Promise((resolve, reject) => {
    request(url, { agent }, (response) => {
      response.resume();
      response.on('end', () => resolve(response.headers));
    }).on('error', reject).end();
  });
}

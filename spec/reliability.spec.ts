import assert from 'node:assert/strict';
import { execFile, fork } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { promisify } from 'node:util';
import express from 'express';
import { backgroundTasks, QueueFullError } from '../lib/index.js';
import { deferred, listen, load, rawRequest, watchProcessFaults, withServer } from './support/http.js';

const run = promisify(execFile);

describe('reliability (express 5, loopback, bounded)', { timeout: 120_000 }, () => {
  it('runs every task exactly once under 2,000 requests over 50 keep-alive connections', async (t) => {
    const tasks = backgroundTasks();
    const runs = new Array<number>(2_000).fill(0);
    const app = express();
    app.use(tasks);
    app.get('/:i', (req, res) => {
      res.locals.tasks.add(async (i: number) => {
        runs[i] = (runs[i] ?? 0) + 1;
      }, Number(req.params.i));
      res.send('ok');
    });
    await withServer(app, async (server) => {
      const bodies = await load(2_000, 50, (i) => `${server.url}/${i}`);
      await tasks.drain();
      assert.equal(bodies.filter((body) => body === 'ok').length, 2_000);
      const ranOnce = runs.filter((count) => count === 1).length;
      t.diagnostic(`load: 2000 requests answered, ${ranOnce} tasks ran exactly once, ${2_000 - ranOnce} lost or repeated`);
      assert.equal(ranOnce, 2_000);
    });
  });

  it('runs the tasks of 20 requests whose clients reset the connection before reading the response', async (t) => {
    const tasks = backgroundTasks();
    const ran = new Set<number>();
    const entered = Array.from({ length: 20 }, () => deferred());
    const app = express();
    app.use(tasks);
    app.get('/:i', (req, res) => {
      const i = Number(req.params.i);
      res.locals.tasks.add(() => ran.add(i));
      res.on('close', () => res.end('too late'));
      entered[i]?.resolve();
    });
    await withServer(app, async (server) => {
      await Promise.all(entered.map(async (handlerEntered, i) => {
        const socket = await rawRequest(server.port, `/${i}`);
        await handlerEntered.promise;
        socket.resetAndDestroy();
        await once(socket, 'close');
      }));
      await tasks.drain();
      t.diagnostic(`faults: 20 connections reset, ${ran.size} of their tasks ran`);
      assert.equal(ran.size, 20);
    });
  });

  it('keeps answering under load while tasks throw, reject and hang, and runs the tasks behind them', async (t) => {
    const watch = watchProcessFaults();
    let reported = 0;
    const tasks = backgroundTasks({ timeout: 50, onError: () => reported++ });
    let goodRan = 0;
    const faults = [
      function throws() {
        throw new Error('sync');
      },
      async function rejects() {
        throw new Error('async');
      },
      function hangs() {
        return new Promise(() => {});
      },
    ];
    const app = express();
    app.use(tasks);
    app.get('/:i', (req, res) => {
      const i = Number(req.params.i);
      res.locals.tasks.add(faults[i % 3] as () => unknown).add(() => goodRan++);
      res.send('ok');
    });
    const server = await listen(app);
    try {
      const bodies = await load(600, 50, (i) => `${server.url}/${i}`);
      await tasks.drain();
      t.diagnostic(`mixed faults: 600 requests answered ${bodies.filter((b) => b === 'ok').length}, ${reported} failures reported, ${goodRan} tasks behind them ran`);
      assert.equal(bodies.filter((body) => body === 'ok').length, 600);
      assert.equal(reported, 600);
      assert.equal(goodRan, 600);
      assert.deepEqual(watch.faults, []);
    } finally {
      watch.stop();
      await server.close();
    }
  });

  it('gives QueueFullError to the excess of a burst only, and runs every accepted task', async (t) => {
    const tasks = backgroundTasks({ concurrency: 1, maxPending: 10 });
    const gate = deferred();
    let ran = 0;
    const app = express();
    app.use(tasks);
    app.get('/:i', (_req, res) => {
      try {
        res.locals.tasks.add(async () => {
          await gate.promise;
          ran++;
        });
      } catch (error) {
        if (!(error instanceof QueueFullError)) throw error;
        res.status(503).send('busy');
        return;
      }
      res.send('accepted');
    });
    await withServer(app, async (server) => {
      const bodies = await load(30, 30, (i) => `${server.url}/${i}`);
      const accepted = bodies.filter((body) => body === 'accepted').length;
      const refused = bodies.filter((body) => body === 'busy').length;
      gate.resolve();
      await tasks.drain();
      t.diagnostic(`backpressure: burst of 30, ${accepted} accepted, ${refused} refused with 503, ${ran} ran`);
      assert.deepEqual([accepted, refused, ran], [10, 20, 10]);
    });
  });

  it('completes every task of every answered request when SIGTERM drains before exit', async (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'ebt-shutdown-'));
    const reportFile = join(dir, 'report.json');
    const child = fork('spec/fixtures/shutdown-server.ts', [reportFile], { execArgv: ['--import', 'tsx'], stdio: 'inherit' });
    try {
      const [{ port }] = (await once(child, 'message')) as [{ port: number }];
      const bodies = await load(200, 20, (i) => `http://127.0.0.1:${port}/work/${i}`);
      child.kill('SIGTERM');
      const [code] = await once(child, 'exit');
      const report = JSON.parse(readFileSync(reportFile, 'utf8')) as { answered: number; completed: number; pendingAtSigterm: number };
      t.diagnostic(`shutdown: ${report.answered} answered, ${report.pendingAtSigterm} pending at SIGTERM, ${report.completed} completed before exit`);
      assert.equal(code, 0);
      assert.equal(bodies.length, 200);
      assert.ok(report.pendingAtSigterm >= 100, 'SIGTERM came while the tasks of odd requests were still pending');
      assert.equal(report.completed, report.answered);
      assert.equal(report.answered, 200);
    } finally {
      child.kill('SIGKILL');
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('keeps heap growth under 4 MiB over 20,000 requests with tasks', async (t) => {
    const { stdout } = await run(process.execPath, ['--expose-gc', '--import', 'tsx', 'spec/fixtures/memory-server.ts', '20000'], {
      timeout: 90_000,
    });
    const { requests, ran, heapGrowth } = JSON.parse(stdout) as { requests: number; ran: number; heapGrowth: number };
    t.diagnostic(`memory: ${requests} requests, ${ran} tasks ran, heap growth ${(heapGrowth / 1024).toFixed(0)} KiB`);
    assert.equal(ran, requests);
    assert.ok(heapGrowth < 4 * 1024 * 1024, `heap grew by ${heapGrowth} bytes`);
  });

});

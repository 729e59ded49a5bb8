import assert from 'node:assert/strict';
import { Agent } from 'node:http';
import { describe, it } from 'node:test';
import type { Request, Response } from 'express';
import { Router } from 'express';
import { backgroundTasks } from '../lib/index.js';
import { deferred, delay, expressVersions, get, listen, withServer } from './support/http.js';

for (const [label, createApp] of expressVersions) {
  describe(`${label}: ordering`, () => {
    it('runs sync and async tasks strictly in order, one at a time', async () => {
      const tasks = backgroundTasks();
      const log: string[] = [];
      const step = (name: string, ms: number) => async (): Promise<void> => {
        log.push(`start ${name}`);
        await delay(ms);
        log.push(`end ${name}`);
      };
      const syncStep = (name: string) => (): void => {
        log.push(`start ${name}`, `end ${name}`);
      };
      const app = createApp();
      app.use(tasks);
      app.get('/', (_req, res) => {
        res.locals.tasks.add(step('a', 30)).add(syncStep('b')).add(step('c', 1)).add(syncStep('d')).add(step('e', 10));
        res.send('ok');
      });
      await withServer(app, async (server) => {
        await (await fetch(server.url)).text();
        await tasks.drain();
        assert.deepEqual(log, ['a', 'b', 'c', 'd', 'e'].flatMap((name) => [`start ${name}`, `end ${name}`]));
      });
    });

    it('runs consecutive sync tasks without a promise tick between them', async () => {
      const tasks = backgroundTasks();
      const seen: boolean[] = [];
      let microtaskRan = false;
      const app = createApp();
      app.use(tasks);
      app.get('/', (_req, res) => {
        res.locals.tasks
          .add(() => {
            queueMicrotask(() => {
              microtaskRan = true;
            });
            return { then: 'not a function' };
          })
          .add(() => seen.push(microtaskRan))
          .add(() => seen.push(microtaskRan));
        res.send('ok');
      });
      await withServer(app, async (server) => {
        await (await fetch(server.url)).text();
        await tasks.drain();
        assert.deepEqual(seen, [false, false]);
        assert.equal(microtaskRan, true);
      });
    });

    for (const kind of ['sync', 'async'] as const) {
      it(`lets the server answer and timers fire while a ${kind} task keeps re-adding itself`, { timeout: 20_000 }, async () => {
        const tasks = backgroundTasks();
        const cap = 100_000; // bounds the spec where a re-added task would starve the event loop
        let rounds = 0;
        let ready = false;
        const pingsWhilePolling: number[] = [];
        const app = createApp();
        app.use(tasks);
        app.post('/poll', (_req, res) => {
          const queue = res.locals.tasks;
          const poll = (): void => {
            rounds++;
            if (!ready && rounds < cap) queue.add(kind === 'sync' ? poll : async () => poll());
          };
          queue.add(poll);
          res.send('polling');
        });
        app.get('/ping', (_req, res) => {
          if (!ready) pingsWhilePolling.push(rounds);
          res.send('pong');
        });
        await withServer(app, async (server) => {
          await (await fetch(`${server.url}/poll`, { method: 'POST' })).text();
          for (let ping = 0; ping < 5; ping++) await (await fetch(`${server.url}/ping`)).text();
          await new Promise((resolve) => setTimeout(resolve, 20));
          ready = true;
          await tasks.drain();
        });
        assert.equal(pingsWhilePolling.length, 5, 'every ping answered while the task kept re-adding itself');
        assert.ok(rounds < cap, `the timer that ends the polling fired (${rounds} rounds)`);
        assert.ok(pingsWhilePolling.every((seen, i) => seen > (pingsWhilePolling[i - 1] ?? 0)), `rounds went on between pings: ${pingsWhilePolling}`);
      });
    }

    it('waits for a returned thenable that is not a native promise', async () => {
      const tasks = backgroundTasks();
      const log: string[] = [];
      const app = createApp();
      app.use(tasks);
      app.get('/', (_req, res) => {
        res.locals.tasks
          .add(() => ({
            then(resolve: () => void) {
              setTimeout(() => {
                log.push('thenable settled');
                resolve();
              }, 20);
            },
          }))
          .add(() => log.push('next'));
        res.send('ok');
      });
      await withServer(app, async (server) => {
        await (await fetch(server.url)).text();
        await tasks.drain();
        assert.deepEqual(log, ['thenable settled', 'next']);
      });
    });

    it('keeps each response\'s tasks to that response, after its own flush, under 50 concurrent requests', async () => {
      const tasks = backgroundTasks();
      const ran = new Map<string, string[]>();
      const record = async (id: string, position: number, req: Request, res: Response): Promise<void> => {
        const flushed = res.writableFinished;
        await delay(Math.random() * 5);
        ran.set(id, [...(ran.get(id) ?? []), `${position} of ${req.params.id}${flushed ? '' : ', started before its flush'}`]);
      };
      const app = createApp();
      app.use(tasks);
      app.get('/r/:id', (req, res) => {
        const id = req.params.id as string;
        res.locals.tasks.add(record, id, 0, req, res).add(record, id, 1, req, res).add(record, id, 2, req, res);
        setTimeout(() => res.send(id), Math.random() * 5);
      });
      const server = await listen(app);
      const agent = new Agent({ keepAlive: true, maxSockets: 50 });
      try {
        const ids = Array.from({ length: 50 }, (_, i) => String(i));
        const bodies = await Promise.all(ids.map((id) => get(`${server.url}/r/${id}`, agent)));
        assert.deepEqual(bodies, ids);
        await tasks.drain();
        assert.equal(ran.size, 50);
        for (const id of ids) assert.deepEqual(ran.get(id), [0, 1, 2].map((position) => `${position} of ${id}`), `tasks of request ${id}`);
      } finally {
        agent.destroy();
        await server.close();
      }
    });

    it('runs each task once when the middleware is mounted on the app and on a router; the first mounted owns the queue', async () => {
      const tasks = backgroundTasks();
      const other = backgroundTasks();
      const release = deferred();
      let runs = 0;
      const app = createApp();
      const router = Router();
      app.use(tasks);
      router.use(tasks, other);
      router.get('/', (_req, res) => {
        res.locals.tasks.add(async () => {
          await release.promise;
          runs++;
        });
        res.json({ pending: tasks.pending, pendingOfOther: other.pending });
      });
      app.use('/router', router);
      await withServer(app, async (server) => {
        const counts: unknown = await (await fetch(`${server.url}/router`)).json();
        assert.deepEqual(counts, { pending: 1, pendingOfOther: 0 }, 'the task went to the queue of the first middleware mounted');
        release.resolve();
        await tasks.drain();
        assert.equal(runs, 1);
        assert.equal(other.pending, 0);
      });
    });

    it('runs the tasks of different responses independently of each other', async () => {
      const tasks = backgroundTasks();
      const slowStarted = deferred();
      const release = deferred();
      const log: string[] = [];
      const app = createApp();
      app.use(tasks);
      app.get('/slow', (_req, res) => {
        res.locals.tasks.add(async () => {
          slowStarted.resolve();
          await release.promise;
          log.push('slow');
        });
        res.send('ok');
      });
      app.get('/fast', (_req, res) => {
        res.locals.tasks.add(() => {
          log.push('fast');
          release.resolve();
        });
        res.send('ok');
      });
      await withServer(app, async (server) => {
        await (await fetch(`${server.url}/slow`)).text();
        await slowStarted.promise;
        await (await fetch(`${server.url}/fast`)).text();
        await tasks.drain();
        assert.deepEqual(log, ['fast', 'slow']);
      });
    });
  });
}

import assert from 'node:assert/strict';
import { once } from 'node:events';
import { describe, it } from 'node:test';
import { backgroundTasks } from '../lib/index.js';
import { deferred, delay, expressVersions, rawRequest, withServer } from './support/http.js';

const LARGE_BODY = Buffer.alloc(32 * 1024 * 1024, 'x');

for (const [label, createApp] of expressVersions) {
  describe(`${label}: tasks run after the response is flushed`, () => {
    it('runs the queued task with its argument once the client has the JSON (the README example)', async () => {
      const emailed = deferred<{ id: string; flushed: boolean }>();
      const app = createApp();
      app.use(backgroundTasks());
      app.post('/items/:id', (req, res) => {
        const sendConfirmationEmail = async (id: string): Promise<void> => emailed.resolve({ id, flushed: res.writableFinished });
        res.locals.tasks.add(sendConfirmationEmail, req.params.id as string);
        res.json({ id: req.params.id });
      });
      await withServer(app, async (server) => {
        const response = await fetch(`${server.url}/items/42`, { method: 'POST' });
        assert.deepEqual(await response.json(), { id: '42' });
        assert.deepEqual(await emailed.promise, { id: '42', flushed: true });
      });
    });

    for (const when of ['before', 'after'] as const) {
      it(`does not start a task queued ${when} res.send() while a slow client has not read the response`, async () => {
        const taskStarted = deferred<{ flushed: boolean }>();
        const sent = deferred();
        let started = false;
        const app = createApp();
        app.use(backgroundTasks());
        app.get('/large', (_req, res) => {
          const task = (): void => {
            started = true;
            taskStarted.resolve({ flushed: res.writableFinished });
          };
          if (when === 'before') res.locals.tasks.add(task);
          res.send(LARGE_BODY);
          if (when === 'after') res.locals.tasks.add(task);
          sent.resolve();
        });
        await withServer(app, async (server) => {
          const socket = await rawRequest(server.port, '/large');
          socket.pause();
          await sent.promise;
          // A window in which the task must NOT start: the response is sent, 32 MiB sit unread.
          await delay(300);
          assert.equal(started, false, 'the task started while 32 MiB were still unread');

          let received = 0;
          socket.on('data', (chunk: Buffer) => {
            received += chunk.length;
          });
          socket.resume();
          await once(socket, 'end');
          assert.ok(received > LARGE_BODY.length, 'the client read the whole response');
          assert.deepEqual(await taskStarted.promise, { flushed: true });
        });
      });
    }

    it('answers without waiting for a task that is still running', async () => {
      const tasks = backgroundTasks();
      const taskStarted = deferred();
      const release = deferred();
      let taskFinished = false;
      const app = createApp();
      app.use(tasks);
      app.get('/', (_req, res) => {
        res.locals.tasks.add(async () => {
          taskStarted.resolve();
          await release.promise;
          taskFinished = true;
        });
        res.send('ok');
      });
      await withServer(app, async (server) => {
        // The task cannot finish before the client has the answer: it waits for `release`.
        const response = await fetch(server.url, { signal: AbortSignal.timeout(30_000) });
        assert.equal(await response.text(), 'ok');
        await taskStarted.promise;
        release.resolve();
        await tasks.drain();
        assert.equal(taskFinished, true);
      });
    });

    it('never runs a task inside the add() call, even when the response is already flushed', async () => {
      const tasks = backgroundTasks();
      const app = createApp();
      app.use(tasks);
      const log: string[] = [];
      const added = deferred();
      app.get('/', (_req, res) => {
        res.send('ok');
        res.on('finish', () => {
          setImmediate(() => {
            log.push('before add');
            res.locals.tasks.add(() => log.push('task'));
            log.push('after add');
            added.resolve();
          });
        });
      });
      await withServer(app, async (server) => {
        await (await fetch(server.url)).text();
        await added.promise;
        await tasks.drain();
        assert.deepEqual(log, ['before add', 'after add', 'task']);
      });
    });
  });
}

import assert from 'node:assert/strict';
import { once } from 'node:events';
import { describe, it } from 'node:test';
import { backgroundTasks } from '../lib/index.js';
import { delay, deferred, expressVersions, listen, rawRequest } from './support/http.js';

const LARGE_BODY = Buffer.alloc(32 * 1024 * 1024, 'x');

for (const [label, createApp] of expressVersions) {
  describe(`${label}: tasks run after the response is flushed`, () => {
    it('runs the queued task with its argument once the client has the JSON (the README example)', async () => {
      const emailed = deferred<string>();
      const sendConfirmationEmail = async (id: string): Promise<void> => emailed.resolve(id);
      const app = createApp();
      app.use(backgroundTasks());
      app.post('/items/:id', (req, res) => {
        res.locals.tasks.add(sendConfirmationEmail, req.params.id as string);
        res.json({ id: req.params.id });
      });
      const server = await listen(app);
      try {
        const response = await fetch(`${server.url}/items/42`, { method: 'POST' });
        assert.deepEqual(await response.json(), { id: '42' });
        assert.equal(await emailed.promise, '42');
      } finally {
        await server.close();
      }
    });

    for (const when of ['before', 'after'] as const) {
      it(`does not start a task queued ${when} res.send() while a slow client has not read the response`, async () => {
        const taskStarted = deferred<{ flushed: boolean }>();
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
        });
        const server = await listen(app);
        try {
          const socket = await rawRequest(server.port, '/large');
          socket.pause();
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
        } finally {
          await server.close();
        }
      });
    }

    it('answers at once while a 500 ms task is still running', async () => {
      let taskFinished = false;
      const taskDone = deferred();
      const app = createApp();
      app.use(backgroundTasks());
      app.get('/', (_req, res) => {
        res.locals.tasks.add(async () => {
          await delay(500);
          taskFinished = true;
          taskDone.resolve();
        });
        res.send('ok');
      });
      const server = await listen(app);
      try {
        const response = await fetch(server.url);
        assert.equal(await response.text(), 'ok');
        assert.equal(taskFinished, false, 'the response waited for the task');
        await taskDone.promise;
      } finally {
        await server.close();
      }
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
      const server = await listen(app);
      try {
        await (await fetch(server.url)).text();
        await added.promise;
        await tasks.drain();
        assert.deepEqual(log, ['before add', 'after add', 'task']);
      } finally {
        await server.close();
      }
    });
  });
}

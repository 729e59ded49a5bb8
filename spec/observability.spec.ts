import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import diagnostics from 'node:diagnostics_channel';
import { describe, it } from 'node:test';
import { promisify } from 'node:util';
import { backgroundTasks, type TaskTraceContext } from '../lib/index.js';
import { expressVersions, listen } from './support/http.js';

const run = promisify(execFile);

describe('DEBUG=express-background-tasks', () => {
  it('traces each task queued, started (with its request, status, request id and queue wait), finished with its duration, failed, and dropped', async () => {
    const { stderr } = await run(process.execPath, ['--import', 'tsx', 'spec/fixtures/debug-app.ts'], {
      env: { ...process.env, DEBUG: 'express-background-tasks', DEBUG_COLORS: '0' },
      timeout: 20_000,
    });
    const lines = stderr.split('\n').filter((line) => line.includes('express-background-tasks'));
    const expected = [
      /queued sendConfirmationEmail/,
      /queued chargeCard/,
      /started sendConfirmationEmail \(GET \/\?order=1 → 200, request req-7\), after \d+\.\dms in the queue/,
      /finished sendConfirmationEmail in \d+\.\dms/,
      /started chargeCard \(GET \/\?order=1 → 200, request req-7\)/,
      /failed chargeCard \(GET \/\?order=1 → 200, request req-7\): Error: card declined/,
      /queued auditLog/,
      /dropped 1 task\(s\): response status 404/,
    ];
    let next = 0;
    for (const line of lines) if (next < expected.length && expected[next]?.test(line)) next++;
    assert.equal(next, expected.length, `missing ${expected[next]} in:\n${lines.join('\n')}`);
  });
});

for (const [label, createApp] of expressVersions) {
  describe(`${label}: diagnostics_channel`, () => {
    it('publishes start/end, error and asyncStart/asyncEnd on express-background-tasks:task', async () => {
      const events: string[] = [];
      const record = (event: string) => (context: TaskTraceContext): void => {
        const error = context.error instanceof Error ? ` ${context.error.name}` : '';
        events.push(`${event} ${context.name} ${context.req.path}${error}`);
        if (event === 'start') requests.push(`${context.method} ${context.url} ${context.status} waited ${context.waitMs >= 0}`);
      };
      const requests: string[] = [];
      const channel = diagnostics.tracingChannel<unknown, TaskTraceContext>('express-background-tasks:task');
      const subscribers = {
        start: record('start'),
        end: record('end'),
        asyncStart: record('asyncStart'),
        asyncEnd: record('asyncEnd'),
        error: record('error'),
      };
      const tasks = backgroundTasks({ timeout: 30, onError() {} });
      const app = createApp();
      app.use(tasks);
      app.get('/traced', (_req, res) => {
        res.locals.tasks
          .add(function syncTask() {})
          .add(async function asyncTask() {})
          .add(function throwing() {
            throw new Error('nope');
          })
          .add(function hanging() {
            return new Promise(() => {});
          });
        res.send('ok');
      });
      const server = await listen(app);
      channel.subscribe(subscribers);
      try {
        await (await fetch(`${server.url}/traced?from=spec`)).text();
        await tasks.drain();
      } finally {
        channel.unsubscribe(subscribers);
        await server.close();
      }
      assert.deepEqual(events, [
        'start syncTask /traced',
        'end syncTask /traced',
        'start asyncTask /traced',
        'end asyncTask /traced',
        'asyncStart asyncTask /traced',
        'asyncEnd asyncTask /traced',
        'start throwing /traced',
        'error throwing /traced Error',
        'end throwing /traced Error',
        'start hanging /traced',
        'end hanging /traced',
        'error hanging /traced TimeoutError',
        'asyncStart hanging /traced TimeoutError',
        'asyncEnd hanging /traced TimeoutError',
      ]);
      assert.deepEqual(requests, Array(4).fill('GET /traced?from=spec 200 waited true'));
    });
  });
}

// The README's `npm run demo`, every mode: it must run, print its timeline, and exit by itself.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { after, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { startRedis } from './support/redis.js';

const run = promisify(execFile);
const redisOrReason = await startRedis();
after(() => (typeof redisOrReason === 'string' ? undefined : redisOrReason.stop()));

/**
 * Runs the demo and returns its timeline: [who, what] per line, in order, or with `withTimes`, the
 * lines as printed, their times included.
 */
async function demo(args: string[], env: NodeJS.ProcessEnv = {}, withTimes = false): Promise<string[]> {
  const { stdout } = await run(process.execPath, ['--import', 'tsx', 'examples/demo.ts', ...args], {
    env: { ...process.env, ...env },
    timeout: 30_000,
  });
  const lines = stdout.split('\n').filter((line) => line.startsWith('+'));
  return withTimes ? lines : lines.map((line) => line.replace(/^\+\s+\d+ ms\s+/, ''));
}

/** @return the index of the first line that includes `text`; fails when there is none */
function lineOf(timeline: string[], text: string): number {
  const index = timeline.findIndex((line) => line.includes(text));
  assert.notEqual(index, -1, `no line with "${text}" in:\n${timeline.join('\n')}`);
  return index;
}

describe('npm run demo', () => {
  it('answers each request before its tasks start, reports the failing task, runs the one behind it, and exits 0', async () => {
    const timeline = await demo([]);
    for (const id of ['1', '2']) {
      assert.ok(lineOf(timeline, `POST /items/${id}               response sent`) < lineOf(timeline, `sendConfirmationEmail(${id}) started`));
      assert.ok(lineOf(timeline, `sendConfirmationEmail(${id}) finished`) < lineOf(timeline, `recordAnalytics(item_created, ${id})`));
    }
    assert.ok(lineOf(timeline, 'onError  importContacts failed') < lineOf(timeline, 'deleteUpload(contacts.csv) runs'));
    assert.equal(lineOf(timeline, 'every task has settled'), timeline.length - 1);
  });

  it('--threads: the CPU task runs on a thread while the server answers each request in a few ms, and it exits 0', async () => {
    const timeline = await demo(['--threads'], {}, true);
    const at = (line: string | undefined): number => Number(/^\+\s+(\d+) ms/.exec(line ?? '')?.[1]);
    const started = at(timeline[lineOf(timeline, 'thread   makeThumbnail(cat.jpg) started on thread')]);
    const finished = at(timeline[lineOf(timeline, 'thread   makeThumbnail(cat.jpg) finished')]);
    assert.ok(finished - started >= 600, `the task ran ${finished - started} ms`);
    const answered = timeline.filter((line) => line.includes('client   GET /status') && at(line) > started && at(line) < finished);
    assert.ok(answered.length >= 3, `${answered.length} responses while the task ran:\n${timeline.join('\n')}`);
    for (const line of answered) {
      assert.ok(line.includes('{"pending":1}'), `the pool task counts in pending while it runs: ${line}`);
      assert.ok(Number(/in (\d+) ms$/.exec(line)?.[1]) < 100, line);
    }
    assert.equal(lineOf(timeline, 'tasks.close() closed the pool'), timeline.length - 1);
  });

  it('--bullmq: the same tasks run in a worker, each job once its response has been sent, and it exits 0', { skip: typeof redisOrReason === 'string' && redisOrReason }, async () => {
    const redis = redisOrReason as Exclude<typeof redisOrReason, string>;
    const timeline = await demo(['--bullmq'], { REDIS_URL: `redis://${redis.host}:${redis.port}` });
    for (const [job, request] of [
      ['sendConfirmationEmail("1"), recordAnalytics("item_created","1")', 'POST /items/1               '],
      ['sendConfirmationEmail("2"), recordAnalytics("item_created","2")', 'POST /items/2               '],
      ['importContacts("contacts.csv"), deleteUpload("contacts.csv")', 'POST /imports/contacts.csv  '],
    ] as const) {
      assert.ok(lineOf(timeline, `${request}response sent`) < lineOf(timeline, `picked up a job from Redis: ${job}`));
    }
    assert.ok(lineOf(timeline, 'POST /items/1               response sent') < lineOf(timeline, 'worker   sendConfirmationEmail(1) started'));
    assert.ok(lineOf(timeline, 'deleteUpload(contacts.csv) runs') < lineOf(timeline, 'job importContacts("contacts.csv"), deleteUpload("contacts.csv") failed: contacts.csv: row 3 has no email address'));
    assert.equal(lineOf(timeline, 'closed: all 3 jobs have run'), timeline.length - 1);
  });
});

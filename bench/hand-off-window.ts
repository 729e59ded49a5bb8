// npx tsx bench/hand-off-window.ts: how many handed-off tasks a web process loses when it is
// SIGKILLed the instant its client has the last response, without waiting for the hand-offs; staged
// (the default) and with `stage: false`. After the flush, the loss is the window docs/scaling-out.md
// describes: between the flush and Redis's acknowledgement. Staged, a job is stored (delayed) before
// its response's end goes out. Needs redis-server installed, or REDIS_URL.
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { Queue } from 'bullmq';
import type { TasksJobData } from '../lib/bullmq.js';
import { startRedis, waitForOutput } from '../spec/support/redis.js';

const trials = 10;
const requestsPerTrial = 20; // concurrent; each response hands off one job of 2 tasks

const redis = await startRedis();
if (typeof redis === 'string') throw new Error(redis);
for (const mode of ['staged', 'after the flush'] as const) {
  let tasksStored = 0;
  for (let trial = 0; trial < trials; trial++) {
    const queueName = `hand-off-window-${trial}-${Date.now()}`;
    const env = { ...process.env, REDIS_HOST: redis.host, REDIS_PORT: String(redis.port), QUEUE: queueName, STAGE: mode === 'staged' ? '1' : '0' };
    const web = spawn(process.execPath, ['--import', 'tsx', 'spec/fixtures/bullmq-web.ts'], { env, stdio: ['ignore', 'pipe', 'ignore'] });
    const [, port] = (await waitForOutput(web, /listening (\d+)/)) as [string, string];
    await Promise.all(Array.from({ length: requestsPerTrial }, (_, i) =>
      fetch(`http://127.0.0.1:${port}/items/${i}`, { method: 'POST' }).then((response) => response.text())));
    web.kill('SIGKILL');
    await once(web, 'exit');

    const queue = new Queue(queueName, { connection: { host: redis.host, port: redis.port } });
    // Staged and not yet promoted: delayed. A staged job may hold the tasks of several responses.
    for (const { data } of await queue.getJobs(['waiting', 'delayed']) as { data: TasksJobData }[]) {
      tasksStored += data.tasks.length;
    }
    await queue.obliterate({ force: true });
    await queue.close();
  }
  const tasks = trials * requestsPerTrial * 2;
  console.log(`${mode}: ${trials} trials × ${requestsPerTrial} responses × 2 tasks = ${tasks} tasks: ` +
    `${tasksStored} stored, ${tasks - tasksStored} lost`);
}
await redis.stop();

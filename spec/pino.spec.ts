// docs/observability.md's pino recipe, as examples/pino.ts runs it: the JSON lines pino writes.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { describe, it } from 'node:test';
import { promisify } from 'node:util';

const run = promisify(execFile);

describe('logging tasks through the request\'s pino-http logger (examples/pino.ts, as documented)', () => {
  it('logs what a task says and how it failed with the request id, the task, method, URL, status, queue wait and run time', async () => {
    const { stdout } = await run(process.execPath, ['--import', 'tsx', 'examples/pino.ts'], { timeout: 30_000 });
    const lines = stdout.trim().split('\n').map((line) => JSON.parse(line) as Record<string, unknown>);
    assert.deepEqual(lines.map(({ msg, reqId, task }) => [msg, reqId, task]), [
      ['request completed', 'req-7f3a', undefined],
      ['receipt sent', 'req-7f3a', 'sendReceipt'],
      ['background task failed', 'req-7f3a', 'syncCrm'],
    ]);
    const [completed, said, failed] = lines as [Record<string, unknown>, Record<string, unknown>, Record<string, unknown>];
    assert.equal((completed.res as { statusCode: number }).statusCode, 201);
    assert.deepEqual([said.level, said.orderId], [30, '7']);

    const { level, method, url, status, waitMs, durationMs, err } = failed;
    assert.deepEqual({ level, method, url, status }, { level: 50, method: 'POST', url: '/orders/7', status: 201 });
    // sendReceipt runs first, for about 20 ms; syncCrm fails about 10 ms after it starts.
    assert.ok(typeof waitMs === 'number' && waitMs >= 15, `waitMs ${String(waitMs)}`);
    assert.ok(typeof durationMs === 'number' && durationMs >= 5, `durationMs ${String(durationMs)}`);
    assert.deepEqual({ ...(err as object), stack: undefined }, { type: 'Error', message: 'CRM answered 503 for order 7', stack: undefined });
  });
});

import assert from 'node:assert/strict';
import { once } from 'node:events';
import net from 'node:net';
import { describe, test } from 'node:test';
import express from 'express';
import { backgroundTasks, defineTask, type TaskStaging } from '../lib/index.js';
import { deferred, failOnProcessFaults, listen } from './support/http.js';
import { rawClient } from './support/staging.js';

// A staging transport whose calls return odd values, and clients that misbehave while a response
// is held: nothing escapes, nothing stays pending, each task is stored or reported exactly once.

const job = defineTask('hostile-staging-job', () => {});

/** What the staging and onError saw. */
interface Seen {
  staged: number;
  released: unknown[];
  discarded: unknown[];
  reported: string[];
}

/** An app whose routes each add one task, then answer with `answer`; `staging` built from `seen`. */
async function serve(makeStaging: (seen: Seen) => TaskStaging, answer: (res: express.Response) => void = (res) => void res.json({ ok: true })) {
  const seen: Seen = { staged: 0, released: [], discarded: [], reported: [] };
  const tasks = backgroundTasks({
    transport: { send: async () => {}, staging: makeStaging(seen) },
    stagingFailure: 'abort',
    onError: (error) => void seen.reported.push((error as Error).name),
  });
  const app = express();
  app.use(tasks);
  app.get('/:id', (req, res) => {
    if (req.params.id !== 'plain') res.locals.tasks.add(job);
    answer(res);
  });
  const server = await listen(app);
  return { seen, tasks, server };
}

const request = (path: string, last = true): string => `GET ${path} HTTP/1.1\r\nHost: x\r\n${last ? 'Connection: close\r\n' : ''}\r\n`;

/** A staging whose `stage()` returns `stage(seen)`; release and discard record their receipt. */
function staging(stage: (seen: Seen) => unknown, more: Partial<TaskStaging> = {}): (seen: Seen) => TaskStaging {
  return (seen) => ({
    timeout: 200,
    stage: (() => {
      seen.staged++;
      return stage(seen);
    }) as TaskStaging['stage'],
    release: async (receipt) => void seen.released.push(receipt),
    discard: async (receipt) => void seen.discarded.push(receipt),
    ...more,
  });
}

describe('a held response with a hostile staging', () => {
  failOnProcessFaults();

  const stored: [string, (seen: Seen) => TaskStaging][] = [
    ['a thenable that resolves, then rejects', staging(() => ({ then: (resolve: (v: unknown) => void, reject: (e: unknown) => void) => (resolve('r'), reject(new Error('late'))) }))],
    ['a thenable that resolves twice', staging(() => ({ then: (resolve: (v: unknown) => void) => (resolve('r'), resolve('again')) }))],
    ['release() throwing synchronously', staging(async () => 'r', { release: () => { throw new Error('sync'); } })],
  ];
  for (const [how, make] of stored) {
    test(`${how}: the client gets its 200, the task is released once, nothing pending`, async () => {
      const { seen, tasks, server } = await serve(make);
      try {
        const received = await rawClient(server.port, request('/1')).ended;
        assert.match(received, /^HTTP\/1\.1 200/);
        await tasks.drain();
        assert.equal(tasks.pending, 0);
        assert.deepEqual(seen.reported, []);
        if (!how.startsWith('release')) assert.deepEqual(seen.released, ['r']);
      } finally {
        await server.close();
      }
    });
  }

  const failing: [string, (seen: Seen) => TaskStaging][] = [
    ['a thenable that rejects, then resolves', staging(() => ({ then: (resolve: (v: unknown) => void, reject: (e: unknown) => void) => (reject(new Error('down')), resolve('r')) }))],
    ['a revoked Proxy as its receipt', staging(() => {
      const { proxy, revoke } = Proxy.revocable({}, {});
      revoke();
      return proxy;
    })],
    ['a promise of a revoked Proxy', staging(async () => {
      const { proxy, revoke } = Proxy.revocable({}, {});
      revoke();
      return proxy;
    })],
    ['a rejection with a revoked Proxy', staging(() => {
      const { proxy, revoke } = Proxy.revocable({}, {});
      revoke();
      return Promise.reject(proxy);
    })],
  ];
  for (const [how, make] of failing) {
    test(`${how}: the client gets no 2xx, the task is reported once, nothing pending`, async () => {
      const { seen, tasks, server } = await serve(make);
      try {
        const received = await rawClient(server.port, request('/1')).ended;
        assert.equal(received, '');
        await tasks.drain();
        assert.equal(tasks.pending, 0);
        assert.deepEqual(seen.reported, ['HandOffError']);
        assert.deepEqual(seen.released, []);
      } finally {
        await server.close();
      }
    });
  }

  test('stage() resolving after its timeout, then rejecting: aborted, reported once, the late receipt discarded once', async () => {
    const late = deferred();
    const { seen, tasks, server } = await serve(staging(() => ({
      then: (resolve: (v: unknown) => void, reject: (e: unknown) => void) => void late.promise.then(() => (resolve('late'), reject(new Error('after')))),
    })));
    try {
      const received = await rawClient(server.port, request('/1')).ended;
      assert.equal(received, '');
      late.resolve();
      await tasks.drain();
      for (let turn = 0; turn < 20 && seen.discarded.length === 0; turn++) await new Promise((resolve) => setImmediate(resolve));
      assert.equal(tasks.pending, 0);
      assert.deepEqual(seen.reported, ['HandOffError']);
      assert.deepEqual(seen.discarded, ['late']);
      assert.deepEqual(seen.released, []);
    } finally {
      await server.close();
    }
  });

  for (const event of ['error', 'close'] as const) {
    test(`a client reset as the hold is released (stored at the server socket's '${event}'): released once, nothing pending`, async () => {
      const client = deferred<net.Socket>();
      let connection: net.Socket | undefined;
      const { seen, tasks, server } = await serve(staging(async () => {
        const socket = await client.promise;
        const stored = new Promise((resolve) => (connection as net.Socket).once(event, () => resolve('r')));
        socket.resetAndDestroy();
        return stored;
      }), (res) => {
        connection = res.socket as net.Socket;
        res.json({ ok: true });
      });
      try {
        const socket = net.connect(server.port, '127.0.0.1');
        socket.on('error', () => {});
        socket.write(request('/1'));
        client.resolve(socket);
        await once(socket, 'close');
        await tasks.drain();
        assert.equal(tasks.pending, 0);
        assert.deepEqual(seen.released, ['r']);
        assert.deepEqual(seen.reported, []);
      } finally {
        await server.close();
      }
    });
  }

  test('pipelined behind a slower response without tasks, whose staging fails (abort): the first still reaches its client in full', async () => {
    const first = deferred<express.Response>();
    const { seen, tasks, server } = await serve(staging(async () => {
      (await first.promise).json({ first: 'x'.repeat(4_000_000) });
      throw new Error('down');
    }), (res) => (res.req.params.id === 'plain' ? first.resolve(res) : void res.json({ second: true })));
    try {
      const received = await rawClient(server.port, request('/plain', false) + request('/2')).ended;
      const body = `{"first":"${'x'.repeat(4_000_000)}"}`;
      assert.ok(received.startsWith('HTTP/1.1 200') && received.endsWith(body), `got ${received.length} bytes, ending ${JSON.stringify(received.slice(-20))}`);
      await tasks.drain();
      assert.equal(tasks.pending, 0);
      assert.deepEqual(seen.reported, ['HandOffError']);
    } finally {
      await server.close();
    }
  });

  test('pipelined: the first stored late, the second failing first (abort): the first reaches its client in full, each task once', async () => {
    const storeFirst = deferred<unknown>();
    const { seen, tasks, server } = await serve(staging((s) => {
      if (s.staged === 1) return storeFirst.promise;
      setImmediate(() => storeFirst.resolve('first'));
      return Promise.reject(new Error('down'));
    }), (res) => void res.json({ url: res.req.url }));
    try {
      const received = await rawClient(server.port, request('/1', false) + request('/2') ).ended;
      assert.match(received, /^HTTP\/1\.1 200[^]*\{"url":"\/1"\}$/);
      await tasks.drain();
      assert.equal(tasks.pending, 0);
      assert.deepEqual(seen.released, ['first']);
      assert.deepEqual(seen.reported, ['HandOffError']);
    } finally {
      await server.close();
    }
  });

  test('pipelined three: the second failing (abort), the third stored: the first in full, nothing of the others, each task once', async () => {
    const first = deferred<express.Response>();
    const { seen, tasks, server } = await serve(staging(async (s) => {
      if (s.staged === 1) return Promise.reject(new Error('down'));
      (await first.promise).json({ first: true });
      return 'third';
    }), (res) => (res.req.params.id === 'plain' ? first.resolve(res) : void res.json({ url: res.req.url })));
    try {
      const received = await rawClient(server.port, request('/plain', false) + request('/2', false) + request('/3')).ended;
      assert.match(received, /^HTTP\/1\.1 200[^]*\{"first":true\}$/);
      await tasks.drain();
      assert.equal(tasks.pending, 0);
      assert.deepEqual(seen.released, ['third']);
      assert.deepEqual(seen.reported, ['HandOffError']);
    } finally {
      await server.close();
    }
  });

  test('pipelined: the first staging fails (abort), the second succeeds: no 2xx for the first, each task once, nothing pending', async () => {
    const { seen, tasks, server } = await serve(staging((s) => (s.staged === 1 ? Promise.reject(new Error('down')) : Promise.resolve('second'))));
    try {
      const received = await rawClient(server.port, request('/1', false) + request('/2')).ended;
      assert.doesNotMatch(received, /^HTTP\/1\.1 2/);
      await tasks.drain();
      assert.equal(tasks.pending, 0);
      assert.equal(seen.reported.length + seen.released.length + seen.discarded.length, 2, JSON.stringify(seen));
      assert.deepEqual(seen.reported, ['HandOffError']);
    } finally {
      await server.close();
    }
  });

  test("a handler calling res.end() in a 'close' listener of its held response, whose staging fails (abort): no byte sent, reported once", async () => {
    const endedInClose = deferred();
    const { seen, tasks, server } = await serve(staging(() => Promise.reject(new Error('down'))), (res) => {
      res.on('close', () => (res.end('after close'), endedInClose.resolve()));
      res.write('a');
    });
    try {
      const received = await rawClient(server.port, request('/1')).ended;
      await endedInClose.promise;
      assert.equal(received, '');
      await tasks.drain();
      assert.equal(tasks.pending, 0);
      assert.deepEqual(seen.reported, ['HandOffError']);
    } finally {
      await server.close();
    }
  });

  test("pipelined, a handler calling res.end() in a 'close' listener of its held response queued behind another, whose staging fails (abort)", async () => {
    const endedInClose = deferred();
    const { seen, tasks, server } = await serve(staging(() => Promise.reject(new Error('down'))), (res) => {
      if (res.req.params.id === 'plain') return void setTimeout(() => res.json({ first: true }), 20);
      res.on('close', () => (res.end('after close'), endedInClose.resolve()));
      res.write('a');
    });
    try {
      const received = await rawClient(server.port, request('/plain', false) + request('/2')).ended;
      await endedInClose.promise;
      assert.match(received, /^HTTP\/1\.1 200[^]*\{"first":true\}$/);
      await tasks.drain();
      assert.equal(tasks.pending, 0);
      assert.deepEqual(seen.reported, ['HandOffError']);
    } finally {
      await server.close();
    }
  });

  test("a handler calling res.end() in a 'close' listener of its held response, the client reset: nothing raised, released once", async () => {
    const store = deferred<unknown>();
    const stageCalled = deferred();
    const endedInClose = deferred();
    const { seen, tasks, server } = await serve(staging(() => (stageCalled.resolve(), store.promise)), (res) => {
      res.on('close', () => (res.end('after close'), endedInClose.resolve()));
      res.write('a');
    });
    try {
      const socket = net.connect(server.port, '127.0.0.1');
      socket.on('error', () => {});
      socket.write(request('/1'));
      await stageCalled.promise;
      socket.resetAndDestroy();
      await endedInClose.promise;
      store.resolve('r');
      await tasks.drain();
      assert.equal(tasks.pending, 0);
      assert.deepEqual(seen.released, ['r']);
    } finally {
      await server.close();
    }
  });
});

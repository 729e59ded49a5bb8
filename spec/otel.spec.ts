// express-background-tasks/otel against the real OpenTelemetry SDK: spans exported in memory, the
// request's server span and the task's outgoing call made by @opentelemetry/instrumentation-http.
import assert from 'node:assert/strict';
import diagnostics from 'node:diagnostics_channel';
import { afterEach, describe, it } from 'node:test';
import { context, ROOT_CONTEXT, SpanKind, SpanStatusCode } from '@opentelemetry/api';
import { HttpInstrumentation } from '@opentelemetry/instrumentation-http';
import { InMemorySpanExporter, NodeTracerProvider, type ReadableSpan, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-node';
import type { Express } from 'express';

// instrumentation-http patches `http` as it is loaded, so it is set up before anything loads
// express or http: those come in through import() below. node:test runs each spec file in a
// process of its own, so no other spec has loaded them before.
const exporter = new InMemorySpanExporter();
const provider = new NodeTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
provider.register();
new HttpInstrumentation().setTracerProvider(provider);
const { default: http } = await import('node:http');
const { expressVersions, listen, watchProcessFaults } = await import('./support/http.js');
const { hostileOutcomes } = await import('./support/hostile.js');
const { backgroundTasks } = await import('../lib/index.js');
const { taskSpans } = await import('../lib/otel.js');

afterEach(() => exporter.reset());

for (const [label, createApp] of expressVersions) {
  describe(`${label}: task spans from express-background-tasks/otel`, () => {
    it("gives each task a span under the request's server span, and nests the task's outgoing HTTP call under it", async () => {
      const warehouse = await listen(createWarehouse(createApp()));
      const tasks = backgroundTasks({ around: taskSpans() });
      const app = createApp();
      app.use((req, _res, next) => {
        (req as typeof req & { id: string }).id = 'req-7';
        next();
      });
      app.use(tasks);
      app.post('/orders/:id', (req, res) => {
        res.locals.tasks
          .add(async function reserveStock(orderId: string) {
            await httpGet(`${warehouse.url}/stock/${orderId}`);
          }, req.params.id)
          .add(function audit() {});
        res.status(201).send('created');
      });
      const shop = await listen(app);
      try {
        assert.equal((await fetch(`${shop.url}/orders/7`, { method: 'POST' })).status, 201);
        await tasks.drain();
      } finally {
        await shop.close();
        await warehouse.close();
      }

      const spans = await finishedSpans();
      const request = only(spans, (span) => span.kind === SpanKind.SERVER && span.attributes['url.path'] === '/orders/7');
      const reserveStock = only(spans, (span) => span.name === 'reserveStock');
      const audit = only(spans, (span) => span.name === 'audit');
      const call = only(spans, (span) => span.kind === SpanKind.CLIENT);
      const warehouseRequest = only(spans, (span) => span.kind === SpanKind.SERVER && span.attributes['url.path'] === '/stock/7');
      assert.deepEqual(tree(spans), [
        'SERVER POST /orders/7',
        '  INTERNAL reserveStock',
        '    CLIENT GET http://127.0.0.1/stock/7',
        '      SERVER GET /stock/7',
        '  INTERNAL audit',
      ]);
      assert.equal(new Set(spans.map((span) => span.spanContext().traceId)).size, 1, 'one trace');
      assert.equal(reserveStock.parentSpanContext?.spanId, request.spanContext().spanId);
      assert.equal(call.parentSpanContext?.spanId, reserveStock.spanContext().spanId);
      assert.equal(warehouseRequest.parentSpanContext?.spanId, call.spanContext().spanId);
      // instrumentation-http ends the server span at the response's `close`, just after the flush
      // that starts the tasks: the task span outlives its parent.
      assert.ok(nanoseconds(request.endTime) < nanoseconds(reserveStock.endTime), 'the request span ended first');

      for (const [span, name] of [[reserveStock, 'reserveStock'], [audit, 'audit']] as const) {
        assert.equal(span.kind, SpanKind.INTERNAL);
        assert.deepEqual(span.status, { code: SpanStatusCode.UNSET });
        assert.deepEqual(span.events, []);
        const { 'background_task.wait_ms': waitMs, 'background_task.duration_ms': durationMs, ...rest } = span.attributes;
        assert.deepEqual(rest, { 'background_task.name': name, 'background_task.attempt': 1, 'background_task.request_id': 'req-7', 'background_task.outcome': 'ok' });
        assert.ok(typeof waitMs === 'number' && waitMs >= 0, `wait_ms ${String(waitMs)}`);
        assert.ok(typeof durationMs === 'number' && durationMs >= 0, `duration_ms ${String(durationMs)}`);
      }
      assert.ok((reserveStock.attributes['background_task.duration_ms'] as number) > 0);
      assert.ok((audit.attributes['background_task.wait_ms'] as number) >= (reserveStock.attributes['background_task.duration_ms'] as number),
        'audit waited for reserveStock');
    });
  });
}

describe('task spans of failing tasks', () => {
  it('records the exception, sets the status to error and the outcome, for a rejection and a throw, and still reports to onError', async () => {
    const reported: string[] = [];
    const tasks = backgroundTasks({ around: taskSpans(), onError: (error, { name }) => reported.push(`${name}: ${(error as Error).message}`) });
    await serveOnce(tasks, (add) => {
      add(async function syncCrm() {
        throw new Error('crm down');
      });
      add(function chargeCard() {
        throw new TypeError('card declined');
      });
      add(function afterThem() {});
    });
    assert.deepEqual(reported, ['syncCrm: crm down', 'chargeCard: card declined']);

    const spans = await finishedSpans();
    for (const [name, type, message] of [['syncCrm', 'Error', 'crm down'], ['chargeCard', 'TypeError', 'card declined']] as const) {
      const span = only(spans, (candidate) => candidate.name === name);
      assert.deepEqual(span.status, { code: SpanStatusCode.ERROR, message });
      assert.equal(span.attributes['background_task.outcome'], 'error');
      assert.equal(span.attributes['error.type'], type);
      assert.deepEqual(span.events.map((event) => event.name), ['exception']);
      const [exception] = span.events;
      assert.equal(exception?.attributes?.['exception.type'], type);
      assert.equal(exception?.attributes?.['exception.message'], message);
      assert.match(String(exception?.attributes?.['exception.stacktrace']), new RegExp(`^${type}: ${message}\\n\\s+at (Task\\.)?${name} `));
    }
    assert.equal(only(spans, (span) => span.name === 'afterThem').attributes['background_task.outcome'], 'ok');
  });

  it('gives each attempt of a retried task a span of its own, with its background_task.attempt', async () => {
    const tasks = backgroundTasks({ around: taskSpans(), retry: { attempts: 2 }, onError() {} });
    let runs = 0;
    await serveOnce(tasks, (add) => {
      add(async function syncCrm() {
        if (++runs === 1) throw new Error('crm down');
      });
    });
    const spans = (await finishedSpans()).filter((span) => span.name === 'syncCrm');
    assert.deepEqual(spans.map((span) => [span.attributes['background_task.attempt'], span.attributes['background_task.outcome']]), [[1, 'error'], [2, 'ok']]);
  });

  it('ends the span of a task that hangs at its timeout, with outcome timeout and a TimeoutError', async () => {
    const tasks = backgroundTasks({ around: taskSpans(), timeout: 50, onError() {} });
    await serveOnce(tasks, (add) => {
      add(function resizeImage() {
        return new Promise(() => {}); // never settles
      });
      add(function afterIt() {});
    });
    const spans = await finishedSpans();
    const span = only(spans, (candidate) => candidate.name === 'resizeImage');
    assert.equal(span.attributes['background_task.outcome'], 'timeout');
    assert.equal(span.attributes['error.type'], 'TimeoutError');
    assert.deepEqual(span.status, { code: SpanStatusCode.ERROR, message: 'Task resizeImage did not settle within 50 ms' });
    assert.equal(span.events[0]?.attributes?.['exception.type'], 'TimeoutError');
    const durationMs = span.attributes['background_task.duration_ms'] as number;
    assert.ok(durationMs >= 45 && durationMs < 1000, `duration_ms ${durationMs}`);
    assert.equal(only(spans, (candidate) => candidate.name === 'afterIt').attributes['background_task.outcome'], 'ok');
  });

  it('ends the span of a task still running at the close() deadline, with outcome abandoned and a ShutdownError', async () => {
    const tasks = backgroundTasks({ around: taskSpans(), onError() {} });
    const { started, finished } = serveInBackground(tasks, (add) => {
      add(function exportReport() {
        return new Promise(() => {});
      });
    });
    await started;
    assert.ok(!(await finishedSpans()).some((span) => span.name === 'exportReport'), 'ended before the deadline');
    const summary = await tasks.close({ timeout: 50 });
    await finished;
    assert.equal(summary.abandoned, 1);
    const span = only(await finishedSpans(), (candidate) => candidate.name === 'exportReport');
    assert.equal(span.attributes['background_task.outcome'], 'abandoned');
    assert.equal(span.attributes['error.type'], 'ShutdownError');
    assert.equal(span.status.code, SpanStatusCode.ERROR);
  });

  it('ends the span of every hostile outcome (revoked proxies, throwing getters, odd thenables), and nothing escapes', async () => {
    const outcomes = hostileOutcomes();
    const watch = watchProcessFaults();
    try {
      const tasks = backgroundTasks({ around: taskSpans(), onError() {} });
      await serveOnce(tasks, (add) => {
        for (const { name, task } of outcomes) add(Object.defineProperty(() => task(), 'name', { value: name }));
      });
      await new Promise((resolve) => setTimeout(resolve, 20)); // late callbacks of the odd thenables
    } finally {
      watch.stop();
    }
    assert.deepEqual(watch.faults, []);
    const spans = await finishedSpans();
    assert.deepEqual(
      outcomes.map(({ name }) => `${name}: ${String(only(spans, (span) => span.name === name).attributes['background_task.outcome'])}`),
      outcomes.map(({ name, fails }) => `${name}: ${fails ? 'error' : 'ok'}`),
    );
    for (const span of spans.filter((candidate) => candidate.attributes['background_task.outcome'] === 'error')) {
      assert.equal(span.status.code, SpanStatusCode.ERROR, span.name);
      assert.equal(span.events.length, 1, span.name);
    }
  });
});

describe('task spans in a new trace (newTrace)', () => {
  it("starts the chosen tasks in a trace of their own linked to the request's span, their calls nested under them", async () => {
    const warehouse = await listen(createWarehouse(createExpress()));
    const chosen: string[] = [];
    const tasks = backgroundTasks({
      around: taskSpans({
        newTrace: (info) => {
          chosen.push(`${info.name} ${info.method} ${info.url}`);
          return info.name === 'rebuildIndex';
        },
      }),
    });
    try {
      await serveOnce(tasks, (add) => {
        add(async function rebuildIndex() {
          await httpGet(`${warehouse.url}/stock/all`);
        });
        add(function audit() {});
      });
    } finally {
      await warehouse.close();
    }
    assert.deepEqual(chosen, ['rebuildIndex GET /', 'audit GET /']);

    const spans = await finishedSpans();
    const request = only(spans, (span) => span.kind === SpanKind.SERVER && span.attributes['url.path'] === '/');
    const rebuildIndex = only(spans, (span) => span.name === 'rebuildIndex');
    const audit = only(spans, (span) => span.name === 'audit');
    const call = only(spans, (span) => span.kind === SpanKind.CLIENT);
    assert.equal(rebuildIndex.parentSpanContext, undefined, 'a root span');
    assert.notEqual(rebuildIndex.spanContext().traceId, request.spanContext().traceId);
    assert.deepEqual(rebuildIndex.links.map((link) => link.context), [request.spanContext()]);
    assert.equal(call.parentSpanContext?.spanId, rebuildIndex.spanContext().spanId);
    assert.equal(call.spanContext().traceId, rebuildIndex.spanContext().traceId);
    assert.equal(audit.parentSpanContext?.spanId, request.spanContext().spanId, 'the other task stays a child');
    assert.deepEqual(audit.links, []);
    assert.deepEqual(tree(spans), [
      'SERVER GET /',
      '  INTERNAL audit',
      'INTERNAL rebuildIndex',
      '  CLIENT GET http://127.0.0.1/stock/all',
      '    SERVER GET /stock/all',
    ]);
  });

  it('newTrace: true starts every task span in a new trace; a task added where no span is active has no link', async () => {
    const tasks = backgroundTasks({ around: taskSpans({ newTrace: true }) });
    await serveOnce(tasks, (add) => {
      add(function audit() {});
      context.with(ROOT_CONTEXT, () => add(function detached() {}));
    });
    const spans = await finishedSpans();
    const request = only(spans, (span) => span.kind === SpanKind.SERVER);
    const audit = only(spans, (span) => span.name === 'audit');
    const detached = only(spans, (span) => span.name === 'detached');
    assert.deepEqual(audit.links.map((link) => link.context), [request.spanContext()]);
    assert.deepEqual([audit.parentSpanContext, detached.parentSpanContext, detached.links], [undefined, undefined, []]);
    assert.equal(new Set([request, audit, detached].map((span) => span.spanContext().traceId)).size, 3);
  });
});

describe('taskSpans() options', () => {
  it('refuses a tracer that is not one, a newTrace that is neither a boolean nor a function, and a misspelled option, naming it', () => {
    assert.throws(() => taskSpans({ tracer: 'tracer' as never }), {
      name: 'TypeError',
      message: 'Expected `tracer` to be an OpenTelemetry Tracer, such as trace.getTracer(name), got `tracer` (string)',
    });
    assert.throws(() => taskSpans({ newTrace: 'long' as never }), {
      name: 'TypeError',
      message: 'Expected `newTrace` to be a boolean or a function (info) => boolean, got `long` (string)',
    });
    assert.throws(() => taskSpans(null as never), { name: 'TypeError', message: 'Expected `options` to be an object such as { newTrace: true }, got `null` (object)' });
    assert.throws(() => taskSpans({ newTrce: true } as never), {
      name: 'TypeError',
      message: 'Expected `newTrce` to be an option of taskSpans() (did you mean `newTrace`?), got `true` (boolean)',
    });
  });

  it('subscribes to the tracing channel once, however many times it is called', async () => {
    taskSpans(); // the first call may subscribe
    const channels = ['start', 'end', 'asyncStart', 'asyncEnd', 'error'].map((event) => diagnostics.channel(`tracing:express-background-tasks:task:${event}`));
    let subscribed = 0;
    const restore = channels.map((channel) => {
      const { subscribe, unsubscribe } = channel;
      channel.subscribe = (listener) => {
        subscribed++;
        subscribe.call(channel, listener);
      };
      channel.unsubscribe = (listener) => {
        const removed = unsubscribe.call(channel, listener) as unknown;
        if (removed === true) subscribed--;
        return removed as ReturnType<typeof unsubscribe>;
      };
      return () => Object.assign(channel, { subscribe, unsubscribe });
    });
    try {
      for (let call = 0; call < 1_000; call++) taskSpans();
      const tasks = backgroundTasks({ around: taskSpans() });
      await serveOnce(tasks, (add) => add(function audit() {}));
    } finally {
      for (const undo of restore) undo();
    }
    assert.equal(subscribed, 0, 'subscriptions added by 1,001 more calls');
    assert.equal(only(await finishedSpans(), (span) => span.name === 'audit').attributes['background_task.outcome'], 'ok');
  });

  it('ends the span when an around of the app wraps it and hands it a copy of info', async () => {
    const spans = taskSpans();
    const tasks = backgroundTasks({ around: (info, run) => spans({ ...info, name: `app.${info.name}` }, run), timeout: 50, onError() {} });
    await serveOnce(tasks, (add) => {
      add(function audit() {});
      add(async function notify() {});
      add(function resizeImage() {
        return new Promise(() => {}); // never settles: its span ends at the timeout
      });
    });
    const ended = await finishedSpans();
    assert.equal(only(ended, (span) => span.name === 'app.audit').attributes['background_task.outcome'], 'ok');
    assert.equal(only(ended, (span) => span.name === 'app.notify').attributes['background_task.outcome'], 'ok');
    assert.equal(only(ended, (span) => span.name === 'app.resizeImage').attributes['background_task.outcome'], 'timeout');
  });

  it('starts the spans with the tracer given', async () => {
    const tasks = backgroundTasks({ around: taskSpans({ tracer: provider.getTracer('my-app', '1.2.3') }) });
    await serveOnce(tasks, (add) => add(function audit() {}));
    const audit = only(await finishedSpans(), (span) => span.name === 'audit');
    assert.deepEqual([audit.instrumentationScope.name, audit.instrumentationScope.version], ['my-app', '1.2.3']);
  });
});

type Add = (task: () => unknown) => void;

/** Express 5, for the specs that do not run against both majors. */
function createExpress(): Express {
  const [[, create]] = expressVersions as [readonly [string, () => Express]];
  return create();
}

/** The second local server, which a task calls. */
function createWarehouse(app: Express): Express {
  app.get('/stock/:sku', (_req, res) => {
    res.send('reserved');
  });
  return app;
}

/** Serves one GET / whose handler adds tasks with `queue`, and waits for the tasks to settle. */
async function serveOnce(tasks: ReturnType<typeof backgroundTasks>, queue: (add: Add) => void): Promise<void> {
  const { finished } = serveInBackground(tasks, queue);
  await finished;
  await tasks.drain();
}

/**
 * Serves one GET / whose handler adds tasks with `queue`.
 * @return `started`: the response was received; `finished`: the server is closed again
 */
function serveInBackground(tasks: ReturnType<typeof backgroundTasks>, queue: (add: Add) => void): { started: Promise<void>; finished: Promise<void> } {
  const app = createExpress();
  app.use(tasks);
  app.get('/', (_req, res) => {
    queue((task) => res.locals.tasks.add(task));
    res.send('ok');
  });
  let received!: () => void;
  const started = new Promise<void>((resolve) => (received = resolve));
  const finished = (async () => {
    const server = await listen(app);
    try {
      assert.equal((await fetch(server.url)).status, 200);
      received();
      await tasks.drain();
    } finally {
      await server.close();
    }
  })();
  return { started, finished };
}

/** GETs `url` with node:http, as instrumentation-http sees it; resolves with the body. */
function httpGet(url: string): Promise<string> {
  return new Promise((resolve, reject) => {
    http.get(url, (response) => {
      let body = '';
      response.setEncoding('utf8');
      response.on('data', (chunk: string) => (body += chunk));
      response.on('end', () => resolve(body));
      response.on('error', reject);
    }).on('error', reject);
  });
}

/** @return every span exported so far */
async function finishedSpans(): Promise<ReadableSpan[]> {
  await provider.forceFlush();
  return exporter.getFinishedSpans();
}

/** @return the one span that matches; fails when there is none or more than one */
function only(spans: readonly ReadableSpan[], matches: (span: ReadableSpan) => boolean): ReadableSpan {
  const found = spans.filter(matches);
  assert.equal(found.length, 1, `expected one matching span, got ${found.length} of:\n${tree(spans).join('\n')}`);
  return found[0] as ReadableSpan;
}

/** @return the spans as an indented tree, each as kind and name (with the URL path for HTTP), children in start order */
function tree(spans: readonly ReadableSpan[]): string[] {
  const byStart = [...spans].sort((a, b) => Number(nanoseconds(a.startTime) - nanoseconds(b.startTime)));
  const ids = new Set(spans.map((span) => span.spanContext().spanId));
  const lines: string[] = [];
  const visit = (parentId: string | undefined, depth: number): void => {
    for (const span of byStart) {
      const spanParent = span.parentSpanContext?.spanId;
      if ((parentId === undefined ? spanParent !== undefined && ids.has(spanParent) : spanParent !== parentId)) continue;
      lines.push(`${'  '.repeat(depth)}${SpanKind[span.kind]} ${spanLabel(span)}`);
      visit(span.spanContext().spanId, depth + 1);
    }
  };
  visit(undefined, 0);
  return lines;
}

/** @return a span's name, with what it asked for when it is an HTTP span */
function spanLabel(span: ReadableSpan): string {
  if (span.kind === SpanKind.SERVER) return `${span.name} ${String(span.attributes['url.path'])}`;
  if (span.kind === SpanKind.CLIENT) return `${span.name} ${String(span.attributes['url.full']).replace(/:\d+\//, '/')}`;
  return span.name;
}

/** @return an OpenTelemetry high-resolution time in nanoseconds */
function nanoseconds([seconds, nanos]: readonly [number, number]): bigint {
  return BigInt(seconds) * 1_000_000_000n + BigInt(nanos);
}

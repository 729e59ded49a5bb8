import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import express from 'express';
import { Registry } from 'prom-client';
import { recordTaskMetrics } from '../examples/metrics.js';
import { backgroundTasks } from '../lib/index.js';
import { listen } from './support/http.js';

describe('metrics through diagnostics_channel (examples/metrics.ts, as documented)', () => {
  it('records each task in a prom-client histogram by name and outcome', async () => {
    const registry = new Registry();
    const stopRecording = recordTaskMetrics(registry);
    const tasks = backgroundTasks({ timeout: 30, onError() {} });
    const app = express();
    app.use(tasks);
    app.get('/', (_req, res) => {
      res.locals.tasks
        .add(function sendEmail() {})
        .add(function resizeImage() {
          return new Promise(() => {}); // hangs: reported as a timeout
        })
        .add(function chargeCard() {
          throw new Error('declined');
        })
        .add(async function syncCrm() {
          throw new Error('crm down');
        });
      res.send('ok');
    });
    const server = await listen(app);
    try {
      await (await fetch(server.url)).text();
      await tasks.drain();
    } finally {
      stopRecording();
      await server.close();
    }
    const metrics = await registry.getMetricsAsJSON();
    const durations = metrics
      .find((metric) => metric.name === 'background_task_duration_seconds')
      ?.values.filter((value) => (value as { metricName?: string }).metricName === 'background_task_duration_seconds_count')
      .map((value) => `${value.labels.task} ${value.labels.outcome} ${value.value}`)
      .sort();
    assert.deepEqual(durations, ['chargeCard error 1', 'resizeImage timeout 1', 'sendEmail ok 1', 'syncCrm error 1']);
    const failures = metrics
      .find((metric) => metric.name === 'background_task_failures_total')
      ?.values.map((value) => `${value.labels.task} ${value.labels.outcome} ${value.value}`)
      .sort();
    assert.deepEqual(failures, ['chargeCard error 1', 'resizeImage timeout 1', 'syncCrm error 1']);
  });
});

// Type test for CommonJS code: `require('express-background-tasks')` is the factory itself, with
// the named exports as its properties and the types in its namespace. Here it imports
// ../../lib/index.cjs; spec/packaging.spec.ts compiles it in CommonJS consumer projects, by name.
import express = require('express');
import backgroundTasks = require('../../lib/index.cjs');
import { defineTask, TimeoutError, type TaskQueue } from '../../lib/index.cjs';

const options: backgroundTasks.BackgroundTasksOptions = {
  timeout: 5_000,
  onError: (error, info: backgroundTasks.TaskInfo) => console.error(error instanceof backgroundTasks.TimeoutError, info.name),
};
export const tasks: backgroundTasks.BackgroundTasksMiddleware = backgroundTasks(options);
export const sameFactories: (typeof backgroundTasks)[] = [backgroundTasks.default, backgroundTasks.backgroundTasks];
export const record: backgroundTasks.DefinedTask<[string], void> = backgroundTasks.defineTask('record', (_id: string) => {});
export const audit = defineTask('audit', (_event: { id: string }) => {});
export const late: Error = new TimeoutError('late');
export const errors: Error[] = [new backgroundTasks.QueueFullError('full'), new backgroundTasks.HandOffError('down', { cause: late })];

const app = express();
app.use(tasks);
app.post('/items/:id', (req, res) => {
  const queue: TaskQueue = res.locals.tasks;
  queue.add(record, String(req.params.id)).add(audit, { id: String(req.params.id) });
  res.status(201).end();
});

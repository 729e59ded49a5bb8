// Type test: each line after a `@ts-expect-error` must fail to compile. tsc reports a directive
// that no longer suppresses an error, so none of these can silently start compiling.
// spec/packaging.spec.ts also compiles this file with the directives removed, and expects an
// error on exactly these lines: the harness is proven able to fail.
import express from 'express';
import { Queue } from 'bullmq';
import { backgroundTasks, defineTask, withSignal } from '../../lib/index.js';
import { bullmqTransport, createWorker } from '../../lib/bullmq.js';
import { taskSpans } from '../../lib/otel.js';
import { piscinaTransport } from '../../lib/piscina.js';

class Mailer {
  from = 'noreply@example.com';
  send(this: Mailer, to: string): void {
    console.log(this.from, to);
  }
}

function sendConfirmationEmail(id: number): void {
  console.log(id);
}

export const tasks = backgroundTasks();
export const app = express();
app.use(tasks);

app.post('/items/:id', (_req, res) => {
  const queue = res.locals.tasks;
  // @ts-expect-error -- a string where the task takes a number
  queue.add((id: number) => console.log(id), 'x');
  // @ts-expect-error -- a string where the named task takes a number
  queue.add(sendConfirmationEmail, 'x');
  // @ts-expect-error -- the task's argument is missing
  queue.add(sendConfirmationEmail);
  // @ts-expect-error -- one argument more than the task takes
  queue.add(sendConfirmationEmail, 1, 2);
  // @ts-expect-error -- an argument for a task that takes none
  queue.add(() => console.log('done'), 1);
  // @ts-expect-error -- not a function
  queue.add(123);
  // @ts-expect-error -- a method that needs its `this`: tasks are called with `this` undefined
  queue.add(new Mailer().send, 'user@example.com');
  // @ts-expect-error -- `size` is read-only
  queue.size = 0;
  res.end();
});

// @ts-expect-error -- `timeout` is a number of milliseconds
backgroundTasks({ timeout: 'soon' });
// @ts-expect-error -- `runOn` is 'always' or 'success'
backgroundTasks({ runOn: 'never' });
// @ts-expect-error -- `concurrency` is a number
backgroundTasks({ concurrency: '4' });
// @ts-expect-error -- `onError` is a function
backgroundTasks({ onError: 'log' });
// @ts-expect-error -- no such option
backgroundTasks({ retries: 3 });
// @ts-expect-error -- a misspelled option (also refused at run time, naming `concurrency`)
backgroundTasks({ concurency: 4 });
// @ts-expect-error -- `pending` is read-only
tasks.pending = 0;
// @ts-expect-error -- `drain()` takes no callback, it returns a promise
tasks.drain(() => console.log('drained'));

export const sendReceipt = defineTask('send-receipt', (orderId: string, cents: number) => console.log(orderId, cents));
app.post('/orders/:id', (_req, res) => {
  // @ts-expect-error -- the defined task takes a number of cents
  res.locals.tasks.add(sendReceipt, 'o-1', '12.99');
  // @ts-expect-error -- the defined task's second argument is missing
  res.locals.tasks.add(sendReceipt, 'o-1');
  res.end();
});
// Defined tasks' parameters must be JSON types: each of these fails where the task is defined.
interface Reminder {
  at: Date;
}
interface Contact {
  email: string;
  phone: string | undefined;
}
// @ts-expect-error -- a Date is not JSON: pass date.toISOString()
defineTask('remind', (when: Date) => console.log(when));
// @ts-expect-error -- a Date nested in an interface, in an array
defineTask('remind-all', (reminders: Reminder[]) => console.log(reminders));
// @ts-expect-error -- a Map is not JSON
defineTask('lookup', (table: Map<string, number>) => console.log(table));
// @ts-expect-error -- a Set is not JSON
defineTask('dedupe', (ids: Set<string>) => console.log(ids));
// @ts-expect-error -- a class instance with methods
defineTask('mail', (mailer: Mailer) => console.log(mailer));
// @ts-expect-error -- a function
defineTask('callback', (done: () => void) => done());
// @ts-expect-error -- undefined, as the parameter's type
defineTask('nothing', (value: undefined) => console.log(value));
// @ts-expect-error -- undefined in a union: an optional parameter (`note?: string`) is the JSON way
defineTask('maybe', (note: string | undefined) => console.log(note));
// @ts-expect-error -- undefined in a required property's union
defineTask('contact', (contact: Contact) => console.log(contact));
// @ts-expect-error -- a bigint
defineTask('big', (amount: bigint) => console.log(amount));
// @ts-expect-error -- a symbol
defineTask('symbolic', (key: symbol) => console.log(key));
// @ts-expect-error -- a Date in a tuple
defineTask('window', (range: [from: string, to: Date]) => console.log(range));
// @ts-expect-error -- a promise
defineTask('later', (value: Promise<string>) => console.log(value));
// @ts-expect-error -- a task's name is a string
defineTask(42, () => {});
// @ts-expect-error -- `taskName` is read-only
sendReceipt.taskName = 'other';
// @ts-expect-error -- `fallback` is 'none' or 'in-process'
backgroundTasks({ fallback: 'retry' });
// @ts-expect-error -- a transport has a send() or a run() method
backgroundTasks({ transport: {} });
// @ts-expect-error -- a transport that runs tasks declares kind: 'runner'
backgroundTasks({ transport: { run: async () => {} } });
// @ts-expect-error -- a transport lists the tasks it takes by name
backgroundTasks({ transport: [{ run: async () => {}, tasks: [sendReceipt] }] });
// @ts-expect-error -- piscinaTransport() needs the module of definitions
piscinaTransport({ maxThreads: 2 });
// @ts-expect-error -- its `tasks` are definitions, not names
piscinaTransport({ filename: '/srv/tasks.js', tasks: ['send-receipt'] });
// @ts-expect-error -- the transport names the threads' module itself
piscinaTransport({ filename: '/srv/tasks.js', name: 'default' });
// @ts-expect-error -- bullmqTransport() takes a BullMQ queue, not its name
bullmqTransport({ queue: 'tasks' });
export function worker(queue: Queue): void {
  // @ts-expect-error -- a misspelled option (also refused at run time, naming `timeout`)
  bullmqTransport({ queue, timout: 5_000 });
  // @ts-expect-error -- a misspelled BullMQ worker option: only TypeScript catches it, BullMQ's own options pass through
  createWorker({ queueName: queue.name, connection: {}, tasks: [sendReceipt], concurency: 4 });
  // @ts-expect-error -- a worker runs defined tasks, not plain functions
  createWorker({ queueName: queue.name, connection: {}, tasks: [sendConfirmationEmail] });
  // @ts-expect-error -- the queue's name is required
  createWorker({ connection: {}, tasks: [sendReceipt] });
}
const exportOrder = withSignal(async (signal: AbortSignal, orderId: string) => console.log(signal.aborted, orderId));
app.post('/exports/:id', (_req, res) => {
  // @ts-expect-error -- the signal is the queue's to give: add() takes the other arguments
  res.locals.tasks.add(exportOrder, new AbortController().signal, 'o-1');
  // @ts-expect-error -- a number where the task takes an order id
  res.locals.tasks.add(exportOrder, 7);
  res.end();
});
// @ts-expect-error -- withSignal() wraps a function whose first parameter takes the signal
withSignal((orderId: string) => orderId);
// @ts-expect-error -- close() takes its timeout in an options object
tasks.close(5000);
// @ts-expect-error -- `around` is a function of (info, run)
backgroundTasks({ around: 'span' });
// @ts-expect-error -- newTrace is a boolean or a function of the task's info
taskSpans({ newTrace: 'long' });
// @ts-expect-error -- a tracer, not a tracer's name
taskSpans({ tracer: 'shop' });
// @ts-expect-error -- `retry.attempts` is a number
backgroundTasks({ retry: { attempts: '3' } });
// @ts-expect-error -- `retry` needs `attempts`
backgroundTasks({ retry: { backoff: { type: 'fixed', delay: 100 } } });
// @ts-expect-error -- the backoff is 'fixed' or 'exponential'
backgroundTasks({ retry: { attempts: 3, backoff: { type: 'linear', delay: 100 } } });
// @ts-expect-error -- the backoff is an object: { type: 'fixed', delay: 1_000 }
backgroundTasks({ retry: { attempts: 3, backoff: 1_000 } });
// @ts-expect-error -- a misspelled option of defineTask() (also refused at run time, naming `retry`)
defineTask('ping', () => {}, { retrys: { attempts: 3 } });

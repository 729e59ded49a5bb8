import { createRequire } from 'node:module';
import os from 'node:os';
import { renderChart, type ChartSection } from './chart.js';
import { explainMisses, type Evidence } from './explain.js';
import type { LoadSettings } from './http.js';
import { formatInterval, formatValue, table } from './markdown.js';
import { median, ratio, summarize } from './stats.js';
import type { Measurements, Target } from './targets.js';
import { threadVariants } from './threads.js';
import { labelOf, variants } from './variants.js';

/** Everything the page shows. */
export interface PageInput {
  readonly date: Date;
  /** How long the benchmark ran, up to writing the page. */
  readonly seconds: number;
  readonly settings: LoadSettings;
  readonly measurements: Measurements;
  readonly targets: readonly Target[];
  readonly evidence: Evidence;
}

/**
 * Renders `docs/benchmarks.md` and the chart it embeds, `docs/benchmarks.svg`.
 * @param input - the run's measurements, targets and profiles
 * @return the page's Markdown and the chart's SVG
 */
export function renderPage(input: PageInput): { markdown: string; svg: string } {
  const { date, seconds, targets } = input;
  const day = date.toISOString().slice(0, 10);
  const missed = targets.filter((target) => !target.met);
  const markdown = [
    '# Benchmarks',
    '',
    '<!-- Written by `npm run bench` (bench/run.ts); edits are overwritten. Change bench/report.ts instead. -->',
    '',
    'What `express-background-tasks` costs next to bare Express and next to the ten lines of `on-finished`',
    `code it replaces. Measured by \`npm run bench\` on ${day}, in ${formatDuration(seconds)}:`,
    '',
    table(['', ''], [
      ['Machine', machine()],
      ['Node.js', `${process.version}, Express ${expressVersion()}`],
      ['Command', '`npm run bench`'],
    ]),
    '',
    '![Bar chart: each target against its goal, and each server variant against bare Express](benchmarks.svg)',
    '',
    '## How to read this page',
    '',
    `Absolute numbers drift on a shared machine: in this run bare Express alone served between ${bareRange(input)} req/s`,
    'from one round to the next. So the page compares **ratios of runs made side by side**, sums each up by its **median**, and gives',
    'the median\'s **confidence interval** (distribution-free: from the k-th smallest to the k-th largest ratio, for',
    'the k that keeps the odds of the true median lying outside under 10 %, or the whole range when there are too',
    'few runs for that). A result is *within noise* when that interval contains the goal: this run cannot tell',
    'which side of the goal the true value lies on, and another run may land on the other side.',
    '',
    '## Targets',
    '',
    table(['Target (issues 4, 10, 11)', 'Goal', 'Median', 'Confidence interval', 'Result'], targets.map((target) => [
      target.label,
      `${target.goal.bound === 'at least' ? '≥' : '≤'} ${formatValue(target.goal.value, target.unit)}`,
      formatValue(target.measured.median, target.unit),
      formatInterval(target.measured, target.unit),
      `${target.met ? 'met' : '**missed**'}${target.decided ? '' : ', within noise'}`,
    ])),
    '',
    missed.length === 0 ? 'Every target was met in this run.' : `Missed in this run: ${missed.map((target) => target.label).join('; ')}. See [Missed targets](#missed-targets).`,
    '',
    ...httpSection(input),
    ...handOffSection(input),
    ...queueSection(input),
    ...memorySection(input),
    ...threadsSection(input),
    ...(missed.length === 0 ? [] : explainMisses(missed, input.measurements, input.evidence, input.settings)),
    '## Reproduce',
    '',
    '`npm run bench` writes this page and its chart. The code is in the repository’s `bench/`: `run.ts` runs the steps;',
    '`servers.ts`, `queue.ts`, `memory.ts`, `threads-server.ts` and `threads-memory.ts` are the child processes; `http.ts`',
    'drives autocannon, `threads.ts` the thread-pool runs. The library is compiled with `tsconfig.build.json` first,',
    'so the numbers are those of the shipped JavaScript, and the pool\'s threads load compiled JavaScript too.',
    '',
  ].join('\n');
  const subtitle = `${day} · Node.js ${process.version} · ${os.cpus().length} cores`;
  return { markdown, svg: renderChart('express-background-tasks: npm run bench', subtitle, chartSections(input)) };
}

/**
 * @return the HTTP throughput section
 */
function httpSection({ settings, measurements: { http } }: PageInput): string[] {
  return [
    '## HTTP throughput',
    '',
    'Each variant runs in its own child process on 127.0.0.1 and answers `GET /` with `res.send(\'ok\')`.',
    `autocannon, in the parent process, keeps ${settings.connections} connections busy against one server at a time for ${settings.seconds} s,`,
    `after ${settings.warmupSeconds} s of warm-up per server, in ${settings.rounds} rounds; each round rotates the order of the variants by one`,
    'and every other round walks it backwards. Ratios are taken within a round, between runs made one after the',
    'other, then summed up over the rounds. Latencies are every response\'s own time (autocannon\'s histogram rounds to',
    'whole milliseconds).',
    '',
    table(['Variant', 'req/s (median)', '÷ bare Express', 'Confidence interval', 'p99 latency at full load (median)'], variants.map(({ id, label }) => {
      const toBare = ratio(http[id].throughput, http.bare.throughput);
      return [
        label,
        Math.round(median(http[id].throughput)).toLocaleString('en-US'),
        formatValue(toBare.median, '×'),
        id === 'bare' ? '' : formatInterval(toBare, '×'),
        `${median(http[id].p99).toFixed(1)} ms`,
      ];
    })),
    '',
    'The hand-rolled variants are what a user would write without the library: a middleware that puts an array on',
    '`res.locals`, registers `onFinished(res, …)` and awaits each function in a loop with `try`/`catch`. The empty',
    'middleware (`(req, res, next) => next()`) shows what Express charges for any one more middleware.',
    '',
    `Whether tasks delay responses is measured apart, at a fixed rate the server keeps up with: ${Math.round(settings.pacedShare * 100)} % of bare`,
    `Express's median throughput, sent evenly (open loop, from \`bench/http.ts\`, over up to ${settings.connections} keep-alive connections) for ${settings.seconds * 2} s`,
    `to bare Express and to the 50 ms-task server in turn, ${settings.pacedRounds} rounds. Median p99: ${median(http.bare.pacedP99).toFixed(2)} ms bare,`,
    `${median(http.sleep.pacedP99).toFixed(2)} ms with the 50 ms task.`,
    '(Under full load a closed loop turns any CPU cost into latency, so the full-load p99 mirrors throughput.)',
    '',
  ];
}

/**
 * @return the section on handing defined tasks to BullMQ: throughput, and latency at a fixed rate
 */
function handOffSection({ settings, measurements: { http } }: PageInput): string[] {
  const added = (value: number, bare: number): string => `${value.toFixed(2)} ms (${value >= bare ? '+' : '−'}${Math.abs(value - bare).toFixed(2)})`;
  const latency = (id: 'bare' | 'afterFlush' | 'staged'): string[] => {
    const [p50, p99] = [median(http[id].pacedP50), median(http[id].pacedP99)];
    if (id === 'bare') return [`${p50.toFixed(2)} ms`, `${p99.toFixed(2)} ms`];
    return [added(p50, median(http.bare.pacedP50)), added(p99, median(http.bare.pacedP99))];
  };
  const rows = (['definedInProcess', 'staged', 'afterFlush'] as const).map((id) => {
    const toInProcess = ratio(http[id].throughput, http.definedInProcess.throughput);
    return [
      labelOf(id),
      Math.round(median(http[id].throughput)).toLocaleString('en-US'),
      formatValue(ratio(http[id].throughput, http.bare.throughput).median, '×'),
      id === 'definedInProcess' ? '1.00×' : `${formatValue(toInProcess.median, '×')} (${formatInterval(toInProcess, '×')})`,
      ...(id === 'definedInProcess' ? ['', ''] : latency(id)),
    ];
  });
  return [
    '## Hand-off to BullMQ',
    '',
    'The same route queues one defined no-op task, run in-process or handed to BullMQ: staged (stored before the',
    'response\'s end goes out, in a delayed job that the responses ending in the same turn share, promoted after the',
    'flush) or after the flush (`stage: false`, a job per response). Redis is a `redis-server` started for the run on',
    '127.0.0.1, without persistence; no worker takes the jobs (a worker splits a shared job into one job per response:',
    'that cost falls on the workers). Redis, the servers and autocannon share the machine\'s cores. Throughput as',
    'above; latency at the fixed rate of the previous section, in brackets what it adds to bare Express\'s.',
    '',
    table(['Variant', 'req/s (median)', '÷ bare Express', '÷ defined task in-process', `p50 at ${Math.round(settings.pacedShare * 100)} % load`, `p99 at ${Math.round(settings.pacedShare * 100)} % load`], [
      [labelOf('bare'), Math.round(median(http.bare.throughput)).toLocaleString('en-US'), '1.00×', '', ...latency('bare')],
      ...rows,
    ]),
    '',
  ];
}

/**
 * @return the queue micro-benchmark section
 */
function queueSection({ measurements: { queue } }: PageInput): string[] {
  const tasks = queue.tasks.toLocaleString('en-US');
  const rows = (['sync', 'async'] as const).map((kind) => {
    const toPlainLoop = ratio(queue[kind].library, queue[kind].plainLoop);
    return [
      `${tasks} no-op ${kind} tasks`,
      formatRate(median(queue[kind].library)),
      formatRate(median(queue[kind].plainLoop)),
      formatValue(toPlainLoop.median, '×'),
      formatInterval(toPlainLoop, '×'),
    ];
  });
  return [
    '## Queue micro-benchmark',
    '',
    `One process. A request handler queues ${tasks} no-op tasks on its response and sends it; the time runs from the`,
    'first task\'s start to `drain()` resolving. The plain loop calls the same function from an array of the same',
    'length, awaiting only thenables, inside `try`/`catch`. Each runs once to warm up, then',
    `${queue.sync.library.length} times, alternating, after a \`gc()\`; ratios pair each queue run with the plain-loop run after it.`,
    '',
    table(['Tasks', 'queue (tasks/s)', 'plain loop (tasks/s)', 'queue ÷ plain loop', 'Confidence interval'], rows),
    '',
  ];
}

/**
 * @return the memory section
 */
function memorySection({ measurements: { memory } }: PageInput): string[] {
  const row = (label: string, values: readonly number[]): string[] => {
    const summary = summarize(values);
    return [label, formatValue(summary.median, 'bytes'), formatInterval(summary, 'bytes')];
  };
  return [
    '## Memory',
    '',
    `A request handler queues ${memory.queued.toLocaleString('en-US')} tasks on a response it has not sent yet, so none has run, and divides`,
    'the growth of `heapUsed` (each side measured after two `gc()` calls, `--expose-gc`) by their number. The',
    `arguments are one shared object, so what is counted is what the queue holds per task. ${memory.noArguments.length} runs each.`,
    '',
    table(['Task', 'Heap per queued task (median)', 'Confidence interval'], [
      row('`tasks.add(fn)`', memory.noArguments),
      row('`tasks.add(fn, a, b)`', memory.twoArguments),
    ]),
    '',
  ];
}

/**
 * @return the thread-pool section: latency and tasks per second of each server, the cost of a
 *   hand-off, the memory per thread, and how the figures scale
 */
function threadsSection({ measurements: { threads } }: PageInput): string[] {
  const { settings, runs, taskMs, handOff, memory } = threads;
  const cores = os.availableParallelism();
  const rows = threadVariants.map(({ id, label }) => {
    const toBare = ratio(runs[id].p99, runs.bare.p99);
    const toInProcess = id === 'bare' ? undefined : ratio(runs[id].capacity, runs.inProcess.capacity);
    return [
      label,
      `${median(runs[id].p99).toFixed(1)} ms`,
      id === 'bare' ? '1' : `${formatValue(toBare.median, '×')} (${formatInterval(toBare, '×')})`,
      id === 'bare' ? '' : median(runs[id].tasksPerSecond).toFixed(1),
      toInProcess === undefined ? '' : `${median(runs[id].capacity).toFixed(1)} (${formatValue(toInProcess.median, '×')} in-process)`,
    ];
  });
  const perThread = memory.map(({ threads: count, bytesPerThread }) => `${(bytesPerThread / 2 ** 20).toFixed(1)} MiB with ${count}`).join(', ');
  return [
    '## Thread pool',
    '',
    `Issue 10: \`piscinaTransport()\` from \`express-background-tasks/piscina\`. Each request queues a task of ${taskMs.toFixed(1)} ms of synchronous`,
    `CPU work (a loop calibrated to ${settings.taskMs} ms, timed in the in-process server), which runs on the event loop, or on a pool of`,
    `1 or 2 threads (\`minThreads\` = \`maxThreads\`). Paced runs: ${settings.rate} requests/s on average with Poisson arrivals (independent clients; the`,
    `same seeded schedule for every server of a round) for ${settings.seconds} s, the response time taken from each request's scheduled start.`,
    `Bursts: ${settings.burst} requests over ${settings.connections} connections as fast as they are answered, tasks/s counted until the last task has run.`,
    `${settings.rounds} rounds, the order walked backwards every other round; ratios within a round.`,
    '',
    table(['Server', 'p99 at the paced rate (median)', '÷ bare Express', 'tasks/s at the paced rate', 'tasks/s of a burst'], rows),
    '',
    `A hand-off to the pool: ${median(handOff.pool).toFixed(0)} µs per no-op task, ${settings.noops.toLocaleString('en-US')} of them queued on one response and run one after another`,
    `(a round trip to the thread and back for each), against ${median(handOff.inProcess).toFixed(1)} µs in this process. Memory: the process's RSS grows by`,
    `${perThread} threads, each thread having loaded the tasks module and run a task (\`threads-memory.ts\`).`,
    '',
    `How it scales: this machine has ${cores} cores, shared by the server's event loop, the pool's threads and the load generator.`,
    'The in-process figure is bound to one core whatever the machine. A pool runs as many tasks at once as it has threads, so its',
    'tasks/s grow with `maxThreads` up to the cores left once the event loop has its own: about (cores − 1) × 1000 / (task ms) tasks/s',
    'on an idle machine. The p99 stays at bare Express\'s as long as the busy threads leave the event loop a core; with as many',
    'busy threads as cores (2 here), or other processes taking the cores, the threads and the event loop take turns.',
    '',
  ];
}

/**
 * @return the chart: the targets that are ratios, then every variant against bare Express and the async queue
 */
function chartSections({ targets, measurements: { http, queue } }: PageInput): ChartSection[] {
  return [
    {
      title: 'Targets (issues 4, 11)',
      bars: targets.filter((target) => target.unit === '×').map(({ label, measured, goal }) => ({ label, ratio: measured, goal })),
    },
    {
      title: 'Each variant ÷ bare Express (req/s), and async tasks',
      bars: [
        ...variants.filter(({ id }) => id !== 'bare').map(({ id, label }) => ({ label, ratio: ratio(http[id].throughput, http.bare.throughput) })),
        { label: 'queue ÷ plain loop, 1M async tasks', ratio: ratio(queue.async.library, queue.async.plainLoop) },
      ],
    },
  ];
}

/**
 * @return e.g. `16.3 M`
 */
function formatRate(perSecond: number): string {
  return `${(perSecond / 1e6).toFixed(1)} M`;
}

/**
 * @return e.g. `2 min 08 s`
 */
function formatDuration(seconds: number): string {
  const whole = Math.round(seconds);
  return `${Math.floor(whole / 60)} min ${String(whole % 60).padStart(2, '0')} s`;
}

/**
 * @return e.g. `5,218 and 8,681`: the slowest and fastest round of bare Express
 */
function bareRange({ measurements: { http } }: PageInput): string {
  const format = (perSecond: number): string => Math.round(perSecond).toLocaleString('en-US');
  return `${format(Math.min(...http.bare.throughput))} and ${format(Math.max(...http.bare.throughput))}`;
}

/**
 * @return CPU model, cores, memory and OS of this machine
 */
function machine(): string {
  const cpus = os.cpus();
  const model = cpus[0]?.model.trim() ?? 'unknown CPU';
  return `${model}, ${cpus.length} cores, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB RAM, ${os.type()} ${os.release()} ${os.arch()}`;
}

/**
 * @return the version of the Express the servers run
 */
function expressVersion(): string {
  return (createRequire(import.meta.url)('express/package.json') as { version: string }).version;
}

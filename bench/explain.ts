import os from 'node:os';
import type { LoadSettings } from './http.js';
import { formatInterval, formatValue, percent, table } from './markdown.js';
import { noteFor } from './notes.js';
import type { ProfileSummary } from './profile.js';
import { median, ratio } from './stats.js';
import { meets, type Measurements, type Target } from './targets.js';
import { labelOf, type VariantId } from './variants.js';

/** CPU profiles taken because a target was missed. */
export interface Evidence {
  /** Server variants profiled under load. */
  readonly servers: Partial<Record<VariantId, ProfileSummary>>;
  /** The queue's run loop over sync tasks. */
  readonly queue?: ProfileSummary;
}

/**
 * Writes the page's section on the targets a run missed: by how much, how sure, and what the
 * profile of the code involved shows.
 * @param missed - the missed targets
 * @param measurements - the run's measurements
 * @param evidence - the profiles taken for the missed targets
 * @param settings - the load the servers were under
 * @return the section's Markdown lines
 */
export function explainMisses(missed: readonly Target[], measurements: Measurements, evidence: Evidence, settings: LoadSettings): string[] {
  const lines = ['## Missed targets', ''];
  for (const target of missed) {
    const { median: middle, values } = target.measured;
    const meeting = values.filter((value) => meets(value, target.goal)).length;
    lines.push(
      `### ${target.label}`,
      '',
      `Median ${formatValue(middle, target.unit)} against a goal of ${target.goal.bound} ${formatValue(target.goal.value, target.unit)}, confidence interval`,
      `${formatInterval(target.measured, target.unit)}; ${meeting} of the ${values.length} ${target.servers === undefined ? 'runs' : 'rounds'} met the goal.`,
      ...(target.decided ? [] : ['The interval contains the goal, so this miss is within the noise of the machine.']),
      '',
    );
    if (target.id === 'idle') {
      const passThrough = ratio(measurements.http.passThrough.throughput, measurements.http.bare.throughput);
      lines.push(`For comparison, an empty middleware measured ${formatValue(passThrough.median, '×')} bare Express in the same run (${formatInterval(passThrough, '×')}).`, '');
    }
    if (target.id === 'p99') lines.push(...latencyNote(measurements, settings));
    if (target.id.startsWith('pool')) lines.push(...poolNote(measurements));
    if (target.id === 'sync' && evidence.queue !== undefined) lines.push(...queueProfileNote(evidence.queue, measurements));
    const profiled = (target.servers ?? []).filter((id) => evidence.servers[id] !== undefined);
    if (profiled.length > 0) lines.push(...serverProfileNote(profiled, evidence, settings));
  }
  return lines;
}

/**
 * @return the fixed-rate latencies, and why the full-load p99 is not the measure of delay
 */
function latencyNote({ http }: Measurements, settings: LoadSettings): string[] {
  const p99 = median(http.sleep.pacedP99);
  const lines = [
    `Median p99 at the fixed rate: ${p99.toFixed(2)} ms with the 50 ms task, ${median(http.bare.pacedP99).toFixed(2)} ms for bare Express.`,
    `At full load (${settings.connections} connections, closed loop) the p99s were ${median(http.sleep.p99).toFixed(1)} ms and ${median(http.bare.p99).toFixed(1)} ms: there, latency ≈`,
    `connections ÷ throughput, and the 50 ms variant served ${formatValue(ratio(http.sleep.throughput, http.bare.throughput).median, '×')} bare Express's requests per second`,
    '(its timer and promise per request cost CPU on the same event loop).',
  ];
  if (p99 < 50) lines.push(`Responses do not wait for their task: 99 % took under ${p99.toFixed(2)} ms, less than the 50 ms the task sleeps.`);
  return [...lines, ''];
}

/**
 * @return what the thread-pool runs measured, and what shares the machine's cores with the pool
 */
function poolNote({ threads: { runs } }: Measurements): string[] {
  const p99 = (id: keyof typeof runs): string => `${median(runs[id].p99).toFixed(1)} ms`;
  const capacity = (id: keyof typeof runs): string => `${median(runs[id].capacity).toFixed(1)}`;
  return [
    `Median p99 at the paced rate: ${p99('bare')} bare, ${p99('pool1')} with 1 thread, ${p99('pool2')} with 2, ${p99('inProcess')} in-process.`,
    `Tasks per second of a burst: ${capacity('pool1')} with 1 thread, ${capacity('pool2')} with 2, ${capacity('inProcess')} in-process.`,
    `The server's event loop, the pool's threads and the load generator share this machine's ${os.availableParallelism()} cores: a thread busy`,
    'with a task takes a core from the other two, and with as many busy threads as cores they take turns (see [Thread pool](#thread-pool)).',
    '',
  ];
}

/**
 * @return the profile of the queue's run loop over sync tasks
 */
function queueProfileNote(profile: ProfileSummary, { queue }: Measurements): string[] {
  const perTask = (perSecond: number): string => `${(1e9 / perSecond).toFixed(0)} ns`;
  return [
    `Per task that is ${perTask(median(queue.sync.library))} in the queue against ${perTask(median(queue.sync.plainLoop))} in the plain loop. A CPU profile`,
    `(V8's sampling profiler, as \`node --cpu-prof\` uses, every 100 µs) of ${queue.sync.library.length} more runs of ${queue.tasks.toLocaleString('en-US')} sync tasks,`,
    `counting only the queue's run loop (queuing the tasks is outside the measured time), ${profile.insideMs.toFixed(0)} ms in all, by self time:`,
    '',
    profileTable(profile, profile.insideMs, 'Share of the run loop'),
    '',
  ];
}

/**
 * @return the profiles of the server variants a missed target compares
 */
function serverProfileNote(profiled: readonly VariantId[], evidence: Evidence, settings: LoadSettings): string[] {
  const lines = [
    `CPU profiles (V8's sampling profiler, as \`node --cpu-prof\` uses, every 100 µs) of each server under the same load for`,
    `${settings.profileSeconds} s, after warm-up. Task code is the library's modules, or the variant's own middleware and on-finished`,
    'listener, with what they call, except calls back into Express: `next()` leads on to the route that every variant',
    'runs alike, so what Express charges for one more middleware is not counted (see the empty middleware above).',
    '',
    table(['Server', 'CPU sampled', 'In task code', 'Share'], profiled.map((id) => {
      const profile = profileOf(evidence, id);
      return [labelOf(id), `${profile.totalMs.toFixed(0)} ms`, `${profile.insideMs.toFixed(0)} ms`, percent(profile.insideMs, profile.totalMs)];
    })),
    '',
  ];
  for (const id of profiled) {
    const profile = profileOf(evidence, id);
    lines.push(`The heaviest task code of *${labelOf(id)}*, by self time:`, '', profileTable(profile, profile.totalMs, 'Share of server CPU'), '');
  }
  return lines;
}

/**
 * @return a table of a profile's heaviest functions, with a note on what each one does when known
 */
function profileTable(profile: ProfileSummary, whole: number, shareHeading: string): string {
  return table(['Function', 'Self time', shareHeading, 'What it is'], profile.top.map(({ name, selfMs }) => [
    `\`${name}\``,
    `${selfMs.toFixed(1)} ms`,
    percent(selfMs, whole),
    noteFor(name),
  ]));
}

/**
 * @return the profile of server `id` in `evidence`
 * @throws {Error} when there is none
 */
function profileOf(evidence: Evidence, id: VariantId): ProfileSummary {
  const profile = evidence.servers[id];
  if (profile === undefined) throw new Error(`no profile of server ${id}`);
  return profile;
}

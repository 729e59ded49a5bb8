import type { VariantRuns } from './http.js';
import type { MemoryResult } from './memory.js';
import type { QueueResult } from './queue.js';
import { ratio, summarize, type Summary } from './stats.js';
import type { ThreadsResult } from './threads.js';
import type { VariantId } from './variants.js';

/** Everything the measuring steps produced. */
export interface Measurements {
  readonly http: Readonly<Record<VariantId, VariantRuns>>;
  readonly queue: QueueResult;
  readonly memory: MemoryResult;
  readonly threads: ThreadsResult;
}

/** A bound a measurement must keep. */
export interface Goal {
  readonly bound: 'at least' | 'at most';
  readonly value: number;
}

/** One target of issues 4, 10 and 11 and how the run did against it. */
export interface Target {
  readonly id: 'idle' | 'one' | 'ten' | 'sync' | 'p99' | 'memory' | 'staged' | 'poolP99' | 'poolP99Two' | 'poolTasks' | 'poolTasksTwo';
  /** What is compared, for tables and the chart. */
  readonly label: string;
  readonly measured: Summary;
  /** `×` for a ratio, `bytes` for the memory target. */
  readonly unit: '×' | 'bytes';
  readonly goal: Goal;
  /** Whether the median keeps the goal. */
  readonly met: boolean;
  /** Whether the whole confidence interval of the median is on the same side of the goal as the median. */
  readonly decided: boolean;
  /** For an HTTP target, the two server variants compared (numerator, denominator). */
  readonly servers?: readonly [VariantId, VariantId];
}

/**
 * Judges the measurements against the targets of issue 4, then those of issues 10 and 11. Ratios are taken
 * round by round (or repetition by repetition) and summed up by their median.
 * @param measurements - the results of the HTTP, queue, memory and thread-pool benchmarks
 * @return the targets, in the issues' order
 */
export function evaluateTargets({ http, queue, memory, threads: { runs } }: Measurements): Target[] {
  const throughput = (numerator: VariantId, denominator: VariantId): Summary => ratio(http[numerator].throughput, http[denominator].throughput);
  return [
    judge({
      id: 'idle', label: 'mounted, no task ÷ bare Express (req/s)', unit: '×', servers: ['idle', 'bare'],
      measured: throughput('idle', 'bare'), goal: { bound: 'at least', value: 0.99 },
    }),
    judge({
      id: 'one', label: '1 task ÷ hand-rolled 1 task (req/s)', unit: '×', servers: ['one', 'handRolledOne'],
      measured: throughput('one', 'handRolledOne'), goal: { bound: 'at least', value: 1 },
    }),
    judge({
      id: 'ten', label: '10 tasks ÷ hand-rolled 10 tasks (req/s)', unit: '×', servers: ['ten', 'handRolledTen'],
      measured: throughput('ten', 'handRolledTen'), goal: { bound: 'at least', value: 1 },
    }),
    judge({
      id: 'sync', label: 'queue ÷ plain loop, 1M sync tasks (tasks/s)', unit: '×',
      measured: ratio(queue.sync.library, queue.sync.plainLoop), goal: { bound: 'at least', value: 0.5 },
    }),
    judge({
      id: 'p99', label: '50 ms task ÷ bare Express (p99 latency at a fixed rate)', unit: '×', servers: ['sleep', 'bare'],
      measured: ratio(http.sleep.pacedP99, http.bare.pacedP99), goal: { bound: 'at most', value: 1.05 },
    }),
    judge({
      id: 'memory', label: 'heap per queued task, no arguments', unit: 'bytes',
      measured: summarize(memory.noArguments), goal: { bound: 'at most', value: 200 },
    }),
    judge({
      id: 'staged', label: 'staged hand-off ÷ the same defined task in-process (req/s)', unit: '×', servers: ['staged', 'definedInProcess'],
      measured: throughput('staged', 'definedInProcess'), goal: { bound: 'at least', value: 0.8 },
    }),
    judge({
      id: 'poolP99', label: '10 ms CPU task on the pool, 1 thread ÷ bare Express (p99 latency at a fixed rate)', unit: '×',
      measured: ratio(runs.pool1.p99, runs.bare.p99), goal: { bound: 'at most', value: 1.2 },
    }),
    judge({
      id: 'poolP99Two', label: '10 ms CPU task on the pool, 2 threads ÷ bare Express (p99 latency at a fixed rate)', unit: '×',
      measured: ratio(runs.pool2.p99, runs.bare.p99), goal: { bound: 'at most', value: 1.2 },
    }),
    judge({
      id: 'poolTasks', label: 'pool, 1 thread ÷ in-process (tasks/s of a burst)', unit: '×',
      measured: ratio(runs.pool1.capacity, runs.inProcess.capacity), goal: { bound: 'at least', value: 1 },
    }),
    judge({
      id: 'poolTasksTwo', label: 'pool, 2 threads ÷ in-process (tasks/s of a burst)', unit: '×',
      measured: ratio(runs.pool2.capacity, runs.inProcess.capacity), goal: { bound: 'at least', value: 1 },
    }),
  ];
}

/**
 * @param value - a measurement
 * @param goal - the bound it should keep
 * @return whether it keeps it
 */
export function meets(value: number, goal: Goal): boolean {
  return goal.bound === 'at least' ? value >= goal.value : value <= goal.value;
}

/**
 * @return `target` with `met` and `decided` filled in from its measurements and goal
 */
function judge(target: Omit<Target, 'met' | 'decided'>): Target {
  const { measured: { median, low, high }, goal } = target;
  const met = meets(median, goal);
  return { ...target, met, decided: meets(low, goal) === met && meets(high, goal) === met };
}

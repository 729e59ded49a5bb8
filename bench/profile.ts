import type { Profiler, Runtime } from 'node:inspector';
import { Session } from 'node:inspector/promises';

/** A V8 CPU profile, the format of a `.cpuprofile` file. */
export type CpuProfile = Profiler.Profile;

/** Where a function of a profile lives. */
export type CallFrame = Runtime.CallFrame;

/** The functions that took the most self time inside the part of a profile asked about. */
export interface ProfileSummary {
  /** CPU time sampled, idle excluded, ms. */
  readonly totalMs: number;
  /** Of that, the time attributed to the code of interest (garbage collection included), ms. */
  readonly insideMs: number;
  /** The heaviest functions by self time inside, heaviest first. */
  readonly top: readonly { readonly name: string; readonly selfMs: number }[];
}

/**
 * Starts V8's CPU profiler in this process (the profiler `node --cpu-prof` uses), sampling every
 * 100 µs. Started by the child itself so that the profile covers only the load, not start-up.
 * @return a function that stops the profiler and returns the profile
 */
export async function startProfiler(): Promise<() => Promise<CpuProfile>> {
  const session = new Session();
  session.connect();
  await session.post('Profiler.enable');
  await session.post('Profiler.setSamplingInterval', { interval: 100 });
  await session.post('Profiler.start');
  return async () => {
    const { profile } = await session.post('Profiler.stop');
    session.disconnect();
    return profile;
  };
}

/**
 * Sums up the samples of a profile that belong to the code of interest. Walking a sample's stack
 * from the innermost frame out, the first frame that `classify` has an answer for decides: `true`
 * counts the sample (code of interest, and what it calls), `false` does not (code that the code
 * of interest calls back into, such as the next middleware). A garbage-collection sample counts
 * where the sample before it counted: the collection was most likely paying for that code's
 * allocations.
 * @param profile - from `startProfiler()`
 * @param classify - `true` for a frame of interest, `false` for one that is not, `undefined` to look further out
 * @param top - how many functions to list
 * @return the totals and the heaviest functions inside
 */
export function summarizeProfile(profile: CpuProfile, classify: (frame: CallFrame) => boolean | undefined, top = 8): ProfileSummary {
  const nodes = new Map(profile.nodes.map((node) => [node.id, node]));
  const parents = new Map<number, number>();
  for (const node of profile.nodes) for (const child of node.children ?? []) parents.set(child, node.id);
  const insideById = new Map<number, boolean>();
  const isInsideNode = (id: number): boolean => {
    let inside = insideById.get(id);
    if (inside === undefined) {
      const parent = parents.get(id);
      inside = classify(frameOf(nodes, id)) ?? (parent !== undefined && isInsideNode(parent));
      insideById.set(id, inside);
    }
    return inside;
  };

  const selfMs = new Map<string, number>();
  let totalMs = 0;
  let insideMs = 0;
  let previousInside = false;
  const samples = profile.samples ?? [];
  const timeDeltas = profile.timeDeltas ?? [];
  samples.forEach((id, index) => {
    const frame = frameOf(nodes, id);
    if (frame.functionName === '(idle)') return;
    // timeDeltas[i] is the time between sample i - 1 and sample i; sample i lasts until the next one.
    const ms = (timeDeltas[index + 1] ?? 0) / 1000;
    const inside = frame.functionName === '(garbage collector)' ? previousInside : isInsideNode(id);
    previousInside = inside;
    totalMs += ms;
    if (!inside) return;
    insideMs += ms;
    const name = describeFrame(frame);
    selfMs.set(name, (selfMs.get(name) ?? 0) + ms);
  });
  return {
    totalMs,
    insideMs,
    top: [...selfMs].sort(([, a], [, b]) => b - a).slice(0, top).map(([name, ms]) => ({ name, selfMs: ms })),
  };
}

/**
 * @return the call frame of node `id`
 * @throws {Error} on a profile that names a node it does not hold
 */
function frameOf(nodes: ReadonlyMap<number, Profiler.ProfileNode>, id: number): CallFrame {
  const node = nodes.get(id);
  if (node === undefined) throw new Error(`profile sample of unknown node ${id}`);
  return node.callFrame;
}

/**
 * @return e.g. `runInAsyncScope (node:async_hooks:200)` or `run (dist/queue.js:59)`; no line for
 *   code on line 1, which is how tsx's one-line transforms of the bench's own files show up
 */
function describeFrame({ functionName, url, lineNumber }: CallFrame): string {
  if (url === '') return functionName;
  const file = url.startsWith('node:') ? url : url.split('/').slice(-2).join('/');
  return `${functionName || '(anonymous)'} (${file}${lineNumber > 0 ? `:${lineNumber + 1}` : ''})`;
}

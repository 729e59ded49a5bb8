/**
 * The HTTP server variants. Each runs in its own child process (`bench/servers.ts`) and answers
 * every request with `res.send('ok')`. The order is also the measuring cycle: each variant that a
 * target compares sits next to the one it is compared with (the last wraps round to `bare`), so
 * that the two are measured close together in time and drift in the machine's load hits both alike.
 */
export const variants = [
  { id: 'bare', label: 'bare Express 5' },
  { id: 'idle', label: 'backgroundTasks() mounted, no task' },
  { id: 'one', label: 'backgroundTasks(), 1 no-op task' },
  { id: 'handRolledOne', label: 'hand-rolled on-finished, 1 no-op task' },
  { id: 'ten', label: 'backgroundTasks(), 10 no-op tasks' },
  { id: 'handRolledTen', label: 'hand-rolled on-finished, 10 no-op tasks' },
  { id: 'passThrough', label: 'an empty middleware (for reference)' },
  { id: 'definedInProcess', label: 'backgroundTasks(), 1 defined no-op task, in-process' },
  { id: 'staged', label: 'bullmqTransport(), 1 defined no-op task staged' },
  { id: 'afterFlush', label: 'bullmqTransport({ stage: false }), 1 defined no-op task' },
  { id: 'sleep', label: 'backgroundTasks(), 1 task sleeping 50 ms' },
] as const;

/** The variants measured at a fixed rate too, for the latency they add to responses. */
export const pacedVariants: readonly VariantId[] = ['bare', 'sleep', 'afterFlush', 'staged'];

/** The name of one server variant. */
export type VariantId = (typeof variants)[number]['id'];

/**
 * @param id - a variant
 * @return its label
 */
export function labelOf(id: VariantId): string {
  return variants.find((variant) => variant.id === id)?.label ?? id;
}

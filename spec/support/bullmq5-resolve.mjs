// A module resolution hook (see spec/bullmq5.spec.ts): a module imported with `?bullmq5` in its
// URL gets the `bullmq5` package (BullMQ 5) for its `import … from 'bullmq'`, as it would in an
// app that installed bullmq 5. Its relative imports lose the query, so they are the modules every
// other import gets. Every other import resolves as usual.
export async function resolve(specifier, context, nextResolve) {
  const bullmq5 = specifier === 'bullmq' && context.parentURL !== undefined && new URL(context.parentURL).searchParams.has('bullmq5');
  return nextResolve(bullmq5 ? 'bullmq5' : specifier, context);
}

/**
 * What the functions that show up in the benchmarks' profiles do, matched on the name
 * `summarizeProfile()` gives them (`function (dir/file:line)`), so that a profile table reads
 * without the sources open. A function not listed here gets an empty note.
 */
const notes: readonly (readonly [pattern: RegExp, note: string])[] = [
  [/^\(garbage collector\)/, 'garbage collection of what the code around it allocated'],
  [/^\(program\)/, 'native code outside JavaScript (V8, libuv, system calls)'],
  [/^runMicrotasks /, 'promise jobs: each `await` and `.then()` resumes here'],
  [/^runInAsyncScope \(node:async_hooks/, '`AsyncResource`: enters the async context `add()` captured, calls the task, leaves it'],
  [/^(emitBeforeScript|emitAfterScript|pushAsyncContext|popAsyncContext|hasAsyncIdStack) /, 'Node internals of entering and leaving an async context'],
  [/^(AsyncResource \(node:async_hooks|getDefaultTriggerAsyncId|newAsyncId)/, 'Node internals of creating an `AsyncResource` (the task captures its context)'],
  [/^get \(src\/common\.js/, 'the `debug` package\'s `enabled` getter (checks whether tracing is on)'],
  [/^run \(dist\/queue\.js/, 'the queue\'s loop over its tasks, with whatever V8 inlined into it (counts, thenable check)'],
  [/^runTask \(dist\/task\.js/, 'calls one task: tracing and debug checks, `try`/`catch`, thenable check'],
  [/^awaitTask \(dist\/task\.js/, 'waits for a task\'s promise (and its timeout, if any)'],
  [/^(finish|\(anonymous\)) \(dist\/task\.js/, 'a task\'s promise settled: report, count, next task'],
  [/^(add \(dist\/queue\.js|queueNoops |queueDefinedNoop )/, 'queuing a task with `tasks.add()`'],
  [/^(Task|<instance_members_initializer>) \(dist\/task\.js/, 'creating the task object'],
  [/^(taskName \(dist\/task\.js|get name )/, 'reading the function\'s `name` for traces and error messages'],
  [/^#?settledAsync /, 'after an async task: counts, slot hand-over, next task'],
  [/^(#?startWaiting|requestSlot|releaseSlot|settle|admit) \(dist\/scheduler\.js/, 'the scheduler: counts and `concurrency` slots'],
  [/^(backgroundTasksMiddleware|ResponseQueue) /, 'the middleware: puts a queue at `res.locals.tasks`'],
  [/^(whenFlushed|#?flushed) /, 'waiting for the response to be flushed'],
  [/^_addListener \(node:events/, 'Node\'s `EventEmitter` adding a listener'],
  [/ \(on-finished\/index\.js/, '`on-finished`: registering and firing the listener'],
  [/ \(ee-first\/index\.js/, '`ee-first` (used by `on-finished`): listening for the response\'s end'],
  [/^(noop|syncNoop|asyncNoop) \(bench\//, 'the task itself'],
  [/^(handRolledTasks|runAfterResponse|pushNoops) \(bench\//, 'the hand-rolled code'],
  [/^queueSleep \(bench\//, 'the variant\'s middleware queuing its task'],
  [/^(setTimeout|Timeout|insert|listOnTimeout|processTimers) /, 'timers (the 50 ms sleep; the staging timeout)'],
  [/^(writev|writeBuffer|writeUtf8String|writeLatin1String)( |$)/, 'a socket write: one system call (to the client, or to Redis)'],
  [/ \(dist\/handoff\.js/, 'the hand-off: staging, holding the bytes of the end, release'],
  [/ \(dist\/bullmq\.js/, 'the BullMQ transport'],
  [/ \(bullmq\//, 'BullMQ: building, adding and promoting jobs'],
  [/ \((ioredis|msgpackr)\//, 'ioredis: encoding and sending Redis commands, reading replies'],
];

/**
 * @param name - a function as `summarizeProfile()` names it
 * @return what it does, or an empty string when it is not known here
 */
export function noteFor(name: string): string {
  return notes.find(([pattern]) => pattern.test(name))?.[1] ?? '';
}

import { fork, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';

/**
 * A benchmark child process and the first message it sent over IPC.
 */
export interface StartedChild<M> {
  readonly child: ChildProcess;
  readonly message: M;
}

/**
 * Forks `bench/<entry>` (TypeScript, loaded through tsx) and resolves with its first IPC message.
 * Every child is killed when the parent exits, whatever the reason, and a child exits by itself
 * when the parent's IPC channel goes away.
 * @param entry - the file name inside `bench/`, e.g. `servers.ts`
 * @param args - command-line arguments for the child
 * @param nodeFlags - extra Node flags, e.g. `--expose-gc`
 * @param timeoutMs - how long to wait for the first message
 * @return the child and its first message
 * @throws {Error} when the child exits or stays silent before sending a message
 */
export async function startChild<M>(entry: string, args: readonly string[], nodeFlags: readonly string[] = [], timeoutMs = 60_000): Promise<StartedChild<M>> {
  const child = fork(fileURLToPath(new URL(entry, import.meta.url)), args, {
    execArgv: ['--import', 'tsx', ...nodeFlags],
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  running.add(child);
  child.once('exit', () => running.delete(child));

  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  try {
    return { child, message: await nextMessage<M>(child, `bench/${entry} ${args.join(' ')} exited before reporting`) };
  } catch (error) {
    child.kill('SIGKILL');
    throw error;
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Runs `bench/<entry>` to completion and returns its one IPC message.
 * @param entry - the file name inside `bench/`
 * @param args - command-line arguments for the child
 * @param nodeFlags - extra Node flags
 * @return the message the child sent
 */
export async function runChild<M>(entry: string, args: readonly string[], nodeFlags: readonly string[] = []): Promise<M> {
  const { child, message } = await startChild<M>(entry, args, nodeFlags);
  await stopChild(child);
  return message;
}

/**
 * Sends `message` to a running child and resolves with the message it answers with.
 * @param child - a child from `startChild`
 * @param message - the command
 * @return the child's answer
 * @throws {Error} when the child exits before answering
 */
export async function request<M>(child: ChildProcess, message: unknown): Promise<M> {
  const answer = nextMessage<M>(child, `a bench child exited instead of answering ${JSON.stringify(message)}`);
  child.send(message as Parameters<ChildProcess['send']>[0]);
  return answer;
}

/**
 * Asks a child to exit, by closing its IPC channel, and kills it if it has not exited within 10 s.
 * @param child - a child from `startChild`
 */
export async function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = once(child, 'exit');
  if (child.connected) child.disconnect();
  const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
  await exited;
  clearTimeout(timer);
}

/**
 * Sends `message` to the parent and keeps the child alive until the parent lets go of it.
 * Children call this once they have their result, or once their server listens.
 * @param message - what the parent's `startChild` resolves with
 */
export function report(message: unknown): void {
  if (process.send === undefined) throw new Error('bench children must be started by bench/run.ts');
  process.send(message);
}

/**
 * @param child - a running child
 * @param exitMessage - the error's message should the child exit first
 * @return the child's next IPC message
 * @throws {Error} when the child exits first
 */
async function nextMessage<M>(child: ChildProcess, exitMessage: string): Promise<M> {
  const abandoned = new AbortController();
  try {
    const [message] = await Promise.race([
      once(child, 'message', { signal: abandoned.signal }) as Promise<[M]>,
      once(child, 'exit', { signal: abandoned.signal }).then(([code, signal]: unknown[]) => {
        throw new Error(`${exitMessage} (${String(signal ?? code)})`);
      }),
    ]);
    return message;
  } finally {
    abandoned.abort();
  }
}

/** Children not yet exited; killed if the parent goes away first. */
const running = new Set<ChildProcess>();

process.once('exit', () => {
  for (const child of running) child.kill('SIGKILL');
});
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => process.exit(130));
}
// A child whose parent is gone has nobody to report to.
process.once('disconnect', () => process.exit(0));

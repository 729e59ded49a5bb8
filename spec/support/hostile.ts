// Values a hostile or buggy task, callback or transport can produce: each breaks some naive
// promise or error handling (an unguarded `instanceof`, `.message`, `Promise.resolve(x).then`).

/** A revoked Proxy: any property read, `instanceof` or `typeof x.then` on it throws. */
export function revokedProxy(): object {
  const { proxy, revoke } = Proxy.revocable({}, {});
  revoke();
  return proxy;
}

/** An Error whose `message` getter throws. */
export function errorWithUnreadableMessage(): Error {
  return Object.defineProperty(new Error('hidden'), 'message', {
    get(): never {
      throw new Error('no message for you');
    },
  });
}

/** A task outcome a hostile or buggy task can produce, and whether it counts as a failure. */
export interface HostileOutcome {
  readonly name: string;
  readonly task: () => unknown;
  readonly fails: boolean;
}

/** Returns and rejections that break naive promise handling, each named for the report. */
export function hostileOutcomes(): HostileOutcome[] {
  return [
    // `await` settles a native promise by its own state, ignoring an own `then`.
    { name: 'promiseWithThrowingThen', fails: false, task: () => Object.assign(Promise.resolve(), { then() { throw new Error('then'); } }) },
    {
      name: 'promiseWithThrowingConstructor', fails: true, task: () => Object.defineProperty(Promise.resolve(), 'constructor', {
        get(): never {
          throw new Error('constructor');
        },
      }),
    },
    {
      name: 'thenGetterThrows', fails: true, task: () => ({
        get then(): never {
          throw new Error('then getter');
        },
      }),
    },
    { name: 'revokedProxy', fails: true, task: revokedProxy },
    { name: 'thenableSettlingTwiceSynchronously', fails: false, task: () => ({ then(resolve: (v: unknown) => void, reject: (e: unknown) => void) { resolve(1); resolve(2); reject(new Error('late')); } }) },
    { name: 'thenableThrowingAfterResolve', fails: false, task: () => ({ then(resolve: (v: unknown) => void) { resolve(1); throw new Error('after'); } }) },
    { name: 'thenableRejectingSynchronously', fails: true, task: () => ({ then(_resolve: unknown, reject: (e: unknown) => void) { reject(new Error('sync reject')); } }) },
    { name: 'rejectsWithRevokedProxy', fails: true, task: () => Promise.reject(revokedProxy()) },
    // `await` settles it by its own state too: it rejects, later.
    { name: 'rejectingPromiseWithoutThen', fails: true, task: () => Object.assign(new Promise((_resolve, reject) => setTimeout(reject, 5, new Error('late'))), { then: undefined }) },
    { name: 'rejectsWithUnreadableMessage', fails: true, task: () => Promise.reject(errorWithUnreadableMessage()) },
    {
      name: 'throwsUnreadableMessage', fails: true, task: () => {
        throw errorWithUnreadableMessage();
      },
    },
  ];
}

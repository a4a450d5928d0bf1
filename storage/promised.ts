/** The same methods, answering with promises. */
export type Promised<T> = {
  [K in keyof T]: T[K] extends (...args: infer A) => infer R ? (...args: A) => Promise<Awaited<R>> : never;
};

/**
 * A promise-shaped view of a synchronous SQLite store, limited to the methods named. Each call still runs
 * at once (so a caller inside a SQLite transaction keeps its atomicity); a throw becomes a rejection.
 * Callers written against the view need no change when an asynchronous store (PostgreSQL) replaces it.
 */
export function promised<T extends object, K extends keyof T>(impl: T, methods: readonly K[]): Promised<Pick<T, K>> {
  const view: Partial<Record<K, unknown>> = {};
  for (const name of methods) {
    const fn = impl[name] as unknown as (...args: unknown[]) => unknown;
    view[name] = (...args: unknown[]) => {
      try {
        return Promise.resolve(fn.apply(impl, args));
      } catch (err) {
        return Promise.reject(err);
      }
    };
  }
  return view as Promised<Pick<T, K>>;
}

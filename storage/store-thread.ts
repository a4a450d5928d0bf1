import { WorkerCalls } from '../lib/worker-calls.ts';
import type { Promised } from './promised.ts';

/** One call of a store's method on its thread. */
export interface StoreCall {
  method: string;
  args: unknown[];
}

/**
 * A SQLite store whose methods run on a thread of its own, on that thread's connection, each call a
 * promise: the same shape as promised(store) gives, for a store whose writes must not hold up the event
 * loop (each is a commit that, with synchronous=FULL, waits for the disk). `module` serves the calls
 * with serveStore. Unlike promised(), a call here is not part of a caller's transaction on another
 * connection, so only stores whose callers make none qualify.
 */
export function storeOnThread<T extends object, K extends keyof T>(module: URL, workerData: unknown, methods: readonly K[]): Promised<Pick<T, K>> & { stop(): Promise<void> } {
  const calls = new WorkerCalls<StoreCall>(module, { workerData, keepAlive: true });
  const view: Record<string, unknown> = { stop: () => calls.stop() };
  for (const name of methods) view[name as string] = (...args: unknown[]) => calls.call({ method: name as string, args }).then(withBuffers);
  return view as Promised<Pick<T, K>> & { stop(): Promise<void> };
}

/** The thread's side: answers each call with what the store's method returns. */
export function serveStore(store: object, serve: (handler: (call: StoreCall) => unknown) => void): void {
  serve(({ method, args }) => (store as Record<string, (...a: unknown[]) => unknown>)[method]!(...args.map(withBuffers)));
}

/**
 * Bytes come across a thread as plain Uint8Arrays: as Buffers again, at the top, in an array, or in an
 * object's properties (a store's rows), which is as deep as a store's values go.
 */
function withBuffers(value: unknown): unknown {
  if (value instanceof Uint8Array) return Buffer.from(value.buffer, value.byteOffset, value.byteLength);
  if (Array.isArray(value)) return value.map(withBuffers);
  if (value && typeof value === 'object' && Object.getPrototypeOf(value) === Object.prototype) {
    for (const [k, v] of Object.entries(value)) if (v instanceof Uint8Array) (value as Record<string, unknown>)[k] = withBuffers(v);
  }
  return value;
}

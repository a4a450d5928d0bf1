// The one place that reaches into aws-crt's internals (its native binding, `dist/native/binding.js`),
// which the package does not export: the connection threads need fewer callbacks per connection and a
// switch for shutdown. aws-crt is pinned to an exact version in package.json because of this; a
// version that moved or renamed these functions fails here, at start, instead of misbehaving later.
import { createRequire } from 'node:module';

/** What is used of the binding: the three functions replaced below, and the shutdown switch. */
const USED = ['mqtt_client_connection_new', 'mqtt_client_connection_on_message', 'mqtt_client_connection_on_closed', 'disable_threadsafe_function'] as const;

type CrtBinding = Record<(typeof USED)[number], (...args: unknown[]) => unknown>;

/** Throws, naming what is missing and the aws-crt version, unless the binding has every function used here. */
export function checkBinding(binding: unknown, version: string): asserts binding is CrtBinding {
  const missing = USED.filter((name) => typeof (binding as Partial<CrtBinding> | undefined)?.[name] !== 'function');
  if (missing.length > 0) {
    throw new Error(
      `aws-crt ${version}: dist/native/binding.js has no ${missing.join(', ')}; ` +
        'bridge/upstream/crt-patch.ts was written for the version pinned in package.json and must be revisited for this one',
    );
  }
}

/**
 * Loads the binding the SDK itself uses (resolved from aws-iot-device-sdk-v2, so a second copy of
 * aws-crt cannot be patched in its place), checks it, and registers one callback per connection
 * instead of six. Every callback the SDK registers is a thread-safe function, that is a libuv async
 * handle of this thread, and libuv walks all of a loop's async handles on each wake-up (each PUBACK,
 * each request from the main thread). Only `interrupt` is used here (connect, publish and subscribe
 * each bring a callback of their own); the native side takes the others as optional, so they are left
 * out: at 5,000 sessions the walk was a third of the gateway's CPU.
 *
 * Returns the switch that turns aws-crt's thread-safe functions off (see `release` in connection-thread.ts).
 */
export function patchCrtCallbacks(): { disableThreadsafeFunctions(): void } {
  const fromSdk = createRequire(createRequire(import.meta.url).resolve('aws-iot-device-sdk-v2'));
  const { version } = fromSdk('aws-crt/package.json') as { version: string };
  let binding: unknown;
  try {
    binding = (fromSdk('aws-crt/dist/native/binding.js') as { default?: unknown }).default;
  } catch (err) {
    throw new Error(`aws-crt ${version}: dist/native/binding.js cannot be loaded (${String((err as Error)?.message ?? err)})`);
  }
  checkBinding(binding, version);
  const crt: CrtBinding = binding;
  const newConnection = crt.mqtt_client_connection_new;
  crt.mqtt_client_connection_new = (client, onInterrupted, _onResumed, _onSuccess, _onFailure, ...rest) =>
    newConnection(client, onInterrupted, undefined, undefined, undefined, ...rest);
  crt.mqtt_client_connection_on_message = () => undefined;
  crt.mqtt_client_connection_on_closed = () => undefined;
  return { disableThreadsafeFunctions: () => void crt.disable_threadsafe_function() };
}

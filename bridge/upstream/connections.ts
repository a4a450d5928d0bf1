import type { Worker } from 'node:worker_threads';
import { tsWorker } from '../../storage/ts-worker.ts';

/** What one upstream MQTT connection is opened with. */
export interface ConnectSettings {
  endpoint: string;
  port: number;
  clientId: string;
  certificatePem: string;
  privateKeyPem: string;
  caPem: string;
  keepAliveSeconds: number;
  connectTimeoutMs: number;
  operationTimeoutMs: number;
}

export type MessageHandler = (topic: string, payload: Buffer, qos: 0 | 1) => void;

/** Unsolicited news of one connection. */
export interface ConnectionEvents {
  /** The connection dropped (the SDK's own reconnect is not used: the pool reopens, paced). */
  interrupted(error: string): void;
  error(error: string): void;
}

/** One open MQTT connection upstream, as seen from the main thread. */
export interface UpstreamConnection {
  /** Resolves on PUBACK (QoS 1) or once written (QoS 0). */
  publish(topic: string, payload: Buffer, qos: 0 | 1): Promise<void>;
  /** Resolves with the granted QoS, 128 when refused. */
  subscribe(filter: string, qos: 0 | 1, handler: MessageHandler): Promise<0 | 1 | 128>;
  unsubscribe(filter: string): Promise<void>;
  disconnect(): Promise<void>;
}

export interface UpstreamLink {
  connect(settings: ConnectSettings, events: ConnectionEvents): Promise<UpstreamConnection>;
  /** Disconnects whatever is left and stops the thread. */
  close(): Promise<void>;
}

/** Main thread → connection thread. */
export type LinkRequest =
  | { op: 'connect'; seq: number; conn: number; settings: ConnectSettings }
  | { op: 'publish'; seq: number; conn: number; topic: string; payload: Uint8Array; qos: 0 | 1 }
  | { op: 'subscribe'; seq: number; conn: number; sub: number; filter: string; qos: 0 | 1 }
  | { op: 'unsubscribe'; seq: number; conn: number; filter: string }
  | { op: 'disconnect'; seq: number; conn: number }
  | { op: 'close'; seq: number };

/** Connection thread → main thread. */
export type LinkReply =
  | { kind: 'done'; seq: number; value?: number }
  | { kind: 'failed'; seq: number; error: string }
  | { kind: 'interrupted' | 'error'; conn: number; error: string }
  | { kind: 'message'; conn: number; sub: number; topic: string; payload: Uint8Array; qos: 0 | 1 };

/**
 * Upstream connections live on a thread of their own. aws-crt gives every connection several
 * thread-safe callbacks, each an async handle of the event loop that owns it, and libuv walks all of a
 * loop's async handles on every wake-up: with thousands of sessions on the main thread, each outbox
 * commit and each PUBACK cost milliseconds there (measured: 69 % of the main thread at 5,000 sessions).
 * Here that walk happens on this thread's loop, which serves nothing but upstream traffic, and the TLS
 * context of each new session is built here too.
 */
/** How long closing waits for the thread to disconnect what is still open. */
const CLOSE_GRACE_MS = 5000;

export function connectionThread(): UpstreamLink {
  let worker: Worker | undefined;
  let seq = 0;
  let nextConn = 0;
  let nextSub = 0;
  const waiting = new Map<number, { resolve: (value: number | undefined) => void; reject: (err: Error) => void }>();
  const live = new Map<number, { events: ConnectionEvents; handlers: Map<number, { filter: string; handler: MessageHandler }> }>();

  const lost = (err: Error) => {
    worker = undefined;
    for (const w of waiting.values()) w.reject(err);
    waiting.clear();
    // Every connection went with the thread: the pool reopens them on the next thread.
    const gone = [...live.values()];
    live.clear();
    for (const c of gone) c.events.interrupted(err.message);
  };

  const start = () => {
    const w = tsWorker(new URL('./connection-thread.ts', import.meta.url), null);
    w.on('message', (msg: LinkReply) => {
      if (msg.kind === 'done' || msg.kind === 'failed') {
        const entry = waiting.get(msg.seq);
        waiting.delete(msg.seq);
        if (msg.kind === 'done') entry?.resolve(msg.value);
        else entry?.reject(new Error(msg.error));
      } else if (msg.kind === 'message') {
        const payload = Buffer.from(msg.payload.buffer, msg.payload.byteOffset, msg.payload.byteLength);
        live.get(msg.conn)?.handlers.get(msg.sub)?.handler(msg.topic, payload, msg.qos);
      } else {
        const c = live.get(msg.conn);
        if (msg.kind === 'interrupted') live.delete(msg.conn);
        c?.events[msg.kind](msg.error);
      }
    });
    w.on('error', (err) => lost(err as Error));
    w.on('exit', (code) => lost(new Error(`upstream connection thread exited (${code})`)));
    // Sessions are closed explicitly on shutdown; an idle thread must not keep the process alive.
    w.unref();
    return w;
  };

  const request = (make: (seq: number) => LinkRequest): Promise<number | undefined> => {
    worker ??= start();
    const req = make(++seq);
    return new Promise((resolve, reject) => {
      waiting.set(req.seq, { resolve, reject });
      worker!.postMessage(req);
    });
  };

  return {
    async connect(settings, events) {
      const conn = ++nextConn;
      const state = { events, handlers: new Map<number, { filter: string; handler: MessageHandler }>() };
      const forget = (filter: string) => state.handlers.forEach((h, sub) => h.filter === filter && state.handlers.delete(sub));
      live.set(conn, state);
      try {
        await request((seq) => ({ op: 'connect', seq, conn, settings }));
      } catch (err) {
        live.delete(conn);
        throw err;
      }
      return {
        publish: async (topic, payload, qos) => {
          await request((seq) => ({ op: 'publish', seq, conn, topic, payload, qos }));
        },
        subscribe: async (filter, qos, handler) => {
          // Subscribing again to a filter replaces its callback upstream, so here too.
          forget(filter);
          const sub = ++nextSub;
          state.handlers.set(sub, { filter, handler });
          const granted = (await request((seq) => ({ op: 'subscribe', seq, conn, sub, filter, qos }))) as 0 | 1 | 128;
          if (granted === 128) state.handlers.delete(sub);
          return granted;
        },
        unsubscribe: async (filter) => {
          forget(filter);
          await request((seq) => ({ op: 'unsubscribe', seq, conn, filter }));
        },
        disconnect: async () => {
          live.delete(conn);
          await request((seq) => ({ op: 'disconnect', seq, conn }));
        },
      };
    },
    async close() {
      process.stderr.write('DEBUG link.close ' + !!worker + '\n');
      if (!worker) return;
      // The thread first disconnects and lets go of aws-crt (see connection-thread.ts), then stops.
      await Promise.race([request((seq) => ({ op: 'close', seq })).catch(() => undefined), new Promise((r) => setTimeout(r, CLOSE_GRACE_MS).unref())]);
      const w = worker;
      worker = undefined;
      live.clear();
      await w?.terminate();
    },
  };
}

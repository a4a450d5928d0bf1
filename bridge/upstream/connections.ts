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
  | { op: 'disconnectAll'; seq: number }
  | { op: 'release'; seq: number };

/** Connection thread → main thread. */
export type LinkReply =
  | { kind: 'done'; seq: number; value?: number }
  | { kind: 'failed'; seq: number; error: string }
  | { kind: 'interrupted' | 'error'; conn: number; error: string }
  | { kind: 'message'; conn: number; sub: number; topic: string; payload: Uint8Array; qos: 0 | 1 };

/** How long closing waits for a thread to disconnect what is still open. */
const CLOSE_GRACE_MS = 5000;

interface Live {
  events: ConnectionEvents;
  handlers: Map<number, { filter: string; handler: MessageHandler }>;
}

/** One connection thread, started on first use (and again after it died). */
class ConnectionThread {
  private worker: Worker | undefined;
  private seq = 0;
  private readonly waiting = new Map<number, { resolve: (value: number | undefined) => void; reject: (err: Error) => void }>();
  /** The connections this thread holds. */
  readonly live = new Map<number, Live>();

  /** Starts the thread now, so the first sessions do not wait for it to load. */
  warm(): void {
    this.worker ??= this.start();
  }

  request(make: (seq: number) => LinkRequest): Promise<number | undefined> {
    this.warm();
    const req = make(++this.seq);
    return new Promise((resolve, reject) => {
      this.waiting.set(req.seq, { resolve, reject });
      this.worker!.postMessage(req);
    });
  }

  get started(): boolean {
    return this.worker !== undefined;
  }

  /** Asks the thread for something at shutdown, waiting a bounded time. */
  async shutdownStep(op: 'disconnectAll' | 'release'): Promise<void> {
    if (!this.worker) return;
    const done = this.request((seq) => ({ op, seq })).catch(() => undefined);
    await Promise.race([done, new Promise((r) => setTimeout(r, CLOSE_GRACE_MS).unref())]);
  }

  async stop(): Promise<void> {
    const w = this.worker;
    this.worker = undefined;
    this.live.clear();
    await w?.terminate();
  }

  private start(): Worker {
    const w = tsWorker(new URL('./connection-thread.ts', import.meta.url), null);
    w.on('message', (msg: LinkReply) => this.received(msg));
    w.on('error', (err) => this.lost(err as Error));
    w.on('exit', (code) => this.lost(new Error(`upstream connection thread exited (${code})`)));
    // Sessions are closed explicitly on shutdown; an idle thread must not keep the process alive.
    w.unref();
    return w;
  }

  private received(msg: LinkReply): void {
    if (msg.kind === 'done' || msg.kind === 'failed') {
      const entry = this.waiting.get(msg.seq);
      this.waiting.delete(msg.seq);
      if (msg.kind === 'done') entry?.resolve(msg.value);
      else entry?.reject(new Error(msg.error));
    } else if (msg.kind === 'message') {
      const payload = Buffer.from(msg.payload.buffer, msg.payload.byteOffset, msg.payload.byteLength);
      this.live.get(msg.conn)?.handlers.get(msg.sub)?.handler(msg.topic, payload, msg.qos);
    } else {
      const c = this.live.get(msg.conn);
      if (msg.kind === 'interrupted') this.live.delete(msg.conn);
      c?.events[msg.kind](msg.error);
    }
  }

  private lost(err: Error): void {
    this.worker = undefined;
    for (const w of this.waiting.values()) w.reject(err);
    this.waiting.clear();
    // Every connection went with the thread: the pool reopens them on the next one.
    const gone = [...this.live.values()];
    this.live.clear();
    for (const c of gone) c.events.interrupted(err.message);
  }
}

/**
 * Upstream connections live on threads of their own, dealt round-robin. aws-crt gives every
 * connection several thread-safe callbacks, each an async handle of the event loop that owns it, and
 * libuv walks all of a loop's async handles on every wake-up: with thousands of sessions on the main
 * thread, each outbox commit and each PUBACK cost milliseconds there (measured: 69 % of the main
 * thread at 5,000 sessions). On these threads the walk serves only upstream traffic, and spreading the
 * sessions over several threads shortens each walk; the TLS context of each new session is built here
 * too.
 */
export function connectionThreads(count: number): UpstreamLink {
  const threads = Array.from({ length: Math.max(1, count) }, () => new ConnectionThread());
  for (const t of threads) t.warm();
  let nextConn = 0;
  let nextSub = 0;
  return {
    async connect(settings, events) {
      const conn = ++nextConn;
      const thread = threads[conn % threads.length]!;
      const state: Live = { events, handlers: new Map() };
      const forget = (filter: string) => state.handlers.forEach((h, sub) => h.filter === filter && state.handlers.delete(sub));
      thread.live.set(conn, state);
      try {
        await thread.request((seq) => ({ op: 'connect', seq, conn, settings }));
      } catch (err) {
        thread.live.delete(conn);
        throw err;
      }
      return {
        publish: async (topic, payload, qos) => {
          await thread.request((seq) => ({ op: 'publish', seq, conn, topic, payload, qos }));
        },
        subscribe: async (filter, qos, handler) => {
          // Subscribing again to a filter replaces its callback upstream, so here too.
          forget(filter);
          const sub = ++nextSub;
          state.handlers.set(sub, { filter, handler });
          const granted = (await thread.request((seq) => ({ op: 'subscribe', seq, conn, sub, filter, qos }))) as 0 | 1 | 128;
          if (granted === 128) state.handlers.delete(sub);
          return granted;
        },
        unsubscribe: async (filter) => {
          forget(filter);
          await thread.request((seq) => ({ op: 'unsubscribe', seq, conn, filter }));
        },
        disconnect: async () => {
          thread.live.delete(conn);
          await thread.request((seq) => ({ op: 'disconnect', seq, conn }));
        },
      };
    },
    async close() {
      // Every thread disconnects; then aws-crt's callbacks are switched off (process-wide, so once all
      // are disconnected) before any thread stops (see connection-thread.ts).
      await Promise.all(threads.map((t) => t.shutdownStep('disconnectAll')));
      await threads.find((t) => t.started)?.shutdownStep('release');
      await Promise.all(threads.map((t) => t.stop()));
    },
  };
}

import { bytesToPost, postedBytes, WorkerCalls, siblingModule } from '../../lib/worker-calls.ts';

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

/** retain: IoT Core sent it as a retained message because the subscription was just made. */
export type MessageHandler = (topic: string, payload: Buffer, qos: 0 | 1, retain?: boolean) => void;

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
  /** Resolves once every thread has booted (loading aws-crt takes a while). */
  ready(): Promise<void>;
  /** Disconnects whatever is left and stops the thread. */
  close(): Promise<void>;
}

/** Main thread → connection thread: each answered once (a granted QoS for subscribe, else nothing). */
export type LinkRequest =
  | { op: 'connect'; conn: number; settings: ConnectSettings }
  | { op: 'publish'; conn: number; topic: string; /** bytesToPost */ payload: string; qos: 0 | 1 }
  | { op: 'subscribe'; conn: number; sub: number; filter: string; qos: 0 | 1 }
  | { op: 'unsubscribe'; conn: number; filter: string }
  | { op: 'disconnect'; conn: number }
  | { op: 'disconnectAll' }
  | { op: 'release' };

/** Connection thread → main thread, unasked. */
export type LinkEvent =
  | { kind: 'interrupted' | 'error'; conn: number; error: string }
  | { kind: 'message'; conn: number; sub: number; topic: string; /** bytesToPost */ payload: string; qos: 0 | 1; retain: boolean };

/** A connection thread's open connections by number (connection-thread.ts, tls-connection-thread.ts). */
export class ThreadConnections<C extends { disconnect(): Promise<unknown> }> extends Map<number, C> {
  /** The open connection, or the error a call on a closed one answers with. */
  open(conn: number): C {
    const c = this.get(conn);
    if (!c) throw new Error('session closed');
    return c;
  }

  /** Forgets the connection first (an interrupt arriving meanwhile finds it gone), then disconnects it. */
  async disconnect(conn: number): Promise<void> {
    const c = this.get(conn);
    this.delete(conn);
    await c?.disconnect();
  }
}

/**
 * The young generation of a connection thread's heap. What lives there is short (packets, promises of
 * operations in flight), and V8 would grow it to tens of megabytes while sessions open (TLS handshakes),
 * memory it keeps afterwards: 17 KB per warm session of 1,000. 1 MB cost more CPU per message and saved
 * no more (bench/results/changes.md, 2026-11-29 evening).
 */
const YOUNG_GENERATION_MB = 4;

/** How long closing waits for a thread to disconnect what is still open. */
const CLOSE_GRACE_MS = 5000;

interface Live {
  events: ConnectionEvents;
  handlers: Map<number, { filter: string; handler: MessageHandler }>;
}

/** One connection thread and the connections it holds. */
class ConnectionThread {
  readonly live = new Map<number, Live>();
  readonly calls: WorkerCalls<LinkRequest, LinkEvent>;

  constructor(module: URL) {
    this.calls = new WorkerCalls<LinkRequest, LinkEvent>(module, {
      resourceLimits: { maxYoungGenerationSizeMb: YOUNG_GENERATION_MB },
      onEvent: (e) => this.received(e),
      // Every connection went with the thread: the pool reopens them (on a new thread).
      onLost: (err) => {
        const gone = [...this.live.values()];
        this.live.clear();
        for (const c of gone) c.events.interrupted(err.message);
      },
    });
  }

  request(req: LinkRequest): Promise<number | undefined> {
    return this.calls.call(req);
  }

  /** Asks the thread for something at shutdown, waiting a bounded time. */
  async shutdownStep(op: 'disconnectAll' | 'release'): Promise<void> {
    if (!this.calls.started) return;
    const done = this.request({ op }).catch(() => undefined);
    await Promise.race([done, new Promise((r) => setTimeout(r, CLOSE_GRACE_MS).unref())]);
  }

  async stop(): Promise<void> {
    this.live.clear();
    await this.calls.stop();
  }

  private received(e: LinkEvent): void {
    if (e.kind === 'message') {
      this.live.get(e.conn)?.handlers.get(e.sub)?.handler(e.topic, postedBytes(e.payload), e.qos, e.retain);
    } else {
      const c = this.live.get(e.conn);
      if (e.kind === 'interrupted') this.live.delete(e.conn);
      c?.events[e.kind](e.error);
    }
  }
}

/**
 * Upstream connections live on threads of their own, dealt round-robin. aws-crt makes each callback of
 * a connection (and of each subscription and operation in flight) an async handle of the event loop
 * that owns it, and libuv walks all of a loop's async handles on every wake-up: with thousands of
 * sessions on the main thread, each outbox commit and each PUBACK cost milliseconds there (measured:
 * 69 % of the main thread at 5,000 sessions). On these threads the walk serves only upstream traffic,
 * it is kept short by registering one callback per connection (crt-patch.ts), and spreading
 * the sessions over several threads shortens it further; the TLS context of each new session is built
 * here too. The node client (tls-connection-thread.ts) has no such handles; on a thread of its own it
 * keeps the TLS handshakes off the main thread, which acknowledges the devices.
 */
export function connectionThreads(count: number, client: 'aws-crt' | 'node' = 'aws-crt'): UpstreamLink {
  const module = siblingModule(import.meta.url, client === 'aws-crt' ? 'connection-thread' : 'tls-connection-thread');
  const threads = Array.from({ length: Math.max(1, count) }, () => new ConnectionThread(module));
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
        await thread.request({ op: 'connect', conn, settings });
      } catch (err) {
        thread.live.delete(conn);
        throw err;
      }
      return {
        publish: async (topic, payload, qos) => {
          await thread.request({ op: 'publish', conn, topic, payload: bytesToPost(payload), qos });
        },
        subscribe: async (filter, qos, handler) => {
          // Subscribing again to a filter replaces its callback upstream, so here too.
          forget(filter);
          const sub = ++nextSub;
          state.handlers.set(sub, { filter, handler });
          const granted = (await thread.request({ op: 'subscribe', conn, sub, filter, qos })) as 0 | 1 | 128;
          if (granted === 128) state.handlers.delete(sub);
          return granted;
        },
        unsubscribe: async (filter) => {
          forget(filter);
          await thread.request({ op: 'unsubscribe', conn, filter });
        },
        disconnect: async () => {
          thread.live.delete(conn);
          await thread.request({ op: 'disconnect', conn });
        },
      };
    },
    async ready() {
      await Promise.all(threads.map((t) => t.calls.ready()));
    },
    async close() {
      // Every thread disconnects; then aws-crt's callbacks are switched off (process-wide, so once all
      // are disconnected) before any thread stops (see connection-thread.ts).
      await Promise.all(threads.map((t) => t.shutdownStep('disconnectAll')));
      await threads.find((t) => t.calls.started)?.shutdownStep('release');
      await Promise.all(threads.map((t) => t.stop()));
    },
  };
}

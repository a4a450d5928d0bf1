// Upstream connections over Node's TLS: MQTT 3.1.1 (what IoT Core speaks on port 8883), packets written
// and read by mqtt-packet, the codec the device endpoint uses. The link runs on the event loop of the
// thread that creates it: a connection thread (tls-connection-thread.ts, one hand-off each way per batch
// of calls, against aws-crt's two) or, with upstream.threads 0, the main thread, where a publish crosses
// no thread at all but every TLS handshake (about 5 ms of CPU on a 2-core VM) holds up the devices.
// The client does only what the session pool asks of it: CONNECT with a clean session, PUBLISH QoS 0/1,
// SUBSCRIBE/UNSUBSCRIBE, keepalive, DISCONNECT. Reconnecting is the pool's job (paced), so a dropped
// connection is only reported.
import { isIP } from 'node:net';
import { connect as tlsConnect, createSecureContext, type TLSSocket } from 'node:tls';
import mqttPacket, { type Packet, type Parser } from 'mqtt-packet';
import { LentParsers } from '../../lib/lent-parsers.ts';
import type { ConnectionEvents, ConnectSettings, MessageHandler, UpstreamConnection, UpstreamLink } from './connections.ts';
import { perContextTrust, type ContextTrust } from './trust.ts';

const PINGREQ = Buffer.from([0xc0, 0]);
const DISCONNECT = Buffer.from([0xe0, 0]);
/** How often deadlines (operation timeouts, keepalive) are checked, for every connection at once. */
const SWEEP_MS = 500;
/** How long a DISCONNECT waits for the server to close before the socket is destroyed. */
const CLOSE_GRACE_MS = 1000;

// See bridge/ingress/mqtt/connection.ts: no table of all two-byte numbers.
mqttPacket.writeToStream.cacheNumbers = false;

/** What IoT Core speaks on port 8883. */
const MQTT_311 = { protocolVersion: 4 };

/** CONNACK return codes of MQTT 3.1.1 (3.2.2.3), for the error a refused CONNECT rejects with. */
const CONNACK_REFUSALS: Record<number, string> = {
  1: 'unacceptable protocol version',
  2: 'identifier rejected',
  3: 'server unavailable',
  4: 'bad user name or password',
  5: 'not authorized',
};

/** An operation waiting for its answer (PUBACK, SUBACK, UNSUBACK), by packet identifier. */
interface Pending {
  resolve(granted: number | undefined): void;
  reject(err: Error): void;
  deadline: number;
}

/** Whether an MQTT topic filter matches a topic name (MQTT 3.1.1, 4.7; `$` topics only by name). */
export function filterMatches(filter: string, topic: string): boolean {
  if (filter === topic) return true;
  const f = filter.split('/');
  const t = topic.split('/');
  if (t[0]!.startsWith('$') && (f[0] === '+' || f[0] === '#')) return false;
  for (let i = 0; i < f.length; i++) {
    if (f[i] === '#') return true;
    if (i >= t.length || (f[i] !== '+' && f[i] !== t[i])) return false;
  }
  return f.length === t.length;
}

/** Parsers are lent to connections while they read (see LentParsers). */
const parsers = new LentParsers<TlsConnection>({
  packet: (conn, packet) => conn.received(packet),
  error: (conn, err) => conn.fail(new Error(`malformed packet from the upstream: ${err.message}`)),
});

class TlsConnection implements UpstreamConnection {
  private readonly socket: TLSSocket;
  /** Only while a packet has arrived in part. */
  private parser?: Parser;
  private readonly keepAliveMs: number;
  private readonly operationTimeoutMs: number;
  /** Operations in flight, in the order they were sent (so the oldest deadline comes first). */
  private readonly pending = new Map<number, Pending>();
  /** Filter → handler; a message goes to the first filter that matches it, as the SDK's callbacks did. */
  private readonly handlers = new Map<string, MessageHandler>();
  private lastId = 0;
  private lastSent = Date.now();
  private lastReceived = Date.now();
  private pingSentAt = 0;
  private corked = false;
  private open = false;
  /** Set once the pool disconnects it (no news of the close is sent then). */
  private ending = false;
  private failure?: Error;
  private readonly connectTimer: NodeJS.Timeout;
  private connected!: { resolve(): void; reject(err: Error): void };
  readonly whenConnected = new Promise<void>((resolve, reject) => (this.connected = { resolve, reject }));
  private readonly closed: Promise<void>;

  constructor(
    s: ConnectSettings,
    ca: string | undefined,
    private readonly events: ConnectionEvents,
    private readonly onGone: (c: TlsConnection) => void,
  ) {
    // Only numbers are kept of the settings: a thousand sessions would otherwise hold a thousand copies
    // of the CA bundle.
    this.keepAliveMs = s.keepAliveSeconds * 1000;
    this.operationTimeoutMs = s.operationTimeoutMs;
    this.socket = tlsConnect({
      host: s.endpoint,
      port: s.port,
      // SNI is for names only (IoT Core's endpoint always is; a test upstream may be an address).
      servername: isIP(s.endpoint) ? undefined : s.endpoint,
      // A context built here: a socket keeps the options it was opened with, and would keep the PEM texts.
      secureContext: createSecureContext({ cert: s.certificatePem, key: s.privateKeyPem, ca, minVersion: 'TLSv1.2' }),
    });
    // A PUBLISH waits for no earlier segment's ACK: the device's acknowledgement waits for none.
    this.socket.setNoDelay(true);
    // The closures below refer to none of `s`, so that they do not keep it (see above).
    const noConnack = `no CONNACK within ${s.connectTimeoutMs} ms`;
    this.connectTimer = setTimeout(() => this.fail(new Error(noConnack)), s.connectTimeoutMs);
    const connect = mqttPacket.generate({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clientId: s.clientId, clean: true, keepalive: s.keepAliveSeconds });
    this.socket.once('secureConnect', () => this.send(connect));
    this.socket.on('data', (chunk: Buffer) => {
      this.lastReceived = Date.now();
      this.parser = parsers.read(this, this.parser, chunk, MQTT_311);
    });
    this.socket.on('error', (err) => (this.failure ??= err));
    this.closed = new Promise((resolve) =>
      this.socket.once('close', () => {
        clearTimeout(this.connectTimer);
        this.gone();
        resolve();
      }),
    );
  }

  publish(topic: string, payload: Buffer, qos: 0 | 1): Promise<void> {
    if (!this.open) return Promise.reject(new Error('session closed'));
    if (qos === 0) {
      this.send(mqttPacket.generate({ cmd: 'publish', topic, payload, qos: 0, retain: false, dup: false }));
      return Promise.resolve();
    }
    return new Promise((resolve, reject) => {
      const messageId = this.await(resolve as () => void, reject);
      this.send(mqttPacket.generate({ cmd: 'publish', topic, payload, qos: 1, retain: false, dup: false, messageId }));
    });
  }

  subscribe(filter: string, qos: 0 | 1, handler: MessageHandler): Promise<0 | 1 | 128> {
    if (!this.open) return Promise.reject(new Error('session closed'));
    // Retained messages follow the SUBACK at once: the handler is in place before the SUBSCRIBE leaves.
    this.handlers.set(filter, handler);
    return new Promise<0 | 1 | 128>((resolve, reject) => {
      const granted = (qos: number | undefined) => {
        if (qos === 128 && this.handlers.get(filter) === handler) this.handlers.delete(filter);
        resolve(qos === 128 ? 128 : qos === 0 ? 0 : 1);
      };
      const messageId = this.await(granted, reject);
      this.send(mqttPacket.generate({ cmd: 'subscribe', messageId, subscriptions: [{ topic: filter, qos }] }));
    });
  }

  unsubscribe(filter: string): Promise<void> {
    this.handlers.delete(filter);
    if (!this.open) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const messageId = this.await(resolve as () => void, reject);
      this.send(mqttPacket.generate({ cmd: 'unsubscribe', messageId, unsubscriptions: [filter] }));
    });
  }

  async disconnect(): Promise<void> {
    if (this.ending) return this.closed;
    this.ending = true;
    if (this.open) this.send(DISCONNECT);
    this.socket.end();
    const grace = setTimeout(() => this.socket.destroy(), CLOSE_GRACE_MS);
    await this.closed;
    clearTimeout(grace);
  }

  /** Called every SWEEP_MS: operation timeouts, keepalive. */
  sweep(now: number): void {
    for (const [id, op] of this.pending) {
      if (op.deadline > now) break;
      this.pending.delete(id);
      op.reject(new Error(`no answer from the upstream within ${this.operationTimeoutMs} ms`));
    }
    if (!this.open) return;
    if (this.pingSentAt > 0) {
      if (now - this.pingSentAt > this.operationTimeoutMs) this.fail(new Error(`no PINGRESP within ${this.operationTimeoutMs} ms`));
      return;
    }
    // A ping when either direction has been quiet for the keepalive, less one sweep so that the server
    // hears from us within it however the sweeps fall (MQTT-3.1.2-23); a link that died silently is
    // found out.
    if (now - Math.min(this.lastSent, this.lastReceived) >= this.keepAliveMs - SWEEP_MS) {
      this.pingSentAt = now;
      this.send(PINGREQ);
    }
  }

  received(packet: Packet): void {
    switch (packet.cmd) {
      case 'connack':
        clearTimeout(this.connectTimer);
        if (packet.returnCode !== 0) return this.fail(new Error(`CONNACK ${packet.returnCode}: ${CONNACK_REFUSALS[packet.returnCode ?? -1] ?? 'refused'}`));
        this.open = true;
        this.connected.resolve();
        return;
      case 'puback':
      case 'unsuback':
        return this.answered(packet.messageId, undefined);
      case 'suback':
        return this.answered(packet.messageId, packet.granted[0] as number);
      case 'publish': {
        if (packet.qos > 0) this.send(mqttPacket.generate({ cmd: 'puback', messageId: packet.messageId }));
        const payload = typeof packet.payload === 'string' ? Buffer.from(packet.payload) : packet.payload;
        for (const [filter, handler] of this.handlers) {
          if (filterMatches(filter, packet.topic)) return handler(packet.topic, payload, packet.qos === 0 ? 0 : 1, packet.retain);
        }
        return;
      }
      case 'pingresp':
        this.pingSentAt = 0;
        return;
      default:
        return this.fail(new Error(`unexpected ${packet.cmd} from the upstream`));
    }
  }

  private answered(messageId: number | undefined, granted: number | undefined): void {
    const op = messageId === undefined ? undefined : this.pending.get(messageId);
    // An answer after its operation timed out: nothing waits for it any more.
    if (!op) return;
    this.pending.delete(messageId!);
    op.resolve(granted);
  }

  /** A free packet identifier, its operation registered under it. */
  private await(resolve: (granted: number | undefined) => void, reject: (err: Error) => void): number {
    do this.lastId = (this.lastId % 65535) + 1;
    while (this.pending.has(this.lastId));
    this.pending.set(this.lastId, { resolve, reject, deadline: Date.now() + this.operationTimeoutMs });
    return this.lastId;
  }

  /** Writes of one turn of the event loop leave in one TLS record and one system call. */
  private send(bytes: Buffer): void {
    if (!this.corked) {
      this.corked = true;
      this.socket.cork();
      process.nextTick(() => {
        this.corked = false;
        this.socket.uncork();
      });
    }
    this.lastSent = Date.now();
    this.socket.write(bytes);
  }

  fail(err: Error): void {
    this.failure ??= err;
    this.socket.destroy();
  }

  private gone(): void {
    const wasOpen = this.open;
    this.open = false;
    this.onGone(this);
    const why = this.failure?.message ?? (this.ending ? 'session closed' : 'connection closed by the upstream');
    if (!wasOpen) this.connected.reject(new Error(this.failure ? why : 'connection closed before CONNACK'));
    // The pool hears of the drop before the operations fail, so it can tell a refused subscription.
    else if (!this.ending) this.events.interrupted(why);
    const err = new Error(why);
    for (const op of this.pending.values()) op.reject(err);
    this.pending.clear();
  }
}

/** The upstream link on this thread's event loop (see the top of this file). */
export function tlsLink(trust: ContextTrust = perContextTrust): UpstreamLink {
  const live = new Set<TlsConnection>();
  const sweeper = setInterval(() => {
    const now = Date.now();
    for (const c of live) c.sweep(now);
  }, SWEEP_MS);
  sweeper.unref();
  return {
    async connect(settings, events) {
      const c = new TlsConnection(settings, trust(settings.caPem), events, (gone) => live.delete(gone));
      live.add(c);
      await c.whenConnected;
      return c;
    },
    ready: async () => undefined,
    async close() {
      clearInterval(sweeper);
      await Promise.all([...live].map((c) => c.disconnect()));
    },
  };
}

import type { Logger } from 'pino';
import type { Metrics } from '../metrics.ts';
import { TokenBucket } from '../../lib/token-bucket.ts';
import { connectionThreads, type MessageHandler, type UpstreamConnection, type UpstreamLink } from './connections.ts';
import { tlsLink } from './tls-link.ts';
import { skipSystemTrustStoreLoad } from './trust.ts';

/** node: Node's TLS and mqtt-packet (tls-link.ts); aws-crt: the AWS IoT Device SDK v2 (connection-thread.ts). */
export type UpstreamClient = 'node' | 'aws-crt';

export type { MessageHandler } from './connections.ts';

export interface SessionCredentials {
  thingName: string;
  certificatePem: string;
  privateKeyPem: string;
  /** When the certificate was vended (ms), if known. */
  issuedAt?: number;
}

export interface PoolOptions {
  /** Host of the IoT Core data endpoint, resolved once (config or DescribeEndpoint). */
  endpoint: () => Promise<string>;
  /** Told the outcome of every CONNECT attempt (for readiness). */
  onConnect?(ok: boolean, detail: string): void;
  port: number;
  /** CA bundle the upstream's server certificate must chain to (see trust.ts). */
  caPem: string;
  keepAliveSeconds: number;
  connectTimeoutMs: number;
  operationTimeoutMs: number;
  /** Most sessions open at once; past it the least recently used idle session closes. */
  maxSessions: number;
  /** A session unused this long, with no subscriptions, closes. */
  idleTimeoutMs: number;
  /** Account-wide CONNECT rate (IoT Core: 500/s per account, 100/s in some regions). */
  connectsPerSecond: number;
  /** Least time between two connects of the same client id (IoT Core: 1/s). */
  minConnectIntervalMs: number;
  /** Per-session publish pacing (IoT Core: 100 publishes/s and 512 KiB/s per connection). */
  publishesPerSecond: number;
  bytesPerSecond: number;
  /** Publishes / bytes a session may send at once; the rest is paced so no second exceeds the quota. */
  publishBurst: number;
  byteBurst: number;
  /** Subscriptions per session (IoT Core: 50). */
  maxSubscriptions: number;
  /** Which MQTT client holds the connections (see tls-link.ts and connections.ts). */
  client: UpstreamClient;
  /** Threads holding the connections; 0: the main event loop (node client only). */
  threads: number;
  /** Where the connections are opened instead of those threads (a stand-in link in unit tests). */
  link?: UpstreamLink;
  metrics: Metrics;
  log: Logger;
}

/** Longest wait for the news that a connection closed after one of its operations failed. */
const SETTLE_MS = 1000;

export class SubscriptionLimitError extends Error {
  override name = 'SubscriptionLimitError';
}

/**
 * IoT Core refused a subscription. Over MQTT 3.1.1 it does so by closing the connection, so a
 * connection that closes while a SUBACK is pending is read as a refusal of that filter.
 */
export class SubscriptionRefusedError extends Error {
  override name = 'SubscriptionRefusedError';
}

/**
 * Several nodes: another node holds the thing's SIM, so its session may not open here (IoT Core allows
 * one connection per client id), and it was not handed over in time.
 */
export class HeldElsewhereError extends Error {
  override name = 'HeldElsewhereError';
}

/**
 * A publish lost because its connection closed. `subscriptionRefused`: the close answered a SUBSCRIBE
 * (see SubscriptionRefusedError), so the message itself was not refused and must not be blamed for it.
 */
export class SessionDroppedError extends Error {
  override name = 'SessionDroppedError';
  constructor(
    message: string,
    readonly subscriptionRefused: boolean,
  ) {
    super(message);
  }
}

/** Told when IoT Core refused a filter the device had (e.g. on a resubscribe after a reconnect). */
export type RefusalHandler = (reason: string) => void;

/** One device's MQTT-over-mutual-TLS session to IoT Core, as that device (client id = thing name). */
export class UpstreamSession {
  readonly openedAt = Date.now();
  lastUsed = Date.now();
  inflight = 0;
  private closed = false;
  /** Set when the connection closed under us with a SUBSCRIBE pending (IoT Core's way to refuse it). */
  private subscriptionRefused = false;
  /** Operations waiting for their answer: failed at once when the connection drops. */
  private readonly pendingSubscribes = new Map<string, (err: Error) => void>();
  /** What each filter was granted, and for which handler (see grantedTo). */
  private readonly grants = new Map<string, { handler: MessageHandler; granted: 0 | 1 }>();
  private readonly pendingPublishes = new Set<(err: Error) => void>();
  private readonly refusedFilters = new Set<string>();
  private markClosed!: () => void;
  private readonly closedSignal = new Promise<void>((r) => (this.markClosed = r));
  private readonly closeListeners: Array<() => void> = [];
  private readonly messagePacer: TokenBucket;
  private readonly bytePacer: TokenBucket;

  private readonly log: Logger;

  constructor(
    readonly creds: SessionCredentials,
    private readonly connection: UpstreamConnection,
    opts: PoolOptions,
  ) {
    this.log = opts.log;
    // IoT Core drops publishes beyond its per-connection quota without a PUBACK: never exceed it in any second.
    this.messagePacer = TokenBucket.withinQuota(opts.publishesPerSecond, opts.publishBurst);
    this.bytePacer = TokenBucket.withinQuota(opts.bytesPerSecond, opts.byteBurst);
  }

  get thingName(): string {
    return this.creds.thingName;
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** Resolves on PUBACK (QoS 1) or once written (QoS 0), after waiting for the session's publish pacing. */
  async publish(topic: string, payload: Buffer, qos: 0 | 1): Promise<void> {
    if (this.closed) throw this.droppedError();
    this.inflight++;
    this.lastUsed = Date.now();
    try {
      // Within the quotas (nearly always) nothing waits: no promise per pacer per message.
      const bytes = payload.length + Buffer.byteLength(topic);
      if (!this.messagePacer.takeNow(1)) await this.messagePacer.take(1);
      if (!this.bytePacer.takeNow(bytes)) await this.bytePacer.take(bytes);
      if (this.closed) throw this.droppedError();
      await this.untilDropped(this.connection.publish(topic, payload, qos), this.pendingPublishes);
    } catch (err) {
      if (!(err instanceof SessionDroppedError)) await this.settle();
      throw this.subscriptionRefused ? this.droppedError() : err;
    } finally {
      this.inflight--;
      this.lastUsed = Date.now();
    }
  }

  /** Subscribes on the device's behalf; resolves with the granted QoS, rejects when IoT Core refuses. */
  async subscribe(filter: string, qos: 0 | 1, handler: MessageHandler): Promise<0 | 1> {
    this.lastUsed = Date.now();
    if (this.closed) throw new Error('session closed');
    let reject!: (err: Error) => void;
    const dropped = new Promise<never>((_, r) => (reject = r));
    this.pendingSubscribes.set(filter, reject);
    this.grants.delete(filter);
    const subscribed = this.connection.subscribe(filter, qos, (topic, payload, gotQos, retain) => {
      this.lastUsed = Date.now();
      try {
        handler(topic, payload, gotQos, retain);
      } catch (err) {
        this.log.warn({ thing: this.thingName, topic, err: String(err) }, 'downlink message not handled');
      }
    });
    let granted: 0 | 1 | 128;
    try {
      granted = await Promise.race([subscribed, dropped]);
    } catch (err) {
      if (err instanceof SubscriptionRefusedError) throw err;
      await this.settle();
      if (this.refusedFilters.has(filter)) throw new SubscriptionRefusedError(`connection closed while the SUBACK for ${filter} was pending: IoT Core refused it`);
      throw err;
    } finally {
      this.pendingSubscribes.delete(filter);
    }
    if (granted === 128) throw new SubscriptionRefusedError(`subscription to ${filter} refused upstream (SUBACK 0x80)`);
    this.grants.set(filter, { handler, granted });
    return granted;
  }

  /** The QoS granted to this handler's subscription of the filter on this session, if it has one. */
  grantedTo(filter: string, handler: MessageHandler): 0 | 1 | undefined {
    const grant = this.grants.get(filter);
    return grant?.handler === handler ? grant.granted : undefined;
  }

  /**
   * The connection dropped under us. A SUBSCRIBE still waiting for its SUBACK is what IoT Core refused
   * (it closes the connection instead of answering 0x80): its filters are returned, and the publishes
   * lost with the connection are marked as not their fault.
   */
  dropped(): string[] {
    const refused = [...this.pendingSubscribes.keys()];
    if (refused.length > 0) this.subscriptionRefused = true;
    for (const f of refused) this.refusedFilters.add(f);
    this.markClosed();
    for (const [filter, reject] of this.pendingSubscribes) {
      reject(new SubscriptionRefusedError(`connection closed while the SUBACK for ${filter} was pending: IoT Core refused it`));
    }
    this.pendingSubscribes.clear();
    for (const reject of this.pendingPublishes) reject(this.droppedError());
    this.pendingPublishes.clear();
    return refused;
  }

  /**
   * aws-crt fails the operations of a connection that closed (CANCELLED_FOR_CLEAN_SESSION) a moment
   * before it reports the close itself: wait for that news before telling why an operation failed.
   */
  private settle(): Promise<void> {
    return Promise.race([this.closedSignal, new Promise<void>((r) => setTimeout(r, SETTLE_MS).unref())]);
  }

  private droppedError(): SessionDroppedError {
    return this.subscriptionRefused
      ? new SessionDroppedError('connection closed by IoT Core refusing a subscription', true)
      : new SessionDroppedError('session closed', false);
  }

  private untilDropped<T>(op: Promise<T>, pending: Set<(err: Error) => void>): Promise<T> {
    // One promise that op or the drop settles, whichever comes first (a drop clears `pending` itself).
    return new Promise<T>((resolve, reject) => {
      pending.add(reject);
      op.then(
        (value) => (pending.delete(reject), resolve(value)),
        (err: unknown) => (pending.delete(reject), reject(err)),
      );
    });
  }

  async unsubscribe(filter: string): Promise<void> {
    this.grants.delete(filter);
    if (this.closed) return;
    await this.connection.unsubscribe(filter).catch(() => undefined);
  }

  onClose(listener: () => void): void {
    if (this.closed) listener();
    else this.closeListeners.push(listener);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.markClosed();
    this.closeListeners.splice(0).forEach((l) => l());
    await this.connection.disconnect().catch(() => undefined);
  }
}

/**
 * Holds the upstream sessions, one per device, opened lazily and paced; their connections live on a
 * few threads of their own (connections.ts) or on the main event loop (tls-link.ts). CONNECTs go
 * through an account-wide pacer and never more than one per second per client id; idle sessions
 * close; at the cap the least recently used idle session makes room. A session whose connection drops is closed and opened again through the
 * same pacing, so a mass reconnect after an outage ramps up at the limit instead of as a storm.
 */
export class UpstreamPool {
  /** The connections themselves (see tls-link.ts, connections.ts). */
  private readonly link: UpstreamLink;
  private readonly sessions = new Map<string, Promise<UpstreamSession>>();
  private readonly open = new Map<string, UpstreamSession>();
  /** Subscriptions wanted per thing: kept across reconnects and restored on every new session. */
  private readonly wanted = new Map<string, Map<string, { qos: 0 | 1; handler: MessageHandler; onRefused?: RefusalHandler }>>();
  private readonly lastConnect = new Map<string, number>();
  /** Credentials a rotation moved each thing to (replace): a caller still holding older ones gets these. */
  private readonly rotatedTo = new Map<string, SessionCredentials>();
  private readonly connectPacer: TokenBucket;
  private readonly sweeper: NodeJS.Timeout;
  private closing = false;
  /**
   * Asked before a thing's session opens; a rejection is the open's failure. Several nodes on one
   * database: only the node holding the SIM may connect as its thing (IoT Core allows one connection per
   * client id).
   */
  gate?: (thingName: string) => Promise<void>;

  constructor(private readonly opts: PoolOptions) {
    if (opts.link) this.link = opts.link;
    else if (opts.client === 'node') this.link = opts.threads ? connectionThreads(opts.threads, 'node') : tlsLink();
    else {
      // Before any connection thread loads aws-crt.
      skipSystemTrustStoreLoad();
      this.link = connectionThreads(opts.threads);
    }
    this.connectPacer = new TokenBucket(opts.connectsPerSecond, opts.connectsPerSecond);
    this.sweeper = setInterval(() => this.closeIdle(), Math.max(250, Math.min(opts.idleTimeoutMs / 4, 10_000)));
    this.sweeper.unref();
  }

  /** Resolves once the connection threads have booted. */
  ready(): Promise<void> {
    return this.link.ready();
  }

  /** The device's session, opened on first use. A failed open is forgotten so the next call retries. */
  session(wanted: SessionCredentials): Promise<UpstreamSession> {
    const creds = this.newest(wanted);
    let p = this.sessions.get(creds.thingName);
    if (!p) {
      p = this.openSession(creds);
      this.sessions.set(creds.thingName, p);
      p.catch(() => {
        if (this.sessions.get(creds.thingName) === p) this.sessions.delete(creds.thingName);
      });
    }
    return p;
  }

  /** The open session of a thing, if any (for status views). */
  peek(thingName: string): UpstreamSession | undefined {
    return this.open.get(thingName);
  }

  get size(): number {
    return this.open.size;
  }

  /** Subscribes a thing's session to a filter, now and after every reconnect. */
  async subscribe(creds: SessionCredentials, filter: string, qos: 0 | 1, handler: MessageHandler, onRefused?: RefusalHandler): Promise<0 | 1> {
    let subs = this.wanted.get(creds.thingName);
    if (!subs) this.wanted.set(creds.thingName, (subs = new Map()));
    if (!subs.has(filter) && subs.size >= this.opts.maxSubscriptions) {
      throw new SubscriptionLimitError(`at most ${this.opts.maxSubscriptions} subscriptions per device`);
    }
    // Until this first SUBSCRIBE is answered, a refusal is reported to the caller, not to onRefused.
    const entry = { qos, handler, onRefused: undefined as RefusalHandler | undefined };
    subs.set(filter, entry);
    try {
      const before = this.open.get(creds.thingName);
      const session = await this.session(creds);
      // A session opened for this call subscribed every wanted filter, this one included: not a second
      // time (IoT Core would send the filter's retained messages twice).
      const granted = (session !== before ? session.grantedTo(filter, handler) : undefined) ?? (await session.subscribe(filter, qos, handler));
      entry.onRefused = onRefused;
      return granted;
    } catch (err) {
      subs.delete(filter);
      if (subs.size === 0) this.wanted.delete(creds.thingName);
      throw err;
    }
  }

  async unsubscribe(thingName: string, filter: string): Promise<void> {
    const subs = this.wanted.get(thingName);
    subs?.delete(filter);
    if (subs?.size === 0) this.wanted.delete(thingName);
    await this.open.get(thingName)?.unsubscribe(filter);
  }

  subscriptionCount(thingName: string): number {
    return this.wanted.get(thingName)?.size ?? 0;
  }

  /**
   * Moves a thing to new credentials (rotation): resolves once a session with them is up, trying again
   * (IoT Core may not know a new certificate for a while) until withinMs has passed, then rejects.
   */
  async replace(creds: SessionCredentials, withinMs = 0): Promise<void> {
    this.rotatedTo.set(creds.thingName, creds);
    await this.drop(creds.thingName);
    const deadline = Date.now() + withinMs;
    for (let delay = this.opts.minConnectIntervalMs || 1000; ; delay = Math.min(delay * 2, 30_000)) {
      try {
        const session = await this.session(creds);
        // Resolving is what lets the old certificate retire: only a session on the new one counts.
        if (session.creds.certificatePem === creds.certificatePem) return this.forgetRotationLater(creds);
        await this.discard(session);
        throw new Error(`a session of ${creds.thingName} opened with its previous certificate`);
      } catch (err) {
        if (this.closing || Date.now() + delay > deadline) {
          this.forgetRotationLater(creds);
          throw err;
        }
        await new Promise((r) => setTimeout(r, delay).unref());
      }
    }
  }

  /**
   * The credentials to connect with: a caller that read a thing's credentials before its rotation (a
   * delivery in progress, a resubscribe after a drop) must not reopen a session on the old certificate
   * while the new one propagates, or replace() would take that session for the new one's.
   */
  private newest(creds: SessionCredentials): SessionCredentials {
    const rotated = this.rotatedTo.get(creds.thingName);
    if (!rotated || rotated.certificatePem === creds.certificatePem) return creds;
    if ((creds.issuedAt ?? 0) <= (rotated.issuedAt ?? 0)) return rotated;
    this.rotatedTo.delete(creds.thingName); // vended since (revoked, then vended again): these are newer
    return creds;
  }

  /** Callers holding the old credentials are over in a minute (a delivery's retry, a resubscribe's backoff). */
  private forgetRotationLater(creds: SessionCredentials): void {
    setTimeout(() => this.rotatedTo.get(creds.thingName) === creds && this.rotatedTo.delete(creds.thingName), 60_000).unref();
  }

  /** Closes a thing's session, if any (its certificate was revoked). */
  async drop(thingName: string): Promise<void> {
    const p = this.sessions.get(thingName);
    const session = p && (await p.catch(() => undefined));
    if (session) await this.discard(session);
  }

  /** Drops a session that failed so the next use opens a fresh one. */
  async discard(session: UpstreamSession): Promise<void> {
    this.forget(session);
    await session.close();
  }

  async closeAll(): Promise<void> {
    this.closing = true;
    clearInterval(this.sweeper);
    const all = [...this.sessions.values()];
    this.sessions.clear();
    await Promise.all(all.map((p) => p.then((s) => s.close(), () => undefined)));
    this.open.clear();
    this.opts.metrics.upstreamSessions.set(0);
    await this.link.close();
  }

  private forget(session: UpstreamSession): void {
    if (this.open.get(session.thingName) === session) {
      this.open.delete(session.thingName);
      this.sessions.delete(session.thingName);
    }
    this.opts.metrics.upstreamSessions.set(this.open.size);
  }

  private async openSession(creds: SessionCredentials): Promise<UpstreamSession> {
    const { opts } = this;
    if (this.gate) await this.gate(creds.thingName);
    await this.makeRoom();
    // IoT Core refuses a client id reconnecting within a second, and caps CONNECTs per account.
    const since = Date.now() - (this.lastConnect.get(creds.thingName) ?? 0);
    if (since < opts.minConnectIntervalMs) await new Promise((r) => setTimeout(r, opts.minConnectIntervalMs - since));
    await this.connectPacer.take(1);
    if (this.closing) throw new Error('pool closing');
    this.lastConnect.set(creds.thingName, Date.now());

    let session: UpstreamSession | undefined;
    let connection: UpstreamConnection;
    try {
      connection = await this.link.connect(
        {
          endpoint: await opts.endpoint(),
          port: opts.port,
          clientId: creds.thingName,
          certificatePem: creds.certificatePem,
          privateKeyPem: creds.privateKeyPem,
          caPem: opts.caPem,
          keepAliveSeconds: opts.keepAliveSeconds,
          connectTimeoutMs: opts.connectTimeoutMs,
          operationTimeoutMs: opts.operationTimeoutMs,
        },
        {
          error: (err) => opts.log.warn({ thing: creds.thingName, err }, 'upstream session error'),
          // The SDK would reconnect on its own, unpaced; we close and reopen through the pacer instead.
          interrupted: (err) => {
            opts.log.warn({ thing: creds.thingName, err }, 'upstream session interrupted');
            if (!session) return;
            this.forget(session);
            // A filter IoT Core refused is not wanted any more: resubscribing it would drop every new session.
            for (const filter of session.dropped()) this.refused(creds.thingName, filter, 'connection closed while its SUBACK was pending');
            void session.close();
            if (this.wanted.get(creds.thingName)?.size && !this.closing) this.restore(creds);
          },
        },
      );
    } catch (err) {
      opts.metrics.upstreamConnects.inc({ result: 'failed' });
      opts.onConnect?.(false, `CONNECT of ${creds.thingName} failed: ${(err as Error).message ?? String(err)}`);
      throw err;
    }
    opts.metrics.upstreamConnects.inc({ result: 'ok' });
    opts.onConnect?.(true, `${creds.thingName} connected`);
    session = new UpstreamSession(creds, connection, opts);
    this.open.set(creds.thingName, session);
    opts.metrics.upstreamSessions.set(this.open.size);
    for (const [filter, sub] of this.wanted.get(creds.thingName) ?? []) {
      await session.subscribe(filter, sub.qos, sub.handler).catch((err) => {
        if (err instanceof SubscriptionRefusedError) this.refused(creds.thingName, filter, err.message);
        else opts.log.warn({ thing: creds.thingName, filter, err: String(err) }, 'resubscribe failed');
      });
    }
    return session;
  }

  /** IoT Core refused a filter of a thing: it is dropped for good and its owner told. */
  private refused(thingName: string, filter: string, reason: string): void {
    const subs = this.wanted.get(thingName);
    const sub = subs?.get(filter);
    if (!sub) return;
    subs!.delete(filter);
    if (subs!.size === 0) this.wanted.delete(thingName);
    this.opts.log.warn({ thing: thingName, filter, reason }, 'subscription refused upstream; dropped');
    sub.onRefused?.(reason);
  }

  /** Reopens a session that holds subscriptions after it dropped, with backoff until it works. */
  private restore(creds: SessionCredentials, delayMs = 1000): void {
    setTimeout(() => {
      if (this.closing || !this.wanted.get(creds.thingName)?.size) return;
      this.session(creds).catch(() => this.restore(creds, Math.min(delayMs * 2, 60_000) * (0.5 + Math.random() / 2)));
    }, delayMs).unref();
  }

  /** At the cap, closes the least recently used idle session, preferring those without subscriptions. */
  private async makeRoom(): Promise<void> {
    const deadline = Date.now() + this.opts.connectTimeoutMs;
    // Counts open sessions only: connects in progress may pass the cap briefly, bounded by the pacer.
    while (this.open.size >= this.opts.maxSessions) {
      const idle = [...this.open.values()].filter((s) => s.inflight === 0);
      const victim =
        idle.filter((s) => !this.wanted.get(s.thingName)?.size).sort((a, b) => a.lastUsed - b.lastUsed)[0] ??
        idle.sort((a, b) => a.lastUsed - b.lastUsed)[0];
      if (victim) {
        this.opts.log.debug({ thing: victim.thingName }, 'closing least recently used upstream session');
        await this.discard(victim);
        continue;
      }
      if (Date.now() > deadline) throw new Error('no upstream session could be freed');
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  private closeIdle(): void {
    const cutoff = Date.now() - this.opts.idleTimeoutMs;
    for (const s of this.open.values()) {
      if (s.inflight === 0 && s.lastUsed < cutoff && !this.wanted.get(s.thingName)?.size) void this.discard(s);
    }
  }
}

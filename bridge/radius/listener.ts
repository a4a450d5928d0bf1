// RADIUS accounting server (RFC 2866) feeding the IP → identity table. Per datagram:
// known client → well-formed → Accounting-Request → authentic → not a duplicate → meaningful → apply
// (group-committed) → reply. Anything that fails a step is dropped without a reply and counted by reason.

import { createSocket, type RemoteInfo, type Socket } from 'node:dgram';
import { EventEmitter } from 'node:events';
import { isIPv6 } from 'node:net';
import type { Db } from '../../storage/db.ts';
import {
  NetworkSessions,
  type ChangeResult,
  type EndedSession,
  type NetworkSession,
  type NetworkSessionStore,
  type SessionEndCause,
  type SessionLookup,
} from '../../storage/network-sessions.ts';
import { promised } from '../../storage/promised.ts';
import { maskId } from '../../lib/ids.ts';
import { parseAccountingRequest, type AccountingRecord } from './accounting.ts';
import { signAccountingResponse, verifyAccountingRequest } from './authenticator.ts';
import { normaliseAddress } from '../../lib/address-table.ts';
import { ClientTable, type RadiusClientConfig } from './clients.ts';
import { decodePacket, encodePacket, type Packet } from './codec.ts';
import { Attr, Code } from './dictionary.ts';
import { ReplyCache } from './reply-cache.ts';

/** pino-compatible subset. */
export interface RadiusLogger {
  debug(obj: object, msg?: string): void;
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
}

export interface RadiusListenerOptions {
  /** Default '0.0.0.0'; an IPv6 host ('::') gives a dual-stack socket. */
  host?: string;
  /** Default 1813 (RFC 2866 §3); 0 picks a free port. */
  port?: number;
  clients: RadiusClientConfig[];
  /** The session table to feed, and the same table read by address. */
  sessions?: { store: NetworkSessionStore; lookup: SessionLookup };
  /** Without `sessions`: the database to keep a session table in. */
  db?: Db;
  /** How long a reply is kept for retransmissions of its request. Default 30 s. */
  replyCacheMs?: number;
  /**
   * Sessions with no Start/Interim-Update for this long are ended ('expired'). Default 0: never. It is
   * also how long a stopped session is remembered against replays (a day when sessions never expire).
   */
  sessionTimeoutMs?: number;
  /** How often to look for expired sessions. Default a quarter of sessionTimeoutMs, at most 60 s. */
  expiryIntervalMs?: number;
  /** Share one transaction among the packets of one event-loop turn. Default true. */
  groupCommit?: boolean;
  /** Most packets per transaction. Default 512. */
  maxBatch?: number;
  /** Socket receive buffer, bytes: bursts from the NAS wait here while a commit runs. Default 4 MiB. */
  recvBufferSize?: number;
  logger?: RadiusLogger;
  now?: () => number;
}

export interface RadiusCounters {
  received: number;
  /** Answered after their commit (ignored ones included). */
  accepted: number;
  /** Retransmissions answered from the reply cache. */
  duplicates: number;
  /** Replies that could not be sent after their change was committed. */
  sendFailed: number;
  /** Transactions committed (accepted / commits = records per group commit). */
  commits: number;
  /** Dropped without a reply, by reason. */
  dropped: Record<string, number>;
  /** Authentic, answered, but not applied (replays of stopped sessions, stale Event-Timestamps), by reason. */
  ignored: Record<string, number>;
}

export type SessionStartCause = 'start' | 'interim';

export interface RadiusListenerEvents {
  'session-start': [session: NetworkSession, cause: SessionStartCause];
  'session-end': [session: NetworkSession, cause: SessionEndCause];
}

interface Pending {
  record: AccountingRecord;
  packet: Packet;
  secret: Buffer;
  rinfo: RemoteInfo;
  key: string;
}

const silent: RadiusLogger = { debug() {}, info() {}, warn() {}, error() {} };

/** How long a stopped Acct-Session-Id is remembered against replays: the session timeout, else a day. */
export const replayWindow = (sessionTimeoutMs: number): number => sessionTimeoutMs || 24 * 3600_000;

export class RadiusListener extends EventEmitter<RadiusListenerEvents> {
  readonly counters: RadiusCounters = { received: 0, accepted: 0, duplicates: 0, sendFailed: 0, commits: 0, dropped: {}, ignored: {} };
  /** Who holds which IP now (for identifying devices). */
  readonly sessions: SessionLookup;
  /** The session table the listener writes. */
  readonly store: NetworkSessionStore;
  private readonly clients: ClientTable;
  private readonly cache: ReplyCache;
  private readonly log: RadiusLogger;
  private readonly groupCommit: boolean;
  private readonly maxBatch: number;
  private readonly sessionTimeoutMs: number;
  private readonly expiryIntervalMs: number;
  private pending: Pending[] = [];
  private flushScheduled: NodeJS.Immediate | undefined;
  private expiryTimer: NodeJS.Timeout | undefined;
  private closed = false;
  /** Commits on their way (close waits for them). */
  private flushing: Promise<void> = Promise.resolve();

  /** Use startRadiusListener(). */
  constructor(
    private readonly socket: Socket,
    opts: RadiusListenerOptions,
  ) {
    super();
    const now = opts.now ?? Date.now;
    this.clients = new ClientTable(opts.clients);
    this.sessionTimeoutMs = opts.sessionTimeoutMs ?? 0;
    const replayWindowMs = replayWindow(this.sessionTimeoutMs);
    if (!opts.sessions && !opts.db) throw new Error('radius listener: give sessions or db');
    const own = opts.sessions ? undefined : new NetworkSessions(opts.db!, now, replayWindowMs);
    this.sessions = opts.sessions?.lookup ?? own!;
    this.store = opts.sessions?.store ?? promised(own!, ['applyAll', 'expire', 'forgetOldStops', 'byImsi', 'count', 'list']);
    this.cache = new ReplyCache(opts.replyCacheMs ?? 30_000, 100_000, now);
    this.log = opts.logger ?? silent;
    this.groupCommit = opts.groupCommit ?? true;
    this.maxBatch = Math.max(1, opts.maxBatch ?? 512);
    this.expiryIntervalMs = opts.expiryIntervalMs ?? Math.min(60_000, Math.max(1_000, replayWindowMs / 4));
    socket.on('message', (msg, rinfo) => this.onMessage(msg, rinfo));
    // A UDP socket error (e.g. ICMP unreachable surfacing on send) is not a reason to stop listening.
    socket.on('error', (err) => this.log.error({ err }, 'radius socket error'));
  }

  /** Called once the socket is bound. */
  startExpiry(): void {
    if (!this.expiryTimer && !this.closed) {
      this.expiryTimer = setInterval(() => this.expireNow(), this.expiryIntervalMs).unref();
    }
  }

  get port(): number {
    return this.socket.address().port;
  }

  /** Ends sessions idle for longer than sessionTimeoutMs now (the timer calls this too). */
  async expireNow(): Promise<EndedSession[]> {
    let ended: EndedSession[];
    try {
      await this.store.forgetOldStops();
      if (this.sessionTimeoutMs <= 0) return [];
      ended = await this.store.expire(this.sessionTimeoutMs);
    } catch (err) {
      this.log.error({ err }, 'radius session expiry failed');
      return [];
    }
    for (const e of ended) this.emitSafe('session-end', e.session, e.cause);
    if (ended.length) this.log.info({ count: ended.length }, 'radius sessions expired');
    return ended;
  }

  /** Applies and answers what is pending, then stops listening. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.expiryTimer);
    this.flush();
    await this.flushing;
    await new Promise<void>((resolve) => this.socket.close(() => resolve()));
  }

  private drop(reason: string, rinfo: RemoteInfo, detail?: string): void {
    this.counters.dropped[reason] = (this.counters.dropped[reason] ?? 0) + 1;
    this.log.debug({ reason, detail, source: `${rinfo.address}:${rinfo.port}` }, 'radius packet dropped');
  }

  private onMessage(msg: Buffer, rinfo: RemoteInfo): void {
    this.counters.received++;
    const source = normaliseAddress(rinfo.address);
    const client = this.clients.lookup(source);
    if (!client) return this.drop('unknown_client', rinfo);
    const decoded = decodePacket(msg);
    if (!decoded.ok) return this.drop(decoded.error.reason, rinfo, decoded.error.detail);
    const packet = decoded.value;
    // RFC 2866 §3: the accounting port takes Accounting-Requests only.
    if (packet.code !== Code.AccountingRequest) return this.drop('not_accounting_request', rinfo, `code ${packet.code}`);
    // RFC 2866 §4.1: an Accounting-Request that does not authenticate is silently discarded.
    if (!verifyAccountingRequest(packet.bytes, client.secret)) return this.drop('bad_authenticator', rinfo);
    const key = ReplyCache.key(source, rinfo.port, packet.identifier, packet.authenticator);
    const cached = this.cache.get(key);
    if (cached) {
      this.counters.duplicates++;
      return this.send(cached, rinfo);
    }
    if (cached === null) return this.drop('duplicate_in_progress', rinfo);
    const parsed = parseAccountingRequest(packet, source);
    if (!parsed.ok) return this.drop(parsed.error.reason, rinfo, parsed.error.detail);
    const record = parsed.value;
    if ((record.kind === 'start' || record.kind === 'interim') && record.imeiProblem) {
      this.log.warn({ imsi: maskId(record.report.imsi), problem: record.imeiProblem }, 'radius 3GPP-IMEISV unusable, recorded as unknown');
    }
    this.cache.reserve(key);
    this.pending.push({ record, packet, secret: client.secret, rinfo, key });
    if (!this.groupCommit || this.pending.length >= this.maxBatch) this.flush();
    else this.flushScheduled ??= setImmediate(() => this.flushWhenDrained(0));
  }

  /**
   * libuv reads a bounded number of datagrams per poll (32), so a burst spans several loop turns. While the
   * batch still grew in the last turn, the socket is likely not drained yet: wait one more (cheap) turn
   * rather than pay an fsync for a part of the burst.
   */
  private flushWhenDrained(seen: number): void {
    const size = this.pending.length;
    if (size > seen && size < this.maxBatch && !this.closed) {
      this.flushScheduled = setImmediate(() => this.flushWhenDrained(size));
    } else this.flush();
  }

  /**
   * Applies the pending records in one transaction, each in its own savepoint so that one failing record
   * does not take the others down; replies and events follow the commit (RFC 2866 §4.1: respond only
   * once the record is stored).
   */
  private flush(): void {
    if (this.flushScheduled) clearImmediate(this.flushScheduled);
    this.flushScheduled = undefined;
    const batch = this.pending;
    if (batch.length === 0) return;
    this.pending = [];
    const flushed = this.store.applyAll(batch.map((p) => p.record)).then(
      (outcomes) => {
        this.counters.commits++;
        batch.forEach((p, i) => this.settle(p, outcomes[i]!));
      },
      (err: Error) => batch.forEach((p) => this.settle(p, err)),
    );
    this.flushing = Promise.all([this.flushing, flushed]).then(() => undefined);
  }

  private settle(p: Pending, outcome: ChangeResult | Error): void {
    if (outcome instanceof Error) {
      this.cache.forget(p.key);
      this.drop('store_failed', p.rinfo, outcome.message);
      this.log.error({ err: outcome, kind: p.record.kind }, 'radius accounting record not stored');
      return;
    }
    const reply = this.reply(p);
    this.cache.fulfil(p.key, reply);
    this.counters.accepted++;
    this.send(reply, p.rinfo);
    if (outcome.ignored) {
      this.counters.ignored[outcome.ignored] = (this.counters.ignored[outcome.ignored] ?? 0) + 1;
      const r = p.record.kind === 'start' || p.record.kind === 'interim' ? p.record.report : undefined;
      this.log.warn({ reason: outcome.ignored, ip: r?.ip, imsi: r && maskId(r.imsi), source: p.rinfo.address }, 'radius record ignored (replayed or stale)');
    }
    for (const e of outcome.ended) {
      this.log.info({ ip: e.session.ip, imsi: maskId(e.session.imsi), cause: e.cause }, 'radius session ended');
      this.emitSafe('session-end', e.session, e.cause);
    }
    if (outcome.started) this.emitSafe('session-start', outcome.started.session, outcome.started.cause);
  }

  /** Accounting-Response (RFC 2866 §4.2): no attributes of ours; Proxy-State copied in order (RFC 2865 §5.33). */
  private reply(p: Pending): Buffer {
    const response = encodePacket({
      code: Code.AccountingResponse,
      identifier: p.packet.identifier,
      attributes: p.packet.attributes.filter((a) => a.type === Attr.ProxyState),
    });
    return signAccountingResponse(response, p.packet.authenticator, p.secret);
  }

  private send(reply: Buffer, rinfo: RemoteInfo): void {
    const failed = (err: unknown) => {
      this.counters.sendFailed++;
      this.log.warn({ err, destination: `${rinfo.address}:${rinfo.port}` }, 'radius reply not sent');
    };
    try {
      this.socket.send(reply, rinfo.port, rinfo.address, (err) => err && failed(err));
    } catch (err) {
      failed(err); // socket already closed
    }
  }

  /** A throwing event handler must not undo the protocol work around it. */
  private emitSafe<E extends keyof RadiusListenerEvents>(event: E, ...args: RadiusListenerEvents[E]): void {
    try {
      (this.emit as (e: string, ...a: unknown[]) => boolean)(event, ...args);
    } catch (err) {
      this.log.error({ err, event }, 'radius event handler threw');
    }
  }
}

/** Binds the accounting socket; rejects if it cannot (address in use, bad host, bad client list). */
export async function startRadiusListener(opts: RadiusListenerOptions): Promise<RadiusListener> {
  const host = opts.host ?? '0.0.0.0';
  const socket = createSocket({ type: isIPv6(host) ? 'udp6' : 'udp4' });
  let listener: RadiusListener;
  try {
    listener = new RadiusListener(socket, opts);
  } catch (err) {
    socket.close();
    throw err;
  }
  await new Promise<void>((resolve, reject) => {
    const onError = (err: Error) => {
      socket.close();
      reject(err);
    };
    socket.once('error', onError);
    socket.bind(opts.port ?? 1813, host, () => {
      socket.off('error', onError);
      resolve();
    });
  });
  try {
    socket.setRecvBufferSize(opts.recvBufferSize ?? 4 * 1024 * 1024);
  } catch (err) {
    opts.logger?.warn({ err }, 'radius receive buffer size not set');
  }
  listener.startExpiry();
  return listener;
}

import { KeyedTurns } from '../../../lib/keyed-turns.ts';
import { WHILE_CONNECTED, type KeptMessage, type MqttSessionStore, type SessionKey } from '../../../storage/mqtt-sessions.ts';
import type { AdmittedDevice } from '../../admission.ts';
import type { Deliver } from '../../downlink.ts';
import type { DeviceConnection, Outgoing } from './connection.ts';
import type { Endpoint } from './context.ts';

/**
 * One device's MQTT session: its subscriptions (each one on its upstream session) and, while its device
 * is away, where commands go. It outlives its connection only when it asked to (expirySeconds > 0).
 */
export class DeviceSession {
  /** Its subscriptions (filter → granted QoS), made at the first: most devices never subscribe. */
  filters?: Map<string, 0 | 1>;
  conn?: DeviceConnection;
  expirySeconds = 0;
  /** Commands in flight on a connection that was taken over, sent again on the new one. */
  handedOver?: Outgoing[];
  /** While its device is away: when the session ends (ms). */
  endsAt = Infinity;
  /** A will waiting out its MQTT 5 Will Delay Interval: published when it runs out or the session ends, dropped if the device is back first. */
  pendingWill?: { timer: NodeJS.Timeout; publish: () => void };
  /** Its SIM went to another node while its device stayed connected here: its subscriptions went with the upstream session. */
  upstreamLost = false;

  constructor(
    readonly id: string,
    readonly key: SessionKey,
    public device: AdmittedDevice,
    private readonly sessions: Sessions,
  ) {}

  /** Downlink from the upstream subscription: to the device, or kept for it while it sleeps. */
  deliver(topic: string, payload: Buffer, qos: 0 | 1, retain: boolean): void {
    if (this.conn?.state === 'open') this.conn.deliver({ topic, payload, qos, retain });
    else this.sessions.keep(this, { topic, payload, qos });
  }

  /** The same for a subscription that takes no retained messages (Retain Handling 1 or 2, a session taken up again). */
  deliverLive(topic: string, payload: Buffer, qos: 0 | 1, retain: boolean): void {
    if (retain) this.sessions.retainedNotWanted(this, topic);
    else this.deliver(topic, payload, qos, false);
  }

  /** deliver() or deliverLive() as the upstream session calls them, each bound once, at its first use. */
  deliverer(withRetained: boolean): Deliver {
    if (withRetained) return (this.boundDeliver ??= this.deliver.bind(this));
    return (this.boundDeliverLive ??= this.deliverLive.bind(this));
  }

  private boundDeliver?: Deliver;
  private boundDeliverLive?: Deliver;

  /** The subscriptions as they are stored. */
  storedFilters(): Array<[string, 0 | 1]> {
    return this.filters ? [...this.filters] : [];
  }
}

/** Every session of the endpoint: connected ones, and persistent ones whose device is away. */
export class Sessions {
  private readonly byId = new Map<string, DeviceSession>();
  /** Per session id, its store calls one after another (see inOrder). */
  private readonly storeCalls = new KeyedTurns();
  /** Per session id, a device attaching and its session being taken up (takeUp) one after the other. */
  private readonly attachTurns = new KeyedTurns();

  constructor(
    private readonly ep: Endpoint,
    private readonly store: MqttSessionStore | undefined,
  ) {}

  /** Longest session expiry the device's group allows (0 without a store: sessions end with their connection). */
  private maxExpirySeconds(device: AdmittedDevice): number {
    if (!this.store || !this.ep.opts.group) return 0;
    return this.ep.opts.group(device.sim.group).mqttSessions.maxExpirySeconds;
  }

  /**
   * Finds or makes the session of a connecting device. A clean start discards what was kept
   * (MQTT-3.1.2-4); otherwise the session in memory, or the one stored, is resumed (MQTT-3.1.2-5).
   */
  attach(conn: DeviceConnection, device: AdmittedDevice, cleanStart: boolean, expiryAsked: number): Promise<{ session: DeviceSession; present: boolean; expirySeconds: number }> {
    const id = `${device.sim.imsi}/${conn.clientId}`;
    return this.attachTurns.run(id, () => this.attachNow(id, conn, device, cleanStart, expiryAsked));
  }

  private async attachNow(id: string, conn: DeviceConnection, device: AdmittedDevice, cleanStart: boolean, expiryAsked: number): Promise<{ session: DeviceSession; present: boolean; expirySeconds: number }> {
    const key = { imsi: device.sim.imsi, clientId: conn.clientId };
    const expirySeconds = Math.min(expiryAsked, this.maxExpirySeconds(device));
    let session = this.byId.get(id);
    let present = false;
    // MQTT-3.1.2-23 (MQTT 5): a session past its expiry is gone, whether or not the sweep has run yet.
    if (session && !session.conn && session.endsAt <= Date.now()) {
      this.end(session, 'session expired');
      session = undefined;
    }
    if (session && cleanStart) {
      this.end(session, 'clean start');
      session = undefined;
    } else if (!session && cleanStart && this.store && this.maxExpirySeconds(device) > 0) {
      this.accountFor(key.imsi, await this.inOrder(id, (store) => store.remove(key)), 'clean start');
    }
    if (session) {
      present = true;
      const before = session.conn;
      session.conn = undefined;
      // Commands in flight on the connection taken over go to the new one.
      if (before) session.handedOver = before.unacknowledged();
    } else {
      session = new DeviceSession(id, key, device, this);
      const stored = !cleanStart && this.store && this.maxExpirySeconds(device) > 0 ? await this.inOrder(id, (store) => store.load(key)) : undefined;
      if (stored) {
        present = true;
        for (const [filter, qos] of stored.filters) {
          await this.subscribe(session, filter, qos, 0, true).catch((err: Error) => this.ep.opts.log.warn({ thing: device.sim.thingName, filter, err: err.message }, 'stored MQTT subscription not restored'));
        }
      }
      this.byId.set(id, session);
    }
    session.device = device;
    session.expirySeconds = expirySeconds;
    session.endsAt = Infinity;
    if (session.pendingWill) {
      clearTimeout(session.pendingWill.timer); // MQTT-3.1.3-9: the device came back within the delay
      session.pendingWill = undefined;
    }
    session.conn = conn;
    conn.session = session;
    // Its SIM went to another node meanwhile: subscribing again brings it back here.
    if (session.upstreamLost) this.resubscribe(session);
    const filters = session.storedFilters();
    if (expirySeconds > 0) await this.inOrder(id, (store) => store.save(key, { filters, expirySeconds, expiresAt: WHILE_CONNECTED }));
    return { session, present, expirySeconds };
  }

  /** After CONNACK: what was kept for the device goes out (oldest first; removed once acknowledged). */
  resume(session: DeviceSession, conn: DeviceConnection): void {
    const handedOver = session.handedOver;
    session.handedOver = undefined;
    for (const m of handedOver ?? []) if (m.keptId === undefined) conn.deliver(m);
    if (!this.store || session.expirySeconds === 0) return;
    // In order after the commands kept while the device was away, the last of which may still be committing.
    this.inOrder(session.id, (store) => store.pending(session.key)).then(
      (kept: KeptMessage[]) => {
        for (const m of kept) {
          if (session.conn !== conn || conn.state !== 'open') return;
          conn.deliver({ topic: m.topic, payload: m.payload, qos: m.qos, keptId: m.id, expiresAt: m.expiresAt });
        }
      },
      (err: unknown) => this.ep.opts.log.error({ thing: session.device.sim.thingName, err: String(err) }, 'kept MQTT downlink not read'),
    );
  }

  /** A connection ended: its session sleeps (persistent) or ends. Commands it had in flight are kept. */
  detach(conn: DeviceConnection, _clean: boolean): void {
    const session = conn.session;
    if (!session || session.conn !== conn) return;
    session.conn = undefined;
    if (session.expirySeconds === 0 || !this.store) {
      // QoS 1 downlink the device never acknowledged goes with a session that ends here: counted.
      const lost = conn.unacknowledged().length;
      if (lost) this.ep.opts.metrics.downlink.inc({ protocol: 'mqtt', result: 'dropped' }, lost);
      return this.end(session, 'connection closed');
    }
    for (const m of conn.unacknowledged()) if (m.keptId === undefined) this.keep(session, m);
    session.endsAt = Date.now() + session.expirySeconds * 1000;
    const stored = { filters: session.storedFilters(), expirySeconds: session.expirySeconds, expiresAt: session.endsAt };
    this.inOrder(session.id, (store) => store.save(session.key, stored)).catch((err: unknown) => this.ep.opts.log.error({ thing: session.device.sim.thingName, err: String(err) }, 'MQTT session not saved'));
    // Its SIM is another node's: the session, stored, is that node's to take up (see release).
    if (session.upstreamLost && this.byId.get(session.id) === session) this.byId.delete(session.id);
  }

  /**
   * Subscribes the session's device upstream; resolves with the granted QoS. Retained messages IoT Core
   * sends for a new subscription reach the device with RETAIN 1, unless MQTT 5 Retain Handling asks for
   * none (2) or for none on a subscription the session already has (1) (section 3.8.3.1); a stored
   * subscription taken up again (resumed) is no new subscription and gets none either.
   */
  async subscribe(session: DeviceSession, filter: string, qos: number, retainHandling = 0, resumed = false): Promise<0 | 1> {
    const withRetained = !resumed && (retainHandling === 0 || (retainHandling === 1 && !session.filters?.has(filter)));
    const granted = await this.ep.opts.downlink.subscribe(session.device, filter, qos, session.deliverer(withRetained));
    (session.filters ??= new Map()).set(filter, granted);
    return granted;
  }

  /** Unsubscribes; false when the session held no such filter. */
  unsubscribe(session: DeviceSession, filter: string): boolean {
    if (!session.filters?.delete(filter)) return false;
    void this.ep.opts.downlink.unsubscribe(session.device, filter);
    return true;
  }

  /** The session's subscriptions changed: a persistent one writes them down. */
  saved(session: DeviceSession): void {
    if (!this.store || session.expirySeconds === 0) return;
    const stored = { filters: session.storedFilters(), expirySeconds: session.expirySeconds, expiresAt: WHILE_CONNECTED };
    this.inOrder(session.id, (store) => store.save(session.key, stored)).catch((err: unknown) => this.ep.opts.log.error({ thing: session.device.sim.thingName, err: String(err) }, 'MQTT session not saved'));
  }

  /** Keeps a command for a sleeping device (QoS 1 only, bounded per group; QoS 0 is not kept, MQTT-3.1.2-5). */
  keep(session: DeviceSession, msg: Outgoing): void {
    const { metrics, log, group } = this.ep.opts;
    if (msg.qos === 0 || !this.store || session.expirySeconds === 0 || !group) {
      metrics.downlink.inc({ protocol: 'mqtt', result: 'dropped' });
      return;
    }
    const cfg = group(session.device.sim.group).mqttSessions;
    const receivedAt = Date.now();
    const expiresAt = Math.min(msg.expiresAt ?? Infinity, receivedAt + cfg.ttlMs);
    this.inOrder(session.id, (store) => store.keep(session.key, { topic: msg.topic, payload: msg.payload, qos: 1, receivedAt }, cfg.maxMessages, expiresAt)).then(
      (dropped) => {
        metrics.downlink.inc({ protocol: 'mqtt', result: 'held' });
        this.accountFor(session.key.imsi, dropped, `more than ${cfg.maxMessages} kept`);
      },
      (err: unknown) => {
        metrics.downlink.inc({ protocol: 'mqtt', result: 'dropped' });
        log.error({ thing: session.device.sim.thingName, topic: msg.topic, err: String(err) }, 'MQTT downlink not kept');
      },
    );
  }

  /** The device acknowledged a kept command of its session: it is not sent again. */
  delivered(msg: Outgoing, session: DeviceSession | undefined): void {
    this.ep.opts.metrics.downlink.inc({ protocol: 'mqtt', result: 'delivered' });
    if (msg.keptId === undefined || !this.store || !session) return;
    const ids = [msg.keptId];
    this.inOrder(session.id, (store) => store.delivered(ids)).catch((err: unknown) => this.ep.opts.log.warn({ err: String(err) }, 'delivered MQTT downlink not removed; it may be sent again'));
  }

  /** Ends a session: its upstream subscriptions go, and whatever it kept is dropped (audited). */
  end(session: DeviceSession, why: string): void {
    if (this.byId.get(session.id) === session) this.byId.delete(session.id);
    if (session.pendingWill) {
      clearTimeout(session.pendingWill.timer);
      session.pendingWill.publish(); // the session ends before the delay does: the will goes now
      session.pendingWill = undefined;
    }
    for (const filter of session.filters?.keys() ?? []) void this.ep.opts.downlink.unsubscribe(session.device, filter);
    session.filters = undefined;
    if (!this.store || session.expirySeconds === 0) return;
    this.inOrder(session.id, (store) => store.remove(session.key)).then(
      (dropped) => this.accountFor(session.key.imsi, dropped, why),
      (err: unknown) => this.ep.opts.log.error({ err: String(err) }, 'MQTT session not removed'),
    );
  }

  /**
   * Takes up stored sessions: every one at start-up, or (on a node of several) those of the SIMs this
   * node just came to hold. Sessions left connected by a run that is gone start their expiry now, and
   * every stored session of an active SIM subscribes upstream again, so commands sent before its device
   * reconnects are kept. Each is in the table at once (a device reconnecting meanwhile resumes it); the
   * subscriptions follow. A session already here is left as it is, unless its SIM was away meanwhile with
   * its device connected here: its subscriptions are made again.
   */
  async takeUp(imsis?: string[]): Promise<number> {
    const { simOf } = this.ep.opts;
    if (!this.store || imsis?.length === 0) return 0;
    // A device connected here keeps its session connected: only the others were left by a run that is gone.
    await this.store.settle(Date.now(), imsis?.filter((imsi) => !this.ep.bySim.has(imsi)));
    if (!simOf) return 0;
    const taken = (await this.store.list(Date.now(), imsis)).map(async (stored) => {
      const sim = simOf(stored.imsi);
      if (!sim || sim.status !== 'active') return false; // left to expire
      const id = `${stored.imsi}/${stored.clientId}`;
      // After any attach of the same session under way: it may be creating the session itself.
      return this.attachTurns.run(id, async () => {
        const here = this.byId.get(id);
        if (here) {
          if (here.upstreamLost) this.resubscribe(here);
          return false;
        }
        const key = { imsi: stored.imsi, clientId: stored.clientId };
        const session = new DeviceSession(id, key, { sim, imei: sim.boundImei ?? undefined, source: 'stored-session' }, this);
        session.expirySeconds = stored.expirySeconds;
        session.endsAt = stored.expiresAt === WHILE_CONNECTED ? Date.now() + stored.expirySeconds * 1000 : stored.expiresAt;
        if (stored.filters.length) session.filters = new Map(stored.filters);
        this.byId.set(id, session);
        this.resubscribe(session);
        return true;
      });
    });
    return (await Promise.all(taken)).filter(Boolean).length;
  }

  /** A session's stored subscriptions made upstream again (in the background), with no retained messages. */
  private resubscribe(session: DeviceSession): void {
    session.upstreamLost = false;
    for (const [filter, qos] of session.filters ?? []) {
      this.subscribe(session, filter, qos, 0, true).catch((err: Error) => {
        // Refused while the session is still here; not so when its SIM went to another node meanwhile.
        if (this.byId.get(session.id) === session && !session.upstreamLost) session.filters?.delete(filter);
        this.ep.opts.log.warn({ thing: session.device.sim.thingName, filter, err: err.message }, 'stored MQTT subscription not restored');
      });
    }
  }

  /**
   * The SIMs are now another node's (their upstream sessions closed here): their sessions whose device is
   * away leave this node's memory, stored as they are, for the new holder to take up. Those whose device
   * is still connected here stay, their subscriptions made again if the SIM comes back (takeUp).
   */
  release(imsis: string[]): void {
    const gone = new Set(imsis);
    for (const [id, session] of this.byId) {
      if (!gone.has(session.key.imsi)) continue;
      if (session.conn) session.upstreamLost = true;
      else this.byId.delete(id); // a pending will still goes out when its delay runs out
    }
  }

  /** Expired sessions end (unless their device came back) and expired commands go, each accounted for. */
  async sweep(now = Date.now()): Promise<void> {
    if (!this.store) return;
    const { sessions, messages } = await this.store.expire(now);
    for (const key of sessions) {
      const session = this.byId.get(`${key.imsi}/${key.clientId}`);
      if (session && !session.conn) {
        session.expirySeconds = 0; // already removed from the store
        this.end(session, 'session expired');
      }
    }
    for (const m of messages) this.accountFor(m.imsi, [m], m.expiresAt <= now ? 'expired before its device came back' : 'session expired');
  }

  /**
   * Runs a store call for a session after every one made before it for the same session id, in call
   * order. On PostgreSQL each call takes a connection of its own and they overlap: without this a
   * reconnect could read the session before the write of its departure landed (or a session ended just
   * before it, not yet removed), the kept commands before the last one kept committed, and a departure
   * could be overwritten by an earlier save that landed late. Idle, the call runs at once, as before.
   */
  private inOrder<T>(id: string, call: (store: MqttSessionStore) => Promise<T>): Promise<T> {
    const store = this.store!;
    return this.storeCalls.run(id, () => call(store));
  }

  /** A retained message the subscription asked not to get: counted, not sent. */
  retainedNotWanted(session: DeviceSession, topic: string): void {
    this.ep.opts.metrics.downlink.inc({ protocol: 'mqtt', result: 'retained_not_wanted' });
    this.ep.opts.log.debug({ thing: session.device.sim.thingName, topic }, 'retained message not sent (Retain Handling)');
  }

  /** Every dropped command is counted and audited: nothing disappears without a trace. */
  private accountFor(imsi: string, dropped: KeptMessage[], reason: string): void {
    for (const d of dropped) {
      this.ep.opts.metrics.downlink.inc({ protocol: 'mqtt', result: 'dropped' });
      this.ep.audit('downlink_dropped', imsi, { topic: d.topic, receivedAt: d.receivedAt, reason, via: 'mqtt' });
    }
  }

  /** Sessions in memory (connected or asleep). */
  get size(): number {
    return this.byId.size;
  }
}

import type { GroupConfig } from '../config/schema.ts';
import { KeyedTurns } from '../lib/keyed-turns.ts';
import type { AuditStore } from '../storage/audit.ts';
import type { GatewayOutbox } from '../storage/index.ts';
import type { NewMessage, OutboxMessage } from '../storage/outbox.ts';
import type { AdmittedDevice } from './admission.ts';
import type { Metrics } from './metrics.ts';
import { groupTopics, publishNamesImei, UDP_DEVICE_TOPIC, type TopicLimits } from './topics.ts';

export type IngressProtocol = 'mqtt' | 'http' | 'coap' | 'udp';

export type UplinkRefusalReason =
  | 'qos_not_supported'
  | 'payload_too_large'
  | 'topic_empty'
  | 'topic_wildcard'
  | 'topic_invalid'
  | 'topic_too_long'
  | 'topic_too_deep'
  | 'filter_invalid'
  | 'imei_not_bound'
  | 'outbox_full'
  | 'storage_unavailable';

export class UplinkRefusal extends Error {
  constructor(
    readonly reason: UplinkRefusalReason,
    message: string,
  ) {
    super(message);
    this.name = 'UplinkRefusal';
  }
}

export interface OutboxQuota {
  maxRows: number;
  maxBytes: number;
  perDeviceMaxRows: number;
  perDeviceMaxBytes: number;
}

export interface UplinkOptions {
  outbox: GatewayOutbox;
  limits: TopicLimits & { maxPayloadBytes: number };
  quota: () => OutboxQuota;
  group(name: string): GroupConfig;
  audit: AuditStore;
  metrics: Metrics;
}

/**
 * One device message on its way in: check it → make room within the outbox quotas → enqueue durably →
 * the caller acknowledges. Resolves only after the message is committed; every refusal is counted.
 */
export class Uplink {
  constructor(private readonly opts: UplinkOptions) {}

  /**
   * Per SIM, the last of its messages that had to wait before being enqueued (for its quota count, or for
   * room made over the network): the SIM's next messages wait behind it, so a device's messages keep
   * their order. A turn ends once that message is enqueued or refused.
   */
  private readonly turns = new KeyedTurns();

  /** userProperties: MQTT 5 user properties as JSON text of an object, kept with the message for its batch envelope. */
  async accept(protocol: IngressProtocol, device: AdmittedDevice, deviceTopic: string, payload: Buffer, qos: number, userProperties?: string): Promise<number> {
    const group = device.sim.group;
    try {
      this.check(protocol, device, deviceTopic, payload, qos);
      const msg: NewMessage = { imsi: device.sim.imsi, deviceTopic, payload: ownBytes(payload), qos: qos as 0 | 1, receivedAt: Date.now() };
      if (userProperties !== undefined) msg.userProperties = userProperties;
      const queued = this.queue(device, msg);
      // drops: audits of rows dropped to make room (none, nearly always).
      const { committed, drops } = queued instanceof Promise ? await queued : queued;
      let id: number;
      try {
        id = await committed;
      } catch (err) {
        if (drops.length > 0) void Promise.allSettled(drops); // the storage failure is what the device hears
        throw new UplinkRefusal('storage_unavailable', `message not stored: ${(err as Error).message}`);
      }
      if (drops.length > 0) await Promise.all(drops);
      this.opts.metrics.ingress.inc({ protocol, group, result: 'accepted' });
      return id;
    } catch (err) {
      if (err instanceof UplinkRefusal) {
        this.opts.metrics.ingress.inc({ protocol, group, result: 'refused' });
        this.opts.metrics.refusals.inc({ protocol, reason: err.reason });
        // The SIM's state, not the message, is at fault: written down as admission's refusals are.
        if (err.reason === 'imei_not_bound') await this.opts.audit.record('imei_not_bound', device.sim.imsi, { protocol, topic: deviceTopic, seen: device.imei ?? null, detail: err.message });
      }
      throw err;
    }
  }

  /**
   * Checks the quotas, makes room and enqueues: at once when nothing has to be waited for (always on
   * SQLite), else in the SIM's turn. Waiting are: a message behind another of its SIM's; the first count
   * of a SIM another node holds (several nodes); room made over the network (drop-oldest on PostgreSQL),
   * which the message waits for rather than being refused.
   */
  private queue(device: AdmittedDevice, msg: NewMessage): Queued | Promise<Queued> {
    const { imsi } = device.sim;
    const ahead = this.turns.ahead(imsi);
    let counting = ahead ? undefined : this.opts.outbox.quotaReady(imsi);
    if (!ahead && !counting) {
      const room = this.makeRoom(device, msg.payload.length);
      if (Array.isArray(room)) return this.store(msg, room);
      return this.turns.run(imsi, async () => this.store(msg, await room));
    }
    // Its turn comes after the messages ahead of it: only then is its quota checked.
    return this.turns.run(imsi, async () => {
      if (ahead) counting = this.opts.outbox.quotaReady(imsi);
      if (counting) await counting.catch((err: Error) => Promise.reject(new UplinkRefusal('storage_unavailable', `outbox quota not checked: ${err.message}`)));
      const room = this.makeRoom(device, msg.payload.length);
      return this.store(msg, Array.isArray(room) ? room : await room);
    });
  }

  private store(msg: NewMessage, drops: Promise<void>[]): Queued {
    return { committed: this.opts.outbox.enqueue(msg), drops };
  }

  /**
   * Keeps the outbox within its quotas: a full device or outbox refuses the new message (reject-new) or
   * drops the device's oldest to make room (drop-oldest), each drop audited and counted. Never silent.
   * Answers with the drops' audits; later when the room is made over the network (PostgreSQL).
   */
  private makeRoom(device: AdmittedDevice, bytes: number): Promise<void>[] | Promise<Promise<void>[]> {
    const q = this.opts.quota();
    const { outbox } = this.opts;
    const { imsi } = device.sim;
    const fits = () => {
      const mine = outbox.quotaUsage(imsi);
      const all = outbox.usage();
      return (
        mine.rows + 1 <= q.perDeviceMaxRows &&
        mine.bytes + bytes <= q.perDeviceMaxBytes &&
        all.rows + 1 <= q.maxRows &&
        all.bytes + bytes <= q.maxBytes
      );
    };
    if (fits()) return [];
    if (this.opts.group(device.sim.group).overflow !== 'drop-oldest') throw outboxFull();
    const dropping = outbox.dropOldest(imsi, fits);
    if (Array.isArray(dropping)) return this.roomMade(device, dropping, fits);
    return dropping.then(
      (dropped) => this.roomMade(device, dropped, fits),
      (err: Error) => Promise.reject(new UplinkRefusal('storage_unavailable', `no room made in the outbox: ${err.message}`)),
    );
  }

  /** The audits of what was dropped, if that made room; else the message is refused (the drops stand). */
  private roomMade(device: AdmittedDevice, dropped: OutboxMessage[], fits: () => boolean): Promise<void>[] {
    const audited = this.auditDrops(device, dropped);
    if (fits()) return audited;
    void Promise.allSettled(audited);
    throw outboxFull();
  }

  private auditDrops(device: AdmittedDevice, dropped: OutboxMessage[]): Promise<void>[] {
    const { imsi } = device.sim;
    return dropped.map((row) => {
      this.opts.metrics.dropped.inc({ group: device.sim.group, reason: 'outbox_full' });
      return this.opts.audit.record('message_dropped', imsi, { id: row.id, topic: row.deviceTopic, receivedAt: row.receivedAt, bytes: row.payload.length, reason: 'outbox full (drop-oldest)' });
    });
  }

  private check(protocol: IngressProtocol, device: AdmittedDevice, deviceTopic: string, payload: Buffer, qos: number): void {
    const { limits } = this.opts;
    // IoT Core has no QoS 2; we refuse it rather than silently downgrade.
    if (qos !== 0 && qos !== 1) throw new UplinkRefusal('qos_not_supported', `QoS ${qos} is not supported; use QoS 0 or 1`);
    if (payload.length > limits.maxPayloadBytes) {
      throw new UplinkRefusal('payload_too_large', `payload of ${payload.length} bytes exceeds ${limits.maxPayloadBytes}`);
    }
    // Only the raw UDP listener may use the datagram topic.
    if (deviceTopic === UDP_DEVICE_TOPIC && protocol !== 'udp') throw new UplinkRefusal('topic_invalid', topicMessages.topic_invalid!);
    const group = this.opts.group(device.sim.group);
    const { sim } = device;
    // Filled as delivery fills them: with the IMEI the SIM is bound to, whatever the device presents.
    const topics = groupTopics(group, { thing: sim.thingName, imsi: sim.imsi, imei: sim.boundImei ?? '' });
    const problem = topics.checkPublish(deviceTopic, limits);
    if (problem) throw new UplinkRefusal(problem, topicMessages[problem]);
    // Acknowledged, it could only go to the dead letters: IoT Core has no topic for a SIM bound to no IMEI.
    if (sim.boundImei === null && publishNamesImei(group, deviceTopic, topics)) {
      throw new UplinkRefusal('imei_not_bound', "the group's upstream topic names the IMEI ({imei}) and this SIM is bound to no device yet; an installer must bind it");
    }
  }
}

/** A message enqueued: its commit, and the audits of rows dropped to make room for it. */
interface Queued {
  committed: Promise<number>;
  drops: Promise<void>[];
}

const outboxFull = () => new UplinkRefusal('outbox_full', 'the outbox is full for this device or the gateway; try again later');

const topicMessages: Record<string, string> = {
  topic_empty: 'topic is empty',
  topic_wildcard: 'wildcards (+, #) are not allowed in a publish topic',
  topic_invalid: 'topic may not contain NUL or start with $ (except the device\'s own shadow and Jobs requests)',
  topic_too_long: 'topic exceeds 256 bytes upstream',
  topic_too_deep: 'topic exceeds 8 levels upstream',
};

/**
 * The payload in memory of its own. A parser hands payloads over as views into the socket read they
 * came in, and a message waiting in the outbox's tail (storage/outbox.ts) would keep that whole read
 * alive: a read holds many messages, the tail's byte budget counts only payloads. Small copies share
 * Node's Buffer pool.
 */
function ownBytes(payload: Buffer): Buffer {
  return payload.buffer.byteLength > Math.max(2 * payload.length, Buffer.poolSize) ? Buffer.from(payload) : payload;
}

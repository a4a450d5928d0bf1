// What the uplink hands the outbox (bridge/uplink.ts), with a small fake of the outbox's interface.
import { describe, expect, it } from 'vitest';
import type { AdmittedDevice } from '../bridge/admission.ts';
import { createMetrics } from '../bridge/metrics.ts';
import { Uplink } from '../bridge/uplink.ts';
import type { GroupConfig } from '../config/schema.ts';
import type { AuditStore } from '../storage/audit.ts';
import type { GatewayOutbox } from '../storage/index.ts';
import type { NewMessage, OutboxMessage } from '../storage/outbox.ts';

function uplinkInto(enqueued: NewMessage[]): Uplink {
  const outbox = {
    enqueue: async (msg: NewMessage) => enqueued.push(msg),
    usage: () => ({ rows: 0, bytes: 0 }),
    quotaUsage: () => ({ rows: 0, bytes: 0 }),
    quotaReady: () => undefined,
  } as unknown as GatewayOutbox;
  const group = { upstreamTopic: 'devices/{thing}/{topic}', batching: { topic: 'batches/{thing}' }, overflow: 'reject-new' } as unknown as GroupConfig;
  const big = 1 << 30;
  return new Uplink({
    outbox,
    limits: { maxTopicBytes: 256, maxTopicLevels: 8, maxPayloadBytes: 128 * 1024 },
    quota: () => ({ maxRows: big, maxBytes: big, perDeviceMaxRows: big, perDeviceMaxBytes: big }),
    group: () => group,
    audit: { record: async () => undefined } as unknown as AuditStore,
    metrics: createMetrics(),
  });
}

const deviceOf = (imsi: string) =>
  ({ sim: { imsi, group: 'default', thingName: `sim-${imsi}`, boundImei: '490154203237518', status: 'active' }, source: '127.0.0.1' }) as unknown as AdmittedDevice;
const device = deviceOf('001010000000001');
const other = deviceOf('001010000000002');

/**
 * An outbox that drops a device's oldest rows over the network, as on PostgreSQL: each dropOldest waits
 * until the test lets it finish (or fail). It holds rows per SIM; a commit settles at once.
 */
class NetworkOutbox {
  readonly rows = new Map<string, string[]>();
  readonly enqueued: string[] = [];
  readonly drops: Array<{ finish: () => void; fail: (err: Error) => void }> = [];
  private id = 0;

  constructor(readonly maxPerDevice: number) {}

  enqueue(msg: NewMessage): Promise<number> {
    const text = msg.payload.toString();
    this.enqueued.push(text);
    this.rows.set(msg.imsi, [...(this.rows.get(msg.imsi) ?? []), text]);
    return Promise.resolve(++this.id);
  }
  usage(imsi?: string) {
    const n = imsi ? (this.rows.get(imsi)?.length ?? 0) : [...this.rows.values()].reduce((a, r) => a + r.length, 0);
    return { rows: n, bytes: n };
  }
  quotaUsage(imsi: string) {
    return this.usage(imsi);
  }
  quotaReady() {
    return undefined;
  }
  dropOldest(imsi: string, fits: () => boolean): Promise<OutboxMessage[]> {
    return new Promise((resolve, reject) =>
      this.drops.push({
        finish: () => {
          const dropped: OutboxMessage[] = [];
          const rows = this.rows.get(imsi) ?? [];
          while (!fits() && rows.length) dropped.push({ id: 0, imsi, deviceTopic: 'telemetry', payload: Buffer.from(rows.shift()!), qos: 1, receivedAt: 0 });
          resolve(dropped);
        },
        fail: reject,
      }),
    );
  }
}

function uplinkOver(outbox: NetworkOutbox, audited: string[], maxRows = 1 << 30): Uplink {
  const group = { upstreamTopic: 'devices/{thing}/{topic}', batching: { topic: 'batches/{thing}' }, overflow: 'drop-oldest' } as unknown as GroupConfig;
  const big = 1 << 30;
  return new Uplink({
    outbox: outbox as unknown as GatewayOutbox,
    limits: { maxTopicBytes: 256, maxTopicLevels: 8, maxPayloadBytes: 128 * 1024 },
    quota: () => ({ maxRows, maxBytes: big, perDeviceMaxRows: outbox.maxPerDevice, perDeviceMaxBytes: big }),
    group: () => group,
    audit: { record: async (_kind: string, _imsi: string, detail: { bytes: number }) => void audited.push(`dropped ${detail.bytes}`) } as unknown as AuditStore,
    metrics: createMetrics(),
  });
}

const send = (uplink: Uplink, d: AdmittedDevice, text: string) => uplink.accept('mqtt', d, 'telemetry', Buffer.from(text), 1);
const settled = () => new Promise((r) => setImmediate(r));

describe('the uplink', () => {
  it('keeps a payload sliced from a large socket read as bytes of its own, not a view that holds the read', async () => {
    const enqueued: NewMessage[] = [];
    const uplink = uplinkInto(enqueued);
    const read = Buffer.alloc(64 * 1024, 'r');
    read.write('reading-1', 1000);
    await uplink.accept('mqtt', device, 'telemetry', read.subarray(1000, 1009), 1);
    // A payload that is already all of its buffer (a body read on its own) is taken as it is.
    const alone = Buffer.from(new Uint8Array(Buffer.from('reading-2')));
    await uplink.accept('http', device, 'telemetry', alone, 1);
    expect(enqueued.map((m) => m.payload.toString())).toEqual(['reading-1', 'reading-2']);
    expect(enqueued[0]!.payload.buffer.byteLength).toBeLessThanOrEqual(Buffer.poolSize);
    expect(enqueued[1]!.payload).toBe(alone);
  });

  it('drop-oldest over the network: the message that finds its device full waits for the room and is accepted; the device\'s next ones wait behind it, other devices do not', async () => {
    const outbox = new NetworkOutbox(2);
    const audited: string[] = [];
    const uplink = uplinkOver(outbox, audited);
    outbox.rows.set(device.sim.imsi, ['o1', 'o2']);
    const first = send(uplink, device, 'n1');
    const second = send(uplink, device, 'n2');
    const elsewhere = await send(uplink, other, 'x1');
    await settled();
    // Nothing of the full device is enqueued before its room is made; the other device went ahead.
    expect(outbox.enqueued).toEqual(['x1']);
    expect(outbox.drops).toHaveLength(1);
    outbox.drops[0]!.finish();
    expect(await first).toBeGreaterThan(elsewhere);
    await settled();
    // n2 found the device full again (o2 and n1): its own drop, in its turn.
    expect(outbox.drops).toHaveLength(2);
    outbox.drops[1]!.finish();
    await second;
    expect(outbox.enqueued).toEqual(['x1', 'n1', 'n2']);
    expect(outbox.rows.get(device.sim.imsi)).toEqual(['n1', 'n2']);
    expect(audited).toEqual(['dropped 2', 'dropped 2']);
  });

  it('drop-oldest over the network: a drop that fails refuses its message as storage_unavailable, and the device\'s next message makes room again', async () => {
    const outbox = new NetworkOutbox(1);
    const uplink = uplinkOver(outbox, []);
    outbox.rows.set(device.sim.imsi, ['o1']);
    const first = send(uplink, device, 'n1');
    const second = send(uplink, device, 'n2');
    await settled();
    outbox.drops[0]!.fail(new Error('connection lost'));
    await expect(first).rejects.toMatchObject({ reason: 'storage_unavailable' });
    await settled();
    outbox.drops[1]!.finish();
    await second;
    expect(outbox.rows.get(device.sim.imsi)).toEqual(['n2']);
  });

  it('drop-oldest over the network: when dropping the device\'s oldest leaves no room (the gateway\'s outbox is full), the message is refused outbox_full', async () => {
    const outbox = new NetworkOutbox(5);
    const audited: string[] = [];
    const uplink = uplinkOver(outbox, audited, 2);
    outbox.rows.set(device.sim.imsi, ['o1']);
    outbox.rows.set(other.sim.imsi, ['x1', 'x2']);
    const refused = send(uplink, device, 'n1');
    await settled();
    outbox.drops[0]!.finish();
    await expect(refused).rejects.toMatchObject({ reason: 'outbox_full' });
    expect(audited).toEqual(['dropped 2']); // the drop stands, and is audited
    expect(outbox.enqueued).toEqual([]);
  });
});

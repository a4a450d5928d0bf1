// What the uplink hands the outbox (bridge/uplink.ts), with a small fake of the outbox's interface.
import { describe, expect, it } from 'vitest';
import type { AdmittedDevice } from '../bridge/admission.ts';
import { createMetrics } from '../bridge/metrics.ts';
import { Uplink } from '../bridge/uplink.ts';
import type { GroupConfig } from '../config/schema.ts';
import type { AuditStore } from '../storage/audit.ts';
import type { GatewayOutbox } from '../storage/index.ts';
import type { NewMessage } from '../storage/outbox.ts';

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

const device = {
  sim: { imsi: '001010000000001', group: 'default', thingName: 'sim-001010000000001', boundImei: '490154203237518', status: 'active' },
  source: '127.0.0.1',
} as unknown as AdmittedDevice;

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
});

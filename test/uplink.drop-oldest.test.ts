// drop-oldest on the real outbox of each dialect: a message that finds its device full is accepted once
// the device's oldest rows are dropped (at once on SQLite, over the network on PostgreSQL), in order.
import { describe, expect, it } from 'vitest';
import type { AdmittedDevice } from '../bridge/admission.ts';
import { createMetrics } from '../bridge/metrics.ts';
import { Uplink } from '../bridge/uplink.ts';
import type { GroupConfig } from '../config/schema.ts';
import type { GatewayOutbox } from '../storage/index.ts';
import type { CommitWriter } from '../storage/outbox-commit.ts';
import { storeDialects } from './helpers/store-dialects.ts';

const IMSI = '001010000000301';
const device = {
  sim: { imsi: IMSI, group: 'lossy', thingName: `sim-${IMSI}`, boundImei: '490154203237518', status: 'active' },
  source: '127.0.0.1',
} as unknown as AdmittedDevice;

describe.each(storeDialects())('drop-oldest on $name', (dialect) => {
  it('accepts every message of a full device, each after its commit, dropping and auditing the oldest; what is left is the newest, in order', async () => {
    const f = await dialect.fresh();
    const writer: CommitWriter = { commit: (req) => f.commit(req), ready: async () => undefined, close: async () => undefined };
    const outbox = (await f.outbox(writer)) as unknown as GatewayOutbox;
    const metrics = createMetrics();
    const big = 1 << 30;
    const uplink = new Uplink({
      outbox,
      limits: { maxTopicBytes: 256, maxTopicLevels: 8, maxPayloadBytes: 128 * 1024 },
      quota: () => ({ maxRows: big, maxBytes: big, perDeviceMaxRows: 3, perDeviceMaxBytes: big }),
      group: () => ({ upstreamTopic: 'devices/{thing}/{topic}', batching: { topic: 'batches/{thing}' }, overflow: 'drop-oldest' }) as unknown as GroupConfig,
      audit: f.stores.audit,
      metrics,
    });
    const send = (text: string) => uplink.accept('mqtt', device, 'telemetry', Buffer.from(text), 1);
    for (const text of ['m1', 'm2', 'm3']) await send(text);

    // Three more at once, as a device pipelines its publishes: each finds the device full.
    const ids = await Promise.all(['m4', 'm5', 'm6'].map(send));
    const stored = await f.sql<{ id: number; payload: Buffer }>('SELECT id, payload FROM outbox WHERE imsi = ? ORDER BY id', IMSI);
    expect(stored.map((r) => r.payload.toString())).toEqual(['m4', 'm5', 'm6']);
    expect(stored.map((r) => Number(r.id))).toEqual(ids); // each acknowledged id is a committed row
    const audit = await f.stores.audit.query({ imsi: IMSI, kinds: ['message_dropped'] });
    expect(audit.items.map((e) => e.detail.reason)).toEqual(Array(3).fill('outbox full (drop-oldest)'));
    expect(await metrics.registry.getSingleMetricAsString('simbridge_messages_dropped_total')).toMatch(/group="lossy",reason="outbox_full"} 3/);
    expect(outbox.usage(IMSI).rows).toBe(3);
  });
});

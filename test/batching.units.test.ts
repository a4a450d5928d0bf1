import { describe, expect, it, vi } from 'vitest';
import { batchingSection, type BatchingConfig } from '../config/batching.ts';
import { encodeReading, EnvelopeBuilder } from '../bridge/batching/envelope.ts';
import { plan, type PlanInput } from '../bridge/batching/planner.ts';
import { BatchSchedules } from '../bridge/batching/schedules.ts';
import { DeviceTopics } from '../bridge/topics.ts';
import type { OutboxMessage } from '../storage/outbox.ts';
import { decodeBatch } from '../docs/examples/decode-batch.mjs';

const T0 = Date.parse('2026-11-22T10:00:00Z');
const identity = { imsi: '001010000000901', imei: '490154203237518', thing: 'sim-001010000000901' };
const topics = new DeviceTopics('devices/{thing}/{topic}', { thing: identity.thing, imsi: identity.imsi, imei: identity.imei });
const BATCH_TOPIC = `devices/${identity.thing}/batch`;

function rows(payloads: Array<string | Buffer>, start = T0): OutboxMessage[] {
  return payloads.map((p, i) => ({ id: i + 1, imsi: identity.imsi, deviceTopic: `meter/${i}`, payload: Buffer.isBuffer(p) ? p : Buffer.from(p), qos: 1, receivedAt: start + i * 1000 }));
}

function input(cfg: Partial<BatchingConfig>, r: OutboxMessage[], extra: Partial<PlanInput> = {}): PlanInput {
  return {
    rows: r,
    more: false,
    cfg: batchingSection.parse(cfg),
    topics,
    identity,
    batchTopic: BATCH_TOPIC,
    maxMessageBytes: 131072,
    now: T0 + 100_000,
    releaseBefore: -Infinity,
    ...extra,
  };
}

/** The size a batch of these rows would have, envelope and topic included. */
function batchBytes(r: OutboxMessage[]): number {
  const b = new EnvelopeBuilder(identity);
  for (const row of r) b.add(encodeReading(row));
  return b.build().length + Buffer.byteLength(BATCH_TOPIC);
}

describe('the batch envelope', () => {
  it('round-trips JSON and binary payloads through the documented decoder, in order', () => {
    const r = rows(['{"kwh":12.5,"ok":true}', Buffer.from([0, 1, 2, 255]), '[1,2,3]', 'plain text, not JSON', Buffer.alloc(0)]);
    const b = new EnvelopeBuilder(identity);
    for (const row of r) b.add(encodeReading(row));
    const out = decodeBatch(b.build());
    expect(out.map((m) => m.topic)).toEqual(r.map((x) => x.deviceTopic));
    expect(out.map((m) => m.encoding)).toEqual(['json', 'base64', 'json', 'base64', 'base64']);
    expect(out[0]!.payload).toEqual({ kwh: 12.5, ok: true });
    expect(out[1]!.payload).toEqual(Buffer.from([0, 1, 2, 255]));
    expect(out[2]!.payload).toEqual([1, 2, 3]);
    expect((out[3]!.payload as Buffer).toString()).toBe('plain text, not JSON');
    expect(out[0]!.receivedAt.toISOString()).toBe('2026-11-22T10:00:00.000Z');
    expect(out[0]).toMatchObject({ imsi: identity.imsi, imei: identity.imei, thing: identity.thing });
  });

  it('knows its exact size before each addition', () => {
    const b = new EnvelopeBuilder(identity);
    for (const row of rows(['{"a":1}', Buffer.from('xyz'), '"é"'])) {
      const encoded = encodeReading(row);
      const predicted = b.sizeWith(encoded);
      b.add(encoded);
      expect(b.build().length).toBe(predicted);
    }
  });
});

describe('batching policies', () => {
  it('immediate: every message goes as it is, on its own topic', () => {
    const { units } = plan(input({ policy: 'immediate' }, rows(['a', 'b'])));
    expect(units.map((u) => [u.topic, u.payload.toString(), u.batched])).toEqual([
      [`devices/${identity.thing}/meter/0`, 'a', false],
      [`devices/${identity.thing}/meter/1`, 'b', false],
    ]);
  });

  it('window: a batch closes at maxMessages', () => {
    const { units } = plan(input({ policy: 'window', maxMessages: 3 }, rows(['1', '2', '3', '4', '5', '6', '7']), { now: T0 + 1000 }));
    expect(units.map((u) => u.rows.map((r) => r.id))).toEqual([[1, 2, 3], [4, 5, 6]]);
  });

  it('window: maxBytes counts envelope and topic; exactly at the limit fits, one byte over does not', () => {
    const r = rows(['{"v":1}', '{"v":2}', '{"v":3}']);
    const exact = batchBytes(r);
    const atLimit = plan(input({ policy: 'window', maxBytes: exact }, r));
    expect(atLimit.units.map((u) => u.rows.length)).toEqual([3]);
    expect(atLimit.units[0]!.payload.length + Buffer.byteLength(BATCH_TOPIC)).toBe(exact);
    const oneOver = plan(input({ policy: 'window', maxBytes: exact - 1 }, r));
    expect(oneOver.units.map((u) => u.rows.length)).toEqual([2, 1]);
    for (const u of oneOver.units) expect(u.payload.length + Buffer.byteLength(BATCH_TOPIC)).toBeLessThanOrEqual(exact - 1);
  });

  it('window: an open batch waits until maxDelay after its first message', () => {
    const r = rows(['a', 'b']);
    const early = plan(input({ policy: 'window', maxDelayMs: 60_000 }, r, { now: T0 + 10_000 }));
    expect(early.units).toEqual([]);
    expect(early.waitMs).toBe(50_000);
    const due = plan(input({ policy: 'window', maxDelayMs: 60_000 }, r, { now: T0 + 60_000 }));
    expect(due.units.map((u) => u.rows.length)).toEqual([2]);
  });

  it('window: a message larger than maxBytes goes alone, as it is', () => {
    const big = Buffer.alloc(6000, 7);
    const { units } = plan(input({ policy: 'window', maxBytes: 5120 }, rows(['a', big, 'b'])));
    expect(units.map((u) => [u.rows.map((r) => r.id), u.batched])).toEqual([
      [[1], true],
      [[2], false],
      [[3], true],
    ]);
    expect(units[1]!.payload).toEqual(big);
  });

  it('schedule: nothing goes before the schedule fires; then all that arrived before it, split by maxBytes', () => {
    const r = rows(Array.from({ length: 10 }, (_, i) => `{"reading":${i},"pad":"${'x'.repeat(200)}"}`));
    expect(plan(input({ policy: 'schedule' }, r, { now: T0 + 3600_000 })).units).toEqual([]);
    const fired = plan(input({ policy: 'schedule', maxBytes: 1024 }, r, { releaseBefore: T0 + 5500 }));
    const ids = fired.units.flatMap((u) => u.rows.map((x) => x.id));
    expect(ids).toEqual([1, 2, 3, 4, 5, 6]); // received at T0 .. T0+5 s
    expect(fired.units.length).toBeGreaterThan(1);
    for (const u of fired.units) expect(u.payload.length + Buffer.byteLength(BATCH_TOPIC)).toBeLessThanOrEqual(1024);
  });

  it('schedule: node-cron fires at the configured time in the configured time zone', async () => {
    vi.useFakeTimers();
    try {
      // 10:59:58 in Berlin is 09:59:58 UTC on this date.
      vi.setSystemTime(new Date('2026-11-22T09:59:58Z'));
      const fired: Array<[string, string]> = [];
      const schedules = new BatchSchedules((g) => fired.push([g, new Date().toISOString()]));
      schedules.apply({ meters: { batching: batchingSection.parse({ policy: 'schedule', schedule: '0 11 * * *', timezone: 'Europe/Berlin' }) } } as never);
      await vi.advanceTimersByTimeAsync(1000);
      expect(fired).toEqual([]);
      await vi.advanceTimersByTimeAsync(3000);
      expect(fired.map((f) => f[0])).toEqual(['meters']);
      expect(fired[0]![1].startsWith('2026-11-22T10:00:0')).toBe(true);
      schedules.stop();
    } finally {
      vi.useRealTimers();
    }
  });
});

import { describe, expect, it, vi } from 'vitest';
import { batchingSection, type BatchingConfig } from '../config/batching.ts';
import { EnvelopeBuilder, prepare } from '../bridge/batching/envelope.ts';
import { plan, type PlanInput } from '../bridge/batching/planner.ts';
import { BatchSchedules } from '../bridge/batching/schedules.ts';
import { DeviceTopics } from '../bridge/topics.ts';
import type { OutboxMessage } from '../storage/outbox.ts';
import { decodeBatch } from '../docs/examples/decode-batch.mjs';

const T0 = Date.parse('2026-11-22T10:00:00Z');
const identity = { imsi: '001010000000901', imei: '490154203237518', thing: 'sim-001010000000901' };
const topics = new DeviceTopics('devices/{thing}/{topic}', { thing: identity.thing, imsi: identity.imsi, imei: identity.imei });
const BATCH_TOPIC = `devices/${identity.thing}/batch`;

function rows(payloads: Array<string | Buffer>, start = T0, topic = (i: number) => `meter/${i}`): OutboxMessage[] {
  return payloads.map((p, i) => ({ id: i + 1, imsi: identity.imsi, deviceTopic: topic(i), payload: Buffer.isBuffer(p) ? p : Buffer.from(p), qos: 1, receivedAt: start + i * 1000 }));
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

function envelope(r: OutboxMessage[]): Buffer {
  const b = new EnvelopeBuilder(identity);
  for (const row of r) expect(b.tryAdd(prepare(row), Infinity)).toBe(true);
  return b.build();
}

/** The size a batch of these rows would have, envelope and topic included. */
const batchBytes = (r: OutboxMessage[]) => envelope(r).length + Buffer.byteLength(BATCH_TOPIC);

/** A 200-byte JSON reading, like a meter's. */
const reading200 = (i: number) => {
  const head = `{"kwh":${12.5 + i},"seq":${i},"pad":"`;
  return `${head}${'x'.repeat(200 - head.length - 2)}"}`;
};

describe('the batch envelope', () => {
  it('is version 2: identity, t0, each topic once, readings as [offset, topic index, payload(, encoding)]', () => {
    const r = rows(['{"kwh":12.5}', Buffer.from([0, 1, 2, 255]), '{"kwh":12.6}'], T0, (i) => (i === 1 ? 'raw' : 'meter'));
    r[1]!.receivedAt = T0 + 5000;
    r[2]!.receivedAt = T0 - 250; // the clock stepped back
    expect(envelope(r).toString()).toBe(
      `{"v":2,"imsi":"${identity.imsi}","imei":"${identity.imei}","thing":"${identity.thing}","t0":${T0},"topics":["meter","raw"],` +
        `"m":[[0,0,{"kwh":12.5}],[5000,1,"AAEC/w==","base64"],[-250,0,{"kwh":12.6}]]}`,
    );
  });

  it('round-trips JSON and binary payloads through the documented decoder, in order', () => {
    const payloads: Array<string | Buffer> = [
      '{"kwh":12.5,"ok":true}',
      Buffer.from([0, 1, 2, 255]), // not UTF-8
      '[1,2,3]',
      'plain text, not JSON', // UTF-8, not JSON
      Buffer.alloc(0),
      '"hello"', // a JSON string: spliced as JSON, not mistaken for base64
      '{"ort":"Zürich ☃ 😀"}', // multibyte UTF-8 JSON
      ' {"a": 1}\n', // JSON with whitespace around it
      Buffer.from([0xf0, 0x90, 0x80, 0x7b, 0x7d]), // a truncated UTF-8 sequence before {}: not UTF-8
      '\ufeff{"bom":1}', // a byte order mark is not JSON
    ];
    const r = rows(payloads, T0, (i) => (i % 3 === 0 ? 'meter' : `zähler/${i % 2}`));
    r[4]!.receivedAt = T0 - 1500; // the clock stepped back
    const out = decodeBatch(envelope(r));
    expect(out.map((m) => m.topic)).toEqual(r.map((x) => x.deviceTopic));
    expect(out.map((m) => m.receivedAt.getTime())).toEqual(r.map((x) => x.receivedAt));
    expect(out.map((m) => m.encoding)).toEqual(['json', 'base64', 'json', 'base64', 'base64', 'json', 'json', 'json', 'base64', 'base64']);
    expect(out.map((m) => m.payload)).toEqual([
      { kwh: 12.5, ok: true },
      Buffer.from([0, 1, 2, 255]),
      [1, 2, 3],
      Buffer.from('plain text, not JSON'),
      Buffer.alloc(0),
      'hello',
      { ort: 'Zürich ☃ 😀' },
      { a: 1 },
      Buffer.from([0xf0, 0x90, 0x80, 0x7b, 0x7d]),
      Buffer.from('\ufeff{"bom":1}'),
    ]);
    expect(out[0]!.receivedAt.toISOString()).toBe('2026-11-22T10:00:00.000Z');
    for (const m of out) expect(m).toMatchObject({ imsi: identity.imsi, imei: identity.imei, thing: identity.thing });
  });

  it('splices JSON payloads verbatim', () => {
    const text = ' {"ort":"Zürich ☃ 😀", "n": 1.50}\n';
    expect(envelope(rows([text])).includes(Buffer.from(`,${text}]`))).toBe(true);
  });

  it('still decodes version 1 envelopes', () => {
    const v1 = JSON.stringify({
      v: 1,
      imsi: identity.imsi,
      imei: null,
      thing: identity.thing,
      messages: [
        { ts: '2026-11-22T10:00:00.000Z', topic: 'meter', encoding: 'json', payload: { kwh: 12.5 } },
        { ts: '2026-11-22T10:00:05.000Z', topic: 'raw', encoding: 'base64', payload: 'AAEC/w==' },
      ],
    });
    expect(decodeBatch(v1)).toEqual([
      { imsi: identity.imsi, imei: null, thing: identity.thing, topic: 'meter', receivedAt: new Date(T0), payload: { kwh: 12.5 }, encoding: 'json' },
      { imsi: identity.imsi, imei: null, thing: identity.thing, topic: 'raw', receivedAt: new Date(T0 + 5000), payload: Buffer.from([0, 1, 2, 255]), encoding: 'base64' },
    ]);
    expect(() => decodeBatch({ v: 3 })).toThrow(/version 3/);
  });

  it('knows its exact size: each reading fits a limit of exactly its size and not one byte less, new topics included', () => {
    // Binary payloads of 3, 1 and 2 bytes: base64 with no padding, then two and one '='.
    const r = rows(['{"a":1}', Buffer.from('xyz'), '"é"', '{"b":2}', Buffer.alloc(0), Buffer.from([0xff]), Buffer.from([0, 1])], T0, (i) => ['meter', 'zähler', 'meter', 'raw', 'zähler', 'raw', 'meter'][i]!);
    const reference = new EnvelopeBuilder(identity);
    const b = new EnvelopeBuilder(identity);
    for (const row of r) {
      const p = prepare(row);
      reference.tryAdd(p, Infinity);
      expect(reference.size).toBe(reference.build().length);
      expect(b.tryAdd(p, reference.size - 1)).toBe(false);
      expect(b.count).toBe(reference.count - 1);
      expect(b.tryAdd(p, reference.size)).toBe(true);
      expect(b.build()).toEqual(reference.build());
    }
  });

  it('carries 22 readings of 200-byte JSON in one 5120-byte batch, topic included', () => {
    const r = rows(Array.from({ length: 40 }, (_, i) => reading200(i)), T0, () => 'meter');
    expect(r.every((x) => x.payload.length === 200)).toBe(true);
    const { units } = plan(input({ policy: 'window', maxBytes: 5120 }, r));
    expect(BATCH_TOPIC).toBe('devices/sim-001010000000901/batch');
    expect(units[0]!.rows.length).toBeGreaterThanOrEqual(22);
    expect(units[0]!.payload.length + Buffer.byteLength(BATCH_TOPIC)).toBeLessThanOrEqual(5120);
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

  it.each([
    ['every reading on its own topic', (i: number) => `meter/${i}`],
    ['one topic', () => 'meter'],
    // The last reading's new topic lengthens the head: counting only its element would let it cross the limit.
    ['the reading that would cross the limit introduces a second topic', (i: number) => (i < 2 ? 'meter' : 'zähler/raw')],
  ])('window: maxBytes counts envelope and topic; exactly at the limit fits, one byte over does not (%s)', (_name, topic) => {
    const pad = 'x'.repeat(100); // maxBytes is at least 256
    const r = rows([`{"v":1,"pad":"${pad}"}`, `{"v":2,"pad":"${pad}"}`, Buffer.alloc(100, 3)], T0, topic);
    const exact = batchBytes(r);
    const atLimit = plan(input({ policy: 'window', maxBytes: exact }, r));
    expect(atLimit.units.map((u) => u.rows.length)).toEqual([3]);
    expect(atLimit.units[0]!.payload.length + Buffer.byteLength(BATCH_TOPIC)).toBe(exact);
    const oneOver = plan(input({ policy: 'window', maxBytes: exact - 1 }, r));
    expect(oneOver.units.map((u) => u.rows.length)).toEqual([2, 1]);
    for (const u of oneOver.units) expect(u.payload.length + Buffer.byteLength(BATCH_TOPIC)).toBeLessThanOrEqual(exact - 1);
    expect(oneOver.units.flatMap((u) => decodeBatch(u.payload).map((m) => m.topic))).toEqual(r.map((x) => x.deviceTopic));
  });

  it('window: an open batch waits until maxDelay after its first message', () => {
    const r = rows(['a', 'b']);
    const early = plan(input({ policy: 'window', maxDelayMs: 60_000 }, r, { now: T0 + 10_000 }));
    expect(early.units).toEqual([]);
    expect(early.waitMs).toBe(50_000);
    const due = plan(input({ policy: 'window', maxDelayMs: 60_000 }, r, { now: T0 + 60_000 }));
    expect(due.units.map((u) => u.rows.length)).toEqual([2]);
  });

  it('window: an open batch continued reading by reading gives the batches planning all rows at once gives', () => {
    const cfg = { policy: 'window' as const, maxDelayMs: 600_000, maxBytes: 5120 };
    // Two topics, so the batch head grows as well; 50 readings make two full batches and an open third.
    const r = rows(Array.from({ length: 50 }, (_, i) => reading200(i)), T0, (i) => (i % 7 === 3 ? 'raw' : 'meter'));
    const whole = plan(input(cfg, r, { now: T0 + 60_000 }));
    let open: PlanInput['open'];
    const sent: Array<{ ids: number[]; payload: string }> = [];
    for (let k = 0; k < r.length; k++) {
      const step = plan(input(cfg, r.slice(k, k + 1), { open, now: T0 + 60_000 }));
      sent.push(...step.units.map((u) => ({ ids: u.rows.map((x) => x.id), payload: u.payload.toString() })));
      open = step.open;
      if (!open) expect(step.units.length).toBeGreaterThan(0);
    }
    expect(whole.units.length).toBe(2);
    expect(sent).toEqual(whole.units.map((u) => ({ ids: u.rows.map((x) => x.id), payload: u.payload.toString() })));
    expect(open?.rows.map((x) => x.id)).toEqual(r.slice(sent.flatMap((s) => s.ids).length).map((x) => x.id));
    // Due later: the continued open batch goes as the third, like the whole plan's.
    const late = plan(input(cfg, [], { open, now: T0 + 700_000 }));
    expect(late.units.map((u) => u.rows.map((x) => x.id))).toEqual([r.slice(sent.flatMap((s) => s.ids).length).map((x) => x.id)]);
    expect(late.units[0]!.payload.equals(plan(input(cfg, r, { now: T0 + 700_000 })).units[2]!.payload)).toBe(true);
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

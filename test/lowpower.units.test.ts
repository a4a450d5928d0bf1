import { describe, expect, it } from 'vitest';
import { configSchema } from '../config/schema.ts';
import { CoapResponseCache, ENTRY_OVERHEAD_BYTES } from '../bridge/ingress/coap-response-cache.ts';
import { DatagramGuard } from '../bridge/ingress/datagram-guard.ts';
import { DeviceTopics, UDP_DEVICE_TOPIC } from '../bridge/topics.ts';

describe('low-power configuration', () => {
  it('refuses a claimed raw UDP listener with the key path', () => {
    const r = configSchema.safeParse({ listeners: { udp: { enabled: true, identity: 'claimed' } } });
    expect(r.success).toBe(false);
    expect(r.error!.issues[0]).toMatchObject({ path: ['listeners', 'udp', 'identity'] });
    expect(r.error!.issues[0]!.message).toMatch(/nowhere to claim/);
  });

  it('needs RADIUS for a radius-identified UDP listener only when it is enabled', () => {
    expect(configSchema.safeParse({}).success).toBe(true);
    const r = configSchema.safeParse({ listeners: { udp: { enabled: true } } });
    expect(r.error!.issues[0]).toMatchObject({ path: ['listeners', 'udp', 'identity'], message: 'radius identity needs radius.enabled: true' });
  });

  it('defaults: CoAP 5683 (on in the sandbox only), UDP 23080 off, udpTopic devices/{thing}/udp, udpAck none', () => {
    const c = configSchema.parse({});
    expect(c.listeners.coap).toMatchObject({ port: 5683, identity: 'claimed', emptyAckAfterMs: 0 });
    expect(c.listeners.coap.enabled).toBeUndefined();
    expect(c.listeners.udp).toMatchObject({ port: 23080, enabled: false, identity: 'radius' });
    expect(c.groups.default).toMatchObject({ udpTopic: 'devices/{thing}/udp', udpAck: 'none' });
  });
});

describe('raw UDP topic', () => {
  const topics = new DeviceTopics('devices/{thing}/{topic}', { thing: 'sim-1', imsi: '1', imei: '2' }, 'meters/{imsi}/raw');
  it('maps the datagram topic through udpTopic, and nothing else', () => {
    expect(topics.toUpstream(UDP_DEVICE_TOPIC)).toBe('meters/1/raw');
    expect(topics.toUpstream('udp')).toBe('devices/sim-1/udp');
    expect(topics.checkPublish(UDP_DEVICE_TOPIC, { maxTopicBytes: 256, maxTopicLevels: 8 })).toBeUndefined();
    expect(new DeviceTopics('devices/{thing}/{topic}', { thing: 't', imsi: '1', imei: '2' }).checkPublish(UDP_DEVICE_TOPIC, { maxTopicBytes: 256, maxTopicLevels: 8 })).toBe('topic_invalid');
  });
});

describe('datagram guard', () => {
  it('drops empty and oversize datagrams and an address over its rate, not the others', () => {
    let now = 0;
    const guard = new DatagramGuard({ maxDatagramBytes: 100, perAddressPerSecond: 10, perAddressBurst: 3, maxAddresses: 2, now: () => now });
    expect(guard.check('10.0.0.1', 0)).toBe('datagram_empty');
    expect(guard.check('10.0.0.1', 101)).toBe('datagram_too_large');
    expect([1, 2, 3, 4].map(() => guard.check('10.0.0.1', 10))).toEqual([undefined, undefined, undefined, 'rate_limited']);
    expect(guard.check('10.0.0.2', 10)).toBeUndefined();
    now += 100; // one token back at 10/s
    expect(guard.check('::ffff:10.0.0.1', 10)).toBeUndefined();
    expect(guard.check('10.0.0.1', 10)).toBe('rate_limited');
    // A third address evicts the least recently seen (10.0.0.2), whose bucket starts full again.
    guard.check('10.0.0.3', 10);
    expect([1, 2, 3].map(() => guard.check('10.0.0.2', 10))).toEqual([undefined, undefined, undefined]);
  });
});

describe('CoAP response cache', () => {
  const ack = (id: number) => Buffer.from([0x60, 0x44, id >> 8, id & 0xff]); // ACK 2.04
  const con = (id: number) => Buffer.from([0x40, 0x44, id >> 8, id & 0xff]); // CON 2.04 (a separate response)
  const withSender = (b: Buffer) => Object.assign(b, { sender: { resets: 0, reset() { this.resets++; } } });

  it('answers a key for the exchange lifetime, then forgets it', () => {
    let now = 1000;
    const cache = new CoapResponseCache(1 << 20, 247_000, () => now);
    cache.set('a/1', ack(1));
    expect(cache.peek('a/1')).toEqual(ack(1));
    now += 246_999;
    expect(cache.peek('a/1')).toEqual(ack(1));
    now += 1;
    expect(cache.peek('a/1')).toBeUndefined();
    cache.purgeStale();
    expect(cache.size).toBe(0);
  });

  it('counts bookkeeping against its bound and lets the oldest go first', () => {
    const cost = 4 + 3 + ENTRY_OVERHEAD_BYTES;
    const cache = new CoapResponseCache(cost * 3, 247_000);
    for (let i = 1; i <= 5; i++) cache.set(`a/${i}`, ack(i));
    expect(cache.size).toBe(3);
    expect(cache.peek('a/1')).toBeUndefined();
    expect(cache.peek('a/2')).toBeUndefined();
    expect(cache.peek('a/5')).toEqual(ack(5));
  });

  it("stops a sent-once answer's sender at once, and a Confirmable one's only when the entry goes", async () => {
    const cache = new CoapResponseCache(1 << 20, 247_000);
    const once = withSender(ack(1));
    const retried = withSender(con(2));
    cache.set('a/1', once);
    cache.set('a/2', retried);
    await Promise.resolve();
    expect(once.sender).toBeUndefined();
    expect(retried.sender.resets).toBe(0);
    // The device acknowledged the separate response: the library deletes the entry.
    expect(cache.delete('a/2')).toBe(true);
    expect(retried.sender.resets).toBe(1);
  });
});

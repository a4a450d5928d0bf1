import mqttPacket, { type Packet } from 'mqtt-packet';
import { describe, expect, it } from 'vitest';
import { readPublish } from '../bridge/ingress/mqtt/publish-frame.ts';

// The device endpoint reads plain PUBLISHes itself and leaves every other packet to mqtt-packet: what it
// reads must be what mqtt-packet would have read, and what it cannot read must be left to it.

type Level = 3 | 4 | 5;

/** Every packet mqtt-packet's parser reads from `bytes` at `level`, or its error. */
function parsedByLibrary(bytes: Buffer, level: Level): { packets: Packet[]; error?: string } {
  const parser = mqttPacket.parser({ protocolVersion: level });
  const packets: Packet[] = [];
  let error: string | undefined;
  parser.on('packet', (p: Packet) => packets.push(p));
  parser.on('error', (err: Error) => (error ??= err.message));
  parser.parse(bytes);
  return { packets, error };
}

const plain = (p: object) => JSON.parse(JSON.stringify(p)) as unknown;

/** A deterministic pseudo-random sequence, so a failure can be replayed. */
function random(seed: number): () => number {
  let s = seed;
  return () => ((s = (s * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
}

describe('reading a plain PUBLISH without the parser', () => {
  it('reads what mqtt-packet reads, field for field, for 600 generated publishes at levels 3, 4 and 5', () => {
    const next = random(7);
    let read = 0;
    for (let i = 0; i < 600; i++) {
      const level = ([3, 4, 5] as const)[i % 3]!;
      const qos = (i % 2) as 0 | 1;
      // Topics up to 300 bytes with multi-byte characters; payloads 0 to 20,000 bytes (1 to 3 length bytes).
      const topic = `devices/${'é'.repeat(Math.floor(next() * 60))}/${'t'.repeat(Math.floor(next() * 180))}`;
      const payload = Buffer.alloc(Math.floor(next() ** 3 * 20_000), i);
      const bytes = mqttPacket.generate(
        { cmd: 'publish', topic, payload, qos, messageId: qos ? 1 + Math.floor(next() * 65_535) : undefined, retain: next() < 0.2, dup: qos === 1 && next() < 0.2 },
        { protocolVersion: level },
      );
      // A following packet in the same chunk must be left where it starts.
      const chunk = Buffer.concat([bytes, Buffer.from([0xc0, 0])]);
      const framed = readPublish(chunk, 0, level, 1 << 20);
      const library = parsedByLibrary(bytes, level);
      expect(library.error).toBeUndefined();
      expect(framed, `publish ${i}`).toBeDefined();
      expect(framed!.next).toBe(bytes.length);
      expect(plain(framed!.packet)).toEqual(plain(library.packets[0]!));
      expect(Buffer.compare(framed!.packet.payload as Buffer, payload)).toBe(0);
      read++;
    }
    expect(read).toBe(600);
  });

  it('reads a publish at an offset into the chunk, the payload a view of the chunk', () => {
    const a = mqttPacket.generate({ cmd: 'publish', topic: 'a', payload: Buffer.from('one'), qos: 1, messageId: 1, retain: false, dup: false }, { protocolVersion: 4 });
    const b = mqttPacket.generate({ cmd: 'publish', topic: 'b/c', payload: Buffer.from('two'), qos: 0, retain: false, dup: false }, { protocolVersion: 4 });
    const chunk = Buffer.concat([a, b]);
    const first = readPublish(chunk, 0, 4, 1000)!;
    const second = readPublish(chunk, first.next, 4, 1000)!;
    expect([first.packet.topic, first.packet.messageId, String(first.packet.payload)]).toEqual(['a', 1, 'one']);
    expect([second.packet.topic, second.packet.messageId, String(second.packet.payload)]).toEqual(['b/c', undefined, 'two']);
    expect(second.next).toBe(chunk.length);
    expect((second.packet.payload as Buffer).buffer).toBe(chunk.buffer);
  });

  it('leaves to the parser what it does not read: other packets, QoS 2, MQTT 5 properties, a packet in part, one above the limit', () => {
    const publish = (extra: object, level: Level = 4) =>
      mqttPacket.generate({ cmd: 'publish', topic: 't', payload: Buffer.alloc(300), qos: 1, messageId: 9, retain: false, dup: false, ...extra } as Packet, { protocolVersion: level });
    const whole = publish({});
    expect(readPublish(whole, 0, 4, 1000)).toBeDefined();
    // Every cut short of the whole packet (the header's length bytes included) waits for the parser.
    for (let cut = 0; cut < whole.length; cut++) expect(readPublish(whole.subarray(0, cut), 0, 4, 1000), `cut at ${cut}`).toBeUndefined();
    expect(readPublish(whole, 0, 4, 299)).toBeUndefined();
    expect(readPublish(publish({ qos: 2 }), 0, 4, 1000)).toBeUndefined();
    expect(readPublish(publish({ properties: { topicAlias: 3 } }, 5), 0, 5, 1000)).toBeUndefined();
    expect(readPublish(publish({ properties: { userProperties: { a: 'b' } } }, 5), 0, 5, 1000)).toBeUndefined();
    for (const other of [
      { cmd: 'pingreq' },
      { cmd: 'puback', messageId: 4 },
      { cmd: 'subscribe', messageId: 2, subscriptions: [{ topic: 'x', qos: 1 }] },
      { cmd: 'disconnect' },
    ]) {
      expect(readPublish(mqttPacket.generate(other as Packet, { protocolVersion: 4 }), 0, 4, 1000), other.cmd).toBeUndefined();
    }
  });

  it('leaves malformed publishes to the parser, which refuses each of them', () => {
    const malformed: Array<[string, Buffer]> = [
      ['both QoS bits set', Buffer.from([0x36, 5, 0, 1, 0x74, 0, 1])],
      ['no topic at all', Buffer.from([0x30, 0])],
      ['a topic longer than the packet', Buffer.from([0x30, 4, 0, 9, 0x61, 0x62])],
      ['a five-byte remaining length', Buffer.from([0x30, 0xff, 0xff, 0xff, 0xff, 0x01, 0])],
    ];
    for (const [what, bytes] of malformed) {
      expect(readPublish(bytes, 0, 4, 1 << 28), what).toBeUndefined();
      expect(parsedByLibrary(bytes, 4).error, what).toBeDefined();
    }
  });
});

// Parsers lent to MQTT connections (lib/lent-parsers.ts): packets reach the connection whose bytes they
// were, however packets of several connections arrive in part and interleaved.
import mqttPacket, { type Packet } from 'mqtt-packet';
import { describe, expect, it } from 'vitest';
import { LentParsers } from '../lib/lent-parsers.ts';

const publish = (topic: string) => mqttPacket.generate({ cmd: 'publish', topic, payload: Buffer.from(topic), qos: 0, retain: false, dup: false });

describe('lent MQTT parsers', () => {
  it('keeps a packet that arrived in part with its connection, and lends the parser again once read to the end', () => {
    const got: string[] = [];
    const errors: string[] = [];
    const parsers = new LentParsers<string>({
      packet: (conn, packet: Packet) => got.push(`${conn}:${(packet as { topic: string }).topic}`),
      error: (conn, err) => errors.push(`${conn}:${err.message}`),
    });
    const a = publish('a/1');
    const b = publish('b/1');
    let heldA = parsers.read('A', undefined, a.subarray(0, 4));
    expect(heldA).toBeDefined();
    // B speaks while A's packet is in part: B's bytes go to another parser.
    const heldB = parsers.read('B', undefined, Buffer.concat([b, publish('b/2')]));
    expect(heldB).toBeUndefined();
    heldA = parsers.read('A', heldA, Buffer.concat([a.subarray(4), publish('a/2')]));
    expect(heldA).toBeUndefined();
    expect(got).toEqual(['B:b/1', 'B:b/2', 'A:a/1', 'A:a/2']);
    // A malformed packet is an error of the connection that sent it; its parser is not lent again.
    const heldC = parsers.read('C', undefined, Buffer.from([0x00, 0x00]));
    expect(errors).toEqual([expect.stringMatching(/^C:/)]);
    expect(heldC).toBeDefined();
    expect(parsers.read('D', undefined, publish('d/1'))).toBeUndefined();
    expect(got.at(-1)).toBe('D:d/1');
    // One parser serves connections that speak in turn.
    const e = publish('e/1');
    const lent = parsers.read('E', undefined, e.subarray(0, 3));
    expect(parsers.read('E', lent, e.subarray(3))).toBeUndefined();
    expect(parsers.read('F', undefined, e.subarray(0, 3))).toBe(lent);
  });
});

import type { IPublishPacket } from 'mqtt-packet';

/** A PUBLISH read straight from a chunk, and where the next packet starts. */
export interface FramedPublish {
  packet: IPublishPacket;
  next: number;
}

/**
 * Reads the plainest PUBLISH (QoS 0 or 1, and in MQTT 5 without properties) whole from `chunk` at
 * `offset`, as mqtt-packet's parser would have read it: the same fields, the payload a view of the chunk.
 * Anything else answers undefined and goes to the parser: another packet type, QoS 2 or 3, MQTT 5
 * properties, a packet larger than `maxBytes` (which the parser path refuses), one that is not whole in
 * the chunk, or a malformed one (which the parser reports).
 *
 * Why not the parser for every packet: the PUBLISH is nearly all a device sends, and mqtt-packet reads
 * each one through a buffer list, state machine and debug calls, a fifth of what the main thread
 * allocated per message at 3,000 msgs/s (bench/results/changes.md).
 */
export function readPublish(chunk: Buffer, offset: number, level: 3 | 4 | 5, maxBytes: number): FramedPublish | undefined {
  const first = chunk[offset];
  // Type 3, QoS bits 00 or 01 (DUP and RETAIN are the handler's to judge).
  if (first === undefined || first >> 4 !== 3 || (first & 0x04) !== 0) return undefined;
  const qos = (first >> 1) & 1;
  // Remaining length: a variable byte integer of at most four bytes.
  let length = 0;
  let pos = offset + 1;
  for (let shift = 0; ; shift += 7) {
    if (shift > 21 || pos >= chunk.length) return undefined;
    const byte = chunk[pos++]!;
    length += (byte & 0x7f) * 2 ** shift;
    if (byte < 0x80) break;
  }
  const end = pos + length;
  if (length > maxBytes || end > chunk.length || pos + 2 > end) return undefined;
  const topicEnd = pos + 2 + ((chunk[pos]! << 8) | chunk[pos + 1]!);
  let at = topicEnd + (qos === 1 ? 2 : 0);
  if (level === 5) {
    // The property length; 0 (one byte) is the only one read here.
    if (at >= end || chunk[at] !== 0) return undefined;
    at++;
  }
  if (at > end) return undefined;
  const packet: IPublishPacket = {
    cmd: 'publish',
    retain: (first & 0x01) !== 0,
    qos: qos as 0 | 1,
    dup: (first & 0x08) !== 0,
    length,
    topic: chunk.toString('utf8', pos + 2, topicEnd),
    payload: chunk.subarray(at, end),
  };
  if (qos === 1) packet.messageId = (chunk[topicEnd]! << 8) | chunk[topicEnd + 1]!;
  return { packet, next: end };
}

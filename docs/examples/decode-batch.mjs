// Unpacks a simbridge batch envelope (version 1) into the device's original messages.
// Usage in a cloud consumer (e.g. a Lambda behind an IoT rule on devices/+/batch):
//   import { decodeBatch } from './decode-batch.mjs';
//   for (const m of decodeBatch(event)) handle(m.topic, m.payload, m.receivedAt);
export function decodeBatch(envelope) {
  const doc = typeof envelope === 'string' || envelope instanceof Uint8Array ? JSON.parse(Buffer.from(envelope).toString('utf8')) : envelope;
  if (doc.v !== 1) throw new Error(`unsupported batch envelope version ${doc.v}`);
  return doc.messages.map((m) => ({
    imsi: doc.imsi,
    imei: doc.imei,
    thing: doc.thing,
    topic: m.topic,
    receivedAt: new Date(m.ts),
    // JSON readings come back as the parsed value; others as the exact bytes the device sent.
    payload: m.encoding === 'json' ? m.payload : Buffer.from(m.payload, 'base64'),
    encoding: m.encoding,
  }));
}

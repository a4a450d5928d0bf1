// Unpacks a simbridge batch envelope (version 2, or an older version 1) into the device's original messages.
// Usage in a cloud consumer (e.g. a Lambda behind an IoT rule on devices/+/batch):
//   import { decodeBatch } from './decode-batch.mjs';
//   for (const m of decodeBatch(event)) handle(m.topic, m.payload, m.receivedAt);
export function decodeBatch(envelope) {
  const doc = typeof envelope === 'string' || envelope instanceof Uint8Array ? JSON.parse(Buffer.from(envelope).toString('utf8')) : envelope;
  const reading = (topic, receivedAt, payload, encoding, userProperties) => {
    if (encoding !== 'json' && encoding !== 'base64') throw new Error(`unsupported payload encoding ${encoding}`);
    // JSON readings come back as the parsed value; others as the exact bytes the device sent.
    const m = { imsi: doc.imsi, imei: doc.imei, thing: doc.thing, topic, receivedAt, payload: encoding === 'json' ? payload : Buffer.from(payload, 'base64'), encoding };
    return userProperties === undefined ? m : { ...m, userProperties };
  };
  // [ms after t0, index into topics, payload] is JSON; a fourth element names any other encoding; a fifth
  // holds the MQTT 5 user properties the device sent with the reading.
  if (doc.v === 2) return doc.m.map(([offset, topic, payload, encoding = 'json', userProperties]) => reading(doc.topics[topic], new Date(doc.t0 + offset), payload, encoding, userProperties));
  if (doc.v === 1) return doc.messages.map((m) => reading(m.topic, new Date(m.ts), m.payload, m.encoding));
  throw new Error(`unsupported batch envelope version ${doc.v}`);
}

/**
 * The batch envelope, version 1 (docs/batching.md): one upstream message carrying several readings of
 * one device, its identity written once.
 *
 *   {"v":1,"imsi":"…","imei":"…","thing":"…","messages":[
 *     {"ts":"2026-11-22T10:00:00.000Z","topic":"meter","encoding":"json","payload":{"kwh":12.5}},
 *     {"ts":"2026-11-22T10:00:05.000Z","topic":"raw","encoding":"base64","payload":"AAEC"}]}
 *
 * A JSON payload is spliced in verbatim (so the envelope stays valid JSON and the reading keeps its
 * bytes); anything else is base64. Sizes are counted exactly while building, so a batch never exceeds
 * its byte budget.
 */

export const ENVELOPE_VERSION = 1;

export interface Reading {
  receivedAt: number;
  deviceTopic: string;
  payload: Buffer;
}

export interface Identity {
  imsi: string;
  imei: string | null;
  thing: string;
}

/** One reading as its JSON text inside the envelope. */
export function encodeReading(r: Reading): string {
  const head = `{"ts":${JSON.stringify(new Date(r.receivedAt).toISOString())},"topic":${JSON.stringify(r.deviceTopic)},`;
  const json = asJsonText(r.payload);
  return json !== undefined
    ? `${head}"encoding":"json","payload":${json}}`
    : `${head}"encoding":"base64","payload":"${r.payload.toString('base64')}"}`;
}

/** The payload's text when it is exactly a UTF-8 JSON document, else undefined. */
function asJsonText(payload: Buffer): string | undefined {
  if (payload.length === 0) return undefined;
  const text = payload.toString('utf8');
  if (!Buffer.from(text, 'utf8').equals(payload)) return undefined;
  try {
    JSON.parse(text);
  } catch {
    return undefined;
  }
  return text;
}

/** Builds envelopes reading by reading, knowing the exact size before each addition. */
export class EnvelopeBuilder {
  private readonly head: string;
  private readonly tail = ']}';
  private readonly parts: string[] = [];
  private bytes: number;

  constructor(identity: Identity) {
    this.head = `{"v":${ENVELOPE_VERSION},"imsi":${JSON.stringify(identity.imsi)},"imei":${JSON.stringify(identity.imei)},"thing":${JSON.stringify(identity.thing)},"messages":[`;
    this.bytes = Buffer.byteLength(this.head) + Buffer.byteLength(this.tail);
  }

  /** Bytes of the envelope if this encoded reading were added. */
  sizeWith(encoded: string): number {
    return this.bytes + Buffer.byteLength(encoded) + (this.parts.length > 0 ? 1 : 0);
  }

  add(encoded: string): void {
    this.bytes = this.sizeWith(encoded);
    this.parts.push(encoded);
  }

  get count(): number {
    return this.parts.length;
  }

  get size(): number {
    return this.bytes;
  }

  build(): Buffer {
    return Buffer.from(this.head + this.parts.join(',') + this.tail, 'utf8');
  }
}

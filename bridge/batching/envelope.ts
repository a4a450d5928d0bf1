/**
 * The batch envelope, version 2 (docs/batching.md): one upstream message carrying several readings of
 * one device, its identity written once.
 *
 *   {"v":2,"imsi":"…","imei":"…","thing":"…","t0":1795341600000,"topics":["meter","raw"],
 *    "m":[[0,0,{"kwh":12.5}],[5000,1,"AAEC/w==","base64"]]}
 *
 * Each reading is [ms after t0, index into topics, payload] when the payload is a UTF-8 JSON document
 * (spliced in verbatim, so the envelope stays valid JSON and the reading keeps its bytes), else
 * [ms after t0, index into topics, base64 of the payload, "base64"]. IoT Core bills per 5 KB, so a
 * reading costs only its payload and about ten bytes. Sizes are counted exactly while building, so a
 * batch never exceeds its byte budget.
 */
import { isUtf8 } from 'node:buffer';

export interface Reading {
  receivedAt: number;
  deviceTopic: string;
  payload: Buffer;
  /** MQTT 5 user properties, JSON text of an object: a fifth element of the reading. */
  userProperties?: string;
}

export interface Identity {
  imsi: string;
  imei: string | null;
  thing: string;
}

/** A reading with its payload already in envelope form: what does not depend on the batch it joins. */
export interface PreparedReading {
  receivedAt: number;
  deviceTopic: string;
  /** The payload's JSON text, or `"<base64>","base64"`. */
  body: string;
  bodyBytes: number;
}

/** Puts a reading's payload in envelope form, once per reading whatever batch it ends up in. */
export function prepare(r: Reading): PreparedReading {
  const json = asJsonText(r.payload);
  // JSON text was decoded from exactly these bytes, and base64 is ASCII: no byteLength needed.
  let body = json ?? `"${r.payload.toString('base64')}","base64"`;
  let bodyBytes = json !== undefined ? r.payload.length : body.length;
  // User properties follow the encoding, which is then written even for JSON: [offset, topic, payload, "json", {…}].
  if (r.userProperties !== undefined) {
    const tail = `${json !== undefined ? ',"json"' : ''},${r.userProperties}`;
    body += tail;
    bodyBytes += Buffer.byteLength(tail);
  }
  return { receivedAt: r.receivedAt, deviceTopic: r.deviceTopic, body, bodyBytes };
}

/** The payload's text when it is exactly a UTF-8 JSON document, else undefined. */
function asJsonText(payload: Buffer): string | undefined {
  if (payload.length === 0 || !isUtf8(payload)) return undefined;
  const text = payload.toString('utf8');
  try {
    JSON.parse(text);
  } catch {
    return undefined;
  }
  return text;
}

const TOPICS = ',"topics":[';
const MESSAGES = '],"m":[';
const TAIL = ']}';

/** Builds envelopes reading by reading, refusing any reading that would make it exceed a byte limit. */
export class EnvelopeBuilder {
  private readonly head: string;
  private readonly topicIndex = new Map<string, number>();
  private readonly topics: string[] = [];
  private readonly parts: string[] = [];
  private t0 = 0;
  /** Exact bytes of build(), t0 included once the first reading is in. */
  private bytes: number;

  constructor(identity: Identity) {
    this.head = `{"v":2,"imsi":${JSON.stringify(identity.imsi)},"imei":${JSON.stringify(identity.imei)},"thing":${JSON.stringify(identity.thing)},"t0":`;
    this.bytes = Buffer.byteLength(this.head) + TOPICS.length + MESSAGES.length + TAIL.length;
  }

  /** Adds the reading when the envelope then stays within maxBytes; otherwise leaves the envelope as it was. */
  tryAdd(r: PreparedReading, maxBytes: number): boolean {
    const first = this.parts.length === 0;
    const t0 = first ? r.receivedAt : this.t0;
    let index = this.topicIndex.get(r.deviceTopic);
    let topic: string | undefined;
    let bytes = this.bytes + (first ? String(t0).length : 1); // t0, or the comma before this reading
    if (index === undefined) {
      // A new topic lengthens the head: its JSON string, after a comma unless it is the first.
      index = this.topics.length;
      topic = JSON.stringify(r.deviceTopic);
      bytes += Buffer.byteLength(topic) + (index > 0 ? 1 : 0);
    }
    const start = `[${r.receivedAt - t0},${index},`;
    bytes += start.length + r.bodyBytes + 1;
    if (bytes > maxBytes) return false;
    if (topic !== undefined) {
      this.topicIndex.set(r.deviceTopic, index);
      this.topics.push(topic);
    }
    this.t0 = t0;
    this.parts.push(`${start}${r.body}]`);
    this.bytes = bytes;
    return true;
  }

  get count(): number {
    return this.parts.length;
  }

  get size(): number {
    return this.bytes;
  }

  build(): Buffer {
    if (this.parts.length === 0) throw new Error('an envelope needs at least one reading');
    return Buffer.from(`${this.head}${this.t0}${TOPICS}${this.topics.join(',')}${MESSAGES}${this.parts.join(',')}${TAIL}`, 'utf8');
  }
}

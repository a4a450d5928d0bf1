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

/**
 * A reading with its envelope encoding decided: what does not depend on the batch it joins. It keeps the
 * reading (its payload's bytes), not their text: a window batch holds its readings for up to
 * maxDelayMs, and a second copy of each payload as a string (with the strings spliced around it) was a
 * third of what a held reading cost on the heap; the text is written once, at build.
 */
export interface PreparedReading {
  reading: Reading;
  /** The payload is a UTF-8 JSON document, spliced in verbatim; else it goes as base64. */
  json: boolean;
  /** Exact bytes of the reading's body: its payload as encoded, and its user properties. */
  bodyBytes: number;
}

/** Decides a reading's encoding and its exact size, once per reading whatever batch it ends up in. */
export function prepare(r: Reading): PreparedReading {
  const json = isJsonDocument(r.payload);
  // base64 is ASCII: 4 characters per 3 bytes, and `"…","base64"` around it.
  const payloadBytes = json ? r.payload.length : 4 * Math.ceil(r.payload.length / 3) + BASE64_SUFFIX.length + 2;
  const tail = userPropertiesTail(r, json);
  return { reading: r, json, bodyBytes: payloadBytes + (tail === undefined ? 0 : Buffer.byteLength(tail)) };
}

const BASE64_SUFFIX = ',"base64"';

/** User properties follow the encoding, which is then written even for JSON: [offset, topic, payload, "json", {…}]. */
function userPropertiesTail(r: Reading, json: boolean): string | undefined {
  return r.userProperties === undefined ? undefined : `${json ? ',"json"' : ''},${r.userProperties}`;
}

/** The reading's body as it goes in the envelope. */
function bodyText({ reading: r, json }: PreparedReading): string {
  const body = json ? r.payload.toString('utf8') : `"${r.payload.toString('base64')}"${BASE64_SUFFIX}`;
  return body + (userPropertiesTail(r, json) ?? '');
}

/** True when the payload is exactly a UTF-8 JSON document. */
function isJsonDocument(payload: Buffer): boolean {
  if (payload.length === 0 || !isUtf8(payload)) return false;
  try {
    JSON.parse(payload.toString('utf8'));
  } catch {
    return false;
  }
  return true;
}

const TOPICS = ',"topics":[';
const MESSAGES = '],"m":[';
const TAIL = ']}';

/** Builds envelopes reading by reading, refusing any reading that would make it exceed a byte limit. */
export class EnvelopeBuilder {
  private readonly head: string;
  private readonly topicIndex = new Map<string, number>();
  private readonly topics: string[] = [];
  /** The readings in: their text is written at build. */
  private readonly readings: PreparedReading[] = [];
  private t0 = 0;
  /** Exact bytes of build(), t0 included once the first reading is in. */
  private bytes: number;

  constructor(identity: Identity) {
    this.head = `{"v":2,"imsi":${JSON.stringify(identity.imsi)},"imei":${JSON.stringify(identity.imei)},"thing":${JSON.stringify(identity.thing)},"t0":`;
    this.bytes = Buffer.byteLength(this.head) + TOPICS.length + MESSAGES.length + TAIL.length;
  }

  /** Adds the reading when the envelope then stays within maxBytes; otherwise leaves the envelope as it was. */
  tryAdd(r: PreparedReading, maxBytes: number): boolean {
    const { receivedAt, deviceTopic } = r.reading;
    const first = this.readings.length === 0;
    const t0 = first ? receivedAt : this.t0;
    let index = this.topicIndex.get(deviceTopic);
    let topic: string | undefined;
    let bytes = this.bytes + (first ? String(t0).length : 1); // t0, or the comma before this reading
    if (index === undefined) {
      // A new topic lengthens the head: its JSON string, after a comma unless it is the first.
      index = this.topics.length;
      topic = JSON.stringify(deviceTopic);
      bytes += Buffer.byteLength(topic) + (index > 0 ? 1 : 0);
    }
    // "[offset,index," before the body and "]" after it; offset and index are decimal integers.
    bytes += String(receivedAt - t0).length + String(index).length + 3 + r.bodyBytes + 1;
    if (bytes > maxBytes) return false;
    if (topic !== undefined) {
      this.topicIndex.set(deviceTopic, index);
      this.topics.push(topic);
    }
    this.t0 = t0;
    this.readings.push(r);
    this.bytes = bytes;
    return true;
  }

  get count(): number {
    return this.readings.length;
  }

  get size(): number {
    return this.bytes;
  }

  build(): Buffer {
    if (this.readings.length === 0) throw new Error('an envelope needs at least one reading');
    const parts = this.readings.map((r) => `[${r.reading.receivedAt - this.t0},${this.topicIndex.get(r.reading.deviceTopic)},${bodyText(r)}]`);
    return Buffer.from(`${this.head}${this.t0}${TOPICS}${this.topics.join(',')}${MESSAGES}${parts.join(',')}${TAIL}`, 'utf8');
  }
}

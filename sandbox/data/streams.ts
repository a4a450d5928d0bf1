// IoT MQTT-based file delivery on the data plane (Developer Guide, "Using AWS IoT MQTT-based file
// delivery in devices"):
//   $aws/things/{thing}/streams/{streamId}/describe/json → .../description/json {c?, s, d?, r: [{f, z}]}
//   $aws/things/{thing}/streams/{streamId}/get/json      → .../data/json {c?, f, l, i, p} once per block
// each refused on .../rejected/json {o: code, m: message, c?}. Request keys are IoT Core's short ones:
// c clientToken (at most 64 bytes), s stream version, f fileId, l block size (256..131072 bytes),
// o offset (index of the first block), n number of blocks (default 1; at most the blocks left in the file).
// Answers go to the asking client only, like Jobs answers. CBOR (.../cbor) is not served by the sandbox:
// such a request is dropped with a log line (docs/fidelity.md).
import type { StreamStore } from '../streams.ts';
import type { Answer } from './jobs.ts';

const STREAMS = /^\$aws\/things\/([^/]+)\/streams\/([^/]+)\/([^/]+)\/(json|cbor)$/;
export const MIN_BLOCK = 256;
export const MAX_BLOCK = 131_072;
const MAX_TOKEN_BYTES = 64;

type Parsed = { thing: string; streamId: string; op: string; format: string };

function streamsTopic(topic: string): Parsed | undefined {
  const m = STREAMS.exec(topic);
  return m ? { thing: m[1]!, streamId: m[2]!, op: m[3]!, format: m[4]! } : undefined;
}

/** A GetStream or DescribeStream request: IoT Core's, never forwarded to subscribers. */
export function isStreamsRequest(topic: string): boolean {
  const t = streamsTopic(topic);
  return t !== undefined && (t.op === 'get' || t.op === 'describe');
}

/** An answer (data, description, rejected): delivered to the asking client only. */
export function isStreamsAnswer(topic: string): boolean {
  const t = streamsTopic(topic);
  return t !== undefined && (t.op === 'data' || t.op === 'description' || t.op === 'rejected');
}

/** Why a device may not publish on this streams topic (answers are IoT Core's), or undefined. */
export function streamsPublishViolation(topic: string): string | undefined {
  return isStreamsAnswer(topic) ? `${topic} is a reserved file delivery topic devices only subscribe to` : undefined;
}

class Rejection extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

export class StreamsTopics {
  constructor(
    private readonly streams: StreamStore,
    private readonly log: (msg: string) => void = () => undefined,
  ) {}

  /** The answers to a request (for the asking client), or undefined when the topic is not a request. */
  handle(topic: string, payload: Buffer): Answer[] | undefined {
    const t = streamsTopic(topic);
    if (!t || !isStreamsRequest(topic)) return undefined;
    if (t.format === 'cbor') {
      this.log(`CBOR file delivery request on ${topic} not served by the sandbox`);
      return [];
    }
    const base = `$aws/things/${t.thing}/streams/${t.streamId}`;
    let token: unknown;
    try {
      const r = parse(payload);
      token = r.c;
      if (token !== undefined && (typeof token !== 'string' || Buffer.byteLength(token) > MAX_TOKEN_BYTES)) {
        token = undefined;
        throw new Rejection('InvalidRequest', `c (clientToken) must be a string of at most ${MAX_TOKEN_BYTES} bytes`);
      }
      const answers = t.op === 'describe' ? this.describe(base, t.streamId, r) : this.get(base, t.streamId, r);
      return answers;
    } catch (err) {
      if (!(err instanceof Rejection)) throw err;
      this.streams.count(t.streamId, { rejected: 1 });
      return [{ topic: `${base}/rejected/json`, payload: json({ o: err.code, m: err.message, ...(token === undefined ? {} : { c: token }) }) }];
    }
  }

  private describe(base: string, streamId: string, r: Record<string, unknown>): Answer[] {
    const s = this.stream(streamId);
    return [
      {
        topic: `${base}/description/json`,
        payload: json({ ...(r.c === undefined ? {} : { c: r.c }), s: s.streamVersion, ...(s.description ? { d: s.description } : {}), r: s.files.map((f) => ({ f: f.fileId, z: f.bytes.length })) }),
      },
    ];
  }

  private get(base: string, streamId: string, r: Record<string, unknown>): Answer[] {
    const s = this.stream(streamId);
    if (r.s !== undefined && r.s !== s.streamVersion) throw new Rejection('VersionMismatch', `stream version ${String(r.s)} asked; the stream is at version ${s.streamVersion}`);
    const fileId = whole(r.f, 'f (fileId)');
    const file = s.files.find((f) => f.fileId === fileId);
    if (!file) throw new Rejection('ResourceNotFound', `stream ${streamId} has no file ${fileId}`);
    const size = whole(r.l, 'l (block size)');
    if (size < MIN_BLOCK || size > MAX_BLOCK) throw new Rejection('BlockSizeOutOfBounds', `block size ${size} is outside ${MIN_BLOCK}..${MAX_BLOCK}`);
    const offset = r.o === undefined ? 0 : whole(r.o, 'o (offset)');
    const blocks = Math.ceil(file.bytes.length / size);
    if (offset >= blocks) throw new Rejection('OffsetOutOfBounds', `block ${offset} is past the last block (${blocks - 1}) of file ${fileId} at block size ${size}`);
    const count = r.n === undefined ? 1 : whole(r.n, 'n (number of blocks)');
    if (count < 1) throw new Rejection('InvalidRequest', 'n (number of blocks) must be at least 1');
    if (r.b !== undefined) throw new Rejection('InvalidRequest', 'b (bitmap) is not served by the sandbox; ask with o and n');
    const out: Answer[] = [];
    let bytes = 0;
    for (let i = offset; i < Math.min(blocks, offset + count); i++) {
      const p = file.bytes.subarray(i * size, (i + 1) * size);
      bytes += p.length;
      out.push({ topic: `${base}/data/json`, payload: json({ ...(r.c === undefined ? {} : { c: r.c }), f: fileId, l: p.length, i, p: p.toString('base64') }) });
    }
    this.streams.count(streamId, { requests: 1, blocks: out.length, bytes });
    return out;
  }

  private stream(streamId: string) {
    const s = this.streams.get(streamId);
    if (!s) throw new Rejection('ResourceNotFound', `stream ${streamId} does not exist`);
    return s;
  }
}

function parse(payload: Buffer): Record<string, unknown> {
  let v: unknown;
  try {
    v = payload.length === 0 ? {} : JSON.parse(payload.toString('utf8'));
  } catch {
    throw new Rejection('InvalidJson', 'the request is not valid JSON');
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Rejection('InvalidJson', 'the request is not a JSON object');
  return v as Record<string, unknown>;
}

function whole(v: unknown, what: string): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0) throw new Rejection('InvalidRequest', `${what} must be a whole number`);
  return v;
}

function json(v: unknown): Buffer {
  return Buffer.from(JSON.stringify(v));
}

// The classic Device Shadow service over MQTT, as much of it as a gateway meets: an update on
// $aws/things/{thing}/shadow/update is answered on /update/accepted, or on /update/rejected (bad
// JSON, a version conflict, a document over 8 KB), and a desired state that differs from the reported
// one is announced on /update/delta. Documents live in memory only.

/** IoT Core's limit on a shadow document's state (Device Shadow service limits). */
export const MAX_SHADOW_BYTES = 8 * 1024;

const UPDATE = /^\$aws\/things\/([^/]+)\/shadow\/update$/;

type Json = Record<string, unknown>;

interface Shadow {
  desired: Json;
  reported: Json;
  version: number;
}

export type Answer = { topic: string; payload: Buffer };

export class ShadowService {
  private readonly shadows = new Map<string, Shadow>();

  /** The answers to a message on topic, or undefined when it is not a shadow update. */
  handle(topic: string, payload: Buffer, now = Date.now()): Answer[] | undefined {
    const m = UPDATE.exec(topic);
    if (!m) return undefined;
    const base = topic;
    const timestamp = Math.floor(now / 1000);
    const reject = (code: number, message: string): Answer[] => [{ topic: `${base}/rejected`, payload: json({ code, message, timestamp }) }];
    if (payload.length > MAX_SHADOW_BYTES) return reject(413, `The payload exceeds the maximum size allowed (${MAX_SHADOW_BYTES} bytes)`);
    let doc: Json;
    try {
      doc = JSON.parse(payload.toString('utf8')) as Json;
    } catch {
      return reject(400, 'Payload contains invalid json');
    }
    const state = doc?.state as { desired?: Json; reported?: Json } | undefined;
    if (!state || typeof state !== 'object') return reject(400, 'Missing required node: state');
    const current = this.shadows.get(m[1]!) ?? { desired: {}, reported: {}, version: 0 };
    if (typeof doc.version === 'number' && doc.version !== current.version) return reject(409, 'Version conflict');
    const next: Shadow = {
      desired: merge(current.desired, state.desired),
      reported: merge(current.reported, state.reported),
      version: current.version + 1,
    };
    if (Buffer.byteLength(JSON.stringify({ desired: next.desired, reported: next.reported })) > MAX_SHADOW_BYTES) {
      return reject(413, `The shadow document would exceed the maximum size allowed (${MAX_SHADOW_BYTES} bytes)`);
    }
    this.shadows.set(m[1]!, next);
    const token = doc.clientToken === undefined ? {} : { clientToken: doc.clientToken };
    const answers: Answer[] = [{ topic: `${base}/accepted`, payload: json({ state, version: next.version, timestamp, ...token }) }];
    const delta = difference(next.desired, next.reported);
    if (delta) answers.push({ topic: `${base}/delta`, payload: json({ state: delta, version: next.version, timestamp }) });
    return answers;
  }
}

function json(v: unknown): Buffer {
  return Buffer.from(JSON.stringify(v));
}

/** A shadow update merges into the document; null deletes a key. */
function merge(into: Json, update: Json | undefined): Json {
  if (!update || typeof update !== 'object') return into;
  const out: Json = { ...into };
  for (const [k, v] of Object.entries(update)) {
    if (v === null) delete out[k];
    else if (typeof v === 'object' && !Array.isArray(v) && typeof out[k] === 'object' && out[k] !== null) out[k] = merge(out[k] as Json, v as Json);
    else out[k] = v;
  }
  return out;
}

/** What desired holds that reported does not (undefined when nothing). */
function difference(desired: Json, reported: Json): Json | undefined {
  const out: Json = {};
  for (const [k, v] of Object.entries(desired)) {
    const r = reported[k];
    if (v && typeof v === 'object' && !Array.isArray(v) && r && typeof r === 'object') {
      const d = difference(v as Json, r as Json);
      if (d) out[k] = d;
    } else if (JSON.stringify(v) !== JSON.stringify(r)) out[k] = v;
  }
  return Object.keys(out).length ? out : undefined;
}

import type { Sim } from '../../storage/sims.ts';

/**
 * Files named by a job document. The shapes simbridge reads (docs/jobs.md, "Firmware files") are
 * entries of a top-level `files` array, each with the file's `sha256` (64 hex digits) and either
 *
 * - an HTTPS `url` (optionally its `size` in bytes):
 *
 *       {"operation":"firmware","files":[{"fileName":"fw-2.0.bin","url":"https://…","sha256":"…","size":524288}]}
 *
 * - or an IoT MQTT-based file delivery stream, `streamId` and `fileId`, with its `size` (required: blocks
 *   are counted from it):
 *
 *       {"operation":"firmware","files":[{"fileName":"fw-2.0.bin","streamId":"fw-2","fileId":0,"size":524288,"sha256":"…"}]}
 *
 * and the FreeRTOS OTA shape, `afr_ota.streamname` with `afr_ota.files[]` entries carrying `fileid`,
 * `filesize` and (simbridge's addition) `sha256`.
 *
 * A file is known by its sha256 (its id): the same bytes behind different URLs (e.g. S3 presigned URLs,
 * different for every device) or streams are one file, fetched once.
 */

/** A file of a stream IoT Core serves over MQTT (MQTT-based file delivery). */
export interface StreamFile {
  streamId: string;
  fileId: number;
}

/** Where the bytes come from: `url` (an HTTPS server) or `stream`, exactly one of them. */
export interface FileRef {
  /** Lowercase hex SHA-256 of the file's bytes. */
  id: string;
  url?: string;
  stream?: StreamFile;
  size?: number;
  /** For a stream: the device whose own upstream session fetches it (set by the caller that knows the device). */
  via?: Sim;
}

export const FILE_ID = /^[0-9a-f]{64}$/;

/** Where a device fetches a file over HTTP. */
export const gatewayFilePath = (id: string) => `/v1/files/${id}`;
/** Where a device fetches a file over CoAP (block-wise): the `gatewayFile` of a CoAP answer. */
export const coapFilePath = (id: string) => `/files/${id}`;

const STREAM_ID = /^[a-zA-Z0-9_-]{1,128}$/;

/** The entry as a file reference, or undefined when it does not name one simbridge can fetch. */
function refOf(entry: unknown, streamName?: string): FileRef | undefined {
  if (typeof entry !== 'object' || entry === null) return undefined;
  const e = entry as Record<string, unknown>;
  if (typeof e.sha256 !== 'string') return undefined;
  const id = e.sha256.toLowerCase();
  if (!FILE_ID.test(id)) return undefined;
  const size = e.size ?? e.filesize;
  const sized = typeof size === 'number' && Number.isInteger(size) && size >= 0 ? { size } : {};
  if (typeof e.url === 'string') return e.url.startsWith('https://') ? { id, url: e.url, ...sized } : undefined;
  const streamId = e.streamId ?? streamName;
  const fileId = e.fileId ?? e.fileid;
  if (typeof streamId !== 'string' || !STREAM_ID.test(streamId) || typeof fileId !== 'number' || !Number.isInteger(fileId) || fileId < 0 || fileId > 255) return undefined;
  if (!('size' in sized)) return undefined;
  return { id, stream: { streamId, fileId }, ...sized };
}

/** The document's file lists: `files`, and `afr_ota.files` with its `streamname`. */
function lists(document: unknown): { entries: unknown[]; streamName?: string; put: (doc: Record<string, unknown>, entries: unknown[]) => Record<string, unknown> }[] {
  if (typeof document !== 'object' || document === null) return [];
  const d = document as Record<string, unknown>;
  const out: ReturnType<typeof lists> = [];
  if (Array.isArray(d.files)) out.push({ entries: d.files, put: (doc, entries) => ({ ...doc, files: entries }) });
  const ota = d.afr_ota;
  if (typeof ota === 'object' && ota !== null && Array.isArray((ota as Record<string, unknown>).files)) {
    const o = ota as Record<string, unknown>;
    out.push({
      entries: o.files as unknown[],
      ...(typeof o.streamname === 'string' ? { streamName: o.streamname } : {}),
      put: (doc, entries) => ({ ...doc, afr_ota: { ...(doc.afr_ota as Record<string, unknown>), files: entries } }),
    });
  }
  return out;
}

/** Every file the document names (entries without an https url or a stream, or without a sha256, are not files simbridge serves). */
export function fileRefs(document: unknown): FileRef[] {
  return lists(document).flatMap((l) => l.entries.flatMap((e) => refOf(e, l.streamName) ?? []));
}

/**
 * The document with `"gatewayFile": "/v1/files/{sha256}"` added to each fetchable file's entry; nothing
 * else changes. The path is the one on the listener that carries the answer (`path`: CoAP's is `/files/{sha256}`).
 */
export function withGatewayFiles(document: unknown, path: (id: string) => string = gatewayFilePath): unknown {
  let out = document as Record<string, unknown>;
  for (const l of lists(document)) {
    if (!l.entries.some((e) => refOf(e, l.streamName))) continue;
    out = l.put(
      out,
      l.entries.map((e) => {
        const ref = refOf(e, l.streamName);
        return ref ? { ...(e as Record<string, unknown>), gatewayFile: path(ref.id) } : e;
      }),
    );
  }
  return out;
}

/** An answer's pending jobs with their documents pointing at the gateway's copies. */
export function jobsWithGatewayFiles<J extends { document: unknown }>(jobs: J[], path: (id: string) => string = gatewayFilePath): J[] {
  return jobs.map((j) => ({ ...j, document: withGatewayFiles(j.document, path) }));
}

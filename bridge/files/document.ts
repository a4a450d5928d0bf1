/**
 * Files named by a job document. The shape simbridge reads (docs/jobs.md, "Firmware files") is a
 * top-level `files` array whose entries carry an HTTPS `url` and the file's `sha256` (64 hex digits),
 * optionally its `size` in bytes:
 *
 *     {"operation":"firmware","version":"2.0","files":[{"fileName":"fw-2.0.bin","url":"https://…","sha256":"…","size":524288}]}
 *
 * A file is known by its sha256 (its id): the same bytes behind different URLs (e.g. S3 presigned URLs,
 * different for every device) are one file, downloaded once.
 */

export interface FileRef {
  /** Lowercase hex SHA-256 of the file's bytes. */
  id: string;
  url: string;
  size?: number;
}

export const FILE_ID = /^[0-9a-f]{64}$/;

/** Where a device fetches a file over HTTP. */
export const gatewayFilePath = (id: string) => `/v1/files/${id}`;
/** Where a device fetches a file over CoAP (block-wise): the `gatewayFile` of a CoAP answer. */
export const coapFilePath = (id: string) => `/files/${id}`;

/** The entry as a file reference, or undefined when it does not name one simbridge can fetch. */
function refOf(entry: unknown): FileRef | undefined {
  if (typeof entry !== 'object' || entry === null) return undefined;
  const { url, sha256, size } = entry as Record<string, unknown>;
  if (typeof url !== 'string' || !url.startsWith('https://') || typeof sha256 !== 'string') return undefined;
  const id = sha256.toLowerCase();
  if (!FILE_ID.test(id)) return undefined;
  return { id, url, ...(typeof size === 'number' && Number.isInteger(size) && size >= 0 ? { size } : {}) };
}

function entries(document: unknown): unknown[] {
  if (typeof document !== 'object' || document === null) return [];
  const files = (document as Record<string, unknown>).files;
  return Array.isArray(files) ? files : [];
}

/** Every file the document names (entries without an https url or a sha256 are not files simbridge serves). */
export function fileRefs(document: unknown): FileRef[] {
  return entries(document).flatMap((e) => refOf(e) ?? []);
}

/**
 * The document with `"gatewayFile": "/v1/files/{sha256}"` added beside each fetchable file's url; nothing
 * else changes. The path is the one on the listener that carries the answer (`path`: CoAP's is `/files/{sha256}`).
 */
export function withGatewayFiles(document: unknown, path: (id: string) => string = gatewayFilePath): unknown {
  const files = entries(document);
  if (!files.some((e) => refOf(e))) return document;
  return {
    ...(document as Record<string, unknown>),
    files: files.map((e) => {
      const ref = refOf(e);
      return ref ? { ...(e as Record<string, unknown>), gatewayFile: path(ref.id) } : e;
    }),
  };
}

/** An answer's pending jobs with their documents pointing at the gateway's copies. */
export function jobsWithGatewayFiles<J extends { document: unknown }>(jobs: J[], path: (id: string) => string = gatewayFilePath): J[] {
  return jobs.map((j) => ({ ...j, document: withGatewayFiles(j.document, path) }));
}

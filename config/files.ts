import { z } from 'zod';

/** Firmware and other files named by job documents, fetched once and served to devices (docs/jobs.md, "Firmware files"). */
export const filesSection = z
  .object({
    dir: z.string().min(1).default('files').describe('directory of the file cache, relative to dataDir unless absolute (one file per sha256, nothing else)'),
    maxBytes: z
      .number()
      .int()
      .positive()
      .default(1024 ** 3)
      .describe('bytes the file cache may hold; past it the least recently served files are removed'),
    maxFileBytes: z
      .number()
      .int()
      .positive()
      .default(256 * 1024 ** 2)
      .describe('largest single file fetched; a bigger one (declared or received) is refused with 502 file_too_large'),
    downloadTimeoutMs: z.number().int().positive().default(300_000).describe('longest time one download may take from the first byte asked to the last received; then it is abandoned (502)'),
    prefetch: z.boolean().default(true).describe('start downloading a file as soon as a 202 carries a job naming it, before any device asks for it'),
    prefetchRetryMs: z.number().int().min(0).default(60_000).describe('after a failed download, how long prefetching leaves that file alone (a device asking still tries again at once)'),
    caFile: z.string().optional().describe('PEM bundle of CAs trusted for file downloads instead of the Node.js bundled roots (e.g. a private CA or the sandbox CA)'),
    coapBlockBytes: z
      .union([z.literal(16), z.literal(32), z.literal(64), z.literal(128), z.literal(256), z.literal(512), z.literal(1024)])
      .default(512)
      .describe('largest CoAP Block2 block served (RFC 7959: 16-1024 bytes); a device asking for smaller blocks gets those'),
  })
  .strict()
  .prefault({});

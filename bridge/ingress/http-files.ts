import { Readable } from 'node:stream';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { AdmittedDevice } from '../admission.ts';
import { FileRefusal, type DeviceFiles, type FileRefusalReason } from '../files/device-files.ts';
import { parseRange } from '../files/range.ts';
import { Refusal } from '../identity/source.ts';
import type { Metrics } from '../metrics.ts';

// Every refusal of a file request has its status: a new reason without one does not compile.
const fileStatus: Record<FileRefusalReason, number> = {
  file_id_invalid: 400,
  jobs_disabled: 404,
  file_not_found: 404,
  file_checksum_mismatch: 502,
  file_size_mismatch: 502,
  file_too_large: 502,
  file_download_failed: 502,
};

/**
 * `GET /v1/files/{id}`: a file named by one of the device's pending jobs (id = its sha256), served from
 * the gateway's cache with a single HTTP Range (206, or 416 past the end), ETag = the sha256.
 */
export function registerFileRoutes(
  app: FastifyInstance,
  deps: { files: DeviceFiles; admit(req: FastifyRequest): Promise<AdmittedDevice | Refusal>; refuse(reply: FastifyReply, refusal: Refusal): unknown; metrics: Metrics },
): void {
  app.get<{ Params: { id: string } }>('/v1/files/:id', async (req, reply) => {
    const device = await deps.admit(req);
    if (device instanceof Refusal) return deps.refuse(reply, device);
    const file = await deps.files.open(device.sim, req.params.id);
    if (file instanceof FileRefusal) {
      deps.metrics.refusals.inc({ protocol: 'http', reason: file.reason });
      return reply.code(fileStatus[file.reason]).send({ error: file.reason, message: file.message });
    }
    const etag = `"${file.id}"`;
    reply.header('etag', etag).header('accept-ranges', 'bytes');
    if (req.headers['if-none-match'] === etag) {
      await file.handle.close();
      return reply.code(304).send();
    }
    // If-Range with another validator: the whole file, the device's partial copy is of other bytes.
    const ifRange = req.headers['if-range'];
    const range = ifRange !== undefined && ifRange !== etag ? { kind: 'full' as const } : parseRange(req.headers.range, file.size);
    if (range.kind === 'unsatisfiable') {
      await file.handle.close();
      deps.metrics.refusals.inc({ protocol: 'http', reason: 'range_not_satisfiable' });
      reply.header('content-range', `bytes */${file.size}`);
      return reply.code(416).send({ error: 'range_not_satisfiable', message: `the file has ${file.size} bytes` });
    }
    const [start, end] = range.kind === 'partial' ? [range.start, range.end] : [0, file.size - 1];
    const length = end - start + 1;
    reply.header('content-type', 'application/octet-stream');
    if (range.kind === 'partial') reply.code(206).header('content-range', `bytes ${start}-${end}/${file.size}`);
    reply.header('content-length', String(length));
    if (length === 0 || req.method === 'HEAD') {
      await file.handle.close();
      // An empty stream, not an empty body: fastify would otherwise answer a HEAD with Content-Length 0.
      return reply.send(Readable.from([]));
    }
    const stream = file.handle.createReadStream({ start, end, autoClose: true });
    // A device gone mid-transfer: the stream (and the file handle) closes with its socket.
    reply.raw.once('close', () => stream.destroy());
    stream.once('end', () => deps.metrics.fileBytesServed.inc({ protocol: 'http' }, length));
    return reply.send(stream);
  });
}

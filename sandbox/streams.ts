// IoT MQTT-based file delivery: streams (CreateStream, DescribeStream, DeleteStream) and the blocks the
// data plane serves from them (data/streams.ts). IoT Core reads a stream's files from S3; the sandbox has
// no S3, so a test uploads the bytes first through the sandbox-only `PUT /_sandbox/blobs/{bucket}/{key}`
// and a stream file's `s3Location` {bucket, key} names them. The bytes are taken when the stream is
// created (a later upload under the same key does not change an existing stream).
import { alreadyExists, invalidRequest, notFound } from './errors.ts';
import type { Account } from './arn.ts';

export interface StreamFileRecord {
  fileId: number;
  s3Location: { bucket: string; key: string; version?: string };
  bytes: Buffer;
}

export interface StreamRecord {
  streamId: string;
  streamArn: string;
  streamVersion: number;
  description?: string;
  roleArn: string;
  files: StreamFileRecord[];
  createdAt: number;
  lastUpdatedAt: number;
}

/** What the data plane served from one stream: for tests counting transfers. */
export interface StreamServed {
  /** GetStream requests answered with data. */
  requests: number;
  blocks: number;
  bytes: number;
  /** Requests answered on rejected. */
  rejected: number;
}

const STREAM_ID = /^[a-zA-Z0-9_-]{1,128}$/;
/** IoT Core's bound on files per stream. */
const MAX_FILES = 50;

export class StreamStore {
  private readonly blobs = new Map<string, Buffer>();
  private readonly streams = new Map<string, StreamRecord>();
  private readonly served = new Map<string, StreamServed>();

  constructor(private readonly account: Account) {}

  putBlob(bucket: string, key: string, bytes: Buffer): void {
    this.blobs.set(`${bucket}/${key}`, bytes);
  }

  create(streamId: string, body: Record<string, unknown>): StreamRecord {
    if (!STREAM_ID.test(streamId)) throw invalidRequest('streamId must be 1-128 letters, digits, _ or -');
    const arn = `arn:${this.account.partition}:iot:${this.account.region}:${this.account.accountId}:stream/${streamId}`;
    if (this.streams.has(streamId)) throw alreadyExists(`Stream ${streamId} already exists.`, streamId, arn);
    if (typeof body.roleArn !== 'string') throw invalidRequest('roleArn is required');
    const files = body.files;
    if (!Array.isArray(files) || files.length < 1 || files.length > MAX_FILES) throw invalidRequest(`files must hold 1-${MAX_FILES} entries`);
    const seen = new Set<number>();
    const records = files.map((f: Record<string, unknown>) => {
      const fileId = f.fileId;
      if (typeof fileId !== 'number' || !Number.isInteger(fileId) || fileId < 0 || fileId > 255) throw invalidRequest('fileId must be 0-255');
      if (seen.has(fileId)) throw invalidRequest(`fileId ${fileId} appears twice`);
      seen.add(fileId);
      const loc = f.s3Location as Record<string, unknown> | undefined;
      if (typeof loc?.bucket !== 'string' || typeof loc.key !== 'string') throw invalidRequest('s3Location needs bucket and key');
      const bytes = this.blobs.get(`${loc.bucket}/${loc.key}`);
      // IoT Core checks it can read the object with the role; the sandbox checks it was uploaded.
      if (!bytes) throw invalidRequest(`s3://${loc.bucket}/${loc.key} does not exist (upload it with PUT /_sandbox/blobs/${loc.bucket}/${loc.key})`);
      return { fileId, s3Location: { bucket: loc.bucket, key: loc.key, ...(typeof loc.version === 'string' ? { version: loc.version } : {}) }, bytes };
    });
    const now = Date.now();
    const record: StreamRecord = {
      streamId,
      streamArn: arn,
      streamVersion: 1,
      ...(typeof body.description === 'string' ? { description: body.description } : {}),
      roleArn: body.roleArn,
      files: records,
      createdAt: now,
      lastUpdatedAt: now,
    };
    this.streams.set(streamId, record);
    return record;
  }

  get(streamId: string): StreamRecord | undefined {
    return this.streams.get(streamId);
  }

  describe(streamId: string): StreamRecord {
    const s = this.streams.get(streamId);
    if (!s) throw notFound(`Stream ${streamId} does not exist.`);
    return s;
  }

  delete(streamId: string): void {
    if (!this.streams.delete(streamId)) throw notFound(`Stream ${streamId} does not exist.`);
  }

  count(streamId: string, change: Partial<StreamServed>): void {
    const s = this.served.get(streamId) ?? { requests: 0, blocks: 0, bytes: 0, rejected: 0 };
    for (const [k, v] of Object.entries(change) as [keyof StreamServed, number][]) s[k] += v;
    this.served.set(streamId, s);
  }

  servedStats(): Record<string, StreamServed> {
    return Object.fromEntries(this.served);
  }
}

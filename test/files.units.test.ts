// The file cache against a real HTTPS file server with a sandbox-CA certificate: one download for many
// concurrent requests, nothing served that does not hash to its id, LRU eviction within the bound, and
// the Range and job-document rules it is served by.
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FileCache, FileError, type OpenFile } from '../bridge/files/cache.ts';
import { DeviceFiles, FileRefusal } from '../bridge/files/device-files.ts';
import { coapFilePath, fileRefs, jobsWithGatewayFiles, withGatewayFiles } from '../bridge/files/document.ts';
import { parseRange } from '../bridge/files/range.ts';
import { createMetrics, type Metrics } from '../bridge/metrics.ts';
import { CertificateAuthority } from '../sandbox/ca.ts';
import type { AuditStore } from '../storage/audit.ts';
import type { Sim } from '../storage/sims.ts';
import { startFileServer, type FileServer } from '../sandbox/file-server.ts';
import { tempDir } from './helpers/processes.ts';

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

async function readAll(file: OpenFile): Promise<Buffer> {
  try {
    const buf = Buffer.alloc(file.size);
    await file.handle.read(buf, 0, file.size, 0);
    return buf;
  } finally {
    await file.handle.close();
  }
}

async function counter(metrics: Metrics, name: string, labels: Record<string, string> = {}): Promise<number> {
  const m = (await metrics.registry.getSingleMetric(name)!.get()).values;
  return m.filter((v) => Object.entries(labels).every(([k, x]) => v.labels[k] === x)).reduce((s, v) => s + v.value, 0);
}

describe('file cache', () => {
  const dir = tempDir('files-units');
  let ca: CertificateAuthority;
  let server: FileServer;

  beforeAll(async () => {
    ca = await CertificateAuthority.open(dir);
    const id = await ca.serverIdentity(dir, ['localhost'], ['127.0.0.1']);
    server = await startFileServer({ certPem: id.certPem, keyPem: id.keyPem });
  });
  afterAll(() => server?.close());

  const cache = (name: string, over: Partial<{ maxBytes: number; maxFileBytes: number; ca?: string }> = {}) => {
    const metrics = createMetrics();
    const c = new FileCache({ dir: join(dir, name), maxBytes: 1024 ** 2, maxFileBytes: 1024 ** 2, downloadTimeoutMs: 10_000, ca: ca.certPem, metrics, log: pino({ level: 'silent' }), ...over });
    return { c, metrics };
  };
  const publish = (name: string, size: number) => {
    const body = randomBytes(size);
    server.put(name, body);
    return { body, ref: { id: sha256(body), url: server.url(name), size } };
  };

  it('serves 20 concurrent requests from one download, byte for byte', async () => {
    const { body, ref } = publish('one.bin', 70_000);
    const { c, metrics } = cache('single');
    server.setDelay(300);
    try {
      const files = await Promise.all(Array.from({ length: 20 }, () => c.open(ref)));
      for (const f of files) expect((await readAll(f)).equals(body)).toBe(true);
    } finally {
      server.setDelay(0);
    }
    expect(server.downloads('one.bin')).toBe(1);
    expect(await counter(metrics, 'simbridge_file_downloads_total', { result: 'ok' })).toBe(1);
    // Later requests are served from disk.
    expect((await readAll(await c.open(ref))).equals(body)).toBe(true);
    expect(server.downloads('one.bin')).toBe(1);
  });

  it('never keeps bytes that do not hash to the id; the next request after a fix downloads again', async () => {
    const { body, ref } = publish('bad.bin', 5_000);
    const { c, metrics } = cache('corrupt');
    server.corrupt('bad.bin', true);
    const failed = await Promise.all([c.open(ref), c.open(ref)].map((p) => p.then(() => undefined, (e: unknown) => e)));
    for (const err of failed) {
      expect(err).toBeInstanceOf(FileError);
      expect((err as FileError).reason).toBe('file_checksum_mismatch');
    }
    expect(server.downloads('bad.bin')).toBe(1);
    expect(c.has(ref.id)).toBe(false);
    expect(readdirSync(join(dir, 'corrupt'))).toEqual([]);
    expect(await counter(metrics, 'simbridge_file_downloads_total', { result: 'checksum_mismatch' })).toBe(1);

    server.corrupt('bad.bin', false);
    expect((await readAll(await c.open(ref))).equals(body)).toBe(true);
    expect(server.downloads('bad.bin')).toBe(2);
  });

  it('prefetches a file once; a failed one is left alone for the retry time, while a device asking tries again', async () => {
    const { body, ref } = publish('pre.bin', 3_000);
    const { c, metrics } = cache('prefetch');
    server.corrupt('pre.bin', true);
    c.prefetch(ref, 60_000);
    c.prefetch(ref, 60_000);
    for (let i = 0; i < 200 && (await counter(metrics, 'simbridge_file_downloads_total')) === 0; i++) await new Promise((r) => setTimeout(r, 10));
    expect(await counter(metrics, 'simbridge_file_downloads_total', { result: 'checksum_mismatch' })).toBe(1);
    c.prefetch(ref, 60_000);
    await new Promise((r) => setTimeout(r, 100));
    expect(server.downloads('pre.bin')).toBe(1);
    server.corrupt('pre.bin', false);
    expect((await readAll(await c.open(ref))).equals(body)).toBe(true);
    expect(server.downloads('pre.bin')).toBe(2);
    c.prefetch(ref, 0);
    await new Promise((r) => setTimeout(r, 100));
    expect(server.downloads('pre.bin')).toBe(2);
  });

  it('refuses a size other than declared, a file over the bound, and a server its CA bundle does not trust', async () => {
    const { ref } = publish('sized.bin', 3_000);
    await expect(cache('limits').c.open({ ...ref, size: 2_999 })).rejects.toMatchObject({ reason: 'file_size_mismatch' });
    const { c } = cache('limits', { maxFileBytes: 2_000 });
    await expect(c.open({ ...ref, size: undefined })).rejects.toMatchObject({ reason: 'file_too_large' });
    await expect(c.open(ref)).rejects.toMatchObject({ reason: 'file_too_large' });
    const { c: untrusting } = cache('untrusted', { ca: undefined });
    await expect(untrusting.open({ ...ref, size: undefined })).rejects.toMatchObject({ reason: 'file_download_failed' });
    expect(readdirSync(join(dir, 'limits'))).toEqual([]);
  });

  it('evicts the least recently served file beyond maxBytes; a reader of an evicted file still reads it; a restart keeps the order', async () => {
    const a = publish('a.bin', 4_000);
    const b = publish('b.bin', 4_000);
    const d = publish('d.bin', 4_000);
    const { c, metrics } = cache('lru', { maxBytes: 10_000 });
    await (await c.open(a.ref)).handle.close();
    const openB = await c.open(b.ref);
    await (await c.open(a.ref)).handle.close(); // a is now the most recently served
    await (await c.open(d.ref)).handle.close();
    expect([c.has(a.ref.id), c.has(b.ref.id), c.has(d.ref.id)]).toEqual([true, false, true]);
    expect(c.size).toBe(8_000);
    expect(await counter(metrics, 'simbridge_file_cache_evictions_total')).toBe(1);
    expect(existsSync(join(dir, 'lru', b.ref.id))).toBe(false);
    expect((await readAll(openB)).equals(b.body)).toBe(true);

    // A part file left by a crash is removed at start; cached files are found again.
    writeFileSync(join(dir, 'lru', `${a.ref.id}.dead.part`), 'x');
    const { c: again } = cache('lru', { maxBytes: 10_000 });
    expect([again.has(a.ref.id), again.has(d.ref.id), again.size]).toEqual([true, true, 8_000]);
    expect(readdirSync(join(dir, 'lru')).sort()).toEqual([a.ref.id, d.ref.id].sort());
    const before = server.downloads('a.bin');
    expect((await readAll(await again.open(a.ref))).equals(a.body)).toBe(true);
    expect(server.downloads('a.bin')).toBe(before);
  });
});

describe('who may have a file', () => {
  const dir = tempDir('files-access');
  const body = randomBytes(2_000);
  let server: FileServer;
  let ca: CertificateAuthority;
  beforeAll(async () => {
    ca = await CertificateAuthority.open(dir);
    const id = await ca.serverIdentity(dir, ['localhost'], ['127.0.0.1']);
    server = await startFileServer({ certPem: id.certPem, keyPem: id.keyPem });
    server.put('fw.bin', body);
  });
  afterAll(() => server?.close());

  it('a device whose pending job names the file gets it; others are refused, and audited', async () => {
    const audited: unknown[][] = [];
    const audit = { record: async (...args: unknown[]) => void audited.push(args), query: async () => ({ events: [] }) } as unknown as AuditStore;
    const id = sha256(body);
    const pending = [{ jobId: 'fw', status: 'QUEUED', versionNumber: 1, executionNumber: 1, document: { files: [{ url: server.url('fw.bin'), sha256: id }] } }];
    const jobs = { forResponse: (sim: Sim) => (sim.group === 'off' ? undefined : { settle: async () => (sim.imsi === '001010000000001' ? pending : []) }) };
    const cache = new FileCache({ dir: join(dir, 'cache'), maxBytes: 1024 ** 2, maxFileBytes: 1024 ** 2, downloadTimeoutMs: 10_000, ca: ca.certPem, metrics: createMetrics(), log: pino({ level: 'silent' }) });
    const files = new DeviceFiles({ jobs, cache, prefetch: () => ({ prefetch: false, prefetchRetryMs: 0 }), audit, log: pino({ level: 'silent' }) });
    const sim = (imsi: string, group = 'default') => ({ imsi, group, thingName: `sim-${imsi}` }) as Sim;

    const got = await files.open(sim('001010000000001'), id);
    expect(got).not.toBeInstanceOf(FileRefusal);
    expect((await readAll(got as OpenFile)).equals(body)).toBe(true);
    expect(await files.open(sim('001010000000002'), id)).toMatchObject({ reason: 'file_not_found' });
    expect(audited).toEqual([['file_refused', '001010000000002', { file: id, reason: 'file_not_found' }]]);
    expect(await files.open(sim('001010000000001', 'off'), id)).toMatchObject({ reason: 'jobs_disabled' });
    expect(await files.open(sim('001010000000001'), id.toUpperCase())).toMatchObject({ reason: 'file_id_invalid' });
    expect(server.downloads('fw.bin')).toBe(1);
  });
});

describe('Range header', () => {
  it('reads one range, ignores what it cannot read, and finds ranges past the end unsatisfiable', () => {
    expect(parseRange(undefined, 100)).toEqual({ kind: 'full' });
    expect(parseRange('bytes=0-9', 100)).toEqual({ kind: 'partial', start: 0, end: 9 });
    expect(parseRange('bytes=90-', 100)).toEqual({ kind: 'partial', start: 90, end: 99 });
    expect(parseRange('bytes=-10', 100)).toEqual({ kind: 'partial', start: 90, end: 99 });
    expect(parseRange('bytes=-1000', 100)).toEqual({ kind: 'partial', start: 0, end: 99 });
    expect(parseRange('bytes=50-5000', 100)).toEqual({ kind: 'partial', start: 50, end: 99 });
    expect(parseRange('bytes=100-', 100)).toEqual({ kind: 'unsatisfiable' });
    expect(parseRange('bytes=-0', 100)).toEqual({ kind: 'unsatisfiable' });
    expect(parseRange('bytes=0-1,5-6', 100)).toEqual({ kind: 'full' });
    expect(parseRange('bytes=9-1', 100)).toEqual({ kind: 'full' });
    expect(parseRange('items=0-1', 100)).toEqual({ kind: 'full' });
  });
});

describe('job documents', () => {
  const id = 'ab'.repeat(32);
  it('names files by an https url and a sha256, and points them at the gateway', () => {
    const doc = { operation: 'firmware', files: [{ fileName: 'fw.bin', url: 'https://h/fw.bin', sha256: id.toUpperCase(), size: 10 }, { url: 'http://h/plain', sha256: id }, { url: 'https://h/x' }] };
    expect(fileRefs(doc)).toEqual([{ id, url: 'https://h/fw.bin', size: 10 }]);
    expect(withGatewayFiles(doc)).toEqual({ ...doc, files: [{ ...doc.files[0], gatewayFile: `/v1/files/${id}` }, doc.files[1], doc.files[2]] });
    // In a CoAP answer the path is the CoAP listener's.
    expect(jobsWithGatewayFiles([{ jobId: 'j', document: doc }], coapFilePath)[0]!.document).toEqual({ ...doc, files: [{ ...doc.files[0], gatewayFile: `/files/${id}` }, doc.files[1], doc.files[2]] });
    expect(withGatewayFiles({ operation: 'reboot' })).toEqual({ operation: 'reboot' });
    expect(jobsWithGatewayFiles([{ jobId: 'j', document: null }])).toEqual([{ jobId: 'j', document: null }]);
  });
});

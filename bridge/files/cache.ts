import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, readdirSync, statSync, unlinkSync } from 'node:fs';
import { open, rename, unlink, utimes, type FileHandle } from 'node:fs/promises';
import { get } from 'node:https';
import { join } from 'node:path';
import type { Logger } from 'pino';
import type { Metrics } from '../metrics.ts';
import { FILE_ID, type FileRef } from './document.ts';

/**
 * Files named by job documents, fetched once over HTTPS and kept on disk by their SHA-256. The
 * directory is its own index: one file per id, named by the id; the least recently served file goes
 * first when the cache is over its bound (order kept in memory, and in mtimes across restarts).
 *
 * A download is checked while it streams (size bound, declared size, SHA-256) and only a file whose
 * bytes hash to its id is renamed into place: nothing else is ever served. Requests for a file being
 * downloaded wait for that one download (single flight).
 */

export type FileFailure = 'file_checksum_mismatch' | 'file_size_mismatch' | 'file_too_large' | 'file_download_failed';

export class FileError extends Error {
  constructor(
    readonly reason: FileFailure,
    message: string,
  ) {
    super(message);
  }
}

export interface FileCacheOptions {
  dir: string;
  maxBytes: number;
  maxFileBytes: number;
  downloadTimeoutMs: number;
  /** PEM CAs trusted for downloads instead of Node's bundled roots. */
  ca?: string;
  metrics: Metrics;
  log: Logger;
}

/** A cached file, opened: removing it from the cache meanwhile does not disturb a reader. */
export interface OpenFile {
  id: string;
  size: number;
  handle: FileHandle;
}

const downloadResult: Record<FileFailure, string> = {
  file_checksum_mismatch: 'checksum_mismatch',
  file_size_mismatch: 'size_mismatch',
  file_too_large: 'too_large',
  file_download_failed: 'failed',
};

/** mtimes (the order of use across restarts) are written at most this often per file. */
const TOUCH_EVERY_MS = 60_000;

export class FileCache {
  /** id → size, least recently served first. */
  private readonly entries = new Map<string, { size: number; touched: number }>();
  private readonly inflight = new Map<string, Promise<void>>();
  /** id → when its last download failed (prefetching leaves it alone for a while). */
  private readonly failedAt = new Map<string, number>();
  private bytes = 0;

  constructor(private readonly opts: FileCacheOptions) {
    mkdirSync(opts.dir, { recursive: true, mode: 0o700 });
    const found: { id: string; size: number; mtime: number }[] = [];
    for (const name of readdirSync(opts.dir)) {
      const path = join(opts.dir, name);
      // A download cut short by a crash left its part file: never served, removed.
      if (name.endsWith('.part')) unlinkSync(path);
      else if (FILE_ID.test(name)) {
        const st = statSync(path);
        found.push({ id: name, size: st.size, mtime: st.mtimeMs });
      }
    }
    for (const f of found.sort((a, b) => a.mtime - b.mtime)) this.remember(f.id, f.size, f.mtime);
    this.evict();
  }

  /** Bytes held now. */
  get size(): number {
    return this.bytes;
  }

  has(id: string): boolean {
    return this.entries.has(id);
  }

  /** The file, downloaded first if need be; throws FileError when it cannot be had. */
  async open(ref: FileRef): Promise<OpenFile> {
    for (let attempt = 0; ; attempt++) {
      if (!this.entries.has(ref.id)) await this.fetchOnce(ref);
      try {
        const handle = await open(this.pathOf(ref.id), 'r');
        this.touch(ref.id);
        return { id: ref.id, size: (await handle.stat()).size, handle };
      } catch (err) {
        // Evicted between the download and the open (a full cache under load): fetched again, once.
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT' || attempt > 0) throw err;
        this.forget(ref.id);
      }
    }
  }

  /** Starts downloading the file unless it is cached, on its way, or failed within retryMs; never throws. */
  prefetch(ref: FileRef, retryMs: number): void {
    if (this.entries.has(ref.id) || this.inflight.has(ref.id)) return;
    if (Date.now() - (this.failedAt.get(ref.id) ?? -Infinity) < retryMs) return;
    // A failure is counted and logged by download(); the device asking later tries again.
    this.fetchOnce(ref).catch(() => undefined);
  }

  private pathOf(id: string): string {
    return join(this.opts.dir, id);
  }

  private fetchOnce(ref: FileRef): Promise<void> {
    let flight = this.inflight.get(ref.id);
    if (!flight) {
      flight = this.download(ref).finally(() => this.inflight.delete(ref.id));
      this.inflight.set(ref.id, flight);
    }
    return flight;
  }

  private async download(ref: FileRef): Promise<void> {
    const limit = Math.min(this.opts.maxFileBytes, this.opts.maxBytes);
    const part = join(this.opts.dir, `${ref.id}.${randomBytes(4).toString('hex')}.part`);
    const started = Date.now();
    try {
      if (ref.size !== undefined && ref.size > limit) throw new FileError('file_too_large', `the job document declares ${ref.size} bytes; files.maxFileBytes (and files.maxBytes) allow ${limit}`);
      const size = await this.fetchTo(ref, part, limit);
      this.remember(ref.id, size, Date.now());
      this.failedAt.delete(ref.id);
      this.evict(ref.id);
      this.opts.metrics.fileDownloads.inc({ result: 'ok' });
      this.opts.log.info({ file: ref.id, bytes: size, ms: Date.now() - started }, 'file downloaded');
    } catch (err) {
      await unlink(part).catch(() => undefined);
      if (this.failedAt.size >= 1024) this.failedAt.delete(this.failedAt.keys().next().value!);
      this.failedAt.set(ref.id, Date.now());
      const failure = err instanceof FileError ? err : new FileError('file_download_failed', `the file could not be downloaded: ${(err as Error).message}`);
      this.opts.metrics.fileDownloads.inc({ result: downloadResult[failure.reason] });
      this.opts.log.warn({ file: ref.id, host: hostOf(ref.url), reason: failure.reason, err: failure.message }, 'file download refused');
      throw failure;
    }
  }

  /** Streams the URL into `part`, checking size and hash on the way; renames it into place when it is the file. */
  private async fetchTo(ref: FileRef, part: string, limit: number): Promise<number> {
    const out = await open(part, 'wx', 0o600);
    const hash = createHash('sha256');
    let received = 0;
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(new Error(`not complete within files.downloadTimeoutMs (${this.opts.downloadTimeoutMs} ms)`)), this.opts.downloadTimeoutMs);
    try {
      await new Promise<void>((resolve, reject) => {
        const req = get(ref.url, { ...(this.opts.ca ? { ca: this.opts.ca } : {}), signal: abort.signal }, (res) => {
          if (res.statusCode !== 200) {
            res.resume();
            return reject(new FileError('file_download_failed', `the file server answered ${res.statusCode} (redirects are not followed)`));
          }
          const declared = Number(res.headers['content-length']);
          if (declared > limit) {
            res.destroy();
            return reject(new FileError('file_too_large', `the file server announces ${declared} bytes; files.maxFileBytes (and files.maxBytes) allow ${limit}`));
          }
          // One write at a time, in order; the response is paused while the disk catches up.
          let writing = Promise.resolve();
          res.on('data', (chunk: Buffer) => {
            received += chunk.length;
            if (received > limit) {
              res.destroy();
              return reject(new FileError('file_too_large', `more than ${limit} bytes received (files.maxFileBytes, files.maxBytes)`));
            }
            hash.update(chunk);
            res.pause();
            writing = writing.then(() => out.write(chunk)).then(
              () => void res.resume(),
              (err) => (res.destroy(), reject(err)),
            );
          });
          res.on('end', () => writing.then(() => resolve(), reject));
          res.on('error', reject);
          res.on('aborted', () => reject(new Error('the file server closed the connection early')));
        });
        req.on('error', (err) => reject(abort.signal.aborted ? new FileError('file_download_failed', String((abort.signal.reason as Error)?.message ?? err.message)) : err));
      });
      if (ref.size !== undefined && received !== ref.size) throw new FileError('file_size_mismatch', `received ${received} bytes; the job document declares ${ref.size}`);
      const digest = hash.digest('hex');
      if (digest !== ref.id) throw new FileError('file_checksum_mismatch', `the downloaded bytes hash to ${digest}, not to the sha256 the job document names; discarded`);
      await out.sync();
    } finally {
      clearTimeout(timer);
      await out.close();
    }
    await rename(part, this.pathOf(ref.id));
    return received;
  }

  private remember(id: string, size: number, touched: number): void {
    this.forget(id);
    this.entries.set(id, { size, touched });
    this.bytes += size;
    this.opts.metrics.fileCacheBytes.set(this.bytes);
  }

  private forget(id: string): void {
    const e = this.entries.get(id);
    if (!e) return;
    this.entries.delete(id);
    this.bytes -= e.size;
    this.opts.metrics.fileCacheBytes.set(this.bytes);
  }

  /** Marks the file most recently used (moves it to the end of the order). */
  private touch(id: string): void {
    const e = this.entries.get(id);
    if (!e) return;
    this.entries.delete(id);
    this.entries.set(id, e);
    const now = Date.now();
    if (now - e.touched < TOUCH_EVERY_MS) return;
    e.touched = now;
    const t = new Date(now);
    void utimes(this.pathOf(id), t, t).catch(() => undefined);
  }

  /** Removes the least recently served files until the cache is within maxBytes (never `keep`). */
  private evict(keep?: string): void {
    for (const [id] of this.entries) {
      if (this.bytes <= this.opts.maxBytes) return;
      if (id === keep) continue;
      this.forget(id);
      // Readers that opened it keep reading; the name is gone for new ones.
      try {
        unlinkSync(this.pathOf(id));
      } catch (err) {
        this.opts.log.warn({ file: id, err: String(err) }, 'evicted file not removed');
      }
      this.opts.metrics.fileCacheEvictions.inc();
    }
  }
}

function hostOf(url: string): string {
  try {
    return new URL(url).host;
  } catch {
    return '?';
  }
}

import { randomUUID } from 'node:crypto';
import type { Logger } from 'pino';
import type { Sim } from '../../storage/sims.ts';
import type { DeviceCredentials } from '../../vending/vendor.ts';
import type { UpstreamPool } from '../upstream/session-pool.ts';
import type { StreamSource } from './cache.ts';
import type { FileRef, StreamFile } from './document.ts';

/**
 * Files of IoT MQTT-based file delivery streams, read block by block on the upstream session of the
 * device whose job names the file (its policy grants `$aws/things/{thing}/streams/*`, docs/policy.md),
 * with IoT Core's GetStream request (`$aws/things/{thing}/streams/{streamId}/get/json`, short keys
 * c, f, l, o, n) and its answers on `.../data/json` (base64 block `p`, block index `i`) or
 * `.../rejected/json` (`o` error code, `m` message). The cache (cache.ts) makes it one transfer per file
 * however many devices ask, checks size and SHA-256, and serves the copy.
 */

export interface StreamSettings {
  streamBlockBytes: number;
  streamBlocksPerRequest: number;
  streamAnswerTimeoutMs: number;
}

export interface StreamReaderOptions {
  pool: Pick<UpstreamPool, 'session' | 'subscribe' | 'unsubscribe'>;
  credentials(sim: Sim): Promise<DeviceCredentials>;
  settings(): StreamSettings;
  log: Logger;
}

/** A refusal IoT Core answered on `.../rejected/json`. */
export class StreamRejected extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(`IoT Core refused the block request: ${code}: ${message}`);
  }
}

export class StreamReader implements StreamSource {
  /** One transfer at a time per thing and stream: they share the answer topics' subscription. */
  private readonly lanes = new Map<string, Promise<void>>();

  constructor(private readonly opts: StreamReaderOptions) {}

  read(ref: FileRef & { stream: StreamFile; size: number }, chunk: (bytes: Buffer) => Promise<void>, signal: AbortSignal): Promise<void> {
    const key = `${ref.via?.thingName ?? ''}/${ref.stream.streamId}`;
    const run = (this.lanes.get(key) ?? Promise.resolve()).then(() => this.transfer(ref, chunk, signal));
    const lane = run.catch(() => undefined);
    this.lanes.set(key, lane);
    void lane.then(() => {
      if (this.lanes.get(key) === lane) this.lanes.delete(key);
    });
    return run;
  }

  private async transfer(ref: FileRef & { stream: StreamFile; size: number }, chunk: (bytes: Buffer) => Promise<void>, signal: AbortSignal): Promise<void> {
    signal.throwIfAborted();
    const sim = ref.via;
    if (!sim) throw new Error('no device session to fetch the stream on');
    const { streamBlockBytes: l, streamBlocksPerRequest: perRequest, streamAnswerTimeoutMs } = this.opts.settings();
    const { streamId, fileId } = ref.stream;
    const base = `$aws/things/${sim.thingName}/streams/${streamId}`;
    const filter = `${base}/+/json`;
    const c = randomUUID();
    const blocks = new Map<number, Buffer>();
    let failure: Error | undefined;
    let wake: (() => void) | undefined;

    const onMessage = (topic: string, payload: Buffer) => {
      let body: Record<string, unknown>;
      try {
        body = JSON.parse(payload.toString('utf8')) as Record<string, unknown>;
      } catch {
        return;
      }
      if (body.c !== c) return; // another transfer's answer on the same stream
      if (topic === `${base}/rejected/json`) failure = new StreamRejected(String(body.o), String(body.m));
      else if (topic === `${base}/data/json` && body.f === fileId && typeof body.i === 'number' && typeof body.p === 'string') blocks.set(body.i, Buffer.from(body.p, 'base64'));
      else return;
      wake?.();
    };

    const creds = await this.opts.credentials(sim);
    await this.opts.pool.subscribe(creds, filter, 1, onMessage);
    try {
      const total = Math.ceil(ref.size / l);
      for (let next = 0; next < total; ) {
        const n = Math.min(perRequest, total - next);
        const session = await this.opts.pool.session(creds);
        await session.publish(`${base}/get/json`, Buffer.from(JSON.stringify({ c, f: fileId, l, o: next, n })), 1);
        await this.until(() => failure !== undefined || range(next, n).every((i) => blocks.has(i)), (w) => (wake = w), streamAnswerTimeoutMs, signal, `blocks ${next}-${next + n - 1}`);
        if (failure) throw failure;
        for (const i of range(next, n)) {
          const block = blocks.get(i)!;
          blocks.delete(i);
          // Every block but the last is full: a short one means the stream's file is not the one named.
          if (i < total - 1 && block.length !== l) throw new Error(`block ${i} holds ${block.length} bytes, not ${l}: the stream's file is not ${ref.size} bytes`);
          await chunk(block);
        }
        next += n;
      }
    } finally {
      await this.opts.pool.unsubscribe(sim.thingName, filter).catch(() => undefined);
    }
  }

  /** Resolves once `done()` holds (checked whenever `wake` is called); rejects on timeout or abort. */
  private until(done: () => boolean, setWake: (w: () => void) => void, timeoutMs: number, signal: AbortSignal, what: string): Promise<void> {
    if (done()) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      const finish = (err?: Error) => {
        clearTimeout(timer);
        signal.removeEventListener('abort', onAbort);
        setWake(() => undefined);
        if (err) reject(err);
        else resolve();
      };
      const onAbort = () => finish(signal.reason instanceof Error ? signal.reason : new Error('aborted'));
      const timer = setTimeout(() => finish(new Error(`${what} not received within files.streamAnswerTimeoutMs (${timeoutMs} ms)`)), timeoutMs);
      signal.addEventListener('abort', onAbort);
      setWake(() => {
        if (done()) finish();
      });
    });
  }
}

const range = (from: number, n: number) => Array.from({ length: n }, (_, k) => from + k);

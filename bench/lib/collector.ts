import { spawn, type ChildProcess } from 'node:child_process';
import { READING } from './devices.ts';
import { newHist, record, type Hist } from './hist.ts';
import { track } from '../../test/helpers/processes.ts';
import { MOSQUITTO_SUB } from './mosquitto.ts';
import { sleep } from './stats.ts';

/** IoT Core bills publishes in 5 KB units of payload + topic. */
const BILLING_UNIT_BYTES = 5 * 1024;

/** What arrived upstream for one run tag. */
export class TagStats {
  /** dev → per-seq receive counts (saturating at 255). */
  readonly counts = new Map<number, Uint8Array>();
  unique = 0;
  duplicates = 0;
  messages = 0;
  billedUnits = 0;
  firstAt = 0;
  lastAt = 0;
  readonly e2e: Hist = newHist();

  note(dev: number, seq: number, sentMs: number, recvMs: number): void {
    let c = this.counts.get(dev);
    if (!c || seq >= c.length) {
      const grown = new Uint8Array(Math.max(seq + 1, (c?.length ?? 512) * 2));
      if (c) grown.set(c);
      c = grown;
      this.counts.set(dev, c);
    }
    if (c[seq] === 0) {
      this.unique++;
      record(this.e2e, recvMs - sentMs);
      if (!this.firstAt) this.firstAt = recvMs;
      this.lastAt = recvMs;
    } else this.duplicates++;
    if (c[seq] < 255) c[seq]++;
  }

  /** Messages acknowledged to a device that never arrived, and acknowledged ones that arrived more than once. */
  compare(ackedByDevice: Map<number, Uint8Array>): { lost: number; duplicatesOfAcked: number; acked: number } {
    let lost = 0;
    let dups = 0;
    let acked = 0;
    for (const [dev, bits] of ackedByDevice) {
      const c = this.counts.get(dev);
      for (let seq = 0; seq < bits.length; seq++) {
        if (!bits[seq]) continue;
        acked++;
        const n = c && seq < c.length ? c[seq] : 0;
        if (n === 0) lost++;
        else if (n > 1) dups += n - 1;
      }
    }
    return { lost, duplicatesOfAcked: dups, acked };
  }
}

/**
 * Subscribes to `devices/#` on the upstream's plain listener with mosquitto_sub (C, cheap, and it stamps
 * each message with its receive time, so a busy Node parser does not inflate end-to-end latency), as a
 * persistent QoS 1 session that survives an upstream restart.
 */
export class Collector {
  private readonly tags = new Map<string, TagStats>();
  private buf = '';
  private lastLine = '';
  private child?: ChildProcess;
  received = 0;
  probes = 0;

  /**
   * `plainPort`: where mosquitto_sub subscribes. `probePort`: where the start-up probe is published
   * (default the same listener; a read-only tap such as the sandbox observer is probed through a broker
   * whose messages reach it).
   */
  constructor(
    private readonly plainPort: number,
    private readonly probePort = plainPort,
  ) {}

  private closing = false;

  async start(): Promise<void> {
    this.spawn();
    // Subscribed once a probe comes back.
    const deadline = Date.now() + 15_000;
    while (this.probes === 0) {
      if (Date.now() > deadline) throw new Error('collector: no probe message within 15 s');
      await probe(this.probePort);
      await sleep(200);
    }
  }

  /** mosquitto_sub reconnects by itself; should it ever exit (e.g. the broker was down), it is started again. */
  private spawn(): void {
    this.child = track(
      spawn(
        MOSQUITTO_SUB,
        ['-h', '127.0.0.1', '-p', String(this.plainPort), '-q', '1', '-c', '-i', 'bench-collector', '-t', 'devices/#', '-F', '%U %t %p'],
        { stdio: ['ignore', 'pipe', 'pipe'] },
      ),
    );
    this.child.stdout!.setEncoding('utf8');
    this.child.stdout!.on('data', (d: string) => this.onData(d));
    this.child.stderr!.on('data', () => undefined);
    this.child.once('exit', () => {
      if (!this.closing) setTimeout(() => !this.closing && this.spawn(), 500);
    });
  }

  stats(tag: string): TagStats {
    let s = this.tags.get(tag);
    if (!s) this.tags.set(tag, (s = new TagStats()));
    return s;
  }

  /** Waits until `done()` holds or nothing new has arrived for quietMs, bounded by timeoutMs. */
  async waitUntil(done: () => boolean, opts: { timeoutMs: number; quietMs?: number }): Promise<boolean> {
    const deadline = Date.now() + opts.timeoutMs;
    let seen = this.received;
    let lastChange = Date.now();
    while (!done()) {
      if (Date.now() > deadline) return false;
      if (this.received !== seen) {
        seen = this.received;
        lastChange = Date.now();
      } else if (opts.quietMs && Date.now() - lastChange > opts.quietMs) return false;
      await sleep(20);
    }
    return true;
  }

  close(): void {
    this.closing = true;
    this.child?.kill('SIGTERM');
  }

  private onData(chunk: string): void {
    this.buf += chunk;
    let nl: number;
    let start = 0;
    while ((nl = this.buf.indexOf('\n', start)) !== -1) {
      this.onLine(this.buf.slice(start, nl));
      start = nl + 1;
    }
    this.buf = this.buf.slice(start);
  }

  private onLine(line: string): void {
    // A payload holding a newline continues on the next line: glue it back.
    if (!/^\d+\.\d+ /.test(line)) {
      if (this.lastLine) this.onMessage(this.lastLine + '\n' + line, true);
      return;
    }
    this.lastLine = line;
    this.onMessage(line, false);
  }

  private onMessage(line: string, continuation: boolean): void {
    const sp1 = line.indexOf(' ');
    const sp2 = line.indexOf(' ', sp1 + 1);
    const recvMs = Number(line.slice(0, sp1)) * 1000;
    const topic = line.slice(sp1 + 1, sp2 < 0 ? undefined : sp2);
    const body = sp2 < 0 ? '' : line.slice(sp2 + 1);
    if (topic === 'devices/_probe') {
      this.probes++;
      return;
    }
    if (!continuation) this.received++;
    let first: TagStats | undefined;
    const scan = (text: string) => {
      READING.lastIndex = 0;
      let m: RegExpExecArray | null;
      while ((m = READING.exec(text))) {
        const s = this.stats(m[1]);
        first ??= s;
        s.note(Number(m[2]), Number(m[3]), Number(m[4]), recvMs);
      }
    };
    scan(body);
    // A batch envelope (version 2) carries non-JSON readings base64-encoded: [offset, topic, "<base64>", "base64"].
    if (body.includes('"base64"')) {
      for (const b of body.matchAll(/"([A-Za-z0-9+/=]+)","base64"\]/g)) scan(Buffer.from(b[1], 'base64').toString('latin1'));
    }
    if (first && !continuation) {
      first.messages++;
      first.billedUnits += Math.ceil((Buffer.byteLength(topic) + Buffer.byteLength(body)) / BILLING_UNIT_BYTES);
    }
  }
}

/** Publishes one probe message to a broker's plain listener. */
export function probe(port: number): Promise<void> {
  return new Promise((resolve) => {
    const p = spawn('mosquitto_pub', ['-h', '127.0.0.1', '-p', String(port), '-q', '1', '-t', 'devices/_probe', '-m', 'probe'], { stdio: 'ignore' });
    p.on('exit', () => resolve());
    p.on('error', () => resolve());
  });
}

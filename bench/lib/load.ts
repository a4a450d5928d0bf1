import { fork, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { DeviceSpec } from './devices.ts';
import { merge, newHist, type Hist } from './hist.ts';
import { track } from '../../test/helpers/processes.ts';
import type { ConnectResult, RunCmd, RunResult, Target } from '../load/worker.ts';


/** One bench child process (load generator, fuzzer), spoken to over IPC: {id, cmd, ...} → {id, ok, result|error}. */
export class Worker {
  private nextId = 1;
  private readonly waiting = new Map<number, { resolve(v: unknown): void; reject(e: Error): void }>();
  readonly exited: Promise<void>;

  constructor(readonly child: ChildProcess) {
    child.on('message', (m) => {
      const { id, ok, result, error } = m as { id: number; ok: boolean; result?: unknown; error?: string };
      const w = this.waiting.get(id);
      if (!w) return;
      this.waiting.delete(id);
      if (ok) w.resolve(result);
      else w.reject(new Error(`load worker: ${error}`));
    });
    this.exited = new Promise((resolve) =>
      child.on('exit', (code, signal) => {
        for (const w of this.waiting.values()) w.reject(new Error(`load worker exited (${code ?? signal})`));
        this.waiting.clear();
        resolve();
      }),
    );
  }

  call<T>(msg: Record<string, unknown>, timeoutMs: number): Promise<T> {
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting.delete(id);
        reject(new Error(`load worker: ${String(msg.cmd)} timed out after ${timeoutMs} ms`));
      }, timeoutMs);
      this.waiting.set(id, {
        resolve: (v) => (clearTimeout(timer), resolve(v as T)),
        reject: (e) => (clearTimeout(timer), reject(e)),
      });
      this.child.send({ id, ...msg });
    });
  }
}

/** Forks bench/load/<name>.ts with the tsx loader. */
export function forkWorker(name: string): Worker {
  const file = fileURLToPath(new URL(`../load/${name}.ts`, import.meta.url));
  const child = fork(file, [], { execArgv: ['--import', 'tsx'], serialization: 'advanced', stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  track(child);
  return new Worker(child);
}

export interface MergedRun {
  sent: number;
  acked: number;
  errors: number;
  errorKinds: Record<string, number>;
  outstanding: number;
  skipped: number;
  /** Earliest start and latest end over the workers (epoch ms). */
  startedAt: number;
  sendingEndedAt: number;
  lastAckAt: number;
  ackHist: Hist;
  /** Acknowledgements per 100 ms since startedAt (workers aligned on their own start times). */
  ackTimeline: Uint32Array;
  acked_by_device?: Map<number, Uint8Array>;
  reconnects: number;
}

/**
 * Simulated devices spread over `workers` separate processes, so the load does not run in the
 * orchestrator (or in simbridge). Devices are dealt round-robin.
 */
export class LoadPool {
  private constructor(private readonly workers: Worker[]) {}

  /** `concurrency`, `timeoutMs`: per worker, as the worker's connect command takes them (large fleets need more of both). */
  static async start(
    target: Target,
    specs: DeviceSpec[],
    opts: { workers: number; reconnectPeriodMs?: number; noDelay?: boolean; concurrency?: number; timeoutMs?: number },
  ): Promise<LoadPool> {
    const n = Math.max(1, Math.min(opts.workers, specs.length));
    const workers = Array.from({ length: n }, () => forkWorker('worker'));
    const pool = new LoadPool(workers);
    try {
      const results = await Promise.all(
        workers.map((w, k) =>
          w.call<ConnectResult>(
            {
              cmd: 'connect',
              target,
              devices: specs.filter((_, i) => i % n === k),
              reconnectPeriodMs: opts.reconnectPeriodMs ?? 0,
              noDelay: opts.noDelay ?? (process.env.BENCH_DEVICE_NODELAY ? process.env.BENCH_DEVICE_NODELAY === '1' : undefined),
              concurrency: opts.concurrency,
              timeoutMs: opts.timeoutMs,
            },
            (opts.timeoutMs ?? 120_000) + 20_000,
          ),
        ),
      );
      // Every device must be up: the runs measure delivery, not connecting.
      const failed = results.filter((r) => r.failed > 0);
      if (failed.length) throw new Error(`load devices failed to connect: ${JSON.stringify(failed.map((r) => r.errorKinds))}`);
    } catch (err) {
      await pool.close();
      throw err;
    }
    return pool;
  }

  /** Runs every worker; `ratePerS` (paced) is the total and is split evenly. */
  async run(cmd: Omit<RunCmd, 'cmd'>): Promise<MergedRun> {
    const n = this.workers.length;
    const results = await Promise.all(
      this.workers.map((w) =>
        w.call<RunResult>({ cmd: 'run', ...cmd, ratePerS: cmd.ratePerS === undefined ? undefined : cmd.ratePerS / n }, cmd.durationMs + cmd.tailMs + 60_000),
      ),
    );
    const out: MergedRun = {
      sent: 0,
      acked: 0,
      errors: 0,
      errorKinds: {},
      outstanding: 0,
      skipped: 0,
      startedAt: Math.min(...results.map((r) => r.startedAt)),
      sendingEndedAt: Math.max(...results.map((r) => r.sendingEndedAt)),
      lastAckAt: Math.max(...results.map((r) => r.lastAckAt)),
      ackHist: newHist(),
      ackTimeline: new Uint32Array(Math.max(...results.map((r) => r.ackTimeline.length)) + 10),
      reconnects: 0,
    };
    for (const r of results) {
      out.sent += r.sent;
      out.acked += r.acked;
      out.errors += r.errors;
      for (const [k, v] of Object.entries(r.errorKinds)) out.errorKinds[k] = (out.errorKinds[k] ?? 0) + v;
      out.outstanding += r.outstanding;
      out.skipped += r.skipped;
      out.reconnects += r.reconnects;
      merge(out.ackHist, r.ackHist);
      const shift = Math.round((r.startedAt - out.startedAt) / 100);
      r.ackTimeline.forEach((v, i) => {
        if (i + shift < out.ackTimeline.length) out.ackTimeline[i + shift] += v;
      });
      if (r.acked_by_device) {
        out.acked_by_device ??= new Map();
        for (const d of r.acked_by_device) out.acked_by_device.set(d.dev, d.bits);
      }
    }
    return out;
  }

  /** Ends a run early (its run() promise then resolves). */
  async stop(): Promise<void> {
    await Promise.all(this.workers.map((w) => w.call({ cmd: 'stop' }, 10_000).catch(() => undefined)));
  }

  async progress(): Promise<{ sent: number; acked: number }> {
    const all = await Promise.all(this.workers.map((w) => w.call<{ sent?: number; acked?: number }>({ cmd: 'progress' }, 10_000)));
    return { sent: all.reduce((a, p) => a + (p.sent ?? 0), 0), acked: all.reduce((a, p) => a + (p.acked ?? 0), 0) };
  }

  async close(): Promise<void> {
    await Promise.all(
      this.workers.map(async (w) => {
        await w.call({ cmd: 'close' }, 10_000).catch(() => undefined);
        const t = setTimeout(() => w.child.kill('SIGKILL'), 5000);
        await w.exited;
        clearTimeout(t);
      }),
    );
  }
}

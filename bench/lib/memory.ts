// Memory readings of a running simbridge for benchmarks: settled RSS, and a probe that runs full
// garbage collections inside the gateway first (bench/lib/mem-probe.mjs).
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { rssKb } from './procstat.ts';
import { sleep } from './stats.ts';

/** RSS (KB) once it has stopped moving (two samples `stepMs` apart within 1 %), bounded to `steps` samples. */
export async function settledRss(pid: number, stepMs = 1000, steps = 15): Promise<number | null> {
  let prev = rssKb(pid);
  for (let i = 0; i < steps; i++) {
    await sleep(stepMs);
    const now = rssKb(pid);
    if (now === null || prev === null) return now;
    if (Math.abs(now - prev) / prev < 0.01) return now;
    prev = now;
  }
  return prev;
}

/**
 * How long after start a gateway's RSS is read as its idle baseline. V8 shrinks the heaps of a process
 * whose allocation has calmed down about 8 s after start (its memory reducer): an idle sandbox gateway
 * went from 241 to 162 MB between its 8th and 11th second. A baseline read before that makes every
 * later delta too small.
 */
export const IDLE_BASELINE_AFTER_MS = 15_000;

/** The idle gateway's settled RSS (KB), read no earlier than IDLE_BASELINE_AFTER_MS after `startedAt`. */
export async function idleRss(pid: number, startedAt: number): Promise<number | null> {
  await sleep(Math.max(0, startedAt + IDLE_BASELINE_AFTER_MS - Date.now()));
  return settledRss(pid);
}

export interface MemUsage {
  rss: number;
  heapUsed: number;
  external: number;
  arrayBuffers: number;
}

/**
 * The memory probe, loaded into a gateway started within `withProbe`: `gc(pid)` sends it SIGUSR2, it
 * runs two full garbage collections of the main thread and reports process.memoryUsage().
 */
export class MemProbe {
  private readonly dir = mkdtempSync(join(tmpdir(), 'simbridge-memprobe-'));

  /** Starts what `start` starts (the gateway) with the probe loaded; other processes do not get it. */
  async withProbe<T>(start: () => Promise<T>): Promise<T> {
    const saved = { options: process.env.NODE_OPTIONS, dir: process.env.BENCH_MEMPROBE_DIR };
    const probe = fileURLToPath(new URL('./mem-probe.mjs', import.meta.url));
    process.env.NODE_OPTIONS = [saved.options, '--expose-gc', `--import=${probe}`].filter(Boolean).join(' ');
    process.env.BENCH_MEMPROBE_DIR = this.dir;
    try {
      return await start();
    } finally {
      restore('NODE_OPTIONS', saved.options);
      restore('BENCH_MEMPROBE_DIR', saved.dir);
    }
  }

  async gc(pid: number): Promise<MemUsage | null> {
    const file = join(this.dir, `${pid}.json`);
    rmSync(file, { force: true });
    try {
      process.kill(pid, 'SIGUSR2');
    } catch {
      return null;
    }
    for (let i = 0; i < 100; i++) {
      await sleep(100);
      if (existsSync(file)) return JSON.parse(readFileSync(file, 'utf8')) as MemUsage;
    }
    return null;
  }

  /**
   * Collects, then reads the settled RSS again: the baseline of the next delta, which the collection
   * would otherwise shrink. `rssKb` falls back to the reading taken before (`readKb`).
   */
  async gcBaseline(pid: number, readKb: number | null): Promise<{ mem: MemUsage | null; rssKb: number | null }> {
    const mem = await this.gc(pid);
    return { mem, rssKb: (await settledRss(pid)) ?? readKb };
  }

  remove(): void {
    rmSync(this.dir, { recursive: true, force: true });
  }
}

function restore(name: string, value: string | undefined): void {
  if (value === undefined) delete process.env[name];
  else process.env[name] = value;
}

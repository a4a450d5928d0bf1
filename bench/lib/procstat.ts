import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import os from 'node:os';

let ticksPerSecond: number | undefined;

function clockTicks(): number {
  if (ticksPerSecond === undefined) {
    try {
      ticksPerSecond = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
    } catch {
      ticksPerSecond = 100;
    }
  }
  return ticksPerSecond;
}

/** Resident set size of a process in KiB (VmRSS in /proc/<pid>/status); null when it is gone. */
export function rssKb(pid: number): number | null {
  try {
    const m = readFileSync(`/proc/${pid}/status`, 'utf8').match(/^VmRSS:\s+(\d+)\s+kB/m);
    return m ? Number(m[1]) : null;
  } catch {
    return null;
  }
}

/** CPU seconds (user + system, all threads) a process has used so far (/proc/<pid>/stat); null when it is gone. */
export function cpuSeconds(pid: number): number | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name may contain spaces and parentheses: fields are counted after the last ')'.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // fields[0] is field 3 (state); utime is field 14, stime field 15.
    return (Number(fields[11]) + Number(fields[12])) / clockTicks();
  } catch {
    return null;
  }
}

/** Samples a process's RSS every interval and keeps the largest value; stop() returns it in KiB. */
export function rssPeak(pid: number, intervalMs = 250): { stop(): number | null } {
  let peak: number | null = null;
  const sample = () => {
    const v = rssKb(pid);
    if (v !== null && (peak === null || v > peak)) peak = v;
  };
  sample();
  const t = setInterval(sample, intervalMs);
  return {
    stop() {
      clearInterval(t);
      sample();
      return peak;
    },
  };
}

export interface Machine {
  cores: number;
  memory_gb: number;
  node: string;
  cpu_model: string;
  kernel: string;
}

export function machine(): Machine {
  return {
    cores: os.availableParallelism(),
    memory_gb: Math.round(os.totalmem() / 2 ** 30),
    node: process.version,
    cpu_model: os.cpus()[0]?.model ?? 'unknown',
    kernel: os.release(),
  };
}

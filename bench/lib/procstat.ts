import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
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

/** CPU seconds (user + system) in a /proc stat file, and the command name it gives; null when it is gone. */
function statCpu(path: string): { name: string; seconds: number } | null {
  try {
    const stat = readFileSync(path, 'utf8');
    // The command name may contain spaces and parentheses: fields are counted after the last ')'.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // fields[0] is field 3 (state); utime is field 14, stime field 15.
    return { name: stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')')), seconds: (Number(fields[11]) + Number(fields[12])) / clockTicks() };
  } catch {
    return null;
  }
}

/** CPU seconds (user + system, all threads) a process has used so far (/proc/<pid>/stat); null when it is gone. */
export function cpuSeconds(pid: number): number | null {
  return statCpu(`/proc/${pid}/stat`)?.seconds ?? null;
}

/** CPU seconds each thread of a process has used so far, by "name#tid" (threads that ended are left out). */
export function threadCpuSeconds(pid: number): Map<string, number> {
  const seconds = new Map<string, number>();
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    const used = statCpu(`/proc/${pid}/task/${tid}/stat`);
    if (used) seconds.set(`${used.name}#${tid}`, used.seconds);
  }
  return seconds;
}

/** The soft limit on open files of a process (`Max open files` in /proc/<pid>/limits; children inherit it); null if unreadable or unlimited. */
export function openFilesLimit(pid: number | 'self' = 'self'): number | null {
  try {
    const m = readFileSync(`/proc/${pid}/limits`, 'utf8').match(/^Max open files\s+(\d+)\s+(\S+)/m);
    return m ? Number(m[1]) : null;
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

function machineTicks(): { busy: number; steal: number } {
  const f = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
  const [user, nice, system, idle, iowait, irq, softirq, steal] = f;
  void idle;
  void iowait;
  return { busy: user + nice + system + irq + softirq, steal: steal ?? 0 };
}

/** Every process now: its parent, its own CPU ticks (user + system), and those of its children that exited. */
function processTable(): Map<number, { ppid: number; ticks: number; childTicks: number }> {
  const procs = new Map<number, { ppid: number; ticks: number; childTicks: number }>();
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const s = readFileSync(`/proc/${d}/stat`, 'utf8');
      const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
      procs.set(Number(d), { ppid: Number(f[1]), ticks: Number(f[11]) + Number(f[12]), childTicks: Number(f[13]) + Number(f[14]) });
    } catch {
      // gone
    }
  }
  return procs;
}

/** This process and all its descendants. */
function benchTree(procs = processTable()): number[] {
  const children = new Map<number, number[]>();
  for (const [pid, p] of procs) children.set(p.ppid, [...(children.get(p.ppid) ?? []), pid]);
  const tree: number[] = [];
  const stack = [process.pid];
  while (stack.length) {
    const pid = stack.pop()!;
    tree.push(pid);
    stack.push(...(children.get(pid) ?? []));
  }
  return tree;
}

/** CPU ticks used by this process and all its descendants (children that exited count via cutime/cstime). */
function treeTicks(): number {
  const procs = processTable();
  return benchTree(procs).reduce((sum, pid) => {
    const p = procs.get(pid);
    return sum + (p ? p.ticks + p.childTicks : 0);
  }, 0);
}

/**
 * Lowers the scheduling priority of every thread of the test bed (this process and its descendants)
 * except the gateway's: a diagnostic (BENCH_BED_NICE) that shows how much of the gateway's latency is
 * its wait for a core on a machine it shares with the bed. Threads started later inherit it from the
 * thread that starts them. Returns how many threads were changed.
 */
export function reniceBed(gatewayPid: number, nice: number): number {
  let changed = 0;
  for (const pid of benchTree()) {
    if (pid === gatewayPid) continue;
    let tids: string[] = [];
    try {
      tids = readdirSync(`/proc/${pid}/task`);
    } catch {
      continue; // gone
    }
    for (const tid of tids) {
      try {
        os.setPriority(Number(tid), nice);
        changed++;
      } catch {
        // gone
      }
    }
  }
  return changed;
}

export interface Noise {
  /** CPU used by processes other than the bench and its children, in % of one core (200 = both of 2 cores). */
  other_cpu_pct: number;
  /** CPU time the hypervisor took away, % of one core. */
  steal_pct: number;
  loadavg_1m: number;
}

/** A report's record of how busy the (shared) machine was: params, and the note every report carries. */
export function noiseReport(n: Noise, waitedQuietS: number): { params: Record<string, number>; note: string } {
  return {
    params: { machine_other_cpu_pct: n.other_cpu_pct, machine_steal_pct: n.steal_pct, loadavg_1m_at_end: n.loadavg_1m, waited_for_quiet_s: waitedQuietS },
    note: `While this ran, other processes on the machine used ${n.other_cpu_pct} % of a core on average (steal ${n.steal_pct} %; 1-minute load average ${n.loadavg_1m} at the end): figures from a busier machine are lower.`,
  };
}

/** Measures how busy the machine was with other work between start and stop(). */
export function noiseMeter(): { stop(): Noise } {
  const t0 = Date.now();
  const m0 = machineTicks();
  const b0 = treeTicks();
  return {
    stop() {
      const s = Math.max(0.001, (Date.now() - t0) / 1000);
      const m1 = machineTicks();
      const b1 = treeTicks();
      const hz = clockTicks();
      const other = Math.max(0, m1.busy - m0.busy - (b1 - b0)) / hz / s;
      return {
        other_cpu_pct: Math.round(other * 1000) / 10,
        steal_pct: Math.round(((m1.steal - m0.steal) / hz / s) * 1000) / 10,
        loadavg_1m: Number(readFileSync('/proc/loadavg', 'utf8').split(' ')[0]),
      };
    },
  };
}

/** Waits (up to maxS) until others use less than thresholdPct of a core over 3 s; returns the seconds waited. */
export async function waitForQuiet(maxS: number, thresholdPct: number): Promise<number> {
  const start = Date.now();
  while ((Date.now() - start) / 1000 < maxS) {
    const m = noiseMeter();
    await new Promise((r) => setTimeout(r, 3000));
    if (m.stop().other_cpu_pct < thresholdPct) break;
  }
  return Math.round((Date.now() - start) / 1000);
}

/** Machine-wide TcpExt ListenOverflows (/proc/net/netstat): connections dropped because an accept queue was full. */
export function listenOverflows(): number | null {
  try {
    const lines = readFileSync('/proc/net/netstat', 'utf8').split('\n');
    for (let i = 0; i + 1 < lines.length; i += 2) {
      if (!lines[i].startsWith('TcpExt:')) continue;
      const names = lines[i].split(/\s+/);
      const values = lines[i + 1].split(/\s+/);
      const k = names.indexOf('ListenOverflows');
      return k >= 0 ? Number(values[k]) : null;
    }
  } catch {
    // not Linux
  }
  return null;
}

/** A process of the test bed, by what it does: read from its command line. */
function roleOf(pid: number, gatewayPid: number | undefined): string {
  if (pid === gatewayPid) return 'gateway';
  if (pid === process.pid) return 'bench';
  let cmd = '';
  try {
    cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
  } catch {
    return 'other';
  }
  if (cmd.includes('mosquitto_sub')) return 'collector';
  if (cmd.includes('mosquitto')) return 'mosquitto';
  if (cmd.includes('load/')) return 'devices';
  if (cmd.includes('\0sandbox\0')) return 'sandbox';
  return 'other';
}

/** Nanoseconds a thread has run, and waited runnable for a core (/proc/<pid>/task/<tid>/schedstat). */
function schedstat(pid: number, tid = pid): { runNs: number; waitNs: number } | null {
  try {
    const [run, wait] = readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').trim().split(' ').map(Number);
    return { runNs: run!, waitNs: wait! };
  } catch {
    return null;
  }
}

export interface CpuShares {
  /** CPU each role of the test bed used (gateway, mosquitto, collector, devices, sandbox, bench, other), % of one core. */
  roles: Record<string, number>;
  /** The whole machine, % of one core (200 = both of 2 cores busy). */
  machine_busy_pct: number;
  /** The gateway's main thread: % of the time it ran, and % of the time it was ready to run but waited for a core. */
  main_thread_run_pct: number | null;
  main_thread_runq_wait_pct: number | null;
  /** The span measured, in seconds. */
  wall_s: number;
}

/**
 * Where the machine's CPU went between start and stop(), by role of each process, and how long the
 * gateway's main thread waited for a core. On a machine the whole bed shares, a gateway thread that is
 * ready to run often is not running: the scheduler shares the cores among every busy thread.
 */
export function cpuShareMeter(gatewayPid?: number): { stop(): CpuShares } {
  const t0 = Date.now();
  const m0 = machineTicks();
  const p0 = processTable();
  const s0 = gatewayPid === undefined ? null : schedstat(gatewayPid);
  return {
    stop() {
      const wallS = Math.max(0.001, (Date.now() - t0) / 1000);
      const hz = clockTicks();
      const m1 = machineTicks();
      const roles: Record<string, number> = {};
      for (const [pid, { ticks }] of processTable()) {
        const used = ticks - (p0.get(pid)?.ticks ?? 0);
        if (used <= 0) continue;
        const role = roleOf(pid, gatewayPid);
        roles[role] = (roles[role] ?? 0) + used;
      }
      const pct = (ticks: number) => Math.round(((ticks / hz / wallS) * 1000)) / 10;
      const s1 = gatewayPid === undefined ? null : schedstat(gatewayPid);
      const nsPct = (ns: number) => Math.round((ns / 1e9 / wallS) * 1000) / 10;
      return {
        roles: Object.fromEntries(Object.entries(roles).map(([role, ticks]) => [role, pct(ticks)])),
        machine_busy_pct: pct(m1.busy - m0.busy),
        main_thread_run_pct: s0 && s1 ? nsPct(s1.runNs - s0.runNs) : null,
        main_thread_runq_wait_pct: s0 && s1 ? nsPct(s1.waitNs - s0.waitNs) : null,
        wall_s: wallS,
      };
    },
  };
}

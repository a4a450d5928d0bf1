import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { testStorage } from './storage-mode.ts';

// One process (node with the tsx loader), so a signal reaches simbridge itself, not a wrapper.
const runtime = [process.execPath, '--import', 'tsx'];

// Every child started through this harness is killed (by its own pid) when this process exits,
// however it exits, so no broker or gateway outlives a failed test or bench run.
const children = new Set<ChildProcess>();
process.on('exit', killAll);

export function track<C extends ChildProcess>(child: C): C {
  children.add(child);
  child.once('exit', () => children.delete(child));
  return child;
}

export function killAll(): void {
  for (const child of children) {
    if (child.exitCode === null && child.signalCode === null) {
      try {
        child.kill('SIGKILL');
      } catch {
        // already gone
      }
    }
  }
  children.clear();
}

export function tempDir(prefix: string): string {
  return mkdtempSync(join(tmpdir(), `simbridge-${prefix}-`));
}

/** A port free right now on 127.0.0.1. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as { port: number }).port;
      srv.close(() => resolve(port));
    });
  });
}

export function writeYaml(dir: string, name: string, value: unknown): string {
  const file = join(dir, name);
  writeFileSync(file, stringify(value));
  return file;
}

/**
 * The line `simbridge start --ready-json` and `simbridge sandbox --ready-json` print on stdout once every
 * listener is bound (README, "Ready signal"). Ports of listeners that are off are absent.
 */
export interface ReadySignal {
  ready: 'gateway' | 'sandbox';
  pid: number;
  ports: { mqtt?: number; http?: number; coap?: number; udp?: number; radius?: number; admin?: number; sandboxControl?: number; sandboxData?: number; sandboxObserver?: number };
  sandbox?: { controlEndpoint: string; caFile: string; serverCertFile: string; serverKeyFile: string };
}

/** A child process (the simbridge CLI, a broker) whose output is collected. */
export class CliProcess {
  /** stdout and stderr, interleaved. */
  output = '';
  stdout = '';
  readonly exited: Promise<number | null>;

  constructor(readonly child: ChildProcess) {
    track(child);
    child.stdout!.on('data', (d) => ((this.output += d), (this.stdout += d)));
    child.stderr!.on('data', (d) => (this.output += d));
    this.exited = new Promise((resolve) => child.on('exit', (code) => resolve(code)));
  }

  /** Waits for the ready signal (started with --ready-json) and returns it; a minute, since the machine may be shared. */
  async ready(timeoutMs = 60_000): Promise<ReadySignal> {
    const line = /^\{"ready":.*\n/m;
    await this.waitFor(() => line.test(this.stdout), timeoutMs, 'the ready signal');
    return JSON.parse(this.stdout.match(line)![0]) as ReadySignal;
  }

  /** Resolves when the output contains text (or `text()` holds); rejects if the process exits or time runs out. */
  waitFor(text: string | RegExp | (() => boolean), timeoutMs = 30_000, what: string = String(text)): Promise<void> {
    const found = () => (typeof text === 'function' ? text() : typeof text === 'string' ? this.output.includes(text) : text.test(this.output));
    return new Promise((resolve, reject) => {
      const timer = setInterval(() => {
        if (found()) return done(resolve);
        if (this.child.exitCode !== null || this.child.signalCode !== null) done(() => reject(new Error(`process exited before "${what}":\n${this.output}`)));
      }, 25);
      const deadline = setTimeout(() => done(() => reject(new Error(`timed out waiting for "${what}":\n${this.output}`))), timeoutMs);
      function done(fn: () => void) {
        clearInterval(timer);
        clearTimeout(deadline);
        fn();
      }
    });
  }

  kill(signal: NodeJS.Signals = 'SIGTERM'): Promise<number | null> {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill(signal);
    return this.exited;
  }
}

export interface SpawnOptions {
  env?: NodeJS.ProcessEnv;
  /** The checkout to run (default: this one); the bench may measure an exported commit. */
  cwd?: string;
  /** Options for node itself, e.g. --cpu-prof. */
  nodeArgs?: string[];
  /** How long to wait for the ready signal (default a minute). */
  timeoutMs?: number;
}

export function spawnCli(args: string[], env: NodeJS.ProcessEnv = {}, opts: SpawnOptions = {}): CliProcess {
  return new CliProcess(
    spawn(runtime[0], [...(opts.nodeArgs ?? []), ...runtime.slice(1), 'bin/simbridge.ts', ...args], { cwd: opts.cwd, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] }),
  );
}

export interface SandboxProcess {
  process: CliProcess;
  controlEndpoint: string;
  dataPort: number;
  observerPort: number;
  caFile: string;
  serverCertFile: string;
  serverKeyFile: string;
}

/** Runs `simbridge sandbox` on free ports, as its own process (so the gateway can be killed on its own). */
export async function startSandboxProcess(
  dir: string,
  ports?: { controlPort: number; dataPort: number; observerPort: number },
  /** More of the config's `sandbox` section (fidelity switches), and its `vending` section (region). */
  options: { sandbox?: Record<string, unknown>; vending?: Record<string, unknown> } = {},
  opts: SpawnOptions = {},
): Promise<SandboxProcess> {
  // Port 0 everywhere: the sandbox binds what is free and says which, so parallel tests never collide.
  // A restart passes the ports it had, so the gateway finds it where it was.
  const config = writeYaml(dir, 'sandbox.yaml', {
    dataDir: dir,
    sandbox: { ...(ports ?? { controlPort: 0, dataPort: 0, observerPort: 0 }), ...options.sandbox },
    ...(options.vending ? { vending: options.vending } : {}),
    log: { level: 'warn' },
  });
  const proc = spawnCli(['sandbox', '--config', config, '--ready-json'], opts.env, opts);
  const { ports: bound, sandbox } = await proc.ready(opts.timeoutMs);
  return { process: proc, dataPort: bound.sandboxData!, observerPort: bound.sandboxObserver!, ...sandbox! };
}

export const TEST_MASTER_KEY = '11'.repeat(32);

export interface GatewayPorts {
  mqttPort: number;
  httpPort: number;
}

/** A gateway config pointed at an upstream (the sandbox data plane or a Mosquitto) and the sandbox control plane. */
export async function gatewayConfig(
  dir: string,
  sandbox: SandboxProcess,
  extra: {
    upstreamPort?: number;
    caFile?: string;
    sims?: Record<string, unknown>;
    limits?: Record<string, unknown>;
    upstream?: Record<string, unknown>;
    vending?: Record<string, unknown>;
    storage?: Record<string, unknown>;
    cluster?: Record<string, unknown>;
    shutdown?: Record<string, unknown>;
    groups?: Record<string, unknown>;
    listeners?: { mqtt?: Record<string, unknown>; http?: Record<string, unknown>; coap?: Record<string, unknown>; udp?: Record<string, unknown> };
    radius?: Record<string, unknown>;
    identity?: Record<string, unknown>;
    files?: Record<string, unknown>;
    /** Stay on SQLite in PostgreSQL mode (SIMBRIDGE_TEST_STORAGE): for tests about the SQLite file itself. */
    keepSqlite?: boolean;
  } = {},
): Promise<{ file: string }> {
  const storage = await testStorage(join(dir, 'gateway'), extra.storage, extra.keepSqlite);
  const file = writeYaml(dir, 'gateway.yaml', {
    mode: 'aws',
    dataDir: join(dir, 'gateway'),
    listeners: {
      mqtt: { host: '127.0.0.1', port: 0, ...extra.listeners?.mqtt },
      http: { host: '127.0.0.1', port: 0, ...extra.listeners?.http },
      ...(extra.listeners?.coap ? { coap: { host: '127.0.0.1', port: 0, enabled: true, ...extra.listeners.coap } } : {}),
      ...(extra.listeners?.udp ? { udp: { host: '127.0.0.1', port: 0, enabled: true, ...extra.listeners.udp } } : {}),
    },
    ...(extra.sims ? { sims: extra.sims } : {}),
    ...(extra.limits ? { limits: extra.limits } : {}),
    ...(extra.groups ? { groups: extra.groups } : {}),
    ...(extra.radius ? { radius: { host: '127.0.0.1', port: 0, ...extra.radius } } : {}),
    // Test devices claim their identity on loopback without secrets: a lab, opted into as an operator must.
    identity: { allowInsecureClaims: true, ...extra.identity },
    ...(Object.keys(storage).length ? { storage } : {}),
    ...(extra.cluster ? { cluster: extra.cluster } : {}),
    ...(extra.shutdown ? { shutdown: extra.shutdown } : {}),
    ...(extra.files ? { files: extra.files } : {}),
    vending: { endpoint: sandbox.controlEndpoint, credentials: { accessKeyId: 'sandbox', secretAccessKey: 'sandbox' }, retryDelayMs: 200, ...extra.vending },
    upstream: {
      endpoint: 'localhost',
      port: extra.upstreamPort ?? sandbox.dataPort,
      caFile: extra.caFile ?? sandbox.caFile,
      retryDelayMs: 200,
      retryMaxDelayMs: 2000,
      ...extra.upstream,
    },
    admin: { port: 0 },
    log: { level: 'warn' },
  });
  return { file };
}

export interface GatewayProcess extends CliProcess, GatewayPorts {
  coapPort?: number;
  udpPort?: number;
  radiusPort?: number;
  adminPort?: number;
}

/** Starts `simbridge start` and takes the ports it bound from its ready signal. */
export async function startGatewayProcess(configFile: string, opts: SpawnOptions = {}): Promise<GatewayProcess> {
  const proc = spawnCli(['start', '--config', configFile, '--ready-json'], { SIMBRIDGE_MASTER_KEY: TEST_MASTER_KEY, ...opts.env }, opts);
  const { ports } = await proc.ready(opts.timeoutMs);
  return Object.assign(proc, { mqttPort: ports.mqtt!, httpPort: ports.http!, coapPort: ports.coap, udpPort: ports.udp, radiusPort: ports.radius, adminPort: ports.admin });
}

/**
 * A gateway node of a test cluster: a directory of its own under `dir`, the shared database at `url`, a
 * short lease (a dead node's SIMs move within a test's patience) and `name` as its node id.
 */
export async function startClusterNode(
  dir: string,
  name: string,
  sandbox: SandboxProcess,
  url: string,
  extra: Parameters<typeof gatewayConfig>[2] = {},
): Promise<{ node: GatewayProcess; configFile: string }> {
  const nodeDir = join(dir, name);
  mkdirSync(nodeDir, { recursive: true });
  const { file } = await gatewayConfig(nodeDir, sandbox, { ...extra, storage: { ...extra.storage, url }, cluster: { heartbeatMs: 500, leaseMs: 2000, ...extra.cluster } });
  return { node: await startGatewayProcess(file, { env: { SIMBRIDGE_NODE_ID: name } }), configFile: file };
}

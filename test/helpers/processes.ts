import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stringify } from 'yaml';

// One process (node with the tsx loader), so a signal reaches simbridge itself, not a wrapper.
const runtime = [process.execPath, '--import', 'tsx'];

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

/** A child process of the simbridge CLI whose output is collected. */
export class CliProcess {
  output = '';
  readonly exited: Promise<number | null>;

  constructor(readonly child: ChildProcess) {
    child.stdout!.on('data', (d) => (this.output += d));
    child.stderr!.on('data', (d) => (this.output += d));
    this.exited = new Promise((resolve) => child.on('exit', (code) => resolve(code)));
  }

  /** Resolves when the output contains text; rejects if the process exits or time runs out. */
  waitFor(text: string | RegExp, timeoutMs = 30_000): Promise<void> {
    const found = () => (typeof text === 'string' ? this.output.includes(text) : text.test(this.output));
    return new Promise((resolve, reject) => {
      const timer = setInterval(() => {
        if (found()) return done(resolve);
        if (this.child.exitCode !== null || this.child.signalCode !== null) done(() => reject(new Error(`process exited before "${text}":\n${this.output}`)));
      }, 25);
      const deadline = setTimeout(() => done(() => reject(new Error(`timed out waiting for "${text}":\n${this.output}`))), timeoutMs);
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

export function spawnCli(args: string[], env: NodeJS.ProcessEnv = {}): CliProcess {
  return new CliProcess(spawn(runtime[0], [...runtime.slice(1), 'bin/simbridge.ts', ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] }));
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
): Promise<SandboxProcess> {
  // Port 0 everywhere: the sandbox binds what is free and prints it, so parallel tests never collide.
  // A restart passes the ports it had, so the gateway finds it where it was.
  const config = writeYaml(dir, 'sandbox.yaml', {
    dataDir: dir,
    sandbox: { ...(ports ?? { controlPort: 0, dataPort: 0, observerPort: 0 }), ...options.sandbox },
    ...(options.vending ? { vending: options.vending } : {}),
    log: { level: 'warn' },
  });
  const proc = spawnCli(['sandbox', '--config', config]);
  await proc.waitFor(/server key .+\n/);
  const file = (label: string) => proc.output.match(new RegExp(`${label}\\s+(\\S+)`))![1];
  return {
    process: proc,
    controlEndpoint: file('control plane'),
    dataPort: Number(file('data plane').split(':').at(-1)),
    observerPort: Number(file('observer').split(':').at(-1)),
    caFile: file('CA'),
    serverCertFile: file('server cert'),
    serverKeyFile: file('server key'),
  };
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
    shutdown?: Record<string, unknown>;
    groups?: Record<string, unknown>;
    listeners?: { mqtt?: Record<string, unknown>; http?: Record<string, unknown> };
    radius?: Record<string, unknown>;
    identity?: Record<string, unknown>;
  } = {},
): Promise<{ file: string }> {
  const file = writeYaml(dir, 'gateway.yaml', {
    mode: 'aws',
    dataDir: join(dir, 'gateway'),
    listeners: {
      mqtt: { host: '127.0.0.1', port: 0, ...extra.listeners?.mqtt },
      http: { host: '127.0.0.1', port: 0, ...extra.listeners?.http },
    },
    ...(extra.sims ? { sims: extra.sims } : {}),
    ...(extra.limits ? { limits: extra.limits } : {}),
    ...(extra.groups ? { groups: extra.groups } : {}),
    ...(extra.radius ? { radius: { host: '127.0.0.1', port: 0, ...extra.radius } } : {}),
    ...(extra.identity ? { identity: extra.identity } : {}),
    ...(extra.storage ? { storage: extra.storage } : {}),
    ...(extra.shutdown ? { shutdown: extra.shutdown } : {}),
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
  radiusPort?: number;
  adminPort?: number;
}

/** Starts `simbridge start` and reads the ports it bound from its banner. */
export async function startGatewayProcess(configFile: string): Promise<GatewayProcess> {
  const proc = spawnCli(['start', '--config', configFile], { SIMBRIDGE_MASTER_KEY: TEST_MASTER_KEY });
  await proc.waitFor(/device HTTP .+\n/);
  const port = (label: string) => Number(proc.output.match(new RegExp(`${label}\\s+\\S+:(\\d+)`))![1]);
  const optional = (re: RegExp) => {
    const m = proc.output.match(re);
    return m ? Number(m[1]) : undefined;
  };
  return Object.assign(proc, {
    mqttPort: port('device MQTT'),
    httpPort: port('device HTTP'),
    radiusPort: optional(/RADIUS acct\s+\S+:(\d+)\/udp/),
    adminPort: optional(/admin\s+http:\/\/\S+:(\d+)/),
  });
}

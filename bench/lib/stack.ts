import { execFileSync } from 'node:child_process';
import { appendFileSync, copyFileSync, existsSync, mkdirSync, readFileSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parse as parseYaml, stringify as stringifyYaml } from 'yaml';
import { spawnCli, startGatewayProcess, startSandboxProcess, tempDir, TEST_MASTER_KEY, type CliProcess, type SandboxProcess, type SpawnOptions } from '../../test/helpers/processes.ts';
import { sandboxIotClient, vendThing } from '../../sandbox/testkit.ts';
import { Collector, probe } from './collector.ts';
import { bridgeBroker, upstreamBroker, type BridgeSettings, type MosquittoProcess, type TlsFiles } from './mosquitto.ts';

export const repoRoot = fileURLToPath(new URL('../..', import.meta.url));

export interface GatewaySource {
  /** Directory simbridge (and the sandbox) run from. */
  root: string;
  /** Commit measured, with "+dirty" when it is the working tree with uncommitted changes to the gateway. */
  commit: string;
  /**
   * A gateway from before the ready signal (`--ready-json`): it is started by `startLegacyGateway`, and
   * the sandbox (only AWS's stand-in, not what is measured) runs from this checkout.
   */
  legacy: boolean;
}

let source: GatewaySource | undefined;

/**
 * What is measured: the working tree (default), or with BENCH_GATEWAY_REF=<git ref> an exported
 * snapshot of that commit (other engineers edit the tree while benchmarks run; a snapshot keeps one
 * run's figures about one version). The snapshot shares the checkout's node_modules.
 */
export function gatewaySource(): GatewaySource {
  if (source) return source;
  const git = (...args: string[]) => execFileSync('git', ['-C', repoRoot, ...args], { encoding: 'utf8' }).trim();
  const ref = process.env.BENCH_GATEWAY_REF;
  if (!ref) {
    let commit = 'unknown';
    try {
      commit = git('rev-parse', '--short=12', 'HEAD');
      const dirty = git('status', '--porcelain', '--', 'bin', 'bridge', 'config', 'storage', 'vending', 'sandbox', 'admin');
      if (dirty) commit += '+dirty';
    } catch {
      // not a git checkout
    }
    return (source = { root: repoRoot, commit, legacy: false });
  }
  const sha = git('rev-parse', '--short=12', `${ref}^{commit}`);
  const root = join(tmpdir(), `simbridge-bench-src-${sha}`);
  if (!existsSync(join(root, 'bin', 'simbridge.ts'))) {
    const staging = `${root}.${process.pid}`;
    rmSync(staging, { recursive: true, force: true });
    mkdirSync(staging, { recursive: true });
    execFileSync('sh', ['-c', `git -C "${repoRoot}" archive ${sha} | tar -x -C "${staging}"`]);
    symlinkSync(join(repoRoot, 'node_modules'), join(staging, 'node_modules'));
    // Sources git ignores by accident (".gitignore: data/" also matches sandbox/data/) are not in the
    // archive: take them from the working tree so the snapshot runs.
    const ignored = git('ls-files', '--others', '--ignored', '--exclude-standard', '--', '*.ts', ':!node_modules', ':!.tmp', ':!bench');
    for (const file of ignored.split('\n').filter(Boolean)) {
      if (existsSync(join(staging, file))) continue;
      mkdirSync(dirname(join(staging, file)), { recursive: true });
      copyFileSync(join(repoRoot, file), join(staging, file));
    }
    rmSync(root, { recursive: true, force: true });
    renameSync(staging, root);
  }
  const legacy = !readFileSync(join(root, 'bin', 'simbridge.ts'), 'utf8').includes('ready-json');
  return (source = { root, commit: sha, legacy });
}

/** How the bench starts simbridge processes (the shared test harness): from the measured checkout. */
export const simbridgeSpawn = (opts: SpawnOptions = {}): SpawnOptions => ({ cwd: gatewaySource().root, ...opts });

/**
 * BENCH_GATEWAY_NODE_ARGS: more options for the gateway's node (e.g. --trace-gc, --cpu-prof); the
 * Stack's gateway output is kept in gateway-output.log in the temp directory when BENCH_KEEP_TMP is set.
 */
export const gatewayNodeArgs = (): string[] => process.env.BENCH_GATEWAY_NODE_ARGS?.split(' ').filter(Boolean) ?? [];

/** How the bench starts the sandbox: from the measured checkout, or from this one for a legacy gateway. */
const sandboxSpawn = (): SpawnOptions => (gatewaySource().legacy ? { cwd: repoRoot } : simbridgeSpawn());

/**
 * For a gateway from before the ready signal, writes `config` as that gateway accepts it: its schema is
 * strict, so each key its `simbridge config check` names as unknown is left out (the bench's settings
 * such a gateway lacks simply do not apply). Today's gateway gets the file as given.
 */
export async function writeGatewayConfig(file: string, config: Tree): Promise<void> {
  const fitted = structuredClone(config);
  for (let attempt = 0; attempt < 30; attempt++) {
    writeFileSync(file, stringifyYaml(fitted));
    if (!gatewaySource().legacy) return;
    const check = spawnCli(['config', 'check', file], {}, simbridgeSpawn());
    if ((await check.exited) === 0) return;
    await new Promise((r) => setTimeout(r, 100)); // the last of its output
    const unknown = check.output.match(/^\s+(\S*?):? ?unknown key "([^"]+)"/m);
    if (!unknown) throw new Error(`legacy gateway refuses the bench's config:\n${check.output}`);
    let node: Tree = fitted;
    for (const key of unknown[1] ? unknown[1].replace(/:$/, '').split('.') : []) node = node[key] as Tree;
    delete node[unknown[2]];
  }
  throw new Error('legacy gateway: too many unknown config keys');
}

/** Starts a gateway from before the ready signal: ports are read from the start-up banner it printed then. */
async function startLegacyGateway(configFile: string, opts: SpawnOptions): Promise<GatewayProcessLike> {
  const proc = spawnCli(['start', '--config', configFile], { SIMBRIDGE_MASTER_KEY: TEST_MASTER_KEY }, opts);
  await proc.waitFor(/device HTTP .+\n/, 60_000, 'the start-up banner');
  const port = (label: string) => Number(proc.output.match(new RegExp(`${label}\\s+\\S+:(\\d+)`))![1]);
  const admin = proc.output.match(/admin\s+http:\/\/\S+:(\d+)/);
  return Object.assign(proc, { mqttPort: port('device MQTT'), httpPort: port('device HTTP'), adminPort: admin ? Number(admin[1]) : undefined });
}
type GatewayProcessLike = CliProcess & { mqttPort: number; httpPort: number; coapPort?: number; udpPort?: number; adminPort?: number };

export type Tree = Record<string, unknown>;

function isTree(v: unknown): v is Tree {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

export function deepMerge(base: Tree, over: Tree): Tree {
  const out: Tree = { ...base };
  for (const [k, v] of Object.entries(over)) out[k] = isTree(v) && isTree(out[k]) ? deepMerge(out[k] as Tree, v) : v;
  return out;
}

/**
 * Extra gateway configuration from BENCH_GATEWAY_CONFIG: inline JSON, or a YAML/JSON file. Merged last,
 * so e.g. a batching policy can be benchmarked without touching the harness:
 *   BENCH_GATEWAY_CONFIG='{"groups":{"default":{"batching":{...}}}}' npm run bench -- bridge-compare
 */
export function gatewayOverrideFromEnv(): Tree {
  const v = process.env.BENCH_GATEWAY_CONFIG;
  if (!v) return {};
  const parsed = v.trim().startsWith('{') ? JSON.parse(v) : parseYaml(readFileSync(v, 'utf8'));
  if (!isTree(parsed)) throw new Error('BENCH_GATEWAY_CONFIG must be a mapping');
  return parsed;
}

export interface GatewayProcess {
  process: CliProcess;
  pid: number;
  mqttPort: number;
  httpPort: number;
  coapPort?: number;
  udpPort?: number;
  adminPort?: number;
}

/**
 * The whole test bed, every part its own process: the sandbox control plane (vending), a real Mosquitto
 * as the upstream (mutual TLS, sandbox CA), the collector on the upstream's plain listener, simbridge,
 * and on demand a bridging Mosquitto.
 */
export class Stack {
  gateway?: GatewayProcess;
  bridge?: { broker: MosquittoProcess; port: number; clientId: string };
  /** The bridge held to IoT Core's per-connection quotas (startHeldBridge), and the collector on the sandbox's observer. */
  heldBridge?: { broker: MosquittoProcess; port: number; clientId: string };
  heldCollector?: Collector;
  private gatewayConfig: Tree = {};
  private readonly configFile: string;

  private constructor(
    readonly dir: string,
    readonly sandbox: SandboxProcess,
    readonly upstream: { broker: MosquittoProcess; tlsPort: number; plainPort: number },
    readonly collector: Collector,
    readonly gatewayOverride: Tree,
  ) {
    this.configFile = join(dir, 'gateway.yaml');
  }

  static async start(opts: { gatewayOverride?: Tree } = {}): Promise<Stack> {
    const dir = tempDir('bench');
    const sandbox = await startSandboxProcess(dir, undefined, {}, sandboxSpawn());
    const upstream = await upstreamBroker(dir, { caFile: sandbox.caFile, certFile: sandbox.serverCertFile, keyFile: sandbox.serverKeyFile });
    const collector = new Collector(upstream.plainPort);
    await collector.start();
    return new Stack(dir, sandbox, upstream, collector, deepMerge(opts.gatewayOverride ?? {}, gatewayOverrideFromEnv()));
  }

  /** The gateway configuration as written (after overrides). */
  get gatewayConfigUsed(): Tree {
    return this.gatewayConfig;
  }

  /**
   * Starts simbridge (`node --import tsx bin/simbridge.ts start --config`), one process, so signals
   * and /proc figures are simbridge's own. A restart keeps the ports and the data directory.
   */
  async startGateway(opts: { cpuProfDir?: string; fresh?: boolean; override?: Tree } = {}): Promise<GatewayProcess> {
    if (opts.fresh) rmSync(join(this.dir, 'gateway'), { recursive: true, force: true });
    const prev = this.gateway;
    this.gatewayConfig = deepMerge(
      {
        mode: 'aws',
        dataDir: join(this.dir, 'gateway'),
        listeners: { mqtt: { host: '127.0.0.1', port: prev?.mqttPort ?? 0 }, http: { host: '127.0.0.1', port: prev?.httpPort ?? 0 } },
        storage: { synchronous: 'full' },
        vending: { endpoint: this.sandbox.controlEndpoint, credentials: { accessKeyId: 'sandbox', secretAccessKey: 'sandbox' } },
        upstream: { endpoint: 'localhost', port: this.upstream.tlsPort, caFile: this.sandbox.caFile },
        log: { level: 'warn' },
        admin: { host: '127.0.0.1', port: 0 },
        // Bench devices claim their identity without secrets: a lab, which the gateway must be told.
        identity: { allowInsecureClaims: true },
      },
      deepMerge(opts.override ?? {}, this.gatewayOverride),
    );
    await writeGatewayConfig(this.configFile, this.gatewayConfig);
    const nodeArgs = [...gatewayNodeArgs(), ...(opts.cpuProfDir ? ['--cpu-prof', `--cpu-prof-dir=${opts.cpuProfDir}`] : [])];
    const proc = gatewaySource().legacy
      ? await startLegacyGateway(this.configFile, simbridgeSpawn({ nodeArgs }))
      : await startGatewayProcess(this.configFile, simbridgeSpawn({ nodeArgs }));
    this.gateway = { process: proc, pid: proc.child.pid!, mqttPort: proc.mqttPort, httpPort: proc.httpPort, coapPort: proc.coapPort, udpPort: proc.udpPort, adminPort: proc.adminPort };
    return this.gateway;
  }

  async stopGateway(signal: NodeJS.Signals = 'SIGTERM'): Promise<number | null> {
    const code = await this.gateway?.process.kill(signal);
    if (this.gateway && process.env.BENCH_KEEP_TMP) appendFileSync(join(this.dir, 'gateway-output.log'), this.gateway.process.output);
    return code ?? null;
  }

  get gatewayAlive(): boolean {
    const c = this.gateway?.process.child;
    return !!c && c.exitCode === null && c.signalCode === null;
  }

  /** One certificate for the bridge, vended through the sandbox control plane (key + CSR, as a device would). */
  async vendBridgeIdentity(thingName = 'bench-bridge', policy?: { policyName: string; policyDocument: string }): Promise<TlsFiles & { clientId: string }> {
    const certFile = join(this.dir, `${thingName}.crt`);
    const keyFile = join(this.dir, `${thingName}.key`);
    if (!existsSync(certFile)) {
      const iot = sandboxIotClient(this.sandbox.controlEndpoint, { maxAttempts: 3 });
      const vended = await vendThing(iot, thingName, policy ?? {});
      iot.destroy();
      writeFileSync(certFile, vended.certPem);
      writeFileSync(keyFile, vended.keyPem, { mode: 0o600 });
    }
    return { caFile: this.sandbox.caFile, certFile, keyFile, clientId: thingName };
  }

  async startBridge(settings: BridgeSettings): Promise<{ broker: MosquittoProcess; port: number; clientId: string }> {
    const id = await this.vendBridgeIdentity();
    const b = await bridgeBroker(this.dir, { upstreamTlsPort: this.upstream.tlsPort, tls: id, clientId: id.clientId, settings });
    this.bridge = { ...b, clientId: id.clientId };
    return this.bridge;
  }

  /**
   * The same Mosquitto bridge held to what IoT Core enforces on its one connection: it connects to the
   * sandbox's data plane instead of the upstream Mosquitto, and the data plane allows 100 publishes and
   * 512 KiB per second per connection, dropping the excess without PUBACK as IoT Core does
   * (sandbox/data/plane.ts). What the sandbox accepts is read on its observer by `heldCollector`.
   * Each call starts a fresh broker (empty persistence): a held bridge's in-flight window fills with
   * messages that will never be acknowledged, and a run must not inherit the previous run's.
   */
  async startHeldBridge(settings: BridgeSettings): Promise<{ broker: MosquittoProcess; port: number; clientId: string }> {
    await this.heldBridge?.broker.stop('SIGTERM').catch(() => undefined);
    rmSync(join(this.dir, 'held-bridge-persist'), { recursive: true, force: true });
    // The sandbox applies IoT Core policies: this identity may publish under devices/ as the bridge does.
    const id = await this.vendBridgeIdentity('bench-bridge-held', {
      policyName: 'bench-bridge-policy',
      policyDocument: JSON.stringify({
        Version: '2012-10-17',
        Statement: [
          { Effect: 'Allow', Action: 'iot:Connect', Resource: 'arn:aws:iot:*:*:client/${iot:Connection.Thing.ThingName}' },
          { Effect: 'Allow', Action: 'iot:Publish', Resource: 'arn:aws:iot:*:*:topic/devices/*' },
        ],
      }),
    });
    const b = await bridgeBroker(this.dir, { upstreamTlsPort: this.sandbox.dataPort, tls: id, clientId: id.clientId, settings, name: 'held-bridge' });
    this.heldBridge = { ...b, clientId: id.clientId };
    // Ready once a probe published to the bridge came out of the sandbox's observer.
    if (!this.heldCollector) {
      this.heldCollector = new Collector(this.sandbox.observerPort, b.port);
      await this.heldCollector.start();
    } else {
      const seen = this.heldCollector.probes;
      const deadline = Date.now() + 15_000;
      while (this.heldCollector.probes === seen) {
        if (Date.now() > deadline) throw new Error('held bridge: no probe through it within 15 s');
        await probe(b.port);
        await new Promise((r) => setTimeout(r, 200));
      }
    }
    return this.heldBridge;
  }

  async close(): Promise<void> {
    await this.stopGateway('SIGTERM').catch(() => undefined);
    await this.bridge?.broker.stop('SIGTERM').catch(() => undefined);
    await this.heldBridge?.broker.stop('SIGTERM').catch(() => undefined);
    this.heldCollector?.close();
    this.collector.close();
    await this.upstream.broker.stop('SIGTERM').catch(() => undefined);
    await this.sandbox.process.kill('SIGTERM').catch(() => undefined);
    if (!process.env.BENCH_KEEP_TMP) rmSync(this.dir, { recursive: true, force: true });
  }
}

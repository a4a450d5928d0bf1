#!/usr/bin/env -S npx tsx
import { watch } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { pino, type Logger } from 'pino';
import { describeFinding, identityFindings } from '../config/identity.ts';
import { ConfigError, loadConfig } from '../config/load.ts';
import type { Config } from '../config/schema.ts';
import type { Sandbox } from '../sandbox/index.ts';
import { EXIT } from '../admin/cli/exit-codes.ts';
import { StorageUnavailableError } from '../storage/files.ts';
import { maskingLoggerOptions } from '../admin/mask.ts';

const usage = `usage: simbridge <command> [options]

commands:
  start [--config FILE]        run the gateway (no config file: the sandbox defaults)
  config check FILE            validate a configuration file and exit
  sandbox [--config FILE]      run only the local IoT Core stand-in
  doctor [--config FILE]       check the host, the AWS account and its permissions
  backup --out FILE            copy the database while the gateway runs
  rotate-master-key            re-seal private keys under a new master key, while the gateway runs
  sims | tokens | stats | cluster | vend
                               operator commands (run one with --help)

options of start and sandbox:
  --ready-json                 once listening, print one JSON line with every bound port instead of the banner

The config file may also be given as SIMBRIDGE_CONFIG.`;

const DEMO_IMSI = '001010000000001';
const DEMO_IMEI = '490154203237518';

/** Operator commands, one per file in bin/commands/, each parsing its own arguments. */
const operatorCommands = new Set(['sims', 'tokens', 'stats', 'cluster', 'vend', 'doctor', 'backup', 'rotate-master-key']);

export interface OperatorCommand {
  /** argv after the command name; loadConfig reads --config / SIMBRIDGE_CONFIG. Resolves with the exit code. */
  run(args: string[], loadConfig: (file?: string) => Config): Promise<number>;
}

async function main(argv: string[]): Promise<number> {
  if (operatorCommands.has(argv[0] ?? '')) {
    const { run } = (await import(`./commands/${argv[0]}.ts`)) as OperatorCommand;
    return run(argv.slice(1), (file) => loadConfig(file ?? process.env.SIMBRIDGE_CONFIG));
  }
  const { positionals, values } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: { config: { type: 'string', short: 'c' }, help: { type: 'boolean', short: 'h' }, 'ready-json': { type: 'boolean' } },
  });
  const [command, sub, arg] = positionals;
  if (values.help || !command) {
    console.log(usage);
    return command ? EXIT.ok : EXIT.usage;
  }
  const configFile = values.config ?? process.env.SIMBRIDGE_CONFIG;
  const readyJson = values['ready-json'] ?? false;
  switch (command) {
    case 'start':
      return start(await checkedConfig(configFile), configFile, readyJson);
    case 'sandbox':
      return runSandboxOnly(loadConfig(configFile), readyJson);
    case 'config':
      if (sub !== 'check' || !(arg ?? configFile)) break;
      // Refusals end in a ConfigError (exit 78); what is allowed but unsafe is listed under "ok".
      console.log([`${arg ?? configFile}: ok`, ...identityFindings(await checkedConfig(arg ?? configFile)).map((f) => `  ${describeFinding(f)}`)].join('\n'));
      return EXIT.ok;
  }
  console.error(usage);
  return EXIT.usage;
}

/** The configuration, also checked against limits IoT Core would refuse only later (a policy's size). */
async function checkedConfig(file: string | undefined): Promise<Config> {
  const config = loadConfig(file);
  const { policySizeProblems } = await import('../vending/policy.ts');
  const problems = policySizeProblems(config);
  if (problems.length > 0) throw new ConfigError(file ?? '(defaults)', problems);
  return config;
}

function logger(config: Config): Logger {
  // IMSI, IMEI and MSISDN are personal data: masked in every log line unless privacy says otherwise.
  return pino({ level: config.log.level, base: undefined, ...maskingLoggerOptions(config.privacy.maskIdentifiers) });
}

// The gateway and the sandbox load on demand: `config check` should not pay for TLS stacks and SDKs.
async function sandboxFor(config: Config, log: Logger): Promise<Sandbox> {
  const { startSandbox } = await import('../sandbox/index.ts');
  const { partitionOf } = await import('../vending/policy.ts');
  return startSandbox({
    dataDir: join(config.dataDir, 'sandbox'),
    host: config.sandbox.host,
    controlPort: config.sandbox.controlPort,
    dataPort: config.sandbox.dataPort,
    observerPort: config.sandbox.observerPort,
    refusedSubscribe: config.sandbox.refusedSubscribe,
    publishQuota: config.sandbox.publishQuota,
    propagation: config.sandbox.propagation,
    region: config.vending.region,
    partition: config.sandbox.partition ?? partitionOf(config.vending.region),
    logger: log.child({ component: 'sandbox' }),
  });
}

/** In sandbox mode the gateway is pointed at the stand-in exactly as it would be at AWS. */
function pointAtSandbox(config: Config, sandbox: Sandbox): Config {
  return {
    ...config,
    vending: {
      ...config.vending,
      endpoint: sandbox.controlEndpoint,
      credentials: config.vending.credentials ?? { accessKeyId: 'sandbox', secretAccessKey: 'sandbox' },
    },
    upstream: { ...config.upstream, endpoint: 'localhost', port: sandbox.dataPort, caFile: sandbox.caFile },
  };
}

/**
 * Reloads the configuration on SIGHUP and when the file changes. A file that does not validate is
 * refused with its key paths and reasons in the log, and the running configuration stays.
 */
function watchConfig(file: string, apply: (next: Config) => string[], log: Logger): void {
  let timer: NodeJS.Timeout | undefined;
  const reload = (why: string) => {
    let next: Config;
    try {
      next = loadConfig(file);
    } catch (err) {
      log.error({ file, why, problems: err instanceof ConfigError ? err.problems : [String(err)] }, 'configuration not reloaded: the running one stays');
      return;
    }
    const needRestart = apply(next);
    log.info({ file, why }, 'configuration reloaded');
    if (needRestart.length) log.warn({ keys: needRestart }, 'these settings changed but apply only after a restart');
  };
  process.on('SIGHUP', () => reload('SIGHUP'));
  // Editors replace files rather than write them in place: watch the directory and debounce.
  watch(dirname(resolve(file)), (_event, name) => {
    if (name !== basename(file)) return;
    clearTimeout(timer);
    timer = setTimeout(() => reload('file changed'), 200);
  }).unref();
}

async function start(config: Config, configFile: string | undefined, readyJson: boolean): Promise<number> {
  const log = logger(config);
  const sandbox = config.mode === 'sandbox' ? await sandboxFor(config, log) : undefined;
  const { startGateway } = await import('../app/gateway.ts');
  let gateway;
  try {
    gateway = await startGateway(sandbox ? pointAtSandbox(config, sandbox) : config, log);
  } catch (err) {
    await sandbox?.close();
    throw err;
  }
  if (readyJson) printReady('gateway', gateway, sandbox);
  else printBanner(config, gateway, sandbox);
  // Warnings on stderr in both forms: a script reading the ready line sees them as well as a person.
  const insecure = identityFindings(config).filter((f) => f.severity === 'insecure');
  if (insecure.length) console.warn(['!! devices can pass for SIMs they are not (identity.allowInsecureClaims: true):', ...insecure.map((f) => `!! ${describeFinding(f)}`)].join('\n'));
  for (const f of insecure) log.warn({ key: f.path.join('.') }, f.message);
  if (gateway.upstreamWarning) console.warn(`WARNING: ${gateway.upstreamWarning}`);
  if (configFile) watchConfig(configFile, (next) => gateway.reload(next), log);
  return waitForSignal(async () => {
    await gateway.close();
    await sandbox?.close();
  }, log);
}

async function runSandboxOnly(config: Config, readyJson: boolean): Promise<number> {
  const log = logger(config);
  const sandbox = await sandboxFor(config, log);
  if (readyJson) printReady('sandbox', undefined, sandbox);
  else console.log(
    [
      'simbridge sandbox (IoT Core stand-in) is running',
      `  control plane  ${sandbox.controlEndpoint}`,
      `  data plane     mqtts://${sandbox.dataHost}:${sandbox.dataPort}`,
      `  observer       mqtt://127.0.0.1:${sandbox.observerPort}`,
      `  CA             ${resolve(sandbox.caFile)}`,
      `  server cert    ${resolve(sandbox.serverCertFile)}`,
      `  server key     ${resolve(sandbox.serverKeyFile)}`,
    ].join('\n'),
  );
  return waitForSignal(() => sandbox.close(), log);
}

type BoundPorts = { mqttPort: number; httpPort: number; coapPort?: number; udpPort?: number; radiusPort?: number; adminPort?: number; upstreamWarning?: string };

/**
 * The machine-readable ready signal (`--ready-json`): one JSON line on stdout, printed once every
 * listener is bound, with the ports actually bound (a port configured as 0 is the one the OS chose).
 * Ports of listeners that are off are left out; `sandbox` is there when the sandbox runs in-process.
 */
function printReady(what: 'gateway' | 'sandbox', gateway?: BoundPorts, sandbox?: Sandbox): void {
  const ports = {
    mqtt: gateway?.mqttPort,
    http: gateway?.httpPort,
    coap: gateway?.coapPort,
    udp: gateway?.udpPort,
    radius: gateway?.radiusPort,
    admin: gateway?.adminPort,
    sandboxControl: sandbox ? Number(new URL(sandbox.controlEndpoint).port) : undefined,
    sandboxData: sandbox?.dataPort,
    sandboxObserver: sandbox?.observerPort,
  };
  const files = sandbox && {
    controlEndpoint: sandbox.controlEndpoint,
    caFile: resolve(sandbox.caFile),
    serverCertFile: resolve(sandbox.serverCertFile),
    serverKeyFile: resolve(sandbox.serverKeyFile),
  };
  console.log(JSON.stringify({ ready: what, pid: process.pid, ports, sandbox: files }));
}

function printBanner(config: Config, gateway: BoundPorts, sandbox?: Sandbox): void {
  const lines = [
    `simbridge is running${sandbox ? ' on the sandbox (a local stand-in for AWS IoT Core)' : ''}`,
    `  device MQTT  ${config.listeners.mqtt.host}:${gateway.mqttPort}  (identity: ${config.listeners.mqtt.identity})`,
    `  device HTTP  ${config.listeners.http.host}:${gateway.httpPort}  (identity: ${config.listeners.http.identity})`,
  ];
  if (gateway.coapPort !== undefined) lines.push(`  device CoAP  ${config.listeners.coap.host}:${gateway.coapPort}/udp  (identity: ${config.listeners.coap.identity})`);
  if (gateway.udpPort !== undefined) lines.push(`  device UDP   ${config.listeners.udp.host}:${gateway.udpPort}/udp  (identity: ${config.listeners.udp.identity})`);
  if (gateway.radiusPort !== undefined) lines.push(`  RADIUS acct  ${config.radius.host}:${gateway.radiusPort}/udp`);
  if (gateway.adminPort !== undefined) lines.push(`  admin        ${config.admin.tls ? 'https' : 'http'}://${config.admin.host}:${gateway.adminPort}  (/metrics, /healthz, /readyz)`);
  if (sandbox) {
    lines.push(
      `  sandbox      control ${sandbox.controlEndpoint}, data mqtts://${sandbox.dataHost}:${sandbox.dataPort}, observer mqtt://127.0.0.1:${sandbox.observerPort}`,
      '',
      'Watch messages arrive at "IoT Core":',
      `  mosquitto_sub -h 127.0.0.1 -p ${sandbox.observerPort} -t '#' -v`,
      'Send one as a demo SIM over MQTT:',
      `  mosquitto_pub -h 127.0.0.1 -p ${gateway.mqttPort} -u ${DEMO_IMSI} -i ${DEMO_IMEI} -q 1 -t telemetry -m '{"temp":21.5}'`,
      'and over HTTP:',
      `  curl -X POST -H 'X-IMSI: ${DEMO_IMSI}' -H 'X-IMEI: ${DEMO_IMEI}' --data '{"temp":21.5}' 'http://127.0.0.1:${gateway.httpPort}/topics/telemetry?qos=1'`,
      ...(gateway.coapPort !== undefined
        ? ['and over CoAP (libcoap3-bin):', `  coap-client-notls -m post -e '{"temp":21.5}' 'coap://127.0.0.1:${gateway.coapPort}/topics/telemetry?imsi=${DEMO_IMSI}&imei=${DEMO_IMEI}'`]
        : []),
      '',
    );
  }
  // Identity notes last, where they are read (the sandbox allows what aws mode refuses); what runs
  // insecurely by opt-in is shouted on stderr by start().
  for (const f of identityFindings(config)) if (f.severity === 'note') lines.push(`  ${describeFinding(f)}`);
  console.log(lines.join('\n'));
}

/** Resolves with the exit code after SIGTERM/SIGINT and a clean shutdown; a second signal exits at once. */
function waitForSignal(shutdown: () => Promise<void>, log: Logger): Promise<number> {
  return new Promise((resolveExit) => {
    let stopping = false;
    const onSignal = (signal: string) => {
      if (stopping) process.exit(EXIT.failure);
      stopping = true;
      log.info({ signal }, 'shutting down');
      shutdown().then(
        () => resolveExit(EXIT.ok),
        (err) => {
          log.error({ err: String(err) }, 'shutdown failed');
          resolveExit(EXIT.failure);
        },
      );
    };
    process.on('SIGTERM', onSignal);
    process.on('SIGINT', onSignal);
  });
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err) => {
    if (err instanceof ConfigError) {
      console.error(err.message);
      process.exit(EXIT.config);
    }
    if (err instanceof StorageUnavailableError) {
      console.error(`simbridge: ${err.message}`);
      process.exit(EXIT.unavailable);
    }
    console.error(`simbridge: ${(err as Error).message ?? err}`);
    process.exit(EXIT.failure);
  },
);

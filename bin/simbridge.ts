#!/usr/bin/env -S npx tsx
import { watch } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { pino, type Logger } from 'pino';
import { ConfigError, loadConfig } from '../config/load.ts';
import type { Config } from '../config/schema.ts';
import type { Sandbox } from '../sandbox/index.ts';
import { maskingLoggerOptions } from '../admin/mask.ts';

const usage = `usage: simbridge <command> [options]

commands:
  start [--config FILE]        run the gateway (no config file: the sandbox defaults)
  config check FILE            validate a configuration file and exit
  sandbox [--config FILE]      run only the local IoT Core stand-in
  sims | tokens | stats | vend operator commands (run one with --help)

The config file may also be given as SIMBRIDGE_CONFIG.`;

// Exit codes scripts can rely on.
const EXIT_OK = 0;
const EXIT_USAGE = 64;
const EXIT_CONFIG = 78;
const EXIT_FAILURE = 1;

const DEMO_IMSI = '001010000000001';
const DEMO_IMEI = '490154203237518';

/** Operator commands, one per file in bin/commands/, each parsing its own arguments. */
const operatorCommands = new Set(['sims', 'tokens', 'stats', 'vend']);

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
    options: { config: { type: 'string', short: 'c' }, help: { type: 'boolean', short: 'h' } },
  });
  const [command, sub, arg] = positionals;
  if (values.help || !command) {
    console.log(usage);
    return command ? EXIT_OK : EXIT_USAGE;
  }
  const configFile = values.config ?? process.env.SIMBRIDGE_CONFIG;
  switch (command) {
    case 'start':
      return start(await checkedConfig(configFile), configFile);
    case 'sandbox':
      return runSandboxOnly(loadConfig(configFile));
    case 'config':
      if (sub !== 'check' || !(arg ?? configFile)) break;
      await checkedConfig(arg ?? configFile);
      console.log(`${arg ?? configFile}: ok`);
      return EXIT_OK;
  }
  console.error(usage);
  return EXIT_USAGE;
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

async function start(config: Config, configFile?: string): Promise<number> {
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
  printBanner(config, gateway, sandbox);
  if (configFile) watchConfig(configFile, (next) => gateway.reload(next), log);
  return waitForSignal(async () => {
    await gateway.close();
    await sandbox?.close();
  }, log);
}

async function runSandboxOnly(config: Config): Promise<number> {
  const log = logger(config);
  const sandbox = await sandboxFor(config, log);
  console.log(
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

function printBanner(config: Config, gateway: { mqttPort: number; httpPort: number; radiusPort?: number; adminPort?: number }, sandbox?: Sandbox): void {
  const lines = [
    `simbridge is running${sandbox ? ' on the sandbox (a local stand-in for AWS IoT Core)' : ''}`,
    `  device MQTT  ${config.listeners.mqtt.host}:${gateway.mqttPort}  (identity: ${config.listeners.mqtt.identity})`,
    `  device HTTP  ${config.listeners.http.host}:${gateway.httpPort}  (identity: ${config.listeners.http.identity})`,
  ];
  if (gateway.radiusPort !== undefined) lines.push(`  RADIUS acct  ${config.radius.host}:${gateway.radiusPort}/udp`);
  if (gateway.adminPort !== undefined) lines.push(`  admin        http://${config.admin.host}:${gateway.adminPort}  (/metrics, /healthz, /readyz)`);
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
      '',
    );
  }
  console.log(lines.join('\n'));
}

/** Resolves with the exit code after SIGTERM/SIGINT and a clean shutdown; a second signal exits at once. */
function waitForSignal(shutdown: () => Promise<void>, log: Logger): Promise<number> {
  return new Promise((resolveExit) => {
    let stopping = false;
    const onSignal = (signal: string) => {
      if (stopping) process.exit(EXIT_FAILURE);
      stopping = true;
      log.info({ signal }, 'shutting down');
      shutdown().then(
        () => resolveExit(EXIT_OK),
        (err) => {
          log.error({ err: String(err) }, 'shutdown failed');
          resolveExit(EXIT_FAILURE);
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
      process.exit(EXIT_CONFIG);
    }
    console.error(`simbridge: ${(err as Error).message ?? err}`);
    process.exit(EXIT_FAILURE);
  },
);

import { accessSync, constants, mkdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { createSocket } from 'node:dgram';
import { join } from 'node:path';
import { connect as tlsConnect } from 'node:tls';
import { parseArgs } from 'node:util';
import { DescribeEndpointCommand, IoTClient } from '@aws-sdk/client-iot';
import { EXIT } from '../../admin/cli/exit-codes.ts';
import type { Config } from '../../config/schema.ts';
import { upstreamTrust } from '../../bridge/upstream/trust.ts';
import { loadMasterKey } from '../../vending/master-key.ts';
import { permissionProbes, probeNames, runProbe } from '../../vending/permissions.ts';

const help = `usage: simbridge doctor [--config FILE]

Checks that this host and the AWS account can run the gateway: the config, the master key, the data
directory, the ports, AWS credentials, the IoT Core endpoints (DescribeEndpoint, TLS, clock), and every
IoT API permission the gateway uses, each called in a form that changes nothing. One line per check,
with the fix for each failure; the exit code is 1 when any check failed.`;

/** One check's verdict: ok, or what is wrong and how to fix it. */
type Verdict = { ok: true; detail: string } | { ok: false; detail: string; fix: string };

const pass = (detail: string): Verdict => ({ ok: true, detail });
const fail = (detail: string, fix: string): Verdict => ({ ok: false, detail, fix });

/** Largest clock difference with AWS tolerated: SigV4 refuses requests more than 5 minutes off. */
const MAX_SKEW_S = 60;

export async function run(args: string[], loadConfig: (file?: string) => Config): Promise<number> {
  const { values } = parseArgs({ args, options: { config: { type: 'string', short: 'c' }, help: { type: 'boolean', short: 'h' } } });
  if (values.help) {
    console.log(help);
    return EXIT.ok;
  }
  let failed = 0;
  const report = (name: string, v: Verdict) => {
    if (v.ok) console.log(`✓ ${name}: ${v.detail}`);
    else {
      failed++;
      console.log(`✗ ${name}: ${v.detail}\n    fix: ${v.fix}`);
    }
  };

  let config: Config;
  try {
    config = loadConfig(values.config);
    report('config', pass(`${values.config ?? process.env.SIMBRIDGE_CONFIG ?? '(sandbox defaults)'} is valid`));
  } catch (err) {
    report('config', fail((err as Error).message, 'correct the key named above (simbridge config check FILE)'));
    return EXIT.failure;
  }

  report('master key', checkMasterKey(config));
  report('data directory', checkDataDir(config.dataDir));
  for (const [name, v] of await checkPorts(config)) report(name, v);

  if (config.mode === 'sandbox') {
    report('AWS', pass('sandbox mode: the gateway starts its own IoT Core stand-in, no account is used'));
  } else {
    await checkAws(config, report);
  }
  console.log(failed ? `${failed} check(s) failed` : 'all checks passed');
  return failed ? EXIT.failure : EXIT.ok;
}

function checkMasterKey(config: Config): Verdict {
  try {
    const generateAt = config.mode === 'sandbox' ? join(config.dataDir, 'master.key') : undefined;
    if (generateAt && !config.security.masterKeyFile && !process.env.SIMBRIDGE_MASTER_KEY) {
      return pass('sandbox mode: generated in the data directory on first start');
    }
    loadMasterKey({ env: process.env, file: config.security.masterKeyFile });
    return pass(process.env.SIMBRIDGE_MASTER_KEY ? 'from SIMBRIDGE_MASTER_KEY' : `${config.security.masterKeyFile} (mode 600)`);
  } catch (err) {
    return fail((err as Error).message, 'openssl rand -hex 32 > master.key && chmod 600 master.key, then set security.masterKeyFile');
  }
}

function checkDataDir(dir: string): Verdict {
  try {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    accessSync(dir, constants.W_OK);
    const probe = join(dir, `.doctor-${process.pid}`);
    writeFileSync(probe, '');
    rmSync(probe);
    const mode = statSync(dir).mode & 0o777;
    if (mode & 0o077) return fail(`${dir} is readable by others (mode ${mode.toString(8)})`, `chmod 700 ${dir}`);
    return pass(`${dir} is writable`);
  } catch (err) {
    return fail(`${dir}: ${(err as Error).message}`, 'create it, owned by the user simbridge runs as, mode 700');
  }
}

/** Each listening port the config names, bound and released at once: is it free right now? */
async function checkPorts(config: Config): Promise<Array<[string, Verdict]>> {
  const tcp: Array<[string, string, number]> = [
    ['device MQTT port', config.listeners.mqtt.host, config.listeners.mqtt.port],
    ['device HTTP port', config.listeners.http.host, config.listeners.http.port],
  ];
  if (config.admin.enabled) tcp.push(['admin port', config.admin.host, config.admin.port]);
  const out: Array<[string, Verdict]> = [];
  for (const [name, host, port] of tcp) out.push([name, await bindable(() => createServer(), host, port)]);
  if (config.radius.enabled) out.push(['RADIUS port', await bindable(() => createSocket(config.radius.host.includes(':') ? 'udp6' : 'udp4'), config.radius.host, config.radius.port)]);
  return out;
}

function bindable(make: () => { once(e: 'error', f: (err: Error) => void): unknown; close(cb?: () => void): unknown } & Record<string, any>, host: string, port: number): Promise<Verdict> {
  return new Promise((resolve) => {
    const s = make();
    s.once('error', (err: Error) => resolve(fail(`${host}:${port}: ${err.message}`, 'stop what holds the port, or choose another in the config')));
    const listening = () => s.close(() => resolve(pass(`${host}:${port} is free`)));
    if (typeof s.bind === 'function') s.bind(port, host, listening);
    else s.listen(port, host, listening);
  });
}

async function checkAws(config: Config, report: (name: string, v: Verdict) => void): Promise<void> {
  const v = config.vending;
  const client = new IoTClient({ region: v.region, endpoint: v.endpoint, credentials: v.credentials, maxAttempts: 1 });
  try {
    try {
      const creds = await client.config.credentials();
      report('AWS credentials', pass(`found (access key …${creds.accessKeyId.slice(-4)})`));
    } catch (err) {
      report('AWS credentials', fail((err as Error).message, 'give the host a role, or set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_PROFILE'));
      return;
    }

    const control = v.endpoint ?? `https://iot.${v.region}.amazonaws.com`;
    report('clock', await checkClock(control));

    let endpoint = config.upstream.endpoint;
    try {
      const out = await client.send(new DescribeEndpointCommand({ endpointType: 'iot:Data-ATS' }));
      endpoint ??= out.endpointAddress;
      report('IoT Core endpoint', pass(`DescribeEndpoint answered ${out.endpointAddress}${config.upstream.endpoint ? `; upstream.endpoint is ${config.upstream.endpoint}` : ''}`));
    } catch (err) {
      report('IoT Core endpoint', fail(`DescribeEndpoint at ${control}: ${(err as Error).message}`, 'check vending.region, the route to AWS and iot:DescribeEndpoint'));
    }
    if (endpoint) report('IoT Core data plane', await checkTls(endpoint, config.upstream.port, config.upstream.caFile));

    const names = probeNames(v, v.region);
    for (const probe of permissionProbes) {
      const r = await runProbe(probe, client, names);
      report(`permission ${probe.action}`, r.granted ? pass(r.detail) : fail(r.detail, `allow ${probe.action} in the gateway's IAM policy (used for ${probe.usedFor}; docs/deploy.md)`));
    }
  } finally {
    client.destroy();
  }
}

/** The control plane's Date header against this host's clock. */
async function checkClock(control: string): Promise<Verdict> {
  try {
    const res = await fetch(control, { method: 'HEAD', signal: AbortSignal.timeout(10_000) });
    const date = res.headers.get('date');
    if (!date) return fail(`${control} sent no Date header`, 'cannot compare clocks; check NTP on this host');
    const skew = (Date.parse(date) - Date.now()) / 1000;
    if (Math.abs(skew) > MAX_SKEW_S) return fail(`this host is ${skew.toFixed(0)} s off AWS's clock`, 'synchronise the clock (systemd-timesyncd, chrony)');
    return pass(`within ${Math.max(1, Math.ceil(Math.abs(skew)))} s of ${new URL(control).host}`);
  } catch (err) {
    return fail(`${control}: ${(err as Error).message}`, 'check the route to AWS (proxy, firewall, DNS)');
  }
}

/**
 * A TLS handshake with the data endpoint, verified against the trust the upstream sessions use. No
 * client certificate is offered: over TLS 1.3 the server's certificate is verified before it refuses.
 */
function checkTls(host: string, port: number, caFile: string | undefined): Promise<Verdict> {
  return new Promise((resolve) => {
    const socket = tlsConnect({ host, port, servername: host, ca: upstreamTrust(caFile), ALPNProtocols: port === 443 ? ['x-amzn-mqtt-ca'] : undefined, timeout: 10_000 });
    const done = (v: Verdict) => (socket.destroy(), resolve(v));
    socket.once('secureConnect', () => done(pass(`${host}:${port} reached, server certificate verified`)));
    socket.once('timeout', () => done(fail(`${host}:${port}: no answer within 10 s`, 'check the route to AWS on that port (firewall, proxy)')));
    socket.once('error', (err: NodeJS.ErrnoException) => {
      const code = err.code ?? '';
      if (/CERT|SELF_SIGNED|UNABLE_TO_VERIFY|ERR_TLS_CERT_ALTNAME/.test(code)) {
        done(fail(`${host}:${port}: ${err.message}`, 'upstream.caFile must hold the CA that signed the endpoint (omit it for AWS)'));
      } else if (/ECONNREFUSED|ENOTFOUND|EAI_AGAIN|ETIMEDOUT|EHOSTUNREACH|ENETUNREACH|ECONNRESET/.test(code)) {
        done(fail(`${host}:${port}: ${err.message}`, 'check upstream.endpoint / upstream.port and the route to AWS'));
      } else {
        // TLS 1.2: the server ends the handshake for want of a device certificate before ours is checked.
        done(pass(`${host}:${port} reached over TLS (${err.message}: it wants a device certificate, so its own was not verified here)`));
      }
    });
  });
}

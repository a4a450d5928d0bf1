import { execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { MosquittoProcess } from '../../test/helpers/mosquitto.ts';
import { freePort } from '../../test/helpers/processes.ts';

export { MosquittoProcess };

export const MOSQUITTO = process.env.BENCH_MOSQUITTO ?? '/usr/sbin/mosquitto';
export const MOSQUITTO_SUB = process.env.BENCH_MOSQUITTO_SUB ?? 'mosquitto_sub';

export function mosquittoVersion(): string {
  let out: string;
  try {
    out = execFileSync(MOSQUITTO, ['-h'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (err) {
    // Some versions exit non-zero after printing the help.
    out = String((err as { stdout?: string }).stdout ?? '');
  }
  return out.match(/mosquitto version (\S+)/)?.[1] ?? 'unknown';
}

const common = (dir: string) => [
  // Started as root, Mosquitto would switch to its own user and lose access to the temp files.
  'user root',
  'log_dest stderr',
  'log_type error',
  'log_type warning',
  'log_type notice',
  `persistence_location ${dir}/`,
  // Mosquitto leaves Nagle on by default; BENCH_MOSQUITTO_NODELAY=1 turns it off on both brokers.
  ...(process.env.BENCH_MOSQUITTO_NODELAY === '1' ? ['set_tcp_nodelay true'] : []),
];

export interface TlsFiles {
  caFile: string;
  certFile: string;
  keyFile: string;
}

/**
 * The upstream ("IoT Core"): mutual TLS with the sandbox CA, require_certificate, certificate CN as the
 * username; plus a plain loopback listener for the collector. Persistence is on (saved only at shutdown)
 * so the collector's session and its queued messages survive an upstream restart in the outage drill;
 * queues are unbounded so the collector can never be the one that drops.
 */
export async function upstreamBroker(dir: string, tls: TlsFiles): Promise<{ broker: MosquittoProcess; tlsPort: number; plainPort: number }> {
  const tlsPort = await freePort();
  const plainPort = await freePort();
  const pdir = join(dir, 'upstream-persist');
  mkdirSync(pdir, { recursive: true });
  const conf = join(dir, 'upstream.conf');
  writeFileSync(
    conf,
    [
      ...common(pdir),
      'persistence true',
      'autosave_interval 3600',
      'allow_anonymous true',
      'max_inflight_messages 1000',
      'max_queued_messages 0',
      `listener ${tlsPort} 127.0.0.1`,
      `cafile ${tls.caFile}`,
      `certfile ${tls.certFile}`,
      `keyfile ${tls.keyFile}`,
      'require_certificate true',
      'use_identity_as_username true',
      `listener ${plainPort} 127.0.0.1`,
      '',
    ].join('\n'),
  );
  const broker = new MosquittoProcess('upstream mosquitto', MOSQUITTO, conf, [tlsPort, plainPort]);
  await broker.start();
  return { broker, tlsPort, plainPort };
}

export interface BridgeSettings {
  /** In-flight QoS 1 to the upstream; 100 is IoT Core's limit and simbridge's default maxInflight. */
  maxInflight: number;
  /** Queue per client (the bridge connection's queue is what fills during an upstream outage). */
  maxQueued: number;
  /** Mosquitto snapshots its in-memory state this often; what arrived since is lost on SIGKILL. */
  autosaveIntervalS: number;
}

export const defaultBridgeSettings: BridgeSettings = { maxInflight: 100, maxQueued: 100_000, autosaveIntervalS: 30 };

/**
 * A second Mosquitto, the baseline: devices publish to it in plain MQTT and a `connection` bridge
 * carries `devices/#` (QoS 1) to the upstream over TLS as ONE identity (one vended certificate).
 */
export async function bridgeBroker(
  dir: string,
  opts: { upstreamTlsPort: number; tls: TlsFiles; clientId: string; settings: BridgeSettings; port?: number; name?: string },
): Promise<{ broker: MosquittoProcess; port: number }> {
  const port = opts.port ?? (await freePort());
  // Its own config and persistence directory per name, so two bridges can run side by side.
  const name = opts.name ?? 'bridge';
  const pdir = join(dir, `${name}-persist`);
  mkdirSync(pdir, { recursive: true });
  const conf = join(dir, `${name}.conf`);
  const s = opts.settings;
  writeFileSync(
    conf,
    [
      ...common(pdir),
      'persistence true',
      `autosave_interval ${s.autosaveIntervalS}`,
      'allow_anonymous true',
      `max_inflight_messages ${s.maxInflight}`,
      `max_queued_messages ${s.maxQueued}`,
      `listener ${port} 127.0.0.1`,
      'connection upstream',
      `address 127.0.0.1:${opts.upstreamTlsPort}`,
      `remote_clientid ${opts.clientId}`,
      'bridge_protocol_version mqttv311',
      // What IoT Core needs: no Mosquitto-private flag, no $SYS notifications.
      'try_private false',
      'notifications false',
      'cleansession false',
      `bridge_cafile ${opts.tls.caFile}`,
      `bridge_certfile ${opts.tls.certFile}`,
      `bridge_keyfile ${opts.tls.keyFile}`,
      'topic devices/# out 1',
      '',
    ].join('\n'),
  );
  const broker = new MosquittoProcess(`${name} mosquitto`, MOSQUITTO, conf, [port]);
  await broker.start();
  return { broker, port };
}

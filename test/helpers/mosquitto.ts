import { spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { CliProcess, freePort } from './processes.ts';

export interface MosquittoBroker {
  tlsPort: number;
  plainPort: number;
  process: CliProcess;
  stop(): Promise<void>;
  start(): Promise<void>;
}

/**
 * A real Mosquitto as the upstream: mutual TLS (require_certificate, the certificate CN as the username,
 * client certificates checked against the sandbox CA), plus a plain loopback listener for observing.
 */
export async function startMosquitto(
  binary: string,
  dir: string,
  tls: { caFile: string; certFile: string; keyFile: string },
  ports?: { tlsPort: number; plainPort: number },
): Promise<MosquittoBroker> {
  const tlsPort = ports?.tlsPort ?? (await freePort());
  const plainPort = ports?.plainPort ?? (await freePort());
  const conf = join(dir, `mosquitto-${tlsPort}.conf`);
  writeFileSync(
    conf,
    [
      // Started as root, Mosquitto would switch to its own user and lose access to the temp files.
      'user root',
      'persistence false',
      'log_dest stderr',
      'log_type error',
      'log_type warning',
      'allow_anonymous true',
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
  const broker: MosquittoBroker = {
    tlsPort,
    plainPort,
    process: undefined as unknown as CliProcess,
    async start() {
      broker.process = new CliProcess(spawn(binary, ['-c', conf, '-v'], { stdio: ['ignore', 'pipe', 'pipe'] }));
      await broker.process.waitFor(`port ${plainPort}`, 10_000);
    },
    async stop() {
      await broker.process.kill('SIGTERM');
    },
  };
  await broker.start();
  return broker;
}

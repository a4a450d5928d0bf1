import { spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { CliProcess, freePort } from './processes.ts';

/** A Mosquitto process with a fixed config file and fixed ports, so it can be stopped and started again. */
export class MosquittoProcess {
  process?: CliProcess;

  constructor(
    readonly name: string,
    readonly binary: string,
    readonly conf: string,
    readonly ports: number[],
  ) {}

  get pid(): number | undefined {
    return this.process?.child.pid;
  }

  /** Resolves once every port accepts connections. */
  async start(): Promise<void> {
    // No -v: it would log every PUBLISH (log_type all) and the logging would be what a benchmark measures.
    this.process = new CliProcess(spawn(this.binary, ['-c', this.conf], { stdio: ['ignore', 'pipe', 'pipe'] }));
    const deadline = Date.now() + 15_000;
    for (const port of this.ports) {
      while (!(await canConnect(port))) {
        if (this.process.child.exitCode !== null) throw new Error(`${this.name} exited:\n${this.process.output}`);
        if (Date.now() > deadline) throw new Error(`${this.name}: port ${port} not open after 15 s:\n${this.process.output}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    }
  }

  /** SIGTERM (Mosquitto saves its persistence file) or SIGKILL (nothing is saved). */
  async stop(signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
    await this.process?.kill(signal);
  }
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.createConnection({ host: '127.0.0.1', port });
    s.once('connect', () => (s.destroy(), resolve(true)));
    s.once('error', () => resolve(false));
  });
}

export type MosquittoBroker = MosquittoProcess & { tlsPort: number; plainPort: number };

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
  const broker = Object.assign(new MosquittoProcess('mosquitto', binary, conf, [tlsPort, plainPort]), { tlsPort, plainPort });
  await broker.start();
  return broker;
}

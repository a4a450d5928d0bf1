// A local stand-in for AWS IoT Core, reached only over the network:
//  - control plane: IoT's REST-JSON API (the real @aws-sdk/client-iot works
//    against it with `endpoint` overridden), plus /_sandbox admin routes;
//  - data plane: MQTT 3.1.1 over mutual TLS enforcing certificates and policies;
//  - observer: plain, read-only MQTT on 127.0.0.1 showing every accepted message.
// It imports nothing from the gateway, and the gateway nothing from it.
import { mkdirSync } from 'node:fs';
import { isIP } from 'node:net';
import { join } from 'node:path';
import { CertificateAuthority } from './ca.ts';
import { adminRoutes } from './control/admin.ts';
import { startControlServer } from './control/http.ts';
import { jobRoutes } from './control/jobs.ts';
import { streamRoutes } from './control/streams.ts';
import { iotRoutes } from './control/operations.ts';
import { type PublishQuota, startDataPlane } from './data/plane.ts';
import { FaultInjector } from './faults.ts';
import { JobStore } from './jobs.ts';
import { StreamStore } from './streams.ts';
import { type Logger, silentLogger } from './log.ts';
import { startObserver } from './observer.ts';
import { type Propagation, Registry } from './registry.ts';

export { FaultInjector } from './faults.ts';
export type { FaultConfig, FaultConfigPatch, FaultStats } from './faults.ts';
export type { Logger } from './log.ts';
export type { PublishQuota } from './data/plane.ts';
export type { Propagation } from './registry.ts';

export interface SandboxOptions {
  /** Persists the CA, the server certificate and the registry across restarts. */
  dataDir: string;
  /** Address the control and data planes listen on. Default '127.0.0.1'. */
  host?: string;
  /** REST control plane port (0 = ephemeral). */
  controlPort: number;
  /** MQTT over mutual TLS port (0 = ephemeral). */
  dataPort: number;
  /** Plain read-only MQTT observer port (0 = ephemeral), always on 127.0.0.1. */
  observerPort: number;
  /** Default 'us-east-1'. */
  region?: string;
  /** ARN partition: 'aws' (default), 'aws-cn' for China regions, 'aws-us-gov' for GovCloud. */
  partition?: string;
  /** Default '123456789012'. */
  accountId?: string;
  /**
   * Validity of certificates from CreateCertificateFromCsr. Default: until 2049-12-31 23:59:59 UTC,
   * as IoT Core issues them (so rotation cannot wait for expiry).
   */
  certValidityDays?: number;
  /**
   * IoT Core closes the connection on a refused SUBSCRIBE (MQTT 3.1.1): 'close'. 'suback' answers
   * 0x80 and keeps the connection, the kinder behaviour of older sandboxes. Default 'close'.
   */
  refusedSubscribe?: 'close' | 'suback';
  /** IoT Core closes the socket of an unauthorized CONNECT without a CONNACK: 'close' (default); 'connack' answers CONNACK 5. */
  refusedConnect?: 'close' | 'connack';
  /**
   * Per-connection inbound publish quota over any one-second window, as IoT Core enforces it: the
   * excess is dropped without PUBACK. Default 100 publishes and 512 KiB per second; null = none.
   */
  publishQuota?: PublishQuota | null;
  /**
   * How long the data plane takes to see a control-plane change, per kind (certificate status,
   * attachments and detachments, policy versions), as IoT Core takes seconds to minutes. Default 0: at once.
   */
  propagation?: Partial<Propagation>;
  logger?: Logger;
}

export interface Sandbox {
  /** e.g. 'http://127.0.0.1:PORT', for `new IoTClient({ endpoint, region, credentials })`. */
  controlEndpoint: string;
  /** Host name for data-plane clients; also what DescribeEndpoint answers. */
  dataHost: string;
  dataPort: number;
  observerPort: number;
  /** The sandbox root CA, which signs device certificates and the data plane's server certificate. */
  caFile: string;
  caPem: string;
  /** Data-plane server certificate (SANs DNS:localhost, IP:127.0.0.1) and key, reusable by a test Mosquitto. */
  serverCertFile: string;
  serverKeyFile: string;
  faults: FaultInjector;
  close(): Promise<void>;
}

const UNSPECIFIED = new Set(['0.0.0.0', '::']);
/** Certificates IoT Core signs from a CSR are valid until the end of 2049. */
const IOT_CORE_NOT_AFTER = new Date(Date.UTC(2049, 11, 31, 23, 59, 59));

export async function startSandbox(opts: SandboxOptions): Promise<Sandbox> {
  const host = opts.host ?? '127.0.0.1';
  const account = { partition: opts.partition ?? 'aws', region: opts.region ?? 'us-east-1', accountId: opts.accountId ?? '123456789012' };
  const logger = opts.logger ?? silentLogger;
  // Clients reach a loopback or wildcard listener as 'localhost', like a DNS name on AWS.
  const dataHost = host === '127.0.0.1' || host === 'localhost' || UNSPECIFIED.has(host) ? 'localhost' : host;

  mkdirSync(opts.dataDir, { recursive: true });
  const ca = await CertificateAuthority.open(opts.dataDir);
  const dnsNames = ['localhost', ...(isIP(host) === 0 && host !== 'localhost' ? [host] : [])];
  const ips = ['127.0.0.1', ...(isIP(host) !== 0 && host !== '127.0.0.1' && !UNSPECIFIED.has(host) ? [host] : [])];
  const server = await ca.serverIdentity(opts.dataDir, dnsNames, ips);

  const registry = new Registry(join(opts.dataDir, 'registry.jsonl'), account, opts.propagation);
  const faults = new FaultInjector();
  const jobs = new JobStore(account, (thingName) => registry.findThing(thingName) !== undefined);
  const streams = new StreamStore(account);
  const closers: (() => Promise<void>)[] = [];
  const closeAll = async () => {
    await Promise.allSettled(closers.splice(0).reverse().map((c) => c()));
    registry.close();
  };

  try {
    const observer = await startObserver({ port: opts.observerPort, logger });
    closers.push(() => observer.close());

    const data = await startDataPlane({
      host,
      port: opts.dataPort,
      tls: { key: server.keyPem, cert: server.certPem, ca: ca.certPem },
      registry,
      logger,
      refusedSubscribe: opts.refusedSubscribe ?? 'close',
      refusedConnect: opts.refusedConnect ?? 'close',
      publishQuota: opts.publishQuota === undefined ? { perSecond: 100, bytesPerSecond: 512 * 1024 } : opts.publishQuota,
      jobs,
      streams,
      onMessage: (msg) => observer.publish(msg),
    });
    closers.push(() => data.close());

    const control = await startControlServer({
      host,
      port: opts.controlPort,
      faults,
      logger,
      routes: [
        ...adminRoutes({ registry, faults, connections: () => data.connections(), takeovers: () => data.takeovers() }),
        ...iotRoutes({ registry, ca, endpointAddress: dataHost, certValidityDays: opts.certValidityDays ?? IOT_CORE_NOT_AFTER }),
        ...jobRoutes(jobs),
        ...streamRoutes(streams),
      ],
    });
    closers.push(() => control.close());

    logger.info(
      { control: control.url, dataHost, dataPort: data.port, observerPort: observer.port, dataDir: opts.dataDir },
      'sandbox started',
    );

    let closing: Promise<void> | undefined;
    return {
      controlEndpoint: control.url,
      dataHost,
      dataPort: data.port,
      observerPort: observer.port,
      caFile: ca.certFile,
      caPem: ca.certPem,
      serverCertFile: server.certFile,
      serverKeyFile: server.keyFile,
      faults,
      close: () => (closing ??= closeAll()),
    };
  } catch (err) {
    await closeAll();
    throw err;
  }
}

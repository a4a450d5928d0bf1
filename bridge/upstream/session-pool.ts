import { io, iot, mqtt } from 'aws-iot-device-sdk-v2';
import type { Logger } from 'pino';
import type { Metrics } from '../metrics.ts';

export interface SessionCredentials {
  thingName: string;
  certificatePem: string;
  privateKeyPem: string;
}

export interface PoolOptions {
  /** Host of the IoT Core data endpoint, resolved once (config or DescribeEndpoint). */
  endpoint: () => Promise<string>;
  port: number;
  caPem?: string;
  keepAliveSeconds: number;
  connectTimeoutMs: number;
  operationTimeoutMs: number;
  metrics: Metrics;
  log: Logger;
}

/** One device's MQTT-over-mutual-TLS session to IoT Core, as that device (client id = thing name). */
export class UpstreamSession {
  private closed = false;

  constructor(
    readonly thingName: string,
    private readonly connection: mqtt.MqttClientConnection,
  ) {}

  /** Resolves on PUBACK (QoS 1) or once written (QoS 0). */
  async publish(topic: string, payload: Buffer, qos: 0 | 1): Promise<void> {
    if (this.closed) throw new Error('session closed');
    await this.connection.publish(topic, payload, qos === 1 ? mqtt.QoS.AtLeastOnce : mqtt.QoS.AtMostOnce);
  }

  get isClosed(): boolean {
    return this.closed;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.connection.disconnect().catch(() => undefined);
  }
}

/**
 * Holds the upstream sessions. All share one client bootstrap (one event-loop group): a bootstrap per
 * device would cost threads per device.
 */
export class UpstreamPool {
  private readonly bootstrap = new io.ClientBootstrap();
  private readonly client = new mqtt.MqttClient(this.bootstrap);
  private readonly sessions = new Map<string, Promise<UpstreamSession>>();

  constructor(private readonly opts: PoolOptions) {}

  /** The device's session, opened on first use. A failed open is forgotten so the next call retries. */
  session(creds: SessionCredentials): Promise<UpstreamSession> {
    let p = this.sessions.get(creds.thingName);
    if (!p) {
      p = this.open(creds);
      this.sessions.set(creds.thingName, p);
      p.catch(() => this.sessions.delete(creds.thingName));
    }
    return p;
  }

  /** Drops a session that failed so the next use opens a fresh one. */
  async discard(session: UpstreamSession): Promise<void> {
    const current = this.sessions.get(session.thingName);
    if (current && (await current.catch(() => undefined)) === session) this.sessions.delete(session.thingName);
    await session.close();
    this.opts.metrics.upstreamSessions.set(this.sessions.size);
  }

  get size(): number {
    return this.sessions.size;
  }

  async closeAll(): Promise<void> {
    const all = [...this.sessions.values()];
    this.sessions.clear();
    await Promise.all(all.map((p) => p.then((s) => s.close(), () => undefined)));
    this.opts.metrics.upstreamSessions.set(0);
  }

  private async open(creds: SessionCredentials): Promise<UpstreamSession> {
    const { opts } = this;
    const builder = iot.AwsIotMqttConnectionConfigBuilder.new_mtls_builder(creds.certificatePem, creds.privateKeyPem)
      .with_endpoint(await opts.endpoint())
      .with_port(opts.port)
      .with_client_id(creds.thingName)
      .with_clean_session(true)
      .with_keep_alive_seconds(opts.keepAliveSeconds)
      .with_timeout_ms(opts.connectTimeoutMs)
      .with_protocol_operation_timeout_ms(opts.operationTimeoutMs);
    if (opts.caPem) builder.with_certificate_authority(opts.caPem);
    const connection = this.client.new_connection(builder.build());
    const session = new UpstreamSession(creds.thingName, connection);
    connection.on('interrupt', (err) => opts.log.warn({ thing: creds.thingName, err: String(err) }, 'upstream session interrupted'));
    connection.on('error', (err) => opts.log.warn({ thing: creds.thingName, err: String(err) }, 'upstream session error'));
    try {
      await connection.connect();
    } catch (err) {
      opts.metrics.upstreamConnects.inc({ result: 'failed' });
      await connection.disconnect().catch(() => undefined);
      throw err;
    }
    opts.metrics.upstreamConnects.inc({ result: 'ok' });
    opts.metrics.upstreamSessions.set(this.sessions.size);
    return session;
  }
}

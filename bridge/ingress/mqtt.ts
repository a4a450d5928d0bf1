import { createServer, type Server } from 'node:net';
import { Aedes, type Client } from 'aedes';
import type { Logger } from 'pino';
import type { Admission, AdmittedDevice } from '../admission.ts';
import { Refusal, type IdentitySource } from '../identity/source.ts';
import type { Connectivity } from '../connectivity.ts';
import { DownlinkRefusal, type Deliver, type Downlink } from '../downlink.ts';
import type { Metrics } from '../metrics.ts';
import { normaliseAddress } from '../../lib/address-table.ts';
import type { AuditStore } from '../../storage/audit.ts';
import { UplinkRefusal, type Uplink } from '../uplink.ts';
import { AddressConnections, type IngressLimitReason } from './connection-limits.ts';

/** Device uplink is renamed into this private space once stored, so the local broker can never route it to a device. */
const UPLINK_SPACE = '$simbridge/uplink/';

export interface MqttIngressOptions {
  host: string;
  port: number;
  connectTimeoutMs: number;
  maxClientIdBytes: number;
  maxConnectionsPerAddress: number;
  maxConnectionsPerSim: number;
  maxKeepAliveSeconds: number;
  keepAliveZero: 'limit' | 'refuse';
  identity: IdentitySource;
  admission: Admission;
  uplink: Uplink;
  downlink: Downlink;
  connectivity: Connectivity;
  metrics: Metrics;
  audit: AuditStore;
  log: Logger;
}

// MQTT 3.1.1 CONNACK return codes (MQTT-3.2.2.3).
const IDENTIFIER_REJECTED = 2;
const SERVER_UNAVAILABLE = 3;
const BAD_USERNAME_OR_PASSWORD = 4;
const NOT_AUTHORIZED = 5;

function connackCode(refusal: Refusal): number {
  if (refusal.reason === 'invalid_imei') return IDENTIFIER_REJECTED; // the client id carries the IMEI
  if (refusal.reason === 'invalid_imsi' || refusal.reason === 'bad_secret') return BAD_USERNAME_OR_PASSWORD; // username = IMSI, password = secret
  return NOT_AUTHORIZED;
}

function remoteAddressOf(client: Client): string {
  const conn = client.conn as { remoteAddress?: string } | undefined;
  return normaliseAddress(String(conn?.remoteAddress ?? ''));
}

/**
 * Plain MQTT for devices, on aedes. The pipeline per packet kind reads like aedes' own handlers:
 * CONNECT: identify → admit; PUBLISH: check → enqueue durably → PUBACK (aedes writes the PUBACK only
 * after authorizePublish calls back, so the ack follows the commit).
 */
export interface MqttIngress {
  port: number;
  listening(): boolean;
  /** True while the SIM holds at least one device connection. */
  isConnected(imsi: string): boolean;
  /** Closes every device connection from an address (its network session ended). */
  disconnectAddress(address: string): number;
  close(): Promise<void>;
}

export async function startMqttIngress(opts: MqttIngressOptions): Promise<MqttIngress> {
  const devices = new WeakMap<Client, AdmittedDevice>();
  const filters = new WeakMap<Client, Set<string>>();
  const byAddress = new Map<string, Set<Client>>();
  const bySim = new Map<string, Set<Client>>();
  const keepAliveRefused = new WeakSet<Client>();
  const { metrics, log } = opts;
  const refuse = (reason: IngressLimitReason, returnCode: number, detail: string) => {
    metrics.refusals.inc({ protocol: 'mqtt', reason });
    return Object.assign(new Error(detail), { returnCode }) as never;
  };

  const broker = await Aedes.createBroker({
    connectTimeout: opts.connectTimeoutMs,
    maxClientsIdLength: opts.maxClientIdBytes,

    // MQTT-3.1.2-24: the server closes a connection silent for 1.5 x its keepalive. 3.1.1 cannot tell
    // the device another value, so one over the limit (or 0, "never") is held to the limit here.
    preConnect(client, packet, done) {
      const k = packet.keepalive ?? 0;
      if (k === 0 && opts.keepAliveZero === 'refuse') keepAliveRefused.add(client);
      else if (k === 0 || k > opts.maxKeepAliveSeconds) packet.keepalive = opts.maxKeepAliveSeconds;
      done(null, true);
    },

    authenticate(client, username, password, done) {
      const remote = remoteAddressOf(client);
      if (keepAliveRefused.has(client)) return done(refuse('keepalive_refused', NOT_AUTHORIZED, 'keepalive 0 is not accepted'), false);
      const claim = { imsi: username, imei: client.id, secret: password?.toString('utf8') };
      opts.admission.admit(opts.identity, remote, claim).then(
        (result) => {
          if (result instanceof Refusal) {
            metrics.refusals.inc({ protocol: 'mqtt', reason: result.reason });
            log.info({ reason: result.reason, remote }, 'MQTT connection refused');
            const err = Object.assign(new Error(result.detail), { returnCode: connackCode(result) });
            return done(err as never, false);
          }
          // Client ids are namespaced by SIM: a device reconnecting takes over its own old connection
          // (MQTT-3.1.4-2), but two SIMs using the same client id never knock each other off.
          const id = `${result.sim.imsi}/${client.id}`;
          let mine = bySim.get(result.sim.imsi);
          if (mine && mine.size >= opts.maxConnectionsPerSim && ![...mine].some((c) => c.id === id)) {
            const detail = `the SIM already holds ${mine.size} connections`;
            opts.audit.record('sim_connection_limit', result.sim.imsi, { remoteAddress: remote, clientId: client.id, detail }).catch((err) => opts.log.warn({ err: String(err) }, 'audit not written'));
            log.info({ thing: result.sim.thingName, remote }, 'MQTT connection refused: SIM connection limit');
            return done(refuse('sim_connection_limit', SERVER_UNAVAILABLE, detail), false);
          }
          devices.set(client, result);
          client.id = id;
          if (!mine) bySim.set(result.sim.imsi, (mine = new Set()));
          mine.add(client);
          client.conn.once('close', () => {
            mine.delete(client);
            if (mine.size === 0 && bySim.get(result.sim.imsi) === mine) bySim.delete(result.sim.imsi);
          });
          let set = byAddress.get(remote);
          if (!set) byAddress.set(remote, (set = new Set()));
          set.add(client);
          opts.connectivity.report(result.sim, { online: true, ip: remote, via: 'mqtt' });
          done(null, true);
        },
        (err: Error) => {
          log.error({ err: err.message }, 'admission failed');
          done(Object.assign(err, { returnCode: 3 }) as never, false); // 3 = server unavailable
        },
      );
    },

    authorizePublish(client, packet, done) {
      if (!client) return done(null); // the broker's own publishes
      const device = devices.get(client);
      if (!device) return done(new Error('not authenticated'));
      // The local broker would keep a retained message in memory for good; IoT Core would refuse it (the
      // device policy has no iot:RetainPublish) and a batch cannot be retained. Refused like QoS 2.
      if (packet.retain) {
        metrics.refusals.inc({ protocol: 'mqtt', reason: 'retain_not_supported' });
        opts.audit.record('retain_not_supported', device.sim.imsi, { topic: packet.topic, bytes: packet.payload.length }).catch((err) => opts.log.warn({ err: String(err) }, 'audit not written'));
        log.info({ thing: device.sim.thingName, reason: 'retain_not_supported' }, 'MQTT publish refused');
        return done(new Error('retained messages are not supported'));
      }
      opts.uplink.accept('mqtt', device, packet.topic, packet.payload as Buffer, packet.qos).then(
        () => {
          packet.topic = UPLINK_SPACE + packet.topic;
          done(null);
        },
        // MQTT 3.1.1 has no PUBACK reason code: the refusal closes the connection (MQTT-3.3.5-2).
        (err: Error) => {
          log.info({ thing: device.sim.thingName, reason: err instanceof UplinkRefusal ? err.reason : err.message }, 'MQTT publish refused');
          done(err);
        },
      );
    },

    // A SUBSCRIBE becomes a subscription on the device's own upstream session; SUBACK 0x80 when refused.
    authorizeSubscribe(client, sub, done) {
      const device = devices.get(client);
      if (!device) return done(null, null);
      const deliver: Deliver = (topic, payload, qos) =>
        client.publish({ cmd: 'publish', topic, payload, qos, retain: false, dup: false } as never, () => undefined);
      opts.downlink.subscribe(device, sub.topic, sub.qos, deliver).then(
        (granted) => {
          let set = filters.get(client);
          if (!set) filters.set(client, (set = new Set()));
          set.add(sub.topic);
          done(null, { ...sub, qos: granted });
        },
        (err: Error) => {
          metrics.refusals.inc({ protocol: 'mqtt', reason: err instanceof DownlinkRefusal ? err.reason : 'subscribe_failed' });
          log.info({ thing: device.sim.thingName, filter: sub.topic, err: err.message }, 'MQTT subscription refused');
          done(null, null);
        },
      );
    },

    // Only downlink is ever delivered to a device (client.publish); device uplink lives in UPLINK_SPACE.
    authorizeForward(_client, packet) {
      return packet.topic.startsWith(UPLINK_SPACE) ? null : packet;
    },
  });

  broker.on('unsubscribe', (unsubscriptions: string[], client: Client) => {
    const device = devices.get(client);
    if (!device) return;
    for (const filter of unsubscriptions) {
      if (filters.get(client)?.delete(filter)) void opts.downlink.unsubscribe(device, filter);
    }
  });

  broker.on('clientDisconnect', (client: Client) => {
    const remote = remoteAddressOf(client);
    const set = byAddress.get(remote);
    set?.delete(client);
    if (set?.size === 0) byAddress.delete(remote);
    const device = devices.get(client);
    if (!device) return;
    for (const filter of filters.get(client) ?? []) void opts.downlink.unsubscribe(device, filter);
    filters.delete(client);
    opts.connectivity.report(device.sim, { online: false, ip: remote, via: 'mqtt' });
  });

  // Malformed packets and protocol violations end the connection; count them.
  for (const event of ['connectionError', 'clientError'] as const) {
    broker.on(event, (_client: Client, err: Error) => {
      metrics.refusals.inc({ protocol: 'mqtt', reason: 'protocol_error' });
      log.debug({ err: err.message }, 'MQTT connection error');
    });
  }

  // Past the cap an address gets CONNACK 3 to its CONNECT without a broker client being made for it.
  const perAddress = new AddressConnections(opts.maxConnectionsPerAddress);
  const server: Server = createServer((socket) => {
    if (perAddress.admit(socket)) return broker.handle(socket);
    metrics.refusals.inc({ protocol: 'mqtt', reason: 'address_connection_limit' satisfies IngressLimitReason });
    socket.on('error', () => undefined);
    socket.setTimeout(opts.connectTimeoutMs, () => socket.destroy());
    socket.once('data', () => socket.end(Buffer.from([0x20, 2, 0, SERVER_UNAVAILABLE])));
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port, opts.host, () => resolve());
  });
  const address = server.address();
  return {
    port: typeof address === 'object' && address ? address.port : opts.port,
    listening: () => server.listening,
    isConnected: (imsi: string) => bySim.has(imsi),
    disconnectAddress(ip: string) {
      const set = byAddress.get(normaliseAddress(ip));
      if (!set) return 0;
      for (const client of set) client.close();
      byAddress.delete(normaliseAddress(ip));
      return set.size;
    },
    async close() {
      // Stop accepting first; server.close() settles once aedes has closed the open connections.
      const stopped = new Promise<void>((resolve) => server.close(() => resolve()));
      await new Promise<void>((resolve) => broker.close(() => resolve()));
      await stopped;
    },
  };
}

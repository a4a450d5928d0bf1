import { createServer, type Server, type Socket } from 'node:net';
import mqttPacket, { type Packet } from 'mqtt-packet';
import { normaliseAddress } from '../../../lib/address-table.ts';
import { AddressConnectRate, AddressConnections, type IngressLimitReason } from '../connection-limits.ts';
import { handleConnect } from './connect.ts';
import { DeviceConnection } from './connection.ts';
import { ConnectionIndex } from './connection-index.ts';
import type { Endpoint, MqttIngressOptions } from './context.ts';
import { handlePublish } from './publish.ts';
import { REASON_CODES } from './reasons.ts';
import { Sessions } from './session.ts';
import { handleSubscribe, handleUnsubscribe } from './subscribe.ts';
import { publishWill } from './will.ts';

export type { MqttIngressOptions } from './context.ts';

export interface MqttIngress {
  port: number;
  listening(): boolean;
  /** True while the SIM holds at least one device connection. */
  isConnected(imsi: string): boolean;
  /** Closes every device connection from an address (its network session ended). */
  disconnectAddress(address: string): number;
  /** This node now holds the SIMs (a node of several): their stored sessions subscribe upstream here. */
  takeUp(imsis: string[]): Promise<number>;
  /** Another node now holds the SIMs: their sessions whose device is away are its to take up. */
  release(imsis: string[]): void;
  close(): Promise<void>;
}

/** Keepalive and connect deadlines are checked this often; the 1.5x rule holds to within it. */
const SWEEP_MS = 1000;
/** Expired persistent sessions and kept commands are looked for this often. */
const SESSION_SWEEP_MS = 10_000;
const DEFAULT_MAX_PACKET_BYTES = 133_120;

/**
 * The device MQTT endpoint, 3.1.1 and 5, on the mqtt-packet codec. It is no broker: a device's publishes
 * go to the uplink, its subscriptions to its own upstream session, and downlink only to that device.
 */
export async function startMqttIngress(opts: MqttIngressOptions): Promise<MqttIngress> {
  const ep: Endpoint = {
    opts,
    maxPacketBytes: opts.maxPacketBytes ?? DEFAULT_MAX_PACKET_BYTES,
    receiveMaximum: opts.receiveMaximum ?? 100,
    topicAliasMaximum: opts.topicAliasMaximum ?? 16,
    all: new Set(),
    bySim: new ConnectionIndex(),
    byAddress: new ConnectionIndex(),
    sessions: undefined as never,
    clock: Date.now(),
    audit(kind, imsi, facts) {
      opts.audit.record(kind, imsi, facts).catch((err: unknown) => opts.log.warn({ err: String(err) }, 'audit not written'));
    },
  };
  (ep as { sessions: Sessions }).sessions = new Sessions(ep, opts.sessions);
  if (opts.takeUpAtStart !== false) {
    const restored = await ep.sessions.takeUp();
    if (restored) opts.log.info({ sessions: restored }, 'persistent MQTT sessions restored');
  }

  const sweep = setInterval(() => {
    ep.clock = Date.now();
    if (ep.clock % 60_000 < SWEEP_MS) connectRate.prune();
    for (const conn of ep.all) {
      if (conn.state !== 'closed' && ep.clock - conn.lastHeard > conn.silenceMs) {
        // MQTT-3.1.2-24; before CONNECT, the connect timeout (a connection that never spoke MQTT).
        const reason = conn.state === 'awaiting_connect' ? 'protocol_error' : 'keepalive_timeout';
        conn.refuse(reason, 'no packet within 1.5 x the keepalive', reason);
        conn.socket.destroy();
      }
    }
  }, SWEEP_MS).unref();
  const sessionSweep = setInterval(() => {
    ep.sessions.sweep().catch((err: unknown) => opts.log.error({ err: String(err) }, 'MQTT session sweep failed'));
  }, SESSION_SWEEP_MS).unref();
  void ep.sessions.sweep().catch(() => undefined);

  // Past a cap an address gets its refusal to its CONNECT, in the form of the level it asked for.
  const perAddress = new AddressConnections(opts.maxConnectionsPerAddress);
  const connectRate = new AddressConnectRate(opts.maxConnectsPerAddressPerSecond ?? 0);
  const server: Server = createServer((socket) => {
    const remote = normaliseAddress(socket.remoteAddress ?? '');
    if (!connectRate.admit(remote)) return refuseAtCapacity(socket, opts, 'connect_rate_limit', 'too many new connections from this address');
    if (!perAddress.admit(socket)) return refuseAtCapacity(socket, opts, 'address_connection_limit', 'too many connections from this address');
    ep.all.add(new DeviceConnection(socket, remote, ep, dispatch, closed));
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port, opts.host, () => resolve());
  });

  /** A connection ended: its will, its place in the tables, its session, the device's presence. */
  function closed(conn: DeviceConnection, clean: boolean): void {
    ep.all.delete(conn);
    const device = conn.device;
    if (!device) return;
    if (!clean) publishWill(ep, conn);
    const { imsi } = device.sim;
    ep.bySim.delete(imsi, conn);
    ep.byAddress.delete(conn.remote, conn);
    ep.sessions.detach(conn, clean);
    if (!ep.bySim.has(imsi)) opts.connectivity.report(device.sim, { online: false, ip: conn.remote, via: 'mqtt' });
  }

  return {
    port: (server.address() as { port: number }).port,
    listening: () => server.listening,
    isConnected: (imsi: string) => ep.bySim.has(imsi),
    takeUp: (imsis) => ep.sessions.takeUp(imsis),
    release: (imsis) => ep.sessions.release(imsis),
    disconnectAddress(ip: string) {
      const here = ep.byAddress.list(normaliseAddress(ip));
      const n = here.length;
      for (const conn of here) conn.refuse('network_session_ended', 'the device\'s network session ended', null);
      return n;
    },
    async close() {
      clearInterval(sweep);
      clearInterval(sessionSweep);
      const stopped = new Promise<void>((resolve) => server.close(() => resolve()));
      for (const conn of [...ep.all]) {
        conn.refuse('server_shutting_down', 'the gateway is shutting down', null);
        conn.socket.destroy();
      }
      await stopped;
    },
  };
}

/** Routes a packet of an open connection to its handler; anything before CONNECT ends it (MQTT-3.1.0-1). */
function dispatch(conn: DeviceConnection, packet: Packet): void {
  const ep = conn.ep;
  if (packet.cmd === 'connect') return handleConnect(ep, conn, packet);
  if (conn.state !== 'open') return conn.refuse('protocol_error', `${packet.cmd} before CONNECT was accepted`);
  switch (packet.cmd) {
    case 'publish':
      return handlePublish(ep, conn, packet);
    case 'puback': {
      // A PUBACK for an id not in flight is ignored (nothing to release); counted for the record.
      const msg = conn.acknowledged(packet.messageId!);
      if (msg) ep.sessions.delivered(msg, conn.session);
      else conn.count('protocol_error');
      return;
    }
    case 'subscribe':
      return handleSubscribe(ep, conn, packet);
    case 'unsubscribe':
      return handleUnsubscribe(ep, conn, packet);
    case 'pingreq':
      return conn.pong();
    case 'disconnect':
      // MQTT 5 reason 0x04: "disconnect with will message".
      return conn.disconnected(packet.reasonCode === 0x04);
    default:
      // QoS 2 flows, AUTH, and packets only a server sends.
      return conn.refuse('protocol_error', `${packet.cmd} is not accepted here`);
  }
}

/** One CONNECT read, answered in the form of its level (3.1.1: 3, server unavailable; MQTT 5: its code), and closed. */
function refuseAtCapacity(socket: Socket, opts: MqttIngressOptions, reason: IngressLimitReason | 'connect_rate_limit', detail: string): void {
  opts.metrics.refusals.inc({ protocol: 'mqtt', reason });
  socket.on('error', () => undefined);
  socket.setTimeout(opts.connectTimeoutMs, () => socket.destroy());
  const parser = mqttPacket.parser();
  parser.on('error', () => socket.destroy());
  parser.once('packet', (packet: Packet) => {
    const codes = REASON_CODES[reason];
    const v5 = packet.cmd === 'connect' && packet.protocolVersion === 5;
    const connack = v5
      ? mqttPacket.generate({ cmd: 'connack', sessionPresent: false, reasonCode: codes.v5, properties: { reasonString: detail } }, { protocolVersion: 5 })
      : Buffer.from([0x20, 2, 0, codes.v3]);
    socket.end(connack as Buffer);
  });
  socket.on('data', (chunk: Buffer) => parser.parse(chunk));
}

import { randomUUID } from 'node:crypto';
import type { IConnackPacket, IConnectPacket } from 'mqtt-packet';
import type { AdmittedDevice } from '../../admission.ts';
import { Refusal } from '../../identity/source.ts';
import type { DeviceConnection, ProtocolLevel } from './connection.ts';
import type { Endpoint } from './context.ts';
import { REASON_CODES, type MqttRefusalReason } from './reasons.ts';

/**
 * CONNECT: check what the packet asks for → identify and admit the device → hold the SIM's connection
 * limit → take over an older connection of the same client → attach its session → CONNACK → replay
 * what arrived meanwhile. Packets after CONNECT wait (MQTT-3.1.4-5: nothing is processed before it).
 */
export function handleConnect(ep: Endpoint, conn: DeviceConnection, packet: IConnectPacket): void {
  // MQTT-3.1.0-2: a second CONNECT is a protocol violation.
  if (conn.state !== 'awaiting_connect') return conn.refuse('protocol_error', 'a second CONNECT on one connection');
  conn.level = (packet.protocolVersion ?? 4) as ProtocolLevel;
  conn.state = 'connecting';
  conn.backlog = [];
  conn.socket.pause();
  const problem = checkConnect(ep, conn, packet);
  if (problem) return refuseConnect(ep, conn, problem[0], problem[1]);
  const claim = { imsi: packet.username, imei: packet.clientId, secret: packet.password?.toString('utf8') };
  ep.opts.admission.admit(ep.opts.identity, conn.remote, claim).then(
    (result) => {
      if (conn.state === 'closed') return;
      if (result instanceof Refusal) {
        ep.opts.log.info({ reason: result.reason, remote: conn.remote }, 'MQTT connection refused');
        return refuseConnect(ep, conn, result.reason, result.detail);
      }
      return accept(ep, conn, packet, result);
    },
    (err: Error) => {
      ep.opts.log.error({ err: err.message }, 'admission failed');
      refuseConnect(ep, conn, 'server_unavailable', 'the gateway cannot admit devices right now');
    },
  );
}

/** What CONNECT asks for that this endpoint does not give, before the device is identified. */
function checkConnect(ep: Endpoint, conn: DeviceConnection, packet: IConnectPacket): [MqttRefusalReason, string] | undefined {
  const { opts } = ep;
  if (Buffer.byteLength(packet.clientId) > opts.maxClientIdBytes) return ['client_id_invalid', `client id longer than ${opts.maxClientIdBytes} bytes`];
  // MQTT-3.1.3-8: a 3.1.1 device without a client id must ask for a clean session.
  if (packet.clientId === '' && conn.level !== 5 && packet.clean === false) return ['client_id_invalid', 'an empty client id needs a clean session'];
  const props = packet.properties;
  // MQTT-3.1.2-21 (MQTT 5): Receive Maximum and Maximum Packet Size of 0 are protocol errors.
  if (props?.receiveMaximum === 0 || props?.maximumPacketSize === 0) return ['protocol_error', 'Receive Maximum and Maximum Packet Size may not be 0'];
  // MQTT 5 enhanced authentication (AUTH exchanges) is not offered: identity comes from the network.
  if (props?.authenticationMethod !== undefined) return ['auth_method_not_supported', `authentication method ${props.authenticationMethod} is not supported`];
  if (packet.keepalive === 0 && opts.keepAliveZero === 'refuse') return ['keepalive_refused', 'keepalive 0 is not accepted'];
  // Nothing is retained, here or in IoT Core; QoS 2 does not exist upstream (MQTT-3.2.2-11, -12 in MQTT 5).
  if (packet.will?.retain) return ['retain_not_supported', 'a retained will message is not supported'];
  if ((packet.will?.qos ?? 0) > 1) return ['qos_not_supported', 'a will message at QoS 2 is not supported'];
  return undefined;
}

function refuseConnect(ep: Endpoint, conn: DeviceConnection, reason: MqttRefusalReason, detail: string): void {
  conn.count(reason);
  const codes = REASON_CODES[reason];
  const connack: IConnackPacket =
    conn.level === 5
      ? { cmd: 'connack', sessionPresent: false, reasonCode: codes.v5, properties: { reasonString: detail } }
      : { cmd: 'connack', sessionPresent: false, returnCode: codes.v3 };
  conn.send(connack);
  conn.flush();
  conn.backlog = undefined;
  conn.refuse(reason, detail, null);
}

async function accept(ep: Endpoint, conn: DeviceConnection, packet: IConnectPacket, device: AdmittedDevice): Promise<void> {
  const { opts } = ep;
  const { imsi } = device.sim;
  let clientId = packet.clientId;
  const assigned = clientId === '' && conn.level === 5 ? (clientId = `auto-${randomUUID()}`) : undefined;
  // Client ids are namespaced by SIM: a device reconnecting takes over its own old connection
  // (MQTT-3.1.4-2), but two SIMs using the same client id never knock each other off.
  const mine = ep.bySim.list(imsi);
  const sameClient = mine.find((c) => c.clientId === clientId);
  if (mine.length >= opts.maxConnectionsPerSim && !sameClient) {
    const detail = `the SIM already holds ${mine.length} connections`;
    ep.audit('sim_connection_limit', imsi, { remoteAddress: conn.remote, clientId, detail });
    opts.log.info({ thing: device.sim.thingName, remote: conn.remote }, 'MQTT connection refused: SIM connection limit');
    return refuseConnect(ep, conn, 'sim_connection_limit', detail);
  }
  conn.device = device;
  conn.clientId = clientId;
  if (sameClient) sameClient.refuse('session_taken_over', 'another connection took over this client id', null);

  // MQTT-3.1.2-24: silent for 1.5 x the keepalive, the connection closes. One of 0 ("never") or over the
  // limit is held to the limit; MQTT 5 devices are told (Server Keep Alive), 3.1.1 ones cannot be.
  const asked = packet.keepalive ?? 0;
  const keepalive = asked === 0 || asked > opts.maxKeepAliveSeconds ? opts.maxKeepAliveSeconds : asked;
  conn.silenceMs = keepalive * 1500;
  if (packet.will) conn.will = { topic: packet.will.topic, payload: Buffer.from(packet.will.payload), qos: packet.will.qos ?? 0, delaySeconds: packet.will.properties?.willDelayInterval ?? 0 };

  const props = packet.properties;
  if (conn.level === 5) {
    conn.peerMaxPacket = props?.maximumPacketSize ?? 0;
    conn.peerReceiveMaximum = props?.receiveMaximum ?? 65_535;
    conn.problemInfo = props?.requestProblemInformation !== false;
  }
  // 3.1.1: cleanSession=0 keeps the session as long as this gateway allows; MQTT 5 says for how long.
  const expiryAsked = conn.level === 5 ? (props?.sessionExpiryInterval ?? 0) : packet.clean === false ? Number.MAX_SAFE_INTEGER : 0;
  const cleanStart = packet.clean !== false;
  let attached;
  try {
    attached = await ep.sessions.attach(conn, device, cleanStart, expiryAsked);
  } catch (err) {
    opts.log.error({ thing: device.sim.thingName, err: String(err) }, 'MQTT session not attached');
    return refuseConnect(ep, conn, 'server_unavailable', 'the session could not be restored');
  }
  if (conn.state === 'closed') return ep.sessions.detach(conn, false);

  ep.bySim.add(imsi, conn);
  ep.byAddress.add(conn.remote, conn);

  const connack: IConnackPacket = { cmd: 'connack', sessionPresent: attached.present, returnCode: 0 };
  if (conn.level === 5) {
    connack.reasonCode = 0;
    connack.returnCode = undefined;
    connack.properties = {
      maximumQoS: 1,
      retainAvailable: false,
      maximumPacketSize: ep.maxPacketBytes,
      receiveMaximum: ep.receiveMaximum,
      topicAliasMaximum: ep.topicAliasMaximum,
      wildcardSubscriptionAvailable: true,
      subscriptionIdentifiersAvailable: false,
      sharedSubscriptionAvailable: false,
    };
    if (keepalive !== asked) connack.properties.serverKeepAlive = keepalive;
    if (attached.expirySeconds !== expiryAsked) connack.properties.sessionExpiryInterval = attached.expirySeconds;
    if (assigned) connack.properties.assignedClientIdentifier = assigned;
  }
  conn.send(connack);
  conn.state = 'open';
  opts.connectivity.report(device.sim, { online: true, ip: conn.remote, via: 'mqtt' });
  ep.sessions.resume(attached.session, conn);

  const backlog = conn.backlog ?? [];
  conn.backlog = undefined;
  for (const p of backlog) if (conn.state === 'open') conn.onPacket(conn, p);
  if (conn.state === 'open') conn.socket.resume();
}

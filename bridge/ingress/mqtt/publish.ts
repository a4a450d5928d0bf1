import type { IPublishPacket } from 'mqtt-packet';
import { UplinkRefusal } from '../../uplink.ts';
import type { DeviceConnection } from './connection.ts';
import type { Endpoint } from './context.ts';
import { pubackMayCarry, REASON_CODES, type MqttRefusalReason } from './reasons.ts';

/**
 * PUBLISH: resolve the topic alias → refuse what IoT Core cannot take (retain) → flow control →
 * enqueue durably → PUBACK after the commit. Refusals: MQTT 5 answers with the reason code in the
 * PUBACK where it may carry it (keeping the connection), else in a DISCONNECT; 3.1.1 has no PUBACK code,
 * so the connection closes (MQTT-3.3.5-2).
 */
export function handlePublish(ep: Endpoint, conn: DeviceConnection, packet: IPublishPacket): void {
  const device = conn.device!;
  const topic = resolveTopic(ep, conn, packet);
  if (topic === undefined) return;
  // IoT Core would refuse a retained message (the device policy has no iot:RetainPublish), and a batch
  // cannot be retained. MQTT 5 devices were told (Retain Available = 0; MQTT-3.3.1-8: DISCONNECT 0x9A).
  if (packet.retain) {
    ep.audit('retain_not_supported', device.sim.imsi, { topic, bytes: packet.payload.length });
    ep.opts.log.info({ thing: device.sim.thingName, reason: 'retain_not_supported' }, 'MQTT publish refused');
    return conn.refuse('retain_not_supported', 'retained messages are not supported');
  }
  const { qos, messageId } = packet;
  if (qos === 1) {
    // MQTT-3.3.4-8 (MQTT 5): more unanswered QoS 1 publishes than the Receive Maximum is an error; a 3.1.1
    // device cannot be told the maximum, so its socket is read no further until the commits catch up.
    if (++conn.unanswered > ep.receiveMaximum && conn.level === 5) {
      return conn.refuse('receive_maximum_exceeded', `more than ${ep.receiveMaximum} QoS 1 publishes unanswered`);
    }
    if (conn.unanswered >= ep.receiveMaximum) conn.holdBack();
  }
  const payload = typeof packet.payload === 'string' ? Buffer.from(packet.payload) : packet.payload;
  // MQTT 5 user properties travel with the message into its batch envelope (docs/batching.md).
  const userProperties = packet.properties?.userProperties;
  ep.opts.uplink.accept('mqtt', device, topic, payload, qos, userProperties ? JSON.stringify(userProperties) : undefined).then(
    () => {
      if (qos !== 1) return;
      conn.answered();
      conn.puback(messageId!);
    },
    (err: Error) => {
      if (qos === 1) conn.answered();
      const reason = err instanceof UplinkRefusal ? err.reason : 'storage_unavailable';
      ep.opts.log.info({ thing: device.sim.thingName, reason }, 'MQTT publish refused');
      refusePublish(conn, qos, messageId, reason, err.message);
    },
  );
}

/** MQTT 5 topic aliases (section 3.3.2.3.4): a publish may set one, or use one with an empty topic. */
function resolveTopic(ep: Endpoint, conn: DeviceConnection, packet: IPublishPacket): string | undefined {
  const alias = packet.properties?.topicAlias;
  if (alias === undefined) {
    if (packet.topic === '' && conn.level === 5) conn.refuse('protocol_error', 'an empty topic without a topic alias');
    else return packet.topic;
    return undefined;
  }
  // MQTT-3.3.2-8, -9: alias 0 and aliases above the maximum the server announced are errors.
  if (alias === 0 || alias > ep.topicAliasMaximum) {
    conn.refuse('topic_alias_invalid', `topic alias ${alias} is outside 1..${ep.topicAliasMaximum}`);
    return undefined;
  }
  conn.aliases ??= new Array<string | undefined>(ep.topicAliasMaximum + 1);
  if (packet.topic !== '') {
    conn.aliases[alias] = packet.topic;
    return packet.topic;
  }
  const known = conn.aliases[alias];
  if (known === undefined) conn.refuse('protocol_error', `topic alias ${alias} was never set on this connection`);
  return known;
}

function refusePublish(conn: DeviceConnection, qos: number, messageId: number | undefined, reason: MqttRefusalReason, detail: string): void {
  const code = REASON_CODES[reason].v5;
  // The uplink counted the refusal already.
  if (conn.level === 5 && qos === 1 && pubackMayCarry(code)) {
    return conn.send({ cmd: 'puback', messageId, reasonCode: code, properties: conn.problemInfo ? { reasonString: detail } : undefined });
  }
  conn.refuse(reason, detail, null);
}

import type { ISubscribePacket, IUnsubscribePacket } from 'mqtt-packet';
import { DownlinkRefusal } from '../../downlink.ts';
import type { DeviceConnection } from './connection.ts';
import type { Endpoint } from './context.ts';
import { subackCode, type MqttRefusalReason } from './reasons.ts';

const NO_SUBSCRIPTION_EXISTED = 0x11;
const SUBACK_FAILURE_V3 = 0x80;

/**
 * SUBSCRIBE: each filter becomes a subscription on the device's own upstream session (mapped through its
 * group's template) → SUBACK with the granted QoS, or the refusal (MQTT 5 reason code; 3.1.1 0x80) →
 * the session remembers it (durably, when it outlives its connection).
 */
export function handleSubscribe(ep: Endpoint, conn: DeviceConnection, packet: ISubscribePacket): void {
  const session = conn.session!;
  const device = conn.device!;
  const refusals: string[] = [];
  // No Local and Retain As Published need nothing here: no device ever gets another's publish (nor its
  // own through this endpoint), and what IoT Core forwards carries RETAIN 0 except retained messages sent
  // for a new subscription (RETAIN 1 whatever Retain As Published says, section 3.8.3.1).
  const each = packet.subscriptions.map(({ topic: filter, qos, rh }) =>
    ep.sessions.subscribe(session, filter, qos, rh ?? 0).then(
      (granted): number => granted,
      (err: Error): number => {
        const reason: MqttRefusalReason = err instanceof DownlinkRefusal ? err.reason : 'upstream_refused';
        ep.opts.metrics.refusals.inc({ protocol: 'mqtt', reason: err instanceof DownlinkRefusal ? err.reason : 'subscribe_failed' });
        ep.opts.log.info({ thing: device.sim.thingName, filter, err: err.message }, 'MQTT subscription refused');
        refusals.push(`${filter}: ${err.message}`);
        return conn.level === 5 ? subackCode(reason) : SUBACK_FAILURE_V3;
      },
    ),
  );
  void Promise.all(each).then((granted) => {
    if (conn.state !== 'open') return;
    const reasonString = conn.level === 5 && conn.problemInfo && refusals.length ? refusals.join('; ').slice(0, 1000) : undefined;
    conn.send({ cmd: 'suback', messageId: packet.messageId, granted, properties: reasonString ? { reasonString } : undefined });
    ep.sessions.saved(session);
  });
}

/** UNSUBSCRIBE: the upstream subscription goes; UNSUBACK (MQTT 5: 0x11 for a filter it did not hold). */
export function handleUnsubscribe(ep: Endpoint, conn: DeviceConnection, packet: IUnsubscribePacket): void {
  const session = conn.session!;
  const granted = packet.unsubscriptions.map((filter) => (ep.sessions.unsubscribe(session, filter) ? 0 : NO_SUBSCRIPTION_EXISTED));
  conn.send(conn.level === 5 ? { cmd: 'unsuback', messageId: packet.messageId, granted } : ({ cmd: 'unsuback', messageId: packet.messageId } as never));
  ep.sessions.saved(session);
}

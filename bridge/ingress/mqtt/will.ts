import { UplinkRefusal } from '../../uplink.ts';
import type { AdmittedDevice } from '../../admission.ts';
import type { DeviceConnection, Will } from './connection.ts';
import type { Endpoint } from './context.ts';

/**
 * A device that drops without DISCONNECT (or MQTT 5 DISCONNECT 0x04) has its will published upstream as
 * that device (MQTT-3.1.2-8), through the same uplink as its publishes: checked, stored, then delivered.
 * An MQTT 5 Will Delay Interval on a session that outlives the connection is waited for (MQTT-3.1.3-9):
 * the will goes when it runs out or the session ends, whichever is first, and not if the device is back.
 */
export function publishWill(ep: Endpoint, conn: DeviceConnection): void {
  const { will, device, session } = conn;
  if (!will || !device) return;
  conn.will = undefined;
  const publish = () => send(ep, device, will);
  if (will.delaySeconds > 0 && session && session.expirySeconds > 0 && session.conn === conn) {
    const timer = setTimeout(() => {
      session.pendingWill = undefined;
      publish();
    }, Math.min(will.delaySeconds, session.expirySeconds) * 1000);
    timer.unref();
    session.pendingWill = { timer, publish };
    return;
  }
  publish();
}

function send(ep: Endpoint, device: AdmittedDevice, will: Will): void {
  ep.opts.uplink.accept('mqtt', device, will.topic, will.payload, will.qos).then(
    () => ep.opts.log.debug({ thing: device.sim.thingName }, 'will message published'),
    (err: Error) => ep.opts.log.info({ thing: device.sim.thingName, reason: err instanceof UplinkRefusal ? err.reason : err.message }, 'will message refused'),
  );
}

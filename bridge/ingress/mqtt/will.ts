import { UplinkRefusal } from '../../uplink.ts';
import type { DeviceConnection } from './connection.ts';
import type { Endpoint } from './context.ts';

/**
 * A device that drops without DISCONNECT (or MQTT 5 DISCONNECT 0x04) has its will published upstream as
 * that device (MQTT-3.1.2-8), through the same uplink as its publishes: checked, stored, then delivered.
 * MQTT 5's Will Delay Interval is not waited for: the will goes at once.
 */
export function publishWill(ep: Endpoint, conn: DeviceConnection): void {
  const { will, device } = conn;
  if (!will || !device) return;
  conn.will = undefined;
  ep.opts.uplink.accept('mqtt', device, will.topic, will.payload, will.qos).then(
    () => ep.opts.log.debug({ thing: device.sim.thingName }, 'will message published'),
    (err: Error) => ep.opts.log.info({ thing: device.sim.thingName, reason: err instanceof UplinkRefusal ? err.reason : err.message }, 'will message refused'),
  );
}

import type { Logger } from 'pino';
import type { Config, GroupConfig } from '../config/schema.ts';
import { coapEnabled } from '../config/lowpower.ts';
import type { Admission } from '../bridge/admission.ts';
import type { Downlink } from '../bridge/downlink.ts';
import type { DeviceFiles } from '../bridge/files/device-files.ts';
import type { IdentitySource } from '../bridge/identity/source.ts';
import type { DeviceJobs } from '../bridge/jobs.ts';
import { startCoapIngress, type CoapIngress } from '../bridge/ingress/coap.ts';
import { startUdpIngress, type UdpIngress } from '../bridge/ingress/udp.ts';
import type { Metrics } from '../bridge/metrics.ts';
import type { Uplink } from '../bridge/uplink.ts';
import type { SimRoutingStore } from '../storage/sims.ts';

export interface LowpowerParts {
  admission: Admission;
  uplink: Uplink;
  downlink: Downlink;
  jobs?: DeviceJobs;
  files?: DeviceFiles;
  metrics: Metrics;
  sims: SimRoutingStore;
  group(name: string): GroupConfig;
  source(name: 'radius' | 'static' | 'claimed'): IdentitySource;
  log: Logger;
}

/** The CoAP and raw UDP listeners, each started when configured: thin ingress onto the same pipeline as HTTP. */
export async function startLowpowerIngress(config: Config, parts: LowpowerParts): Promise<{ coap?: CoapIngress; udp?: UdpIngress; close(): Promise<void> }> {
  const { coap: coapCfg, udp: udpCfg } = config.listeners;
  const common = { admission: parts.admission, uplink: parts.uplink, downlink: parts.downlink, metrics: parts.metrics };
  const coap = coapEnabled(config)
    ? await startCoapIngress({ ...coapCfg, ...common, jobs: parts.jobs, files: parts.files, fileBlockBytes: config.files.coapBlockBytes, maxPayloadBytes: config.limits.maxPayloadBytes, identity: parts.source(coapCfg.identity), log: parts.log.child({ component: 'coap' }) })
    : undefined;
  const udp = udpCfg.enabled
    ? await startUdpIngress({
        ...udpCfg,
        ...common,
        identity: parts.source(udpCfg.identity),
        udpAck: (imsi) => parts.group(parts.sims.forRouting(imsi)?.group ?? config.sims.defaultGroup).udpAck,
        log: parts.log.child({ component: 'udp' }),
      }).catch(async (err) => {
        await coap?.close();
        throw err;
      })
    : undefined;
  return {
    coap,
    udp,
    close: async () => void (await Promise.all([coap?.close(), udp?.close()])),
  };
}

/** Readiness of the CoAP and UDP listeners that are enabled (for /readyz). */
export function lowpowerChecks(lowpower: { coap?: { listening(): boolean }; udp?: { listening(): boolean } }): Record<string, boolean> {
  return {
    ...(lowpower.coap ? { coap: lowpower.coap.listening() } : {}),
    ...(lowpower.udp ? { udp: lowpower.udp.listening() } : {}),
  };
}

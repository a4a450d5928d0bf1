import type { Logger } from 'pino';
import type { GroupConfig } from '../../../config/schema.ts';
import type { AuditKind, AuditStore } from '../../../storage/audit.ts';
import type { MqttSessionStore } from '../../../storage/mqtt-sessions.ts';
import type { Sim } from '../../../storage/sims.ts';
import type { Admission } from '../../admission.ts';
import type { Connectivity } from '../../connectivity.ts';
import type { Downlink } from '../../downlink.ts';
import type { IdentitySource } from '../../identity/source.ts';
import type { Metrics } from '../../metrics.ts';
import type { Uplink } from '../../uplink.ts';
import type { DeviceConnection } from './connection.ts';
import type { ConnectionIndex } from './connection-index.ts';
import type { Sessions } from './session.ts';

export interface MqttIngressOptions {
  host: string;
  port: number;
  connectTimeoutMs: number;
  maxClientIdBytes: number;
  maxConnectionsPerAddress: number;
  maxConnectionsPerSim: number;
  maxKeepAliveSeconds: number;
  keepAliveZero: 'limit' | 'refuse';
  /** New connections per source address and second (0: no limit). */
  maxConnectsPerAddressPerSecond?: number;
  /** Largest packet a device may send; advertised to MQTT 5 devices. */
  maxPacketBytes?: number;
  /** QoS 1 publishes a device may have waiting for their PUBACK; advertised to MQTT 5 devices. */
  receiveMaximum?: number;
  /** Topic aliases an MQTT 5 device may set (0: none). */
  topicAliasMaximum?: number;
  identity: IdentitySource;
  admission: Admission;
  uplink: Uplink;
  downlink: Downlink;
  connectivity: Connectivity;
  metrics: Metrics;
  audit: AuditStore;
  log: Logger;
  /** Persistent sessions; without it every session ends with its connection. */
  sessions?: MqttSessionStore;
  /** The group's settings (mqttSessions bounds); needed with sessions. */
  group?(name: string): GroupConfig;
  /** A SIM's record, to take up stored sessions' subscriptions again (at start-up, or as its node comes to hold it). */
  simOf?(imsi: string): Sim | undefined;
  /**
   * False on a node of several: it takes up stored sessions only as it comes to hold their SIMs
   * (MqttIngress.takeUp), not every one at start-up. Default true.
   */
  takeUpAtStart?: boolean;
}

/** What every handler of the endpoint shares: the options and the tables of open connections. */
export interface Endpoint {
  readonly opts: MqttIngressOptions;
  readonly maxPacketBytes: number;
  readonly receiveMaximum: number;
  readonly topicAliasMaximum: number;
  /** Every open socket's connection, for the keepalive sweep and shutdown. */
  readonly all: Set<DeviceConnection>;
  /** Admitted connections by SIM (isConnected, maxConnectionsPerSim). */
  readonly bySim: ConnectionIndex<DeviceConnection>;
  /** Admitted connections by source address (disconnectAddress). */
  readonly byAddress: ConnectionIndex<DeviceConnection>;
  readonly sessions: Sessions;
  /** A coarse clock (ms), advanced by the sweep: the per-packet path reads it instead of Date.now(). */
  clock: number;
  audit(kind: AuditKind, imsi: string, facts: Record<string, unknown>): void;
}

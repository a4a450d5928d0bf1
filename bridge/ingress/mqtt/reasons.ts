// Every reason the device MQTT endpoint refuses something for, and how each protocol level says it.
// The map is total over the union: a new refusal reason without its codes does not compile.

import type { RefusalReason } from '../../identity/source.ts';
import type { DownlinkRefusal } from '../../downlink.ts';
import type { UplinkRefusalReason } from '../../uplink.ts';
import type { IngressLimitReason } from '../connection-limits.ts';

/** Refusals that only the MQTT endpoint itself makes (framing, flow control, session). */
export type MqttProtocolReason =
  | 'protocol_error'
  | 'malformed_packet'
  | 'unsupported_protocol_version'
  | 'client_id_invalid'
  | 'retain_not_supported'
  | 'packet_too_large'
  | 'topic_alias_invalid'
  | 'receive_maximum_exceeded'
  | 'keepalive_timeout'
  | 'session_taken_over'
  | 'server_unavailable'
  | 'server_shutting_down'
  | 'network_session_ended'
  | 'auth_method_not_supported'
  | 'connect_rate_limit';

export type MqttRefusalReason = RefusalReason | IngressLimitReason | UplinkRefusalReason | DownlinkRefusal['reason'] | MqttProtocolReason;

export interface ReasonCodes {
  /** MQTT 5 reason code (CONNACK, PUBACK, SUBACK or DISCONNECT, wherever the refusal happens). */
  v5: number;
  /** MQTT 3.1.1 CONNACK return code (MQTT-3.2.2.3); elsewhere 3.1.1 closes the connection or answers SUBACK 0x80. */
  v3: 1 | 2 | 3 | 4 | 5;
}

// MQTT 5 reason codes (MQTT 5 section 2.4).
export const RC = {
  success: 0x00,
  unspecified: 0x80,
  malformed: 0x81,
  protocolError: 0x82,
  implementationSpecific: 0x83,
  unsupportedProtocolVersion: 0x84,
  clientIdNotValid: 0x85,
  badUserNameOrPassword: 0x86,
  badAuthenticationMethod: 0x8c,
  notAuthorized: 0x87,
  serverUnavailable: 0x88,
  serverShuttingDown: 0x8b,
  keepAliveTimeout: 0x8d,
  sessionTakenOver: 0x8e,
  topicFilterInvalid: 0x8f,
  topicNameInvalid: 0x90,
  receiveMaximumExceeded: 0x93,
  topicAliasInvalid: 0x94,
  packetTooLarge: 0x95,
  quotaExceeded: 0x97,
  retainNotSupported: 0x9a,
  qosNotSupported: 0x9b,
  connectionRateExceeded: 0x9f,
  administrativeAction: 0x98,
} as const;

const notAuthorized: ReasonCodes = { v5: RC.notAuthorized, v3: 5 };

export const REASON_CODES: Record<MqttRefusalReason, ReasonCodes> = {
  // identity and admission (CONNACK)
  invalid_imsi: { v5: RC.badUserNameOrPassword, v3: 4 }, // the user name carries the IMSI
  invalid_imei: { v5: RC.clientIdNotValid, v3: 2 }, // the client id carries the IMEI
  bad_secret: { v5: RC.badUserNameOrPassword, v3: 4 },
  unidentified: notAuthorized,
  unknown_sim: notAuthorized,
  sim_suspended: notAuthorized,
  sim_terminated: notAuthorized,
  imei_mismatch: notAuthorized,
  imei_not_bound: notAuthorized,
  imei_unknown: notAuthorized,
  claim_mismatch: notAuthorized,
  keepalive_refused: notAuthorized,
  address_connection_limit: { v5: RC.quotaExceeded, v3: 3 },
  sim_connection_limit: { v5: RC.quotaExceeded, v3: 3 },
  connect_rate_limit: { v5: RC.connectionRateExceeded, v3: 3 },
  request_timeout: { v5: RC.keepAliveTimeout, v3: 3 }, // HTTP's; listed for totality
  client_id_invalid: { v5: RC.clientIdNotValid, v3: 2 },
  unsupported_protocol_version: { v5: RC.unsupportedProtocolVersion, v3: 1 },
  server_unavailable: { v5: RC.serverUnavailable, v3: 3 },
  auth_method_not_supported: { v5: RC.badAuthenticationMethod, v3: 4 }, // MQTT 5 only: enhanced authentication is not offered
  // publishes (PUBACK where MQTT 5 allows the code there, else DISCONNECT)
  qos_not_supported: { v5: RC.qosNotSupported, v3: 5 },
  retain_not_supported: { v5: RC.retainNotSupported, v3: 5 },
  payload_too_large: { v5: RC.packetTooLarge, v3: 5 },
  packet_too_large: { v5: RC.packetTooLarge, v3: 5 },
  topic_empty: { v5: RC.topicNameInvalid, v3: 5 },
  topic_wildcard: { v5: RC.topicNameInvalid, v3: 5 },
  topic_invalid: { v5: RC.topicNameInvalid, v3: 5 },
  topic_too_long: { v5: RC.topicNameInvalid, v3: 5 },
  topic_too_deep: { v5: RC.topicNameInvalid, v3: 5 },
  outbox_full: { v5: RC.quotaExceeded, v3: 3 },
  storage_unavailable: { v5: RC.implementationSpecific, v3: 3 },
  // subscriptions (SUBACK)
  filter_invalid: { v5: RC.topicFilterInvalid, v3: 5 },
  subscription_limit: { v5: RC.quotaExceeded, v3: 5 },
  not_in_policy: notAuthorized,
  upstream_refused: { v5: RC.unspecified, v3: 5 },
  // the connection itself (DISCONNECT)
  protocol_error: { v5: RC.protocolError, v3: 1 },
  malformed_packet: { v5: RC.malformed, v3: 1 },
  topic_alias_invalid: { v5: RC.topicAliasInvalid, v3: 5 },
  receive_maximum_exceeded: { v5: RC.receiveMaximumExceeded, v3: 3 },
  keepalive_timeout: { v5: RC.keepAliveTimeout, v3: 3 },
  session_taken_over: { v5: RC.sessionTakenOver, v3: 3 },
  server_shutting_down: { v5: RC.serverShuttingDown, v3: 3 },
  network_session_ended: { v5: RC.administrativeAction, v3: 5 },
};

/** Codes a PUBACK may carry (MQTT 5 section 3.4.2.1); any other publish refusal is a DISCONNECT. */
const PUBACK_CODES = new Set<number>([RC.unspecified, RC.implementationSpecific, RC.notAuthorized, RC.topicNameInvalid, RC.quotaExceeded]);
export const pubackMayCarry = (code: number): boolean => PUBACK_CODES.has(code);

/** Codes a SUBACK may carry (MQTT 5 section 3.9.3); any other becomes 0x80. */
const SUBACK_CODES = new Set<number>([RC.unspecified, RC.implementationSpecific, RC.notAuthorized, RC.topicFilterInvalid, RC.quotaExceeded]);
export const subackCode = (reason: MqttRefusalReason): number => (SUBACK_CODES.has(REASON_CODES[reason].v5) ? REASON_CODES[reason].v5 : RC.unspecified);

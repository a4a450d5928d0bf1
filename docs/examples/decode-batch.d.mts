export interface DecodedReading {
  imsi: string;
  imei: string | null;
  thing: string;
  /** The topic the device published to, before mapping. */
  topic: string;
  receivedAt: Date;
  /** The parsed JSON value for `json`, the exact bytes (a Buffer) for `base64`. */
  payload: unknown;
  encoding: 'json' | 'base64';
  /** The MQTT 5 user properties the device sent with the reading, when it sent any. */
  userProperties?: Record<string, string | string[]>;
}
/** Decodes envelope versions 2 and 1; throws on any other version or payload encoding. */
export function decodeBatch(envelope: string | Uint8Array | object): DecodedReading[];

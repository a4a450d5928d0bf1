export interface DecodedReading {
  imsi: string;
  imei: string | null;
  thing: string;
  topic: string;
  receivedAt: Date;
  payload: unknown;
  encoding: 'json' | 'base64';
}
export function decodeBatch(envelope: string | Uint8Array | object): DecodedReading[];

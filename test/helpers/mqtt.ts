import { createConnection } from 'node:net';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';

export interface Received {
  topic: string;
  payload: Buffer;
}

/** A read-only subscriber that records every message (used on the sandbox observer or a test broker). */
export class Observer {
  readonly messages: Received[] = [];

  private constructor(readonly client: MqttClient) {
    client.on('message', (topic, payload) => this.messages.push({ topic, payload: Buffer.from(payload) }));
  }

  static async connect(url: string, filter = '#', opts: IClientOptions = {}): Promise<Observer> {
    const client = await mqtt.connectAsync(url, { reconnectPeriod: 500, ...opts });
    await client.subscribeAsync(filter, { qos: 1 });
    return new Observer(client);
  }

  /** Waits until predicate holds over the received messages. */
  async waitUntil(predicate: (msgs: Received[]) => boolean | Promise<boolean>, timeoutMs = 30_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!(await predicate(this.messages))) {
      if (Date.now() > deadline) throw new Error(`observer: condition not met after ${timeoutMs} ms (${this.messages.length} messages)`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  close(): Promise<void> {
    return this.client.endAsync();
  }
}

/** A device connecting with the claimed identity convention: username = IMSI, client id = IMEI. */
export function deviceOptions(imsi: string, imei: string, extra: IClientOptions = {}): IClientOptions {
  return { username: imsi, clientId: imei, protocolVersion: 4, reconnectPeriod: 0, connectTimeout: 5000, ...extra };
}

/** Connects and resolves with the CONNACK return code (0 = accepted) and the client. */
export function connectDevice(url: string, opts: IClientOptions): Promise<{ code: number; client: MqttClient }> {
  return new Promise((resolve, reject) => {
    const client = mqtt.connect(url, opts);
    client.once('connect', () => resolve({ code: 0, client }));
    client.once('error', (err) => {
      const code = (err as { code?: number }).code;
      client.end(true);
      if (typeof code === 'number') resolve({ code, client });
      else reject(err);
    });
  });
}

/** Resolves when the broker closes the connection (how MQTT 3.1.1 refuses a publish). */
export function closed(client: MqttClient, timeoutMs = 5000): Promise<void> {
  return new Promise((resolve, reject) => {
    if (!client.connected) return resolve();
    const t = setTimeout(() => reject(new Error('connection was not closed')), timeoutMs);
    client.once('close', () => {
      clearTimeout(t);
      resolve();
    });
  });
}

/**
 * Connects from a given loopback source address, the way a device on the APN has its own IP. onMessage
 * listens from the start: a resumed session's messages may come in the same read as the CONNACK.
 */
export function connectFrom(
  localAddress: string,
  port: number,
  opts: IClientOptions,
  onMessage?: (topic: string, payload: Buffer) => void,
): Promise<{ code: number; client: MqttClient }> {
  return new Promise((resolve, reject) => {
    const client = new mqtt.MqttClient(() => createConnection({ host: '127.0.0.1', port, localAddress }), { reconnectPeriod: 0, protocolVersion: 4, ...opts });
    if (onMessage) client.on('message', onMessage);
    client.once('connect', () => resolve({ code: 0, client }));
    client.once('error', (err) => {
      const code = (err as { code?: number }).code;
      client.end(true);
      if (typeof code === 'number') resolve({ code, client });
      else reject(err);
    });
  });
}

/** Subscribes and resolves with the SUBACK return codes as sent (mqtt.js turns a 0x80 into an error). */
export function subscribeCodes(client: MqttClient, filters: string[], qos: 0 | 1): Promise<number[]> {
  return new Promise((resolve) => {
    const onPacket = (packet: { cmd: string; granted?: number[] }) => {
      if (packet.cmd !== 'suback') return;
      client.removeListener('packetreceive', onPacket as never);
      resolve(packet.granted ?? []);
    };
    client.on('packetreceive', onPacket as never);
    client.subscribe(filters, { qos }, () => undefined);
  });
}

/** Sends raw bytes to an MQTT port and resolves with everything read until the server closes. */
export function rawExchange(port: number, bytes: Buffer, timeoutMs = 5000): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const socket = createConnection({ host: '127.0.0.1', port }, () => socket.write(bytes));
    const chunks: Buffer[] = [];
    const t = setTimeout(() => {
      socket.destroy();
      reject(new Error(`the server did not close within ${timeoutMs} ms (read ${Buffer.concat(chunks).toString('hex')})`));
    }, timeoutMs);
    socket.on('data', (c: Buffer) => chunks.push(c));
    socket.on('error', () => undefined);
    socket.on('close', () => {
      clearTimeout(t);
      resolve(Buffer.concat(chunks));
    });
  });
}

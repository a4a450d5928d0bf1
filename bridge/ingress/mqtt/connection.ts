import type { Socket } from 'node:net';
import mqttPacket, { type IPublishPacket, type Packet, type Parser } from 'mqtt-packet';
import { LentParsers } from '../../../lib/lent-parsers.ts';
import type { AdmittedDevice } from '../../admission.ts';
import type { Endpoint } from './context.ts';
import { REASON_CODES, type MqttRefusalReason } from './reasons.ts';
import type { DeviceSession } from './session.ts';

export type ProtocolLevel = 3 | 4 | 5;
type State = 'awaiting_connect' | 'connecting' | 'open' | 'closed';

/** A downlink message sent at QoS 1 and not yet acknowledged by the device. */
export interface Outgoing {
  topic: string;
  payload: Buffer;
  qos: 0 | 1;
  /** A retained message sent because the subscription was just made (MQTT-3.3.1-9): RETAIN 1. */
  retain?: boolean;
  /** Its row in the session store, when it was kept for a sleeping device. */
  keptId?: number;
  /** When it stops being worth delivering (ms), if it expires. */
  expiresAt?: number;
}

export interface Will {
  topic: string;
  payload: Buffer;
  qos: number;
  /** MQTT 5 Will Delay Interval, seconds. */
  delaySeconds: number;
}

const PINGRESP = Buffer.from([0xd0, 0]);

// mqtt-packet would otherwise build a table of all 65,536 two-byte numbers (about 6 MB) the first time
// it writes a packet; writing the few numbers a packet holds as it goes costs less than that.
mqttPacket.writeToStream.cacheNumbers = false;

/** What the parser needs to know of a connection: its protocol level (MQTT 5 packets carry properties). */
const PARSER_SETTINGS: Record<ProtocolLevel, { protocolVersion: ProtocolLevel }> = { 3: { protocolVersion: 3 }, 4: { protocolVersion: 4 }, 5: { protocolVersion: 5 } };

/** Parsers are lent to connections while they read (see LentParsers). */
const parsers = new LentParsers<DeviceConnection>({
  packet: (conn, packet) => conn.handlePacket(packet),
  error: (conn, err) => conn.handleParseError(err),
});

/**
 * One device connection: its parser, protocol level, keepalive, flow control and downlink in flight.
 * The packet handlers (connect.ts, publish.ts, subscribe.ts) act on it; nothing here knows the bridge.
 */
export class DeviceConnection {
  /** Only while a packet has arrived in part (see LentParsers). */
  private parser?: Parser;
  level: ProtocolLevel = 4;
  state: State = 'awaiting_connect';
  device?: AdmittedDevice;
  session?: DeviceSession;
  /** The client id as the device sent it (or as assigned to an MQTT 5 device that sent none). */
  clientId = '';
  will?: Will;
  /** Last time (endpoint clock) a packet arrived, and how long silence may last before the close. */
  lastHeard: number;
  silenceMs: number;
  /** QoS 1 publishes received and not yet answered (Receive Maximum). */
  unanswered = 0;
  /** Topic aliases the device set (MQTT 5), allocated on first use. */
  aliases?: Array<string | undefined>;
  /** Limits the device announced for what we send it (MQTT 5). */
  peerMaxPacket = 0;
  peerReceiveMaximum = 65_535;
  /** MQTT 5 Request Problem Information: false keeps reason strings off PUBACK/SUBACK. */
  problemInfo = true;
  /** Packets that arrived while the CONNECT was being admitted, handled once it is. */
  backlog?: Packet[];
  /** QoS 1 downlink in flight by packet id, and what waits for room under the device's Receive Maximum. */
  outgoing?: Map<number, Outgoing>;
  waiting?: Outgoing[];
  private nextId = 0;
  private corked = false;
  private paused = false;
  private cleanDisconnect = false;

  constructor(
    readonly socket: Socket,
    readonly remote: string,
    readonly ep: Endpoint,
    readonly onPacket: (conn: DeviceConnection, packet: Packet) => void,
    readonly onClose: (conn: DeviceConnection, clean: boolean) => void,
  ) {
    this.lastHeard = ep.clock;
    this.silenceMs = ep.opts.connectTimeoutMs;
    // Bound methods, not arrow-function fields: one small bound function per listener, and only two.
    this.handleData = this.handleData.bind(this);
    socket.on('data', this.handleData);
    socket.on('error', noop);
    socket.on('close', this.handleClose.bind(this));
    socket.setNoDelay(true);
  }

  private handleData(chunk: Buffer): void {
    this.lastHeard = this.ep.clock;
    // The CONNECT sets the level; packets after it in the same chunk are read at that level by the parser.
    const parser = parsers.read(this, this.parser, chunk, PARSER_SETTINGS[this.level]);
    this.parser = parser;
    if (!parser) return;
    // The parser waits for a packet's whole remaining length: refuse an oversized one before it is buffered.
    const announced = (parser as unknown as { packet: { length: number } }).packet.length;
    if (announced > this.ep.maxPacketBytes && this.state !== 'closed') this.refuse('packet_too_large', `a packet of ${announced} bytes exceeds ${this.ep.maxPacketBytes}`);
  }

  /** A whole packet read from this connection. */
  handlePacket(packet: Packet): void {
    if (this.state === 'closed') return;
    if (this.backlog) this.backlog.push(packet);
    else this.onPacket(this, packet);
  }

  handleParseError(err: Error): void {
    if (this.state === 'closed') return;
    // MQTT-3.1.2-2: an unsupported protocol level gets CONNACK 0x01 (in 3.1.1 form, all we can assume).
    if (this.state === 'awaiting_connect' && /protocol version|protocolId/i.test(err.message)) {
      this.count('unsupported_protocol_version');
      this.socket.end(Buffer.from([0x20, 2, 0, 1]));
      this.state = 'closed';
      return;
    }
    this.ep.opts.log.debug({ remote: this.remote, err: err.message }, 'malformed MQTT packet');
    this.refuse('protocol_error', `malformed packet: ${err.message}`, 'malformed_packet');
  }

  private handleClose(): void {
    this.state = 'closed';
    this.parser = undefined;
    this.socket.removeListener('data', this.handleData);
    this.onClose(this, this.cleanDisconnect);
  }

  /** Answers PINGREQ (MQTT-3.12.4-1). */
  pong(): void {
    this.write(PINGRESP);
  }

  /** The device sent DISCONNECT: close without its will (unless MQTT 5 reason 0x04 asked for it). */
  disconnected(withWill: boolean): void {
    this.cleanDisconnect = !withWill;
    this.state = 'closed';
    this.socket.end();
  }

  /** Writes a packet; writes made in the same turn of the event loop leave in one socket write. */
  write(buf: Buffer): void {
    if (this.state === 'closed' && !this.socket.writable) return;
    if (!this.corked) {
      this.corked = true;
      this.socket.cork();
      process.nextTick(uncork, this);
    }
    this.socket.write(buf);
  }

  send(packet: Packet): void {
    this.write(mqttPacket.generate(packet, { protocolVersion: this.level }));
  }

  flush(): void {
    this.corked = false;
    this.socket.uncork();
  }

  /** Acknowledges a QoS 1 publish (4 bytes, the same in 3.1.1 and 5 for success). */
  puback(messageId: number): void {
    const buf = Buffer.allocUnsafe(4);
    buf[0] = 0x40;
    buf[1] = 2;
    buf.writeUInt16BE(messageId, 2);
    this.write(buf);
  }

  /** One QoS 1 publish of the device answered: room under the Receive Maximum again. */
  answered(): void {
    this.unanswered--;
    if (this.paused && this.unanswered < this.ep.receiveMaximum) {
      this.paused = false;
      this.socket.resume();
    }
  }

  /** A 3.1.1 device at the Receive Maximum waits: stop reading until commits catch up. */
  holdBack(): void {
    if (this.paused) return;
    this.paused = true;
    this.socket.pause();
  }

  /**
   * Sends a downlink message. QoS 1 waits for room under the device's Receive Maximum and stays in
   * flight until its PUBACK. Not sent: a message past its expiry (MQTT-3.3.2-5; a kept one stays in the
   * store until the sweep accounts for it) and one above the device's Maximum Packet Size (MQTT-3.1.2-25).
   */
  deliver(msg: Outgoing): boolean {
    if (msg.expiresAt !== undefined && msg.expiresAt <= Date.now()) return false;
    if (msg.qos === 1) {
      this.outgoing ??= new Map();
      if (this.outgoing.size >= this.peerReceiveMaximum) {
        (this.waiting ??= []).push(msg);
        return true;
      }
    }
    const packet: IPublishPacket = { cmd: 'publish', topic: msg.topic, payload: msg.payload, qos: msg.qos, dup: false, retain: msg.retain === true };
    if (msg.qos === 1) packet.messageId = this.allocateId();
    // MQTT 5: the device learns how long the command stays valid (MQTT-3.3.2-6: the time left).
    if (this.level === 5 && msg.expiresAt !== undefined) packet.properties = { messageExpiryInterval: Math.max(1, Math.ceil((msg.expiresAt - Date.now()) / 1000)) };
    const buf = mqttPacket.generate(packet, { protocolVersion: this.level });
    if (this.peerMaxPacket && buf.length > this.peerMaxPacket) {
      this.ep.opts.metrics.downlink.inc({ protocol: 'mqtt', result: 'dropped' });
      this.ep.opts.log.info({ thing: this.device?.sim.thingName, bytes: buf.length, max: this.peerMaxPacket }, 'MQTT downlink larger than the device takes: dropped');
      return false;
    }
    if (msg.qos === 1) this.outgoing!.set(packet.messageId!, msg);
    this.write(buf);
    return true;
  }

  /** The device acknowledged a downlink message; resolves with it, or undefined for an unknown id. */
  acknowledged(messageId: number): Outgoing | undefined {
    const msg = this.outgoing?.get(messageId);
    if (!msg) return undefined;
    this.outgoing!.delete(messageId);
    // Room for the next waiting message; one that expired while it waited makes room for the one after.
    while (this.waiting?.length && this.outgoing!.size < this.peerReceiveMaximum) this.deliver(this.waiting.shift()!);
    return msg;
  }

  /** QoS 1 downlink not acknowledged when the connection ended (kept for a persistent session). */
  unacknowledged(): Outgoing[] {
    const out = [...(this.outgoing?.values() ?? []), ...(this.waiting ?? [])];
    this.outgoing = undefined;
    this.waiting = undefined;
    return out;
  }

  private allocateId(): number {
    for (;;) {
      this.nextId = (this.nextId % 65_535) + 1;
      if (!this.outgoing!.has(this.nextId)) return this.nextId;
    }
  }

  count(reason: MqttRefusalReason): void {
    this.ep.opts.metrics.refusals.inc({ protocol: 'mqtt', reason });
  }

  /**
   * Ends the connection for a reason: MQTT 5 devices hear it in a DISCONNECT (with a reason string), 3.1.1
   * devices have the socket closed (3.1.1 has no way to say why). Counted under countAs (default: reason).
   */
  refuse(reason: MqttRefusalReason, detail: string, countAs: MqttRefusalReason | null = reason): void {
    if (this.state === 'closed') return;
    if (countAs) this.count(countAs);
    if (this.level === 5 && this.state === 'open') {
      this.send({ cmd: 'disconnect', reasonCode: REASON_CODES[reason].v5, properties: this.problemInfo ? { reasonString: detail } : undefined });
    }
    this.state = 'closed';
    this.flush();
    this.socket.end();
    // A peer that does not close its side is not waited for.
    this.socket.setTimeout(1000, () => this.socket.destroy());
  }
}

function uncork(conn: DeviceConnection): void {
  conn.flush();
}

function noop(): void {}

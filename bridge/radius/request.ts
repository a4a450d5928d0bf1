// The NAS side: builds signed Accounting-Requests and waits for their replies. The gateway itself never
// sends accounting; tests, the benchmark and diagnostics play the PGW/GGSN with this.

import { createSocket, type Socket } from 'node:dgram';
import { isIPv6 } from 'node:net';
import { signAccountingRequest, verifyAccountingResponse } from './authenticator.ts';
import { encodePacket, encodeVendorSpecific, ipv4, text, u32, type Attribute } from './codec.ts';
import { Attr, Attr3gpp, Code, StatusType, VENDOR_3GPP, type StatusTypeName } from './dictionary.ts';
import { encodeTbcd } from './threegpp.ts';

export interface AccountingRequestInput {
  identifier: number;
  status: StatusTypeName | number;
  framedIp?: string;
  acctSessionId?: string;
  imsi?: string;
  /** Digits are sent as text; `{ bcd: digits }` as TBCD octets, as some gateways do. */
  imeisv?: string | { bcd: string };
  ratType?: number;
  chargingId?: number;
  msisdn?: string;
  nasIp?: string;
  nasIdentifier?: string;
  /** Appended as given (e.g. Proxy-State, or junk for tests). */
  extra?: Attribute[];
}

/** Encodes and signs an Accounting-Request (RFC 2866 §4.1). */
export function buildAccountingRequest(input: AccountingRequestInput, secret: string | Buffer): Buffer {
  const status = typeof input.status === 'number' ? input.status : StatusType[input.status];
  const attrs: Attribute[] = [{ type: Attr.AcctStatusType, value: u32(status) }];
  if (input.nasIp) attrs.push({ type: Attr.NasIpAddress, value: ipv4(input.nasIp) });
  if (input.nasIdentifier) attrs.push({ type: Attr.NasIdentifier, value: text(input.nasIdentifier) });
  if (input.framedIp) attrs.push({ type: Attr.FramedIpAddress, value: ipv4(input.framedIp) });
  if (input.acctSessionId) attrs.push({ type: Attr.AcctSessionId, value: text(input.acctSessionId) });
  if (input.msisdn) attrs.push({ type: Attr.CallingStationId, value: text(input.msisdn) });
  const gpp: Attribute[] = [];
  if (input.imsi) gpp.push({ type: Attr3gpp.Imsi, value: text(input.imsi) });
  if (input.imeisv) {
    const value = typeof input.imeisv === 'string' ? text(input.imeisv) : encodeTbcd(input.imeisv.bcd);
    gpp.push({ type: Attr3gpp.Imeisv, value });
  }
  if (input.ratType !== undefined) gpp.push({ type: Attr3gpp.RatType, value: Buffer.from([input.ratType]) });
  if (input.chargingId !== undefined) gpp.push({ type: Attr3gpp.ChargingId, value: u32(input.chargingId) });
  // One sub-attribute per Vendor-Specific, as most gateways send them.
  for (const g of gpp) attrs.push({ type: Attr.VendorSpecific, value: encodeVendorSpecific(VENDOR_3GPP, [g]) });
  attrs.push(...(input.extra ?? []));
  const packet = encodePacket({ code: Code.AccountingRequest, identifier: input.identifier, attributes: attrs });
  return signAccountingRequest(packet, typeof secret === 'string' ? Buffer.from(secret) : secret);
}

interface Waiter {
  requestAuth: Buffer;
  resolve: (reply: Buffer | undefined) => void;
  timer: NodeJS.Timeout;
}

/** A NAS-side socket: sends requests and matches replies by Identifier (up to 256 outstanding). */
export class AccountingClient {
  private readonly waiting = new Map<number, Waiter>();
  /** Replies that matched no outstanding request or failed verification. */
  unmatched = 0;

  private constructor(
    readonly socket: Socket,
    private readonly host: string,
    private readonly port: number,
    private readonly secret: Buffer,
  ) {
    socket.on('message', (msg) => this.onReply(msg));
    socket.on('error', () => {}); // e.g. ICMP port unreachable: the request just times out
  }

  static async open(opts: { host: string; port: number; secret: string; localAddress?: string }): Promise<AccountingClient> {
    const socket = createSocket(isIPv6(opts.host) ? 'udp6' : 'udp4');
    await new Promise<void>((resolve, reject) => {
      socket.once('error', reject);
      socket.bind(0, opts.localAddress, () => {
        socket.off('error', reject);
        resolve();
      });
    });
    return new AccountingClient(socket, opts.host, opts.port, Buffer.from(opts.secret));
  }

  /** Sends raw octets without waiting (junk, retransmissions). */
  send(datagram: Buffer): void {
    this.socket.send(datagram, this.port, this.host);
  }

  /** Sends a signed request; resolves with its verified reply, or undefined after timeoutMs. */
  request(packet: Buffer, timeoutMs = 1000): Promise<Buffer | undefined> {
    const id = packet[1]!;
    this.waiting.get(id)?.resolve(undefined);
    return new Promise((resolve) => {
      const timer = setTimeout(() => done(undefined), timeoutMs);
      const done = (reply: Buffer | undefined) => {
        clearTimeout(timer);
        if (this.waiting.get(id) === waiter) this.waiting.delete(id);
        resolve(reply);
      };
      const waiter: Waiter = { requestAuth: Buffer.from(packet.subarray(4, 20)), resolve: done, timer };
      this.waiting.set(id, waiter);
      this.send(packet);
    });
  }

  private onReply(msg: Buffer): void {
    const w = msg.length >= 20 ? this.waiting.get(msg[1]!) : undefined;
    if (!w || msg[0] !== Code.AccountingResponse || !verifyAccountingResponse(msg.subarray(0, msg.readUInt16BE(2)), w.requestAuth, this.secret)) {
      this.unmatched++;
      return;
    }
    w.resolve(msg);
  }

  close(): Promise<void> {
    for (const w of this.waiting.values()) w.resolve(undefined);
    return new Promise((resolve) => this.socket.close(() => resolve()));
  }
}

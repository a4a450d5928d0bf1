import { z } from 'zod';
import { identitySource } from './identity.ts';

// Low-power ingress for NB-IoT and LTE-M devices: CoAP (RFC 7252) and raw UDP datagrams.

const port = z.number().int().min(0).max(65535);

/** Per-address flood guard shared by both datagram listeners. */
const floodGuard = {
  perAddressPerSecond: z.number().positive().default(50).describe('datagrams per second one source address may send; more are dropped and counted'),
  perAddressBurst: z.number().int().positive().default(100).describe('datagrams one source address may send in a burst above its rate'),
  maxAddresses: z.number().int().positive().default(100_000).describe('source addresses whose flood state is tracked; the least recently seen is forgotten past it'),
  receiveBufferBytes: z
    .number()
    .int()
    .min(65_536)
    .default(4 * 1024 ** 2)
    .describe('kernel receive buffer of the socket (SO_RCVBUF, capped by net.core.rmem_max), and the most bytes of datagrams waiting for the main thread: past it they are dropped and counted'),
};

export const coapListenerSection = z
  .object({
    enabled: z.boolean().optional().describe('listen for CoAP; default: on in sandbox mode, off in aws mode'),
    host: z.string().min(1).default('0.0.0.0').describe('address devices reach over CoAP'),
    port: port.default(5683).describe('device CoAP port (UDP, no DTLS)'),
    identity: identitySource.default('claimed'),
    emptyAckAfterMs: z
      .number()
      .int()
      .min(0)
      .default(0)
      .describe('a Confirmable request still waiting for its commit this long gets an empty ACK and a separate response; 0 = never (the 2.04 is always piggybacked after the commit)'),
    maxDatagramBytes: z.number().int().min(64).max(65507).default(1280).describe('largest CoAP datagram accepted; bigger payloads use block-wise transfer (RFC 7959)'),
    maxPending: z.number().int().positive().default(10_000).describe('requests waiting for their commit at once; past it new ones get 5.03'),
    retryAfterSeconds: z.number().int().positive().default(30).describe('Max-Age of a 5.03 (outbox full): how long the device should wait'),
    maxBlockTransfers: z.number().int().positive().default(256).describe('block-wise request bodies being received at once (each up to limits.maxPayloadBytes); past it a new one gets 5.03'),
    blockTimeoutMs: z.number().int().positive().default(60_000).describe('a block-wise body with no new block for this long is forgotten'),
    responseCacheBytes: z.number().int().positive().default(32 * 1024 ** 2).describe('memory for sent responses kept to answer retransmitted requests for the exchange lifetime (247 s): each costs its bytes and about 200 of bookkeeping; past it the oldest go first'),
    ...floodGuard,
  })
  .strict()
  .prefault({});

export const udpListenerSection = z
  .object({
    enabled: z.boolean().default(false).describe('listen for raw UDP datagrams (one datagram, one message)'),
    host: z.string().min(1).default('0.0.0.0').describe('address devices reach over raw UDP'),
    port: port.default(23080).describe('device raw UDP port'),
    identity: z
      .enum(['radius', 'static'], { error: 'must be radius or static: a bare datagram has nowhere to claim an identity from' })
      .default('radius')
      .describe('radius = the source IP\'s RADIUS session; static = the static IP table (claimed is not possible over raw UDP)'),
    maxDatagramBytes: z.number().int().min(64).max(65507).default(1472).describe('largest datagram accepted (1472 = one unfragmented datagram on a 1500-byte MTU)'),
    maxPending: z.number().int().positive().default(10_000).describe('datagrams waiting for their commit at once; past it new ones are refused'),
    ...floodGuard,
  })
  .strict()
  .prefault({});

/** Per-group keys for raw UDP, spread into the group schema. */
export const udpGroupKeys = {
  udpTopic: z.string().default('devices/{thing}/udp').describe('upstream topic of raw UDP datagrams; placeholders {thing} {imsi} {imei}'),
  udpAck: z
    .enum(['none', 'commit'])
    .default('none')
    .describe('raw UDP: none = no answer; commit = a short acknowledgement datagram after the commit, carrying any held downlink'),
};

// Whether the CoAP listener runs lives beside the identity rules, which must know it (config/identity.ts).
export { coapEnabled } from './identity.ts';

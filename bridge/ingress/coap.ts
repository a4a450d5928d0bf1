import type { RemoteInfo } from 'node:dgram';
import { encode as cbor } from 'cbor-x';
import { createServer, OutgoingMessage, type IncomingMessage } from 'coap';
import { generate, parse, type ParsedPacket } from 'coap-packet';
import type { Logger } from 'pino';
import type { Admission, AdmittedDevice } from '../admission.ts';
import type { Downlink } from '../downlink.ts';
import { FileRefusal, type DeviceFiles } from '../files/device-files.ts';
import { Refusal, type IdentitySource } from '../identity/source.ts';
import type { DeviceJobs, JobUpdateRefusal, PendingJob } from '../jobs.ts';
import type { Metrics } from '../metrics.ts';
import { UplinkRefusal, type Uplink } from '../uplink.ts';
import type { HeldMessage } from '../../storage/downlink.ts';
import { CoapResponseCache } from './coap-response-cache.ts';
import { DatagramGuard } from './datagram-guard.ts';
import { answerWithHeld, bindDatagramSocket, commit, drainPending } from './datagram-steps.ts';
import { downlinkJson } from './http.ts';
import { decodeJobReport, reportJob } from './job-report.ts';

export interface CoapIngressOptions {
  host: string;
  port: number;
  maxPayloadBytes: number;
  maxDatagramBytes: number;
  emptyAckAfterMs: number;
  maxPending: number;
  retryAfterSeconds: number;
  responseCacheBytes: number;
  maxBlockTransfers: number;
  blockTimeoutMs: number;
  perAddressPerSecond: number;
  perAddressBurst: number;
  maxAddresses: number;
  receiveBufferBytes: number;
  identity: IdentitySource;
  admission: Admission;
  uplink: Uplink;
  downlink: Downlink;
  /** IoT Jobs for sleeping devices (groups.*.sleepingJobs): pending jobs in the 2.04, POST /jobs/{jobId}. */
  jobs?: DeviceJobs;
  /** Files named by pending jobs: GET /files/{id}, block-wise (Block2, RFC 7959). */
  files?: DeviceFiles;
  /** Largest Block2 block served (files.coapBlockBytes). */
  fileBlockBytes?: number;
  metrics: Metrics;
  log: Logger;
}

export interface CoapIngress {
  port: number;
  listening(): boolean;
  close(): Promise<void>;
}

// A device's job report, as HTTP answers it (http-jobs.ts) in CoAP's codes (RFC 7252 §5.9; 4.09 Conflict,
// RFC 8132 §6.3). CoAP has no 410: a removed job is 4.04, told apart by its reason. Every refusal has its
// code: a new reason without one does not compile.
const jobReportCode: Record<JobUpdateRefusal, string> = {
  job_update_invalid: '4.00',
  jobs_disabled: '4.04',
  job_not_found: '4.04',
  job_removed: '4.04',
  job_version_conflict: '4.09',
  job_finished: '4.09',
  upstream_unavailable: '5.03',
  upstream_timeout: '5.04',
};

// Response codes (RFC 7252 §5.9, RFC 7959 §2.9). Identity refusals not listed here are 4.03.
const refusalCode: Record<string, string> = {
  ...jobReportCode,
  invalid_imsi: '4.00',
  invalid_imei: '4.00',
  bad_secret: '4.01',
  qos_not_supported: '4.00',
  topic_empty: '4.00',
  topic_wildcard: '4.00',
  topic_invalid: '4.00',
  topic_too_long: '4.00',
  topic_too_deep: '4.00',
  payload_too_large: '4.13',
  outbox_full: '5.03',
  storage_unavailable: '5.03',
  busy: '5.03',
  not_found: '4.04',
  file_id_invalid: '4.00',
  file_not_found: '4.04',
  file_checksum_mismatch: '5.02',
  file_size_mismatch: '5.02',
  file_too_large: '5.02',
  file_download_failed: '5.02',
  bad_block2: '4.00',
  block_out_of_range: '4.02',
};

/** Critical options (odd numbers, RFC 7252 §5.4.1) this server understands; any other critical one gets 4.02. */
const understoodCritical = new Set(['Uri-Host', 'Uri-Port', 'Uri-Path', 'Uri-Query', 'Accept', 'Block1', 'Block2']);
const unsupportedCritical = new Set(['If-Match', 'If-None-Match', 'OSCORE', 'Q-Block1', 'Q-Block2', 'Proxy-Uri', 'Proxy-Scheme']);

/** Request-Tag (RFC 9175): names one block-wise body when the client changes tokens between blocks. */
const REQUEST_TAG = '292';

/** EXCHANGE_LIFETIME (RFC 7252 §4.8.2): how long a retransmission of a request can arrive. */
const EXCHANGE_LIFETIME_MS = 247_000;

/** setTimeout's longest delay: "never" for the library's separate-ACK timer. */
const NEVER_MS = 2 ** 31 - 1;

function optionUint(value: Buffer): number {
  let n = 0;
  for (const b of value) n = n * 256 + b;
  return n;
}

/** A block option value in as few bytes as it needs (RFC 7959 §2.2: 0-3 bytes). */
function blockOption(value: number): Buffer {
  if (value === 0) return Buffer.alloc(0);
  const bytes = value < 0x100 ? 1 : value < 0x10000 ? 2 : 3;
  const b = Buffer.alloc(bytes);
  b.writeUIntBE(value, 0, bytes);
  return b;
}

function optionText(value: unknown): string {
  return Buffer.isBuffer(value) ? value.toString('utf8') : String(value);
}

/**
 * CoAP (RFC 7252) for devices on NB-IoT and LTE-M, on the `coap` package (message layer, deduplication
 * cache, block-wise reassembly RFC 7959). This module only maps CoAP onto the gateway's pipeline,
 * identify → IMEI lock (admission) → commit (uplink) → answer: the 2.04 of a Confirmable POST rides in
 * its ACK (piggybacked, §5.2.1) and is written only after the commit, so the ACK is the durable ack.
 *
 * Each datagram is screened before the library sees it: size and per-address flood guard, version and
 * well-formedness (§3, §4.2), unknown critical options (§5.4.1), block-wise bounds (RFC 7959 §2.9.3),
 * and retransmissions of a request still being committed (§4.5: processed once; the library's own
 * cache answers retransmissions only once a response exists).
 */
export async function startCoapIngress(opts: CoapIngressOptions): Promise<CoapIngress> {
  const { metrics, log } = opts;
  const guard = new DatagramGuard(opts);
  /** Requests between arrival and their response, by endpoint and message id. */
  const pending = new Set<string>();
  const blocks = new Block1Assembler(opts);
  /** Block1 option of the last block of a reassembled request, echoed in its answer (RFC 7959 §2.3). */
  const finalBlock1 = new Map<string, Buffer>();
  let closing = false;
  let nextMessageId = Math.floor(Math.random() * 0xffff);

  const sock = await bindDatagramSocket(opts, log, 'CoAP');
  sock.on('overflow', (n: number) => metrics.refusals.inc({ protocol: 'coap', reason: 'receive_queue_full' }, n));

  const server = createServer({
    // A Confirmable request is answered by its piggybacked response after the commit, not by an
    // early empty ACK (the library's default after 50 ms), unless the operator asks for one.
    piggybackReplyMs: opts.emptyAckAfterMs > 0 ? opts.emptyAckAfterMs : NEVER_MS,
    sendAcksForNonConfirmablePackets: true,
  });
  // Its answers are cached here instead (coap-response-cache.ts says why); in place before listen(),
  // which starts the library's prune timer on it.
  (server as unknown as { _lru: CoapResponseCache })._lru = new CoapResponseCache(opts.responseCacheBytes, EXCHANGE_LIFETIME_MS);
  server.listen(sock);
  // The library's datagram handler runs only for datagrams that pass screen().
  const libraryHandler = sock.listeners('message').at(-1) as (msg: Buffer, rinfo: RemoteInfo) => void;
  sock.off('message', libraryHandler);
  sock.on('message', (msg: Buffer, rinfo: RemoteInfo) => {
    if (screen(msg, rinfo)) libraryHandler(msg, rinfo);
  });
  // The library answers its own failures (e.g. blocks out of order) without the peer's address; answer them here.
  (server as unknown as { _sendError: (p: Buffer, r: RemoteInfo, packet?: ParsedPacket) => void })._sendError = (payload, rinfo, packet) => {
    const incomplete = /offset|byte index/i.test(payload.toString());
    const reason = incomplete ? 'block_incomplete' : 'malformed';
    count(reason);
    if (packet) answer(rinfo, packet, incomplete ? '4.08' : '4.00', reason);
  };
  server.on('request', (req: IncomingMessage, res: OutgoingMessage) => void handle(req, res));

  function count(reason: string) {
    metrics.refusals.inc({ protocol: 'coap', reason });
  }

  const keyOf = (rinfo: { address: string; port: number }, messageId: number) => `${rinfo.address}:${rinfo.port}/${messageId}`;

  /** An answer written here, outside the library: for datagrams it never sees. */
  function answer(rinfo: RemoteInfo, packet: ParsedPacket, code: string, reason: string, options: Array<{ name: string; value: Buffer }> = []) {
    nextMessageId = (nextMessageId + 1) & 0xffff;
    const reply = generate({
      code,
      ack: packet.confirmable,
      confirmable: false,
      messageId: packet.confirmable ? packet.messageId : nextMessageId,
      token: packet.token,
      options: options as never,
      payload: reason ? Buffer.from(reason) : undefined,
    });
    sock.send(reply, rinfo.port, rinfo.address);
  }

  function reset(rinfo: RemoteInfo, messageId: number) {
    sock.send(generate({ code: '0.00', reset: true, messageId }), rinfo.port, rinfo.address);
  }

  /** True when the library may process the datagram. */
  function screen(msg: Buffer, rinfo: RemoteInfo): boolean {
    if (closing) return false;
    const problem = guard.check(rinfo.address, msg.length);
    if (problem === 'rate_limited' || problem === 'datagram_empty') return count(problem), false;
    let packet: ParsedPacket;
    try {
      packet = parse(msg);
    } catch {
      // Unknown versions are silently ignored (§3); a malformed Confirmable message is rejected with a Reset (§4.2).
      if (msg[0]! >> 6 !== 1) return count('bad_version'), false;
      count('malformed');
      if (msg.length >= 4 && ((msg[0]! >> 4) & 3) === 0) reset(rinfo, msg.readUInt16BE(2));
      return false;
    }
    if (problem === 'datagram_too_large') {
      count('datagram_too_large');
      // 4.13 with the block size to use instead (RFC 7959 §2.9.3).
      const szx = Math.max(0, Math.min(6, Math.floor(Math.log2(opts.maxDatagramBytes - 64)) - 4));
      if (packet.code.startsWith('0.') && !packet.reset && !packet.ack) answer(rinfo, packet, '4.13', 'datagram_too_large', [{ name: 'Block1', value: Buffer.from([szx]) }]);
      return false;
    }
    if (packet.code === '0.00') {
      // An empty Confirmable message is a ping (§4.3): answered with a Reset. ACK and RST go to the library.
      if (packet.confirmable) reset(rinfo, packet.messageId);
      return packet.ack || packet.reset;
    }
    if (!packet.code.startsWith('0.')) return count('not_a_request'), false;
    if (pending.has(keyOf(rinfo, packet.messageId))) {
      // Still being committed: processed once (§4.5); its response answers this copy too.
      metrics.datagramDuplicates.inc({ protocol: 'coap' });
      return false;
    }
    for (const o of packet.options) {
      const name = String(o.name);
      // coap-packet names the options it knows and gives the others as their number.
      const critical = /^\d+$/.test(name) ? Number(name) % 2 === 1 : unsupportedCritical.has(name);
      if (critical && !understoodCritical.has(name)) {
        count('bad_option');
        answer(rinfo, packet, '4.02', `bad_option ${name}`);
        return false;
      }
    }
    const size1 = packet.options.find((o) => o.name === 'Size1')?.value;
    if (size1 && optionUint(size1) > opts.maxPayloadBytes) return tooLarge(rinfo, packet), false;
    const block1 = packet.options.find((o) => o.name === 'Block1')?.value;
    if (!block1) return true;
    // A retransmitted last block: the library's cache holds its answer.
    if (blocks.answered(keyOf(rinfo, packet.messageId))) return true;
    const whole = blocks.add(rinfo, packet, block1);
    if (typeof whole === 'string') {
      if (whole === 'continue') answer(rinfo, packet, '2.31', '', [{ name: 'Block1', value: block1 }]);
      else if (whole === 'payload_too_large') tooLarge(rinfo, packet);
      else count(whole), answer(rinfo, packet, whole === 'block_incomplete' ? '4.08' : whole === 'busy' ? '5.03' : '4.00', whole);
      return false;
    }
    // The whole body goes to the library as one request with the last block's message id and token,
    // so its answer (and the library's retransmission cache) is that of the last block.
    finalBlock1.set(keyOf(rinfo, packet.messageId), block1);
    blocks.finished(keyOf(rinfo, packet.messageId));
    const options = packet.options.filter((o) => o.name !== 'Block1' && o.name !== 'Size1' && String(o.name) !== REQUEST_TAG);
    libraryHandler(generate({ ...packet, options: options as never, payload: whole }, whole.length + 2048), rinfo);
    return false;
  }

  function tooLarge(rinfo: RemoteInfo, packet: ParsedPacket) {
    blocks.forget(rinfo, packet);
    count('payload_too_large');
    const max = Buffer.alloc(4);
    max.writeUInt32BE(opts.maxPayloadBytes);
    answer(rinfo, packet, '4.13', 'payload_too_large', [{ name: 'Size1', value: max }]);
  }

  async function handle(req: IncomingMessage, res: OutgoingMessage) {
    const key = keyOf(req.rsinfo, req._packet.messageId!);
    pending.add(key);
    try {
      if (pending.size > opts.maxPending) return refuse(res, 'busy', 'too many requests waiting for their commit');
      await route(req, res);
    } catch (err) {
      log.error({ err: (err as Error).message }, 'CoAP request failed');
      count('internal_error');
      reply(res, '5.00', Buffer.from('internal_error'));
    } finally {
      pending.delete(key);
      finalBlock1.delete(key);
    }
  }

  function reply(res: OutgoingMessage, code: string, payload?: Buffer, format?: 'application/json' | 'application/cbor') {
    res.code = code;
    if (format && payload?.length) res.setOption('Content-Format', format);
    try {
      res.end(payload);
    } catch (err) {
      // The socket closed under an answer in flight (shutdown): the device retransmits and is answered after restart.
      log.debug({ err: (err as Error).message }, 'CoAP answer not sent');
    }
  }

  /** A refusal as a CoAP response code, with the reason as diagnostic payload (§5.5.2); counted. */
  function refuse(res: OutgoingMessage, reason: string, detail: string, counted = false) {
    if (!counted) count(reason);
    const code = refusalCode[reason] ?? '4.03';
    if (code === '5.03' || code === '5.04') res.setOption('Max-Age', opts.retryAfterSeconds);
    if (code === '4.13') res.setOption('Size1', opts.maxPayloadBytes);
    log.debug({ reason, detail }, 'CoAP request refused');
    reply(res, code, Buffer.from(reason));
  }

  /** A body in the format the device asked for: CBOR with Accept 60, JSON otherwise. */
  function encodeBody(req: IncomingMessage, body: Record<string, unknown>) {
    return req.headers.Accept === 'application/cbor'
      ? { payload: Buffer.from(cbor(body)), format: 'application/cbor' as const }
      : { payload: Buffer.from(JSON.stringify(body)), format: 'application/json' as const };
  }

  function encode(req: IncomingMessage, body: Record<string, unknown>, held: HeldMessage[], after: Record<string, unknown>) {
    // In CBOR a payload is a byte string, not base64.
    const downlink = req.headers.Accept === 'application/cbor' ? held.map((m) => ({ topic: m.topic, payload: m.payload, qos: m.qos, receivedAt: m.receivedAt })) : held.map(downlinkJson);
    return encodeBody(req, { ...body, downlink, ...after });
  }

  /**
   * Held downlink rides in the answer; it counts as delivered once sent (a lost answer is resent from
   * the library's cache on retransmission). So do the device's pending jobs when its group runs them.
   */
  function answerWithDownlink(req: IncomingMessage, res: OutgoingMessage, device: AdmittedDevice, code: string, body: Record<string, unknown>, always: boolean, jobs?: PendingJob[]) {
    answerWithHeld(opts.downlink, device, 'coap', (held) => {
      // A device that did not ask for a body (no Accept), has nothing held and no job pending gets the bare code: fewer bytes on the radio.
      if (!always && held.length === 0 && !jobs?.length && req.headers.Accept === undefined) return reply(res, code);
      const { payload, format } = encode(req, body, held, jobs ? { jobs } : {});
      reply(res, code, payload, format);
    });
  }

  async function route(req: IncomingMessage, res: OutgoingMessage) {
    const path: string[] = [];
    const query = new Map<string, string>();
    for (const o of req._packet.options ?? []) {
      if (o.name === 'Uri-Path') path.push(optionText(o.value));
      if (o.name === 'Uri-Query') {
        const text = optionText(o.value);
        const eq = text.indexOf('=');
        query.set(eq < 0 ? text : text.slice(0, eq), eq < 0 ? '' : text.slice(eq + 1));
      }
    }
    const resource =
      path[0] === 'topics' && path.length > 1 ? 'topics' : path[0] === 'files' && path.length === 2 && opts.files ? 'files' : path[0] === 'jobs' && path.length === 2 && opts.jobs ? 'jobs' : path.join('/');
    const allowed: Record<string, string> = { topics: 'POST', self: 'GET', downlink: 'GET', files: 'GET', jobs: 'POST' };
    if (!allowed[resource]) return refuse(res, 'not_found', `no resource /${path.join('/')}`), undefined;
    if (req.method !== allowed[resource]) return (count('method_not_allowed'), reply(res, '4.05', Buffer.from('method_not_allowed')));

    const device = await opts.admission.admit(opts.identity, req.rsinfo.address, { imsi: query.get('imsi'), imei: query.get('imei'), secret: query.get('secret') });
    if (device instanceof Refusal) return refuse(res, device.reason, device.detail);

    if (resource === 'self') {
      const { sim } = device;
      const self = { imsi: sim.imsi, imei: device.imei ?? sim.boundImei, msisdn: device.msisdn ?? null, thing: sim.thingName, group: sim.group, tags: sim.tags };
      const body = req.headers.Accept === 'application/cbor' ? { payload: Buffer.from(cbor(self)), format: 'application/cbor' as const } : { payload: Buffer.from(JSON.stringify(self)), format: 'application/json' as const };
      return reply(res, '2.05', body.payload, body.format);
    }
    if (resource === 'downlink') return answerWithDownlink(req, res, device, '2.05', {}, true);
    if (resource === 'files') return serveFileBlock(req, res, device, path[1]!);
    if (resource === 'jobs') return answerJobReport(req, res, device, path[1]!);

    const topic = path.slice(1).join('/');
    const qos = query.has('qos') ? Number(query.get('qos')) : 1;
    // Asked for beside the commit, so the 2.04 waits for it as little as possible (as HTTP's 202).
    const pendingJobs = opts.jobs?.forResponse(device.sim);
    const id = await commit(opts.uplink, 'coap', device, topic, Buffer.isBuffer(req.payload) ? req.payload : Buffer.alloc(0), qos);
    // Uplink counts its own refusals.
    if (id instanceof UplinkRefusal) return refuse(res, id.reason, id.message, true);
    const jobs = pendingJobs ? await pendingJobs.settle() : undefined;
    // The last block of a block-wise request is answered with its Block1 option (RFC 7959 §2.3).
    const block1 = finalBlock1.get(keyOf(req.rsinfo, req._packet.messageId!));
    if (block1) res.setOption('Block1', block1);
    answerWithDownlink(req, res, device, '2.04', { id }, false, jobs && opts.files ? opts.files.announce(jobs, 'coap', device.sim) : jobs);
  }

  /**
   * `POST /jobs/{jobId}`: the device's report on a job its 2.04 carried, the body of HTTP's
   * `POST /v1/jobs/{jobId}` in JSON, or CBOR with Content-Format 60. 2.04 with the execution's new state;
   * a refusal that comes with the execution's current state (a version conflict, a finished or removed
   * job) carries `{"error","execution"}`, any other its reason as diagnostic payload.
   */
  async function answerJobReport(req: IncomingMessage, res: OutgoingMessage, device: AdmittedDevice, jobId: string) {
    const payload = Buffer.isBuffer(req.payload) ? req.payload : Buffer.alloc(0);
    const report = await reportJob(opts.jobs!, device.sim, jobId, decodeJobReport(payload, req.headers['Content-Format'] === 'application/cbor' ? 'cbor' : 'json'));
    if (report.ok) {
      const { payload: body, format } = encodeBody(req, report.body);
      return reply(res, '2.04', body, format);
    }
    const { execution } = report.body;
    if (!execution) return refuse(res, report.reason, report.body.message);
    count(report.reason);
    const { payload: body, format } = encodeBody(req, { error: report.reason, execution });
    reply(res, jobReportCode[report.reason], body, format);
  }

  /**
   * One block of a cached file (RFC 7959 §2.4): the block the device asks for in Block2 (block 0, at the
   * served size, when it asks for none and the file does not fit one block), with Size2 and an ETag
   * (the sha256's first 8 bytes) so the device can tell the blocks belong to one file. Each block is a
   * request of its own: read from the cache at its offset, nothing kept per transfer.
   */
  async function serveFileBlock(req: IncomingMessage, res: OutgoingMessage, device: AdmittedDevice, id: string) {
    const maxBlock = opts.fileBlockBytes ?? 1024;
    const asked = req._packet.options?.find((o) => o.name === 'Block2')?.value;
    let num = 0;
    let blockBytes = maxBlock;
    if (Buffer.isBuffer(asked)) {
      const v = optionUint(asked);
      if (asked.length > 3 || (v & 7) === 7) return refuse(res, 'bad_block2', 'Block2 SZX 7 is reserved');
      num = v >> 4;
      blockBytes = Math.min(2 ** ((v & 7) + 4), maxBlock);
    }
    const file = await opts.files!.open(device.sim, id);
    if (file instanceof FileRefusal) return refuse(res, file.reason, file.message);
    try {
      const offset = num * blockBytes;
      if (offset >= file.size && !(num === 0 && file.size === 0)) return refuse(res, 'block_out_of_range', `the file has ${file.size} bytes`);
      const chunk = Buffer.alloc(Math.min(blockBytes, file.size - offset));
      await file.handle.read(chunk, 0, chunk.length, offset);
      res.setOption('Content-Format', 'application/octet-stream');
      res.setOption('ETag', Buffer.from(file.id.slice(0, 16), 'hex'));
      if (asked || file.size > blockBytes) {
        const more = offset + chunk.length < file.size ? 8 : 0;
        res.setOption('Block2', blockOption((num << 4) | more | (Math.log2(blockBytes) - 4)));
        if (num === 0) res.setOption('Size2', file.size);
      }
      metrics.fileBytesServed.inc({ protocol: 'coap' }, chunk.length);
      res.code = '2.05';
      // The library's own Block2 (whole payload per request, cut by it) is bypassed: the block is sent as it is.
      OutgoingMessage.prototype.end.call(res, chunk);
    } finally {
      await file.handle.close();
    }
  }

  return {
    port: sock.address().port,
    listening: () => !closing && sock.isOpen,
    async close() {
      closing = true;
      // Requests being committed get their answers first (bounded).
      await drainPending(() => pending.size);
      server.close();
      blocks.close();
      await new Promise<void>((resolve) => sock.close(() => resolve()));
    },
  };
}

/**
 * Block-wise requests (RFC 7959 §2.5), reassembled here rather than by the library: a client may change
 * the token from block to block (§2.3; libcoap does, naming the body with a Request-Tag, RFC 9175), and
 * the library keys its reassembly by token. A body is keyed by endpoint, URI and Request-Tag; block 0
 * starts it afresh, a repeated block is acknowledged again, a gap is 4.08. Bounded in count, size and age.
 */
class Block1Assembler {
  private readonly bodies = new Map<string, { chunks: Buffer[]; bytes: number; touched: number }>();
  /** Last blocks already passed on (endpoint/message id → when), for the exchange lifetime. */
  private readonly done = new Map<string, number>();
  private readonly sweeper: NodeJS.Timeout;

  constructor(private readonly opts: { maxPayloadBytes: number; maxBlockTransfers: number; blockTimeoutMs: number }) {
    this.sweeper = setInterval(() => {
      const old = Date.now() - opts.blockTimeoutMs;
      for (const [k, b] of this.bodies) if (b.touched < old) this.bodies.delete(k);
      const lifetime = Date.now() - EXCHANGE_LIFETIME_MS;
      for (const [k, at] of this.done) if (at < lifetime) this.done.delete(k);
    }, Math.min(opts.blockTimeoutMs, 10_000)).unref();
  }

  private key(rinfo: RemoteInfo, packet: ParsedPacket): string {
    const uri = packet.options.filter((o) => o.name === 'Uri-Path' || o.name === 'Uri-Query').map((o) => `${String(o.name)}=${o.value.toString('hex')}`);
    const tag = packet.options.find((o) => String(o.name) === REQUEST_TAG)?.value.toString('hex') ?? '';
    return `${rinfo.address}:${rinfo.port}|${packet.code}|${uri.join('&')}|${tag}`;
  }

  finished(exchange: string): void {
    if (this.done.size >= this.opts.maxBlockTransfers * 64) this.done.delete(this.done.keys().next().value!);
    this.done.set(exchange, Date.now());
  }

  answered(exchange: string): boolean {
    return this.done.has(exchange);
  }

  forget(rinfo: RemoteInfo, packet: ParsedPacket): void {
    this.bodies.delete(this.key(rinfo, packet));
  }

  /** The whole body once the last block is in, or what to answer this block with. */
  add(rinfo: RemoteInfo, packet: ParsedPacket, option: Buffer): Buffer | 'continue' | 'bad_block1' | 'block_incomplete' | 'payload_too_large' | 'busy' {
    if (option.length > 3) return 'bad_block1';
    const v = optionUint(option);
    const szx = v & 7;
    const more = (v & 8) !== 0;
    const num = v >> 4;
    if (szx === 7) return 'bad_block1';
    const size = 2 ** (szx + 4);
    const offset = num * size;
    const payload = packet.payload;
    if (more && payload.length !== size) return 'bad_block1';
    if (offset + payload.length > this.opts.maxPayloadBytes) return 'payload_too_large';
    const key = this.key(rinfo, packet);
    let body = this.bodies.get(key);
    if (num === 0) {
      if (!body && this.bodies.size >= this.opts.maxBlockTransfers) return 'busy';
      body = { chunks: [], bytes: 0, touched: 0 };
      this.bodies.set(key, body);
    }
    if (!body) return 'block_incomplete';
    body.touched = Date.now();
    if (offset < body.bytes) return more ? 'continue' : 'block_incomplete'; // a retransmitted block
    if (offset > body.bytes) return 'block_incomplete';
    body.chunks.push(payload);
    body.bytes += payload.length;
    if (more) return 'continue';
    this.bodies.delete(key);
    return Buffer.concat(body.chunks);
  }

  close(): void {
    clearInterval(this.sweeper);
    this.bodies.clear();
    this.done.clear();
  }
}

import Fastify, { type FastifyReply, type FastifyRequest } from 'fastify';
import { STATUS_CODES } from 'node:http';
import type { Socket } from 'node:net';
import type { Logger } from 'pino';
import type { Admission, AdmittedDevice } from '../admission.ts';
import { Refusal, type IdentitySource, type RefusalReason } from '../identity/source.ts';
import type { HeldMessage } from '../../storage/downlink.ts';
import type { Downlink } from '../downlink.ts';
import type { Metrics } from '../metrics.ts';
import { UplinkRefusal, type Uplink, type UplinkRefusalReason } from '../uplink.ts';
import type { DeviceJobs } from '../jobs.ts';
import type { DeviceFiles } from '../files/device-files.ts';
import { AddressConnections, type IngressLimitReason } from './connection-limits.ts';
import { registerFileRoutes } from './http-files.ts';
import { registerJobRoutes } from './http-jobs.ts';

export interface HttpIngressOptions {
  host: string;
  port: number;
  maxPayloadBytes: number;
  maxConnectionsPerAddress: number;
  headersTimeoutMs: number;
  requestTimeoutMs: number;
  idleTimeoutMs: number;
  identity: IdentitySource;
  admission: Admission;
  uplink: Uplink;
  downlink: Downlink;
  /** IoT Jobs for sleeping devices (groups.*.sleepingJobs): pending jobs in the 202, POST /v1/jobs/{jobId}. */
  jobs?: DeviceJobs;
  /** Files named by pending jobs, served from the gateway's cache: GET /v1/files/{id}. */
  files?: DeviceFiles;
  metrics: Metrics;
  log: Logger;
}

/** A held downlink message as JSON: text stays text, anything else is base64. */
export function downlinkJson(m: HeldMessage) {
  const text = m.payload.toString('utf8');
  const isText = Buffer.from(text, 'utf8').equals(m.payload);
  return { topic: m.topic, payload: isText ? text : m.payload.toString('base64'), encoding: isText ? 'utf8' : 'base64', qos: m.qos, receivedAt: new Date(m.receivedAt).toISOString() };
}

const LISTEN_BACKLOG = 4096;

/** Seconds a device is told to wait when the gateway cannot take its message now. */
const RETRY_AFTER_S = 30;

/** Refusals the HTTP layer itself makes (malformed requests, unknown routes). */
type HttpProtocolReason = 'bad_request' | 'header_overflow' | 'not_found' | 'internal_error';
type HttpRefusalReason = RefusalReason | UplinkRefusalReason | IngressLimitReason | HttpProtocolReason;

// Every reason has its status: a new reason without one does not compile.
const refusalStatus: Record<HttpRefusalReason, number> = {
  invalid_imsi: 400,
  invalid_imei: 400,
  bad_secret: 401,
  unidentified: 403,
  unknown_sim: 403,
  sim_suspended: 403,
  sim_terminated: 403,
  imei_mismatch: 403,
  imei_not_bound: 403,
  imei_unknown: 403,
  claim_mismatch: 403,
  qos_not_supported: 400,
  topic_empty: 400,
  topic_wildcard: 400,
  topic_invalid: 400,
  topic_too_long: 400,
  topic_too_deep: 400,
  filter_invalid: 400,
  payload_too_large: 413,
  outbox_full: 503,
  storage_unavailable: 503,
  address_connection_limit: 503,
  sim_connection_limit: 503,
  keepalive_refused: 400,
  request_timeout: 408,
  bad_request: 400,
  header_overflow: 431,
  not_found: 404,
  internal_error: 500,
};

/** A refusal written straight to the socket, for requests that never reach a route (HTTP/1.1, then closed). */
function writeRefusal(socket: Socket, reason: HttpRefusalReason, message: string): void {
  const status = refusalStatus[reason];
  const body = JSON.stringify({ error: reason, message });
  if (socket.writable) {
    socket.write(`HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`);
  }
  socket.destroy();
}

function header(req: FastifyRequest, name: string): string | undefined {
  const v = req.headers[name];
  return Array.isArray(v) ? v[0] : v;
}

/** `?qos=` as a number: absent means 1; anything but one digit is undefined (not a QoS at all). */
function parseQos(raw: string | undefined): number | undefined {
  if (raw === undefined) return 1;
  return /^\d$/.test(raw) ? Number(raw) : undefined;
}

/** Plain HTTP for devices: POST /topics/{topic}?qos=1, the path of IoT Core's HTTPS publish. */
export async function startHttpIngress(opts: HttpIngressOptions): Promise<{ port: number; listening(): boolean; close(): Promise<void> }> {
  const { metrics } = opts;
  // No fastify logger: it would make a child logger per request; failures are logged through opts.log.
  const app = Fastify({
    bodyLimit: opts.maxPayloadBytes,
    // A request must arrive whole within requestTimeoutMs and never fall silent for idleTimeoutMs: a body
    // trickled a byte at a time would otherwise hold its socket and buffers for good.
    requestTimeout: opts.requestTimeoutMs,
    connectionTimeout: opts.idleTimeoutMs,
    http: { headersTimeout: opts.headersTimeoutMs, requestTimeout: opts.requestTimeoutMs, connectionsCheckingInterval: Math.min(1000, opts.headersTimeoutMs) },
    clientErrorHandler(err: NodeJS.ErrnoException, socket: Socket) {
      if (err.code === 'ECONNRESET' || socket.destroyed) return;
      const reason = err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? 'request_timeout' : err.code === 'HPE_HEADER_OVERFLOW' ? 'header_overflow' : 'bad_request';
      metrics.refusals.inc({ protocol: 'http', reason });
      writeRefusal(socket, reason, reason === 'request_timeout' ? `the request did not arrive whole within ${opts.requestTimeoutMs} ms` : err.message);
    },
  });
  // Silence inside a request: answered 408. An idle keep-alive connection is just closed; one whose request
  // arrived whole and waits for its answer (a slow commit) is left to get it.
  app.server.on('timeout', (socket: Socket & { parser?: { incoming?: { complete: boolean } }; _httpMessage?: { writableEnded: boolean } }) => {
    const inRequest = socket.parser?.incoming && !socket.parser.incoming.complete;
    if (!inRequest) return socket._httpMessage && !socket._httpMessage.writableEnded ? undefined : socket.destroy();
    metrics.refusals.inc({ protocol: 'http', reason: 'request_timeout' });
    writeRefusal(socket, 'request_timeout', `the request was silent for ${opts.idleTimeoutMs} ms`);
  });
  // Past the cap, an address's requests are answered 503 (the connection is still parsed, within headersTimeoutMs).
  const perAddress = new AddressConnections(opts.maxConnectionsPerAddress);
  const overCap = new WeakSet<Socket>();
  app.server.on('connection', (socket: Socket) => {
    if (!perAddress.admit(socket)) overCap.add(socket);
  });
  app.addHook('onRequest', async (req, reply) => {
    if (!overCap.has(req.raw.socket)) return;
    metrics.refusals.inc({ protocol: 'http', reason: 'address_connection_limit' });
    reply.header('retry-after', String(RETRY_AFTER_S)).header('connection', 'close');
    return reply.code(refusalStatus.address_connection_limit).send({ error: 'address_connection_limit', message: `more than ${opts.maxConnectionsPerAddress} connections from this address` });
  });

  // The body is the message, byte for byte, whatever its content type.
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', { parseAs: 'buffer' }, (_req, body, done) => done(null, body));

  app.setErrorHandler((err: { statusCode?: number; code?: string; message: string }, _req, reply) => {
    const status = err.statusCode && err.statusCode >= 400 ? err.statusCode : 500;
    const reason = err.code === 'FST_ERR_CTP_BODY_TOO_LARGE' ? 'payload_too_large' : status >= 500 ? 'internal_error' : 'bad_request';
    metrics.refusals.inc({ protocol: 'http', reason });
    if (status >= 500) opts.log.error({ err: err.message }, 'HTTP request failed');
    return reply.code(status).send({ error: reason, message: err.message });
  });
  app.setNotFoundHandler((req, reply) => {
    metrics.refusals.inc({ protocol: 'http', reason: 'not_found' });
    return reply.code(404).send({ error: 'not_found', message: `no route ${req.method} ${req.url}` });
  });

  function admit(req: FastifyRequest): Promise<AdmittedDevice | Refusal> {
    const auth = header(req, 'authorization');
    const secret = auth?.startsWith('Bearer ') ? auth.slice(7) : undefined;
    return opts.admission.admit(opts.identity, req.socket.remoteAddress ?? '', {
      imsi: header(req, 'x-imsi'),
      imei: header(req, 'x-imei'),
      secret,
    });
  }

  function refuse(reply: FastifyReply, refusal: Refusal) {
    metrics.refusals.inc({ protocol: 'http', reason: refusal.reason });
    if (refusal.reason === 'bad_secret') reply.header('www-authenticate', 'Bearer');
    return reply.code(refusalStatus[refusal.reason]).send({ error: refusal.reason, message: refusal.detail });
  }

  /**
   * Attaches the device's held downlink to a response; the messages are forgotten only once the whole
   * response was written, so a device that lost the answer gets them again.
   */
  function withDownlink(reply: FastifyReply, device: AdmittedDevice) {
    opts.downlink.touchHttp(device);
    const held = opts.downlink.pending(device.sim.imsi);
    if (held.length) reply.raw.once('finish', () => opts.downlink.delivered(held.map((m) => m.id)));
    return held.map(downlinkJson);
  }

  app.get('/v1/downlink', async (req, reply) => {
    const device = await admit(req);
    if (device instanceof Refusal) return refuse(reply, device);
    return { messages: withDownlink(reply, device) };
  });

  // The device's own identity as the gateway sees it, so it need not store it (like a metadata service).
  app.get('/v1/self', async (req, reply) => {
    const device = await admit(req);
    if (device instanceof Refusal) return refuse(reply, device);
    const { sim } = device;
    return { imsi: sim.imsi, imei: device.imei ?? sim.boundImei, msisdn: device.msisdn ?? null, thing: sim.thingName, group: sim.group, tags: sim.tags };
  });

  app.post<{ Params: { '*': string }; Querystring: { qos?: string } }>('/topics/*', async (req, reply) => {
    const device = await admit(req);
    if (device instanceof Refusal) return refuse(reply, device);
    const qos = parseQos(req.query.qos);
    if (qos === undefined) {
      metrics.refusals.inc({ protocol: 'http', reason: 'qos_invalid' });
      return reply.code(400).send({ error: 'qos_invalid', message: `qos must be 0 or 1 (or absent, meaning 1); got ${JSON.stringify(req.query.qos)}` });
    }
    const topic = req.params['*'];
    const payload = Buffer.isBuffer(req.body) ? req.body : Buffer.alloc(0);
    // Asked for beside the commit, so the 202 waits for it as little as possible.
    const jobs = opts.jobs?.forResponse(device.sim);
    try {
      const id = await opts.uplink.accept('http', device, topic, payload, qos);
      const pendingJobs = jobs ? { jobs: opts.files ? opts.files.announce(await jobs.settle()) : await jobs.settle() } : {};
      return reply.code(202).send({ status: 'accepted', id, topic, thing: device.sim.thingName, downlink: withDownlink(reply, device), ...pendingJobs });
    } catch (err) {
      if (!(err instanceof UplinkRefusal)) throw err;
      if (refusalStatus[err.reason] === 503) reply.header('retry-after', String(RETRY_AFTER_S));
      return reply.code(refusalStatus[err.reason]).send({ error: err.reason, message: err.message });
    }
  });

  if (opts.jobs) registerJobRoutes(app, { jobs: opts.jobs, admit, refuse, metrics });
  if (opts.files) registerFileRoutes(app, { files: opts.files, admit, refuse, metrics });

  // A fleet waking at once arrives as a burst of connections: a short accept queue drops SYNs.
  await app.listen({ host: opts.host, port: opts.port, backlog: LISTEN_BACKLOG });
  const address = app.server.address();
  return {
    port: typeof address === 'object' && address ? address.port : opts.port,
    listening: () => app.server.listening,
    close: () => app.close(),
  };
}

// The data plane: MQTT 3.1.1 over mutual TLS, like IoT Core's port 8883.
// TLS admits only certificates signed by the sandbox CA; aedes hooks then
// apply the registry and policies to each CONNECT, PUBLISH, SUBSCRIBE and
// delivery. Refusals follow IoT Core: CONNACK 5 on connect, connection closed
// on a refused publish and on a refused subscription (IoT Core speaks MQTT
// 3.1.1 there and drops the connection; `refusedSubscribe: 'suback'` keeps
// the older, kinder SUBACK 0x80).
import type { EventEmitter } from 'node:events';
import { createServer, type TLSSocket } from 'node:tls';
import type { AddressInfo, Socket } from 'node:net';
import { Aedes, type AedesPublishPacket, type AuthenticateError, type Client, type PublishPacket } from 'aedes';
import type { Connection } from '../control/admin.ts';
import type { Logger } from '../log.ts';
import type { Registry } from '../registry.ts';
import { Authorizer, type Session } from './authorizer.ts';
import type { JobStore } from '../jobs.ts';
import { isJobsAnswer, isJobsRequest, jobsPublishViolation, JobsTopics } from './jobs.ts';
import type { StreamStore } from '../streams.ts';
import { isStreamsAnswer, isStreamsRequest, streamsPublishViolation, StreamsTopics } from './streams.ts';
import { ShadowService } from './shadow.ts';
import { BASIC_INGEST, MAX_CLIENT_ID_BYTES, MAX_SUBSCRIPTIONS_PER_CONNECTION, publishViolation, topicViolation } from './limits.ts';

export interface DataPlaneOptions {
  host: string;
  port: number;
  tls: { key: string; cert: string; ca: string };
  registry: Registry;
  logger: Logger;
  /** What a refused CONNECT gets: the socket closed without CONNACK (IoT Core) or CONNACK 5. */
  refusedConnect: 'close' | 'connack';
  /** What a refused SUBSCRIBE gets: the connection closed (IoT Core) or SUBACK 0x80. */
  refusedSubscribe: 'close' | 'suback';
  /** Per-connection inbound quota over any one-second window; the excess is dropped without PUBACK. Null = none. */
  publishQuota: PublishQuota | null;
  /** Jobs and their executions, served on the Jobs device MQTT topics (data/jobs.ts). */
  jobs: JobStore;
  /** Streams of MQTT-based file delivery, served on their topics (data/streams.ts). */
  streams: StreamStore;
  /** Called for every message the data plane accepted (device publishes and wills). */
  onMessage(packet: { topic: string; payload: Buffer; qos: 0 | 1 }): void;
}

export interface PublishQuota {
  perSecond: number;
  bytesPerSecond: number;
}

export interface DataPlane {
  port: number;
  /** Live connections, with the topic filters each is subscribed to. */
  connections(): Connection[];
  /** Connections accepted while another with the same client id was live (IoT Core: DUPLICATE_CLIENTID). */
  takeovers(): number;
  close(): Promise<void>;
}

const NOT_AUTHORIZED = 5;

/** The topic filters a client is subscribed to (aedes keeps them in a field of its own, not typed). */
const filtersOf = (client: Client): string[] => Object.keys((client as unknown as { subscriptions: object }).subscriptions);
const MIN_KEEPALIVE_S = 30;
const MAX_KEEPALIVE_S = 1200;
const IDENTIFIER_REJECTED = 2;

export async function startDataPlane(opts: DataPlaneOptions): Promise<DataPlane> {
  const { registry, logger } = opts;
  const auth = new Authorizer(registry);
  const sessions = new WeakMap<Client, Session>();
  const byCertificate = new Map<string, Set<Client>>();
  // Live connections per client id: a second one takes the first one's place (and is counted).
  const liveById = new Map<string, number>();
  let takeovers = 0;
  const shadows = new ShadowService();
  const jobTopics = new JobsTopics(opts.jobs);
  const streamTopics = new StreamsTopics(opts.streams, (msg) => logger.info({}, `sandbox data plane: ${msg}`));

  const refuse = (client: Client, reason: string) => logger.info({ clientId: client.id, reason }, 'sandbox data plane: refused');

  const broker = new Aedes({
    // IoT Core accepts client ids up to 128 bytes; aedes' default is 23.
    maxClientsIdLength: MAX_CLIENT_ID_BYTES,

    // IoT Core raises a keepalive below 30 s to 30 and refuses one above 1,200 s (closing the connection).
    preConnect(client, packet, done) {
      const keepalive = packet.keepalive ?? 0;
      if (keepalive > MAX_KEEPALIVE_S) {
        refuse(client, `keepalive ${keepalive} s is above ${MAX_KEEPALIVE_S}`);
        return done(new Error('keepalive above 1200 s'), false);
      }
      if (keepalive > 0 && keepalive < MIN_KEEPALIVE_S) packet.keepalive = MIN_KEEPALIVE_S;
      done(null, true);
    },

    authenticate(client, _username, _password, done) {
      const fail = (code: number, reason: string) => {
        refuse(client, reason);
        const err = new Error(reason) as AuthenticateError;
        err.returnCode = code;
        // IoT Core answers an unauthorized CONNECT by closing the socket, without a CONNACK (aedes then
        // skips its CONNACK for a closed client); `refusedConnect: 'connack'` keeps the older answer.
        if (opts.refusedConnect === 'close') client.close();
        done(err, null);
      };
      if (Buffer.byteLength(client.id) > MAX_CLIENT_ID_BYTES) return fail(IDENTIFIER_REJECTED, 'client id longer than 128 bytes');
      const peer = (client.conn as TLSSocket).getPeerCertificate?.();
      if (!peer?.raw) return fail(NOT_AUTHORIZED, 'no client certificate');
      const cn = typeof peer.subject?.CN === 'string' ? peer.subject.CN : undefined;
      const id = auth.identify(peer.raw, client.id, cn);
      if (!id.ok) return fail(NOT_AUTHORIZED, id.reason);
      if (!auth.canConnect(id.session)) return fail(NOT_AUTHORIZED, `policies of ${id.session.certificateId} do not allow iot:Connect as ${client.id}`);
      track(client, id.session);
      capSubscribeQos(client);
      if (opts.publishQuota) enforcePublishQuota(client, opts.publishQuota, (reason) => refuse(client, reason));
      done(null, true);
    },

    authorizePublish(client, packet, done) {
      if (!client) return done(null); // the broker's own messages
      const s = sessions.get(client);
      const reason = !s
        ? 'no session'
        : !auth.isActive(s)
          ? 'certificate no longer ACTIVE'
          : (publishViolation(packet.topic, packet.payload, packet.qos) ??
            jobsPublishViolation(packet.topic) ??
            streamsPublishViolation(packet.topic) ??
            (auth.canPublish(s, packet.topic, packet.retain) ? undefined : `iot:Publish not allowed on ${packet.topic}`));
      if (reason) {
        refuse(client, reason);
        return done(new Error(reason)); // aedes closes the connection
      }
      done(null);
    },

    authorizeSubscribe(client, sub, done) {
      const s = sessions.get(client);
      if (!s || !auth.isActive(s)) {
        refuse(client, 'certificate no longer ACTIVE');
        return done(new Error('certificate no longer ACTIVE'), null);
      }
      const count = filtersOf(client).length;
      const reason =
        count >= MAX_SUBSCRIPTIONS_PER_CONNECTION
          ? `more than ${MAX_SUBSCRIPTIONS_PER_CONNECTION} subscriptions`
          : BASIC_INGEST.test(sub.topic)
            ? 'Basic Ingest topics ($aws/rules/...) cannot be subscribed to'
            : (topicViolation(sub.topic) ?? (auth.canSubscribe(s, sub.topic) ? undefined : `iot:Subscribe not allowed on ${sub.topic}`));
      if (reason) {
        refuse(client, reason);
        if (opts.refusedSubscribe === 'close') return done(new Error(reason), null); // aedes closes the connection
        return done(null, null); // SUBACK 0x80 for this filter
      }
      // IoT Core has no QoS 2: grant at most 1.
      done(null, { ...sub, qos: sub.qos > 1 ? 1 : sub.qos });
    },

    authorizeForward(client, packet) {
      // Basic Ingest goes to its rule only, never to a subscriber (the observer still sees it).
      if (BASIC_INGEST.test(packet.topic)) return null;
      const s = sessions.get(client);
      if (!s || !auth.isActive(s) || !auth.canReceive(s, packet.topic)) return null;
      // A Jobs answer is handed to the client that asked, subscribed or not (it never goes to others);
      // a Jobs request goes to the Jobs service only.
      if (isJobsAnswer(packet.topic)) return packet;
      if (isJobsRequest(packet.topic)) return null;
      // File delivery answers likewise go to the asker only; requests go to the streams service only.
      if (isStreamsAnswer(packet.topic)) return packet;
      if (isStreamsRequest(packet.topic)) return null;
      // MQTT lets `a/#` match `a` itself; IoT Core does not: deliver only what a filter matches there.
      const filters = filtersOf(client);
      if (!filters.some((f) => iotCoreMatches(f, packet.topic))) return null;
      return packet;
    },

    published(packet, client, done) {
      if (client && !packet.topic.startsWith('$SYS/')) {
        opts.onMessage({ topic: packet.topic, payload: toBuffer(packet), qos: packet.qos === 0 ? 0 : 1 });
        // The shadow service answers an update on its own topics (to subscribers the policy lets receive them).
        for (const a of shadows.handle(packet.topic, toBuffer(packet)) ?? []) {
          broker.publish({ cmd: 'publish', topic: a.topic, payload: a.payload, qos: 1, retain: false, dup: false }, () => undefined);
        }
        for (const a of [...(jobTopics.handle(packet.topic, toBuffer(packet)) ?? []), ...(streamTopics.handle(packet.topic, toBuffer(packet)) ?? [])]) {
          client.publish({ cmd: 'publish', topic: a.topic, payload: a.payload, qos: packet.qos === 0 ? 0 : 1, retain: false, dup: false }, () => undefined);
        }
      }
      done(null);
    },
  });
  // notify and notify-next go to the thing's subscribers whenever its pending executions change.
  // Published on the next turn: the answer to the request that caused the change is handed over first,
  // and aedes drops a packet older (by its broker counter) than one the client already got.
  const onJobsChanged = (thing: string) =>
    setImmediate(() => {
      for (const n of jobTopics.notifications(thing)) broker.publish({ cmd: 'publish', topic: n.topic, payload: n.payload, qos: 1, retain: false, dup: false }, () => undefined);
    });
  opts.jobs.on('pendingChanged', onJobsChanged);
  broker.on('clientError', (client, err) => logger.debug?.({ clientId: client.id, err: err.message }, 'sandbox data plane: client error'));
  await broker.listen();

  function track(client: Client, s: Session): void {
    sessions.set(client, s);
    let set = byCertificate.get(s.certificateId);
    if (!set) byCertificate.set(s.certificateId, (set = new Set()));
    set.add(client);
    const live = liveById.get(client.id) ?? 0;
    if (live > 0) takeovers++;
    liveById.set(client.id, live + 1);
    client.conn.once('close', () => {
      const left = (liveById.get(client.id) ?? 1) - 1;
      if (left > 0) liveById.set(client.id, left);
      else liveById.delete(client.id);
      set.delete(client);
      if (set.size === 0 && byCertificate.get(s.certificateId) === set) byCertificate.delete(s.certificateId);
    });
  }

  // IoT Core drops live connections when their certificate is deactivated.
  const onDisabled = (certificateId: string) => {
    for (const client of byCertificate.get(certificateId) ?? []) {
      refuse(client, `certificate ${certificateId} deactivated`);
      client.close();
    }
  };
  registry.on('certificateDisabled', onDisabled);

  const sockets = new Set<Socket>();
  const server = createServer(
    { key: opts.tls.key, cert: opts.tls.cert, ca: [opts.tls.ca], requestCert: true, rejectUnauthorized: true, minVersion: 'TLSv1.2' },
    (socket) => broker.handle(socket),
  );
  server.on('connection', (socket: Socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
  });
  server.on('tlsClientError', (err) => logger.debug?.({ err: err.message }, 'sandbox data plane: TLS handshake failed'));
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port, opts.host, () => {
      server.off('error', reject);
      resolve();
    });
  });

  return {
    port: (server.address() as AddressInfo).port,
    takeovers: () => takeovers,
    connections: () =>
      [...byCertificate.values()].flatMap((set) =>
        [...set]
          .filter((c) => c.connected)
          .map((c) => ({
            clientId: c.id,
            certificateId: sessions.get(c)!.certificateId,
            subscriptions: filtersOf(c),
          })),
      ),
    async close() {
      registry.off('certificateDisabled', onDisabled);
      opts.jobs.off('pendingChanged', onJobsChanged);
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      await new Promise<void>((resolve) => broker.close(() => resolve()));
      for (const s of sockets) s.destroy();
      await closed;
    },
  };
}

/**
 * IoT Core has no QoS 2: a QoS 2 subscription is granted QoS 1. aedes builds
 * the SUBACK from the requested QoS before authorizeSubscribe can lower it, so
 * lower it as the packet leaves the parser (aedes' private `_parser`; if that
 * ever changes, deliveries are still capped by authorizeSubscribe).
 */
function capSubscribeQos(client: Client): void {
  const parser = (client as unknown as { _parser?: EventEmitter })._parser;
  parser?.prependListener('packet', (packet: { cmd: string; subscriptions?: { qos: number }[] }) => {
    if (packet.cmd !== 'subscribe') return;
    for (const sub of packet.subscriptions ?? []) if (sub.qos > 1) sub.qos = 1;
  });
}

/**
 * IoT Core's per-connection quotas (100 publishes and 512 KiB per second): a publish beyond them is
 * dropped without PUBACK and the connection stays, so the sender's operation times out. Counted over
 * the last second of arrivals, ahead of aedes (its parser's private `_parser`, as capSubscribeQos).
 */
function enforcePublishQuota(client: Client, quota: PublishQuota, onDrop: (reason: string) => void): void {
  const parser = (client as unknown as { _parser?: EventEmitter })._parser;
  if (!parser) return;
  const recent: { at: number; bytes: number }[] = [];
  let bytes = 0;
  const listeners = parser.listeners('packet') as ((packet: unknown) => void)[];
  parser.removeAllListeners('packet');
  parser.on('packet', (packet: { cmd: string; topic?: string; payload?: Buffer | string }) => {
    if (packet.cmd === 'publish') {
      const now = performance.now();
      while (recent.length > 0 && recent[0]!.at <= now - 1000) bytes -= recent.shift()!.bytes;
      const size = Buffer.byteLength(packet.payload ?? '') + Buffer.byteLength(packet.topic ?? '');
      if (recent.length >= quota.perSecond || bytes + size > quota.bytesPerSecond) {
        onDrop(recent.length >= quota.perSecond ? `more than ${quota.perSecond} publishes in a second: dropped without PUBACK` : `more than ${quota.bytesPerSecond} bytes in a second: dropped without PUBACK`);
        return;
      }
      recent.push({ at: now, bytes: size });
      bytes += size;
    }
    for (const l of listeners) l.call(parser, packet);
  });
}

/** A topic filter matching a topic as IoT Core matches it: `+` one level, `#` one or more trailing levels (never the parent alone). */
export function iotCoreMatches(filter: string, topic: string): boolean {
  const f = filter.split('/');
  const t = topic.split('/');
  for (let i = 0; i < f.length; i++) {
    if (f[i] === '#') return t.length > i;
    if (i >= t.length || (f[i] !== '+' && f[i] !== t[i])) return false;
  }
  return f.length === t.length;
}

function toBuffer(packet: AedesPublishPacket | PublishPacket): Buffer {
  return Buffer.isBuffer(packet.payload) ? packet.payload : Buffer.from(packet.payload);
}

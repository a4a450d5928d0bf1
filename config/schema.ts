import { z } from 'zod';
import { adminSection, privacySection } from './admin.ts';
import { batchingSection } from './batching.ts';
import { eventsSection } from './events.ts';
import { filesSection } from './files.ts';
import { jobsSection } from './jobs.ts';
import { identityFindings, identitySection, identitySource, radiusSection } from './identity.ts';
import { coapEnabled, coapListenerSection, udpGroupKeys, udpListenerSection } from './lowpower.ts';
import { vendingSection } from './vending.ts';

// Every limit, threshold, timeout and port lives here with its default and a one-line description.
// AWS IoT Core quotas follow the AWS IoT Core quotas page; accounts differ, so all are overridable.

const port = z.number().int().min(0).max(65535);
const host = z.string().min(1);

export const lockModes = ['locked', 'first-contact', 'any'] as const;
export type LockMode = (typeof lockModes)[number];

const group = z
  .object({
    upstreamTopic: z
      .string()
      .default('devices/{thing}/{topic}')
      .describe('upstream topic template; placeholders {thing} {imsi} {imei} {topic}'),
    lock: z
      .enum(lockModes)
      .default('first-contact')
      .describe('IMEI lock: locked = must match the bound IMEI; first-contact = bind the first IMEI seen; any = no lock'),
    requireSecret: z.boolean().default(false).describe('claimed identity must present the SIM\'s secret (MQTT password / HTTP bearer)'),
    bindClaimedImei: z.boolean().default(false).describe('first-contact lock: an IMEI the device only claims (claimed identity) may bind the SIM; off, an installer, an import or the network binds it'),
    httpDownlink: z
      .object({
        topics: z.array(z.string()).default([]).describe('device topic filters subscribed for HTTP devices (e.g. commands/#); messages wait for their next request'),
        maxMessages: z.number().int().positive().default(20).describe('most messages held per HTTP device; the oldest is dropped (audited) past it'),
        ttlMs: z.number().int().positive().default(86_400_000).describe('how long a held message waits for its device'),
        holdMs: z.number().int().positive().default(3_600_000).describe('how long the subscriptions stay after the device\'s last request'),
      })
      .strict()
      .prefault({}),
    mqttSessions: z
      .object({
        maxExpirySeconds: z.number().int().min(0).default(86_400).describe('longest an MQTT session outlives its connection (3.1.1 cleanSession=0 gets this; MQTT 5 session expiry is cut to it); 0 = no persistent sessions'),
        maxMessages: z.number().int().positive().default(20).describe('most QoS 1 commands kept per sleeping MQTT session; the oldest is dropped (audited) past it'),
        ttlMs: z.number().int().positive().default(86_400_000).describe('how long a kept command waits for its device; never sent after it, MQTT 5 devices are told the time left'),
      })
      .strict()
      .prefault({}),
    batching: batchingSection,
    overflow: z
      .enum(['reject-new', 'drop-oldest'])
      .default('reject-new')
      .describe('a device or the gateway at its outbox limit: refuse new messages, or drop the device\'s oldest (audited)'),
    revokeOnImeiViolation: z.boolean().default(false).describe('deactivate the SIM\'s certificate in IoT Core when its IMEI lock is violated'),
    connectivity: z.boolean().default(false).describe('report online/offline, IP, RAT and last seen in the thing\'s shadow'),
    sleepingJobs: z
      .boolean()
      .optional()
      .describe('HTTP and CoAP devices get their pending IoT Jobs in the answer to their uplink and report with POST /v1/jobs/{jobId} (CoAP: /jobs/{jobId}); each fetch is a few billed messages on the device\'s session. Off by default'),
    httpJobs: z.boolean().optional().describe('the former name of sleepingJobs, still accepted; sleepingJobs wins when both are set'),
    basicIngest: z
      .object({
        rule: z
          .string()
          .regex(/^[a-zA-Z0-9_]{1,128}$/, 'an IoT rule name: letters, digits and _, at most 128')
          .describe('the IoT rule the group\'s uplink and batches go to, as $aws/rules/{rule}/<topic> (Basic Ingest: no messaging charge)'),
      })
      .strict()
      .optional()
      .describe('Basic Ingest: publish this group\'s uplink straight to one IoT rule; no device or rule can subscribe to it'),
    ...udpGroupKeys,
  })
  .strict();

export const configSchema = z
  .object({
    mode: z
      .enum(['sandbox', 'aws'])
      .default('sandbox')
      .describe('sandbox = start the local IoT Core stand-in and point vending and upstream at it'),
    dataDir: z.string().default('./data').describe('directory of the database and sandbox state'),
    listeners: z
      .object({
        mqtt: z
          .object({
            host: host.default('0.0.0.0').describe('address devices reach over MQTT'),
            port: port.default(1883).describe('device MQTT port (plain)'),
            identity: identitySource.default('claimed'),
            connectTimeoutMs: z.number().int().positive().default(30_000).describe('time a device has to send CONNECT'),
            maxConnectionsPerAddress: z.number().int().positive().default(64).describe('most open connections from one source address; past it CONNACK 3 (server unavailable)'),
            maxConnectionsPerSim: z.number().int().positive().default(4).describe('most connections one SIM holds (a reconnect with the same client id replaces its old one); past it CONNACK 3'),
            maxKeepAliveSeconds: z.number().int().positive().max(65535).default(1200).describe('longest keepalive honoured; a longer one is cut to this (the connection closes after 1.5 x this of silence)'),
            keepAliveZero: z.enum(['limit', 'refuse']).default('limit').describe('keepalive 0 (never time out): limit = treat as maxKeepAliveSeconds; refuse = CONNACK 5'),
            maxPacketBytes: z.number().int().min(1024).max(268_435_455).default(133_120).describe('largest MQTT packet a device may send (advertised to MQTT 5 devices as Maximum Packet Size); a larger one closes the connection (MQTT 5: DISCONNECT 0x95)'),
            maxConnectsPerAddressPerSecond: z.number().min(0).default(50).describe('new connections one source address may open per second (bursts of twice that); past it CONNACK 3 (MQTT 5: 0x9F); 0 = no limit'),
            receiveMaximum: z.number().int().min(1).max(65_535).default(100).describe('QoS 1 publishes a device may have waiting for their PUBACK (advertised as Receive Maximum); 3.1.1 devices past it wait, MQTT 5 devices get DISCONNECT 0x93'),
            topicAliasMaximum: z.number().int().min(0).max(65_535).default(16).describe('topic aliases an MQTT 5 device may set on its connection (0: none); alias 0 or above it gets DISCONNECT 0x94'),
          })
          .strict()
          .prefault({}),
        http: z
          .object({
            host: host.default('0.0.0.0').describe('address devices reach over HTTP'),
            port: port.default(8080).describe('device HTTP port (plain)'),
            identity: identitySource.default('claimed'),
            maxConnectionsPerAddress: z.number().int().positive().default(256).describe('most open connections from one source address; past it 503'),
            headersTimeoutMs: z.number().int().positive().default(20_000).describe('time a request has to send its headers'),
            requestTimeoutMs: z.number().int().positive().default(60_000).describe('time a request has to arrive whole, body included (raise for large bodies over slow links); then 408'),
            idleTimeoutMs: z.number().int().positive().default(15_000).describe('longest silence inside a request (a stalled body); then 408'),
          })
          .strict()
          .prefault({}),
        coap: coapListenerSection,
        udp: udpListenerSection,
      })
      .strict()
      .prefault({}),
    sims: z
      .object({
        unknown: z
          .enum(['register', 'reject'])
          .default('register')
          .describe('a SIM not in the registry: register it on first contact, or refuse it'),
        defaultGroup: z.string().default('default').describe('group given to SIMs registered on first contact'),
      })
      .strict()
      .prefault({}),
    groups: z
      .record(z.string(), group)
      .default({ default: group.parse({}) })
      .describe('SIM groups and their settings'),
    identity: identitySection,
    radius: radiusSection,
    jobs: jobsSection,
    files: filesSection,
    events: eventsSection,
    limits: z
      .object({
        maxPayloadBytes: z.number().int().positive().max(131072).default(131072).describe('largest device payload (IoT Core: 128 KB)'),
        maxTopicBytes: z.number().int().positive().max(256).default(256).describe('longest upstream topic in bytes (IoT Core: 256)'),
        maxTopicLevels: z.number().int().positive().max(8).default(8).describe('most topic levels upstream (IoT Core: 8)'),
        maxClientIdBytes: z.number().int().positive().max(128).default(128).describe('longest client id / thing name (IoT Core: 128)'),
      })
      .strict()
      .prefault({}),
    storage: z
      .object({
        url: z
          .string()
          .regex(/^postgres(ql)?:\/\//, 'expected a postgres:// connection string')
          .optional()
          .describe('postgres://user:password@host:port/database: keep every kind of state in this PostgreSQL database, shared by several nodes, instead of SQLite in dataDir (docs/storage.md, docs/cluster.md)'),
        maxConnections: z.number().int().positive().default(10).describe('PostgreSQL connections this node keeps open (storage.url)'),
        connectTimeoutMs: z.number().int().positive().default(10_000).describe('time to wait for a PostgreSQL connection (storage.url)'),
        synchronous: z.enum(['full', 'normal']).default('full').describe('full survives power loss; normal only a process crash'),
        commitMaxRows: z.number().int().positive().default(1000).describe('group commit: most rows in one transaction'),
        deleteDelayMs: z.number().int().min(0).max(1000).default(20).describe('SQLite: deletes of delivered rows wait up to this long for the next commit of new rows, rather than a commit of their own (0: at once; PostgreSQL commits them at once, so another node taking a SIM over finds them gone)'),
        cacheMb: z.number().int().positive().default(64).describe('SQLite page cache per connection, MiB (the outbox index of a busy fleet should fit)'),
        deliveryCacheMb: z.number().int().min(0).default(32).describe('payload of just-committed outbox rows kept in memory so delivery need not read them back from disk, MiB'),
        minFreeMb: z.number().int().min(0).default(128).describe('/readyz reports not ready while the data directory\'s file system has less free space than this, MiB'),
        outbox: z
          .object({
            maxRows: z.number().int().positive().default(1_000_000).describe('most messages waiting in the outbox in all'),
            maxBytes: z.number().int().positive().default(1024 ** 3).describe('most payload bytes waiting in the outbox in all'),
            perDeviceMaxRows: z.number().int().positive().default(10_000).describe('most messages waiting for one device'),
            perDeviceMaxBytes: z.number().int().positive().default(16 * 1024 ** 2).describe('most payload bytes waiting for one device'),
          })
          .strict()
          .prefault({}),
      })
      .strict()
      .prefault({}),
    security: z
      .object({
        masterKeyFile: z
          .string()
          .optional()
          .describe('file holding the 32-byte key that encrypts private keys (hex or base64); SIMBRIDGE_MASTER_KEY wins'),
        previousMasterKeyFiles: z
          .array(z.string())
          .default([])
          .describe('while rotating the master key: the files of keys private keys may still be sealed under (docs/deploy.md)'),
      })
      .strict()
      .prefault({}),
    vending: vendingSection,
    upstream: z
      .object({
        endpoint: z.string().optional().describe('IoT Core data endpoint (host); omit to ask DescribeEndpoint'),
        port: port.default(8883).describe('IoT Core MQTT over TLS port'),
        caFile: z.string().optional().describe('CA bundle the upstream must chain to; omit for the Amazon Trust Services roots IoT Core uses'),
        keepAliveSeconds: z.number().int().min(30).max(1200).default(300).describe('MQTT keepalive (IoT Core: 30-1200 s)'),
        connectTimeoutMs: z.number().int().positive().default(10_000).describe('time to establish an upstream session'),
        operationTimeoutMs: z.number().int().positive().default(15_000).describe('time to wait for a PUBACK, SUBACK or PINGRESP'),
        maxInflight: z.number().int().positive().max(100).default(100).describe('QoS 1 publishes in flight per session (IoT Core: 100)'),
        maxSessions: z.number().int().positive().default(5000).describe('most upstream sessions open at once; past it the least recently used idle one closes'),
        idleTimeoutMs: z.number().int().positive().default(300_000).describe('an upstream session unused this long, without subscriptions, closes'),
        connectsPerSecond: z.number().positive().max(500).default(100).describe('account-wide upstream CONNECT rate (IoT Core: 500/s, 100/s in some regions)'),
        minConnectIntervalMs: z.number().int().min(0).default(1000).describe('least time between connects of one client id (IoT Core: 1 per second)'),
        publishesPerSecond: z.number().positive().max(100).default(100).describe('publishes per second per session (IoT Core: 100)'),
        bytesPerSecond: z.number().int().positive().max(524288).default(524288).describe('bytes per second per session (IoT Core: 512 KiB/s)'),
        publishBurst: z
          .number()
          .int()
          .positive()
          .default(5)
          .describe('publishes a session may send at once; the rest follow at publishesPerSecond less this and a tenth, so no second exceeds the quota'),
        maxSubscriptions: z.number().int().positive().max(50).default(50).describe('subscriptions per session (IoT Core: 50)'),
        client: z
          .enum(['node', 'aws-crt'])
          .default('node')
          .describe('MQTT client of the upstream sessions: node = Node.js TLS on the upstream.threads connection threads (0: the main event loop); aws-crt = the AWS IoT Device SDK v2'),
        threads: z
          .number()
          .int()
          .min(0)
          .max(64)
          .default(1)
          .describe('threads holding the upstream connections, dealt round-robin; 0 = the main event loop (node client only: least CPU per message, but every TLS handshake on it)'),
        maxDeliveryAttempts: z.number().int().positive().default(5).describe('times IoT Core may refuse one message before it goes to the dead letters'),
        propagationGraceMs: z
          .number()
          .int()
          .min(0)
          .default(600_000)
          .describe('refusals this soon after a SIM was vended or its group\'s policy changed do not count toward maxDeliveryAttempts (IoT Core takes minutes to apply such changes)'),
        shadowAnswerWaitMs: z
          .number()
          .int()
          .positive()
          .default(30_000)
          .describe('how long a device\'s session listens for the shadow service refusing a connectivity update'),
        retryDelayMs: z.number().int().positive().default(1000).describe('first delay before retrying a failed session'),
        retryMaxDelayMs: z.number().int().positive().default(30_000).describe('longest delay between session retries'),
        startupCheckMs: z.number().int().positive().default(5_000).describe('how long start waits for IoT Core to answer DescribeEndpoint before warning'),
        healthRetryMs: z.number().int().positive().default(30_000).describe('while IoT Core does not answer, how often it is asked again (readiness)'),
      })
      .strict()
      .prefault({})
      .refine((u) => u.client === 'node' || u.threads !== 0, { path: ['threads'], message: 'the aws-crt client runs on threads of its own: at least 1' }),
    admin: adminSection,
    privacy: privacySection,
    sandbox: z
      .object({
        host: host.default('127.0.0.1').describe('address the embedded sandbox binds'),
        controlPort: port.default(4443).describe('sandbox control plane (AWS IoT REST API) port'),
        dataPort: port.default(8883).describe('sandbox data plane (MQTT over mutual TLS) port'),
        observerPort: port.default(1884).describe('sandbox observer port: plain MQTT, read-only, shows every message'),
        partition: z
          .enum(['aws', 'aws-cn', 'aws-us-gov'])
          .optional()
          .describe('ARN partition the sandbox plays; omit to follow vending.region (cn-* = aws-cn, us-gov-* = aws-us-gov)'),
        refusedSubscribe: z
          .enum(['close', 'suback'])
          .default('close')
          .describe('a refused SUBSCRIBE: close the connection (IoT Core over MQTT 3.1.1) or answer SUBACK 0x80 (lenient)'),
        publishQuota: z
          .object({
            perSecond: z.number().int().positive().default(100).describe('publishes per connection in any second (IoT Core: 100)'),
            bytesPerSecond: z.number().int().positive().default(524288).describe('bytes per connection in any second (IoT Core: 512 KiB)'),
          })
          .strict()
          .nullable()
          .prefault({})
          .describe('per-connection inbound quota; the excess is dropped without PUBACK, as on IoT Core; null = none'),
        propagation: z
          .object({
            certificatesMs: z.number().int().min(0).default(0).describe('delay before the data plane sees a certificate created, activated, deactivated or deleted (IoT Core: up to minutes)'),
            attachmentsMs: z.number().int().min(0).default(0).describe('delay before the data plane sees a policy or thing attached or detached (IoT Core: seconds)'),
            policyVersionsMs: z.number().int().min(0).default(0).describe('delay before the data plane sees a new default policy version (IoT Core: 6-8 minutes)'),
          })
          .strict()
          .prefault({})
          .describe('how late the sandbox data plane learns of control-plane changes, as IoT Core does; 0 = at once'),
      })
      .strict()
      .prefault({}),
    cluster: z
      .object({
        nodeId: z.string().min(1).max(200).optional().describe('this node\'s name among the nodes sharing storage.url (env SIMBRIDGE_NODE_ID); default the host name and MQTT port'),
        heartbeatMs: z.number().int().positive().default(1000).describe('how often a node on PostgreSQL renews its heartbeat and looks for dead nodes\' SIMs'),
        leaseMs: z.number().int().positive().default(5000).describe('a node whose heartbeat is older (database clock) is dead: its SIMs move to the others'),
        takeoverBatch: z.number().int().positive().default(5000).describe('SIMs of dead nodes one node takes over per heartbeat'),
        handOverMs: z.number().int().positive().default(5000).describe('how long a node waits for another to hand over the SIM of a device talking to it (MQTT connected, or an HTTP, CoAP or UDP request needing its thing\'s session)'),
        quotaRefreshMs: z.number().int().positive().default(1000).describe('how old a node\'s count of a SIM held by another node may be when it checks that SIM\'s outbox quotas'),
      })
      .strict()
      .prefault({})
      .refine((c) => c.leaseMs >= 3 * c.heartbeatMs, { message: 'leaseMs must be at least three heartbeats' }),
    shutdown: z
      .object({
        graceMs: z.number().int().positive().default(5000).describe('time to finish in-flight work on SIGTERM'),
        flushDeadlineMs: z.number().int().min(0).default(5000).describe('time to send open batches on SIGTERM; what is left stays durable'),
      })
      .strict()
      .prefault({}),
    log: z
      .object({
        level: z.enum(['trace', 'debug', 'info', 'warn', 'error', 'silent']).default('info').describe('log level'),
      })
      .strict()
      .prefault({}),
  })
  .strict()
  .superRefine((c, ctx) => {
    if (!c.groups[c.sims.defaultGroup]) {
      ctx.addIssue({ code: 'custom', path: ['sims', 'defaultGroup'], message: `group "${c.sims.defaultGroup}" is not defined under groups` });
    }
    const listening = { mqtt: true, http: true, coap: coapEnabled(c), udp: c.listeners.udp.enabled };
    for (const listener of ['mqtt', 'http', 'coap', 'udp'] as const) {
      if (listening[listener] && c.listeners[listener].identity === 'radius' && !c.radius.enabled) {
        ctx.addIssue({ code: 'custom', path: ['listeners', listener, 'identity'], message: 'radius identity needs radius.enabled: true' });
      }
    }
    for (const f of identityFindings(c)) if (f.severity === 'refused') ctx.addIssue({ code: 'custom', path: f.path, message: f.message });
    if (c.listeners.http.headersTimeoutMs > c.listeners.http.requestTimeoutMs) {
      ctx.addIssue({ code: 'custom', path: ['listeners', 'http', 'headersTimeoutMs'], message: 'must not exceed listeners.http.requestTimeoutMs' });
    }
  });

export type Config = z.infer<typeof configSchema>;
export type GroupConfig = z.infer<typeof group>;

import type { Logger } from 'pino';
import type { Registry } from 'prom-client';
import type { z } from 'zod';
import type { adminSection } from '../config/admin.ts';
import type { LockMode } from '../config/schema.ts';
import type { AuditLog } from '../storage/audit.ts';
import type { Db } from '../storage/db.ts';
import type { Stores } from '../storage/index.ts';
import type { SimStore } from '../storage/sims.ts';

export type AdminConfig = z.infer<typeof adminSection>;

/** Where a device's upstream session (its MQTT connection to IoT Core) stands, as the gateway knows it. */
export interface UpstreamState {
  /** e.g. connected, connecting, backoff, closed */
  state: string;
  /** ms since epoch when it entered that state */
  since?: number;
  detail?: string;
}

/** One gateway node as GET /v1/cluster shows it. */
export interface ClusterNodeView {
  nodeId: string;
  alive: boolean;
  /** How old its last heartbeat is, by the database's clock. */
  heartbeatAgeMs: number;
  /** ISO 8601. */
  startedAt: string;
  simsOwned: number;
  /** Upstream sessions it holds, as of its last heartbeat. */
  upstreamSessions: number | null;
  outboxRows: number;
}

/** The nodes sharing this gateway's database (one, on SQLite). */
export interface ClusterView {
  storage: 'sqlite' | 'postgres';
  /** The node answering. */
  node: string;
  nodes: ClusterNodeView[];
}

/** The stores the admin surface reads and changes. */
export type AdminStores = Pick<Stores, 'sims' | 'audit' | 'credentialReads' | 'networkSessions' | 'outboxStats' | 'retention' | 'tokens'>;

/** What the admin surface reads from and acts on in the running gateway. */
export interface AdminDeps {
  /** The gateway's stores. */
  stores?: AdminStores;
  /** Without `stores`, a standalone admin server: SQLite stores are built over this database. */
  db?: Db;
  /** Not read: stores (or db) supply the registry and the audit log. Kept so older callers still compile. */
  sims?: SimStore;
  audit?: AuditLog;
  metrics: Registry;
  log: Logger;
  /** True when the database is open and every listener is up. */
  /** reasons: why each failed check failed; warnings: what runs but is unsafe (e.g. identity.allowInsecureClaims in effect). */
  ready(): { ok: boolean; checks: Record<string, boolean>; reasons?: Record<string, string>; warnings?: string[] };
  /** The configured SIM groups and their IMEI lock mode (functions: the configuration may reload). */
  groups(): Record<string, { lock: LockMode }>;
  /** Group of SIMs imported or created without one. */
  defaultGroup(): string;
  /** Thing name of a new SIM (config vending.thingName). */
  thingName(imsi: string, group: string): string;
  /** Revokes the SIM's certificate (deactivates it in IoT Core); called when a SIM is terminated. */
  revoke?(imsi: string, reason: string): Promise<void>;
  /** The device's upstream session, by thing name. */
  upstreamState?(thing: string): UpstreamState | undefined;
  /** True while the device holds a connection to a device listener. */
  connected?(imsi: string): boolean;
  /** The nodes sharing the database (GET /v1/cluster). */
  cluster?(): Promise<ClusterView>;
  /** Mask identifiers in the admin server's own logs (config privacy.maskIdentifiers); default true. */
  maskIdentifiers?: boolean;
}

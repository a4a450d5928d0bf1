import { readFileSync } from 'node:fs';
import swagger from '@fastify/swagger';
import Fastify, { LogController, type FastifyBaseLogger, type FastifyError } from 'fastify';
import { Counter } from 'prom-client';
import { AddressTable } from '../lib/address-table.ts';
import { sqliteStores } from '../storage/index.ts';
import { FailureLimiter } from './auth/failure-limiter.ts';
import { installGuard } from './auth/guard.ts';
import type { AdminContext } from './context.ts';
import { maskingLoggerOptions, maskPath } from './mask.ts';
import { startRetention } from './retention.ts';
import { auditRoutes } from './routes/audit.ts';
import { clusterRoutes } from './routes/cluster.ts';
import { healthRoutes } from './routes/health.ts';
import { imeiRoutes } from './routes/imei.ts';
import { importRoutes } from './routes/import.ts';
import { installerRoutes } from './routes/installer.ts';
import { lookupRoutes } from './routes/lookup.ts';
import { metaRoutes } from './routes/meta.ts';
import { retentionRoutes } from './routes/retention.ts';
import { secretRoutes } from './routes/secret.ts';
import { simRoutes } from './routes/sims.ts';
import { statsRoutes } from './routes/stats.ts';
import { sharedSchemas } from './schemas.ts';
import type { AdminConfig, AdminDeps, AdminStores } from './types.ts';

export type { AdminConfig, AdminDeps, AdminStores, UpstreamState } from './types.ts';

export interface AdminServer {
  port: number;
  close(): Promise<void>;
}

/**
 * Starts the admin server on its own address: the admin API (bearer tokens with roles), the installer
 * page, /metrics, health, the OpenAPI document, and the retention job.
 */
export async function startAdmin(config: AdminConfig, deps: AdminDeps): Promise<AdminServer> {
  const log = deps.maskIdentifiers === false ? deps.log : deps.log.child({}, maskingLoggerOptions(true));
  const trusted = new AddressTable<true>();
  for (const proxy of config.trustProxy) trusted.add(proxy, true);
  const app = Fastify({
    // Only listed proxies may say who the client is (X-Forwarded-For); anyone else is its own socket address.
    trustProxy: trusted.size ? (address: string) => trusted.lookup(address) === true : false,
    ...(config.tls ? { https: { cert: readFileSync(config.tls.certFile), key: readFileSync(config.tls.keyFile) } } : {}),
    // pino's Logger and fastify's base logger type differ only in generics; the instance is the same.
    loggerInstance: log as FastifyBaseLogger,
    // Request lines would carry IMSIs in URLs; failures are audited and errors logged (masked) instead.
    logController: new LogController({ disableRequestLogging: true }),
    // JSON bodies here are small; the CSV import streams and is not bound by this.
    bodyLimit: 256 * 1024,
    ajv: { customOptions: { removeAdditional: false, coerceTypes: 'array' } },
  });
  await app.register(swagger, {
    openapi: {
      info: { title: 'simbridge admin API', version: '1', description: 'SIM registry, IMEI binding, audit log and fleet status. Bearer tokens: installer or operator.' },
      components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } } },
    },
  });
  for (const s of sharedSchemas) app.addSchema(s);

  const stores: AdminStores | undefined = deps.stores ?? (deps.db ? sqliteStores(deps.db) : undefined);
  if (!stores) throw new Error('admin: give stores or db');
  const authFailures = new Counter({
    name: 'simbridge_admin_auth_failures_total',
    help: 'admin API requests refused for a missing or wrong token or too low a role',
    labelNames: ['reason'] as const,
    registers: [deps.metrics],
  });
  const retentionDeleted = new Counter({
    name: 'simbridge_retention_deleted_rows_total',
    help: 'rows deleted by the retention job, by table',
    labelNames: ['table'] as const,
    registers: [deps.metrics],
  });
  const routes = installGuard(app, {
    tokens: stores.tokens,
    audit: stores.audit,
    limiter: new FailureLimiter(config.auth.maxFailures, config.auth.failureWindowSeconds * 1000),
    failures: authFailures,
  });
  const retention = startRetention(stores.retention, config.retention, log.child({ job: 'retention' }), (table, n) => retentionDeleted.inc({ table }, n));
  const ctx: AdminContext = { deps, config, stores, routes, retention, log };

  app.setErrorHandler((err: FastifyError, req, reply) => {
    if (err.validation) return reply.code(400).send({ error: 'invalid_request', message: err.message });
    if (err.statusCode && err.statusCode < 500) return reply.code(err.statusCode).send({ error: (err.code ?? 'bad_request').toLowerCase(), message: err.message });
    log.error({ err, method: req.method, url: maskPath(req.url) }, 'admin request failed');
    return reply.code(500).send({ error: 'internal', message: 'internal error; see the gateway log' });
  });
  app.setNotFoundHandler((req, reply) => reply.code(404).send({ error: 'not_found', message: `no route ${req.method} ${req.url.split('?')[0]}` }));

  for (const plugin of [
    healthRoutes(ctx),
    metaRoutes(ctx),
    installerRoutes(),
    simRoutes(ctx),
    imeiRoutes(ctx),
    secretRoutes(ctx),
    lookupRoutes(ctx),
    importRoutes(ctx),
    auditRoutes(ctx),
    statsRoutes(ctx),
    clusterRoutes(ctx),
    retentionRoutes(ctx),
  ]) {
    await app.register(plugin);
  }

  try {
    await app.listen({ host: config.host, port: config.port });
  } catch (err) {
    retention.stop();
    throw err;
  }
  const address = app.server.address();
  return {
    port: typeof address === 'object' && address ? address.port : config.port,
    async close() {
      retention.stop();
      await app.close();
    },
  };
}

import type { IncomingMessage } from 'node:http';
import type { FastifyPluginAsync } from 'fastify';
import { actor, type AdminContext } from '../context.ts';
import { CSV_COLUMNS, ImportFileError, importSimsCsv } from '../csv-import.ts';
import { authErrors, errorRef } from '../schemas.ts';

const report = {
  type: 'object',
  properties: {
    rows: { type: 'integer' },
    created: { type: 'integer' },
    updated: { type: 'integer' },
    unchanged: { type: 'integer' },
    failed: { type: 'integer' },
    errors: {
      type: 'array',
      items: {
        type: 'object',
        required: ['line', 'message'],
        properties: { line: { type: 'integer' }, imsi: { type: 'string' }, field: { type: 'string' }, message: { type: 'string' } },
      },
    },
    errorsTruncated: { type: 'boolean' },
    dryRun: { type: 'boolean' },
    seconds: { type: 'number' },
  },
} as const;

/** Bulk SIM import from CSV, streamed: the body is never held whole in memory. */
export function importRoutes(ctx: AdminContext): FastifyPluginAsync {
  const { deps, stores } = ctx;
  return async (app) => {
    // Hand the request stream to the route as is; the importer parses it as it arrives.
    app.addContentTypeParser(['text/csv', 'text/plain'], (_req, payload, done) => done(null, payload));

    app.post<{ Querystring: { force: boolean; dryRun: boolean } }>(
      '/v1/sims/import',
      {
        config: { access: 'operator' },
        schema: {
          tags: ['sims'],
          summary: `import SIMs from CSV (${CSV_COLUMNS.join(',')}; tags as k=v;k2=v2; secret stored hashed): upserts valid rows, reports every other by line`,
          security: [{ bearer: [] }],
          querystring: {
            type: 'object',
            additionalProperties: false,
            properties: {
              force: { type: 'boolean', default: false, description: 'replace IMEI bindings to other devices' },
              dryRun: { type: 'boolean', default: false, description: 'check everything, change nothing' },
            },
          },
          body: {
            content: {
              'text/csv': { schema: { description: `CSV, header first: ${CSV_COLUMNS.join(',')}` } },
            },
          },
          response: { 200: report, 400: errorRef, ...authErrors },
        },
      },
      async (req, reply) => {
        const who = actor(req);
        // The audit rows of IMEIs the import binds, written as each row is (in its batch's SQLite transaction).
        const bindings: Promise<void>[] = [];
        try {
          const result = await importSimsCsv(req.body as IncomingMessage, {
            sims: stores.sims,
            isGroup: (g) => Boolean(deps.groups()[g]),
            defaultGroup: deps.defaultGroup(),
            thingName: deps.thingName,
            batchRows: ctx.config.import.batchRows,
            maxReportedErrors: ctx.config.import.maxReportedErrors,
            maxLineBytes: ctx.config.import.maxLineBytes,
            force: req.query.force,
            dryRun: req.query.dryRun,
            onImeiBound: (imsi, imei, previous) => void bindings.push(stores.audit.record('imei_bound', imsi, { imei, previous, via: 'import', ...who })),
            onSecretSet: (imsi) => void bindings.push(stores.audit.record('secret_set', imsi, { via: 'import', ...who })),
          });
          await Promise.all(bindings);
          if (!result.dryRun) {
            const { errors: _errors, ...counts } = result;
            await stores.audit.record('sims_imported', null, { ...counts, ...who });
          }
          return result;
        } catch (err) {
          await Promise.allSettled(bindings);
          if (err instanceof ImportFileError) return reply.code(400).send({ error: 'invalid_csv', message: err.message });
          throw err;
        }
      },
    );
  };
}

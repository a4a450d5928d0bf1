import { z } from 'zod';

/** The admin API, installer page, metrics and health endpoints. */
export const adminSection = z
  .object({
    enabled: z.boolean().default(true).describe('serve the admin API, installer page, /metrics and health'),
    host: z.string().default('127.0.0.1').describe('address the admin server binds (never the device ports)'),
    port: z.number().int().min(0).max(65535).default(9090).describe('admin server port'),
  })
  .strict()
  .prefault({});

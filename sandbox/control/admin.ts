// Sandbox-only routes under /_sandbox for tests: read the registry, see who is
// connected, and steer fault injection over HTTP (e.g. from another process).
// They are never subject to the faults they configure.
import { ZodError } from 'zod';
import { invalidRequest } from '../errors.ts';
import type { FaultInjector } from '../faults.ts';
import type { Registry } from '../registry.ts';
import type { Route } from './http.ts';

export interface Connection {
  clientId: string;
  certificateId: string;
  /** The topic filters the connection is subscribed to. */
  subscriptions: string[];
}

export function adminRoutes(ctx: { registry: Registry; faults: FaultInjector; connections: () => Connection[]; takeovers?: () => number }): Route[] {
  const { registry, faults } = ctx;
  const faultState = () => ({ config: faults.config, stats: faults.stats() });
  return [
    {
      operation: 'Sandbox.GetState',
      method: 'GET',
      path: '/_sandbox/state',
      admin: true,
      handle: () => ({ ...registry.snapshot(), connections: ctx.connections(), takeovers: ctx.takeovers?.() ?? 0, faults: faultState() }),
    },
    {
      operation: 'Sandbox.GetFaults',
      method: 'GET',
      path: '/_sandbox/faults',
      admin: true,
      handle: faultState,
    },
    {
      // Body: a partial FaultConfig, merged into the current one, e.g.
      // {"tps": {"CreateCertificateFromCsr": 15}} or {"throttleRate": 0.2}.
      operation: 'Sandbox.ConfigureFaults',
      method: 'POST',
      path: '/_sandbox/faults',
      admin: true,
      handle(req) {
        try {
          faults.configure(req.json());
        } catch (err) {
          if (err instanceof ZodError) {
            throw invalidRequest(`Invalid fault configuration: ${err.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ')}`);
          }
          throw err;
        }
        return faultState();
      },
    },
    {
      operation: 'Sandbox.ResetFaults',
      method: 'DELETE',
      path: '/_sandbox/faults',
      admin: true,
      handle() {
        faults.reset();
        return faultState();
      },
    },
  ];
}

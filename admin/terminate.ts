import type { AdminDeps, AdminStores } from './types.ts';

export interface Revocation {
  state: 'revoked' | 'failed' | 'unavailable';
  message?: string;
}

/**
 * Terminates a SIM: the status changes first (admission refuses the SIM from then on, whatever happens
 * to the certificate), then the certificate is revoked through the gateway's vending service.
 */
export async function terminate(
  stores: Pick<AdminStores, 'sims' | 'audit'>,
  revoke: AdminDeps['revoke'],
  imsi: string,
  who: Record<string, string>,
  reason = 'sim terminated',
): Promise<Revocation> {
  const before = (await stores.sims.get(imsi))?.status;
  await stores.sims.setStatus(imsi, 'terminated');
  await stores.audit.record('sim_status_changed', imsi, { from: before, to: 'terminated', ...who });
  if (!revoke) {
    await stores.audit.record('revoke_unavailable', imsi, { ...who });
    return { state: 'unavailable', message: 'this gateway has no certificate revoker: the certificate was not revoked' };
  }
  try {
    await revoke(imsi, reason);
    return { state: 'revoked' };
  } catch (err) {
    const message = (err as Error).message ?? String(err);
    await stores.audit.record('revoke_failed', imsi, { error: message, ...who });
    return { state: 'failed', message };
  }
}

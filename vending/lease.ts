import { randomUUID } from 'node:crypto';
import { hostname } from 'node:os';
import type { CredentialStore } from '../storage/credentials.ts';

/** host/pid/nonce: another process on this host can tell that a lease holder has died. */
export function leaseOwnerId(): string {
  return `${hostname()}/${process.pid}/${randomUUID()}`;
}

/** True only when the holder ran on this host and its process is gone (PIDs are not comparable across hosts). */
export function holderIsDead(holder: string): boolean {
  const [host, pid] = holder.split('/');
  if (host !== hostname() || !pid || Number(pid) === process.pid) return false;
  try {
    process.kill(Number(pid), 0);
    return false;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'ESRCH';
  }
}

/**
 * A held lease on one credentials row, renewed in the background while a long step (a slow or
 * throttled API call) runs, so another process does not take the row over from a live holder. If a
 * renewal finds the lease gone (this process stalled past it and was taken over), `lost` turns true;
 * every write is also fenced by the owner column, so a lost holder cannot record anything.
 */
export class Lease {
  private timer: NodeJS.Timeout | undefined;
  private isLost = false;

  private constructor(
    private readonly store: CredentialStore,
    readonly rowId: number,
    readonly owner: string,
    private readonly ms: number,
  ) {
    this.timer = setInterval(() => void this.renew(), Math.max(50, Math.floor(ms / 3)));
    this.timer.unref();
  }

  static async acquire(store: CredentialStore, rowId: number, owner: string, ms: number): Promise<Lease | undefined> {
    return (await store.acquireLease(rowId, owner, ms, holderIsDead)) ? new Lease(store, rowId, owner, ms) : undefined;
  }

  /** A lease the row was created with (the insert took it): nothing to write. */
  static held(store: CredentialStore, rowId: number, owner: string, ms: number): Lease {
    return new Lease(store, rowId, owner, ms);
  }

  get lost(): boolean {
    return this.isLost;
  }

  /** Renews now; false once the lease is gone. */
  async renew(): Promise<boolean> {
    try {
      if (!this.isLost && !(await this.store.renewLease(this.rowId, this.owner, this.ms))) this.isLost = true;
    } catch {
      // The database is closing (shutdown) or busy: the next renewal or the fenced write decides.
    }
    return !this.isLost;
  }

  /** Stops renewing and gives the row back; never rejects. */
  async release(): Promise<void> {
    clearInterval(this.timer);
    try {
      if (!this.isLost) await this.store.releaseLease(this.rowId, this.owner);
    } catch {
      // Closed database: the lease expires on its own, or the next process sees this one is dead.
    }
  }
}

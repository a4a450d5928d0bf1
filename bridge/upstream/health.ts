/**
 * What the gateway last learned about its way to IoT Core, for /readyz and the start banner: whether
 * the control plane answered with the credentials it has (vending), and how the last upstream CONNECT
 * went. A check nothing has tried yet is not failed.
 */
export interface CheckState {
  ok: boolean;
  /** What happened, for operators: the error of a failure, or what succeeded. */
  detail: string;
  at: number;
}

export type UpstreamCheck = 'vending' | 'upstream';

export class UpstreamHealth {
  private readonly state = new Map<UpstreamCheck, CheckState>();

  record(check: UpstreamCheck, ok: boolean, detail: string): void {
    this.state.set(check, { ok, detail, at: Date.now() });
  }

  get(check: UpstreamCheck): CheckState | undefined {
    return this.state.get(check);
  }

  /** Each check's verdict (true until something failed) and the reason of each failure. */
  checks(): { checks: Record<UpstreamCheck, boolean>; reasons: Partial<Record<UpstreamCheck, string>> } {
    const checks = { vending: true, upstream: true } as Record<UpstreamCheck, boolean>;
    const reasons: Partial<Record<UpstreamCheck, string>> = {};
    for (const [name, s] of this.state) {
      checks[name] = s.ok;
      if (!s.ok) reasons[name] = `${s.detail} (${new Date(s.at).toISOString()})`;
    }
    return { checks, reasons };
  }
}

/**
 * Asks for the data endpoint (DescribeEndpoint: the vending credentials and the route to the control
 * plane) and records the outcome; while it fails, asks again every `retryMs` so readiness comes back on
 * its own. Resolves with the first outcome, or after `waitMs` when none came yet.
 */
export function watchControlPlane(opts: {
  health: UpstreamHealth;
  dataEndpoint: (signal: AbortSignal) => Promise<string>;
  waitMs: number;
  retryMs: number;
}): { first: Promise<CheckState | undefined>; stop(): void } {
  let timer: NodeJS.Timeout | undefined;
  let stopped = false;
  const attempt = async (): Promise<void> => {
    try {
      const host = await opts.dataEndpoint(AbortSignal.timeout(Math.max(opts.waitMs, opts.retryMs)));
      opts.health.record('vending', true, `DescribeEndpoint answered ${host}`);
    } catch (err) {
      opts.health.record('vending', false, `IoT Core control plane: ${(err as Error).message}`);
      if (!stopped) timer = setTimeout(() => void attempt(), opts.retryMs).unref();
    }
  };
  const done = attempt();
  const first = Promise.race([done, new Promise<void>((r) => setTimeout(r, opts.waitMs).unref())]).then(() => opts.health.get('vending'));
  return {
    first,
    stop() {
      stopped = true;
      clearTimeout(timer);
    },
  };
}

// IoT Core's data plane learns of control-plane changes late: "changes to a policy can take 6 to 8
// minutes to take effect", DetachThingPrincipal "might take several seconds" to propagate, and a
// deactivated certificate's connections go "within a few minutes". The sandbox plays that with one
// configurable delay: the data plane (and DeleteCertificate's attachment check) sees each value as it
// was `delayMs` ago, while the control plane answers with the new one at once.

/** Values keyed by name, as seen after the propagation delay. */
export class Lagged<T> {
  /** Changes not yet propagated, oldest first, each with the value it replaced. */
  private readonly pending = new Map<string, { at: number; before: T }[]>();

  constructor(
    private readonly delayMs: number,
    private readonly now: () => number = Date.now,
  ) {}

  /** Call just before key's value changes away from `before`. */
  changing(key: string, before: T): void {
    if (this.delayMs <= 0) return;
    let list = this.pending.get(key);
    if (!list) this.pending.set(key, (list = []));
    list.push({ at: this.now(), before });
  }

  /** What the data plane sees for key, whose value is `current` now. */
  view(key: string, current: T): T {
    const list = this.pending.get(key);
    if (!list) return current;
    const cutoff = this.now() - this.delayMs;
    while (list.length > 0 && list[0]!.at <= cutoff) list.shift();
    if (list.length === 0) {
      this.pending.delete(key);
      return current;
    }
    return list[0]!.before;
  }

  /** Keys with a change still on its way. */
  keys(): string[] {
    return [...this.pending.keys()];
  }
}

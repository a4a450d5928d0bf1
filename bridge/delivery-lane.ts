import type { BatchingConfig } from '../config/batching.ts';
import type { Sim } from '../storage/sims.ts';
import type { OpenBatch, PlanInput, Unit } from './batching/planner.ts';

/** The planner's inputs that come from the device and its group, not from its rows. */
export type PlanBasis = Pick<PlanInput, 'cfg' | 'topics' | 'identity' | 'batchTopic' | 'maxMessageBytes'>;

/**
 * What a plan was made for: the SIM as it was routed (its group, that group's batching config, its IMEI
 * and thing), the lane's cursor, and the SIM's count of rows removed other than by delivery.
 */
export interface PlanStamp {
  group: string;
  cfg: BatchingConfig;
  imei: Sim['boundImei'];
  thing: string;
  cursor: number;
  removals: number;
}

/** Units that rows joining an open batch made due, and what they leave open: the wake that follows sends them. */
export interface DuePlan {
  units: Unit[];
  open?: OpenBatch;
  waitMs?: number;
}

/** What the last plan of a device left for the next one: a batch still open, or units made due. */
export type HeldPlan = { stamp: PlanStamp; basis: PlanBasis } & ({ open: OpenBatch; lastRowId: number } | { due: DuePlan });

/** A unit whose publish failed: refused for good, or an outage? */
export interface Suspect {
  /** First row of the unit. */
  first: number;
  /** Failures counted against it: each counts once a reconnect succeeds (an outage is not its fault). */
  failures: number;
  uncounted: boolean;
  error: string;
}

/**
 * The one rule for what a lane holds: a plan is continued only when it was made for the SIM as it is
 * routed now, at the lane's cursor, with no row of the SIM removed since other than by delivery.
 * Anything else (a reload, a new IMEI, a failure that rewound the cursor, a row dropped or
 * dead-lettered) and the next plan reads from the outbox again.
 */
export function stillHolds(then: PlanStamp, now: PlanStamp): boolean {
  return (
    then.cursor === now.cursor &&
    then.removals === now.removals &&
    then.cfg === now.cfg &&
    then.group === now.group &&
    then.imei === now.imei &&
    then.thing === now.thing
  );
}

/**
 * One device's delivery, everything the dispatcher knows about it in one place: where its rows stand
 * (cursor), what its last plan left (open batch or due units), the unit in doubt, the timer that wakes
 * it when a batch falls due, and the pump moving its rows while one runs.
 */
export class Lane {
  /** Rows up to here are acknowledged or in flight (their deletes may still be pending); reads start after it. */
  cursor = 0;
  /** The outbox's rewinds of the SIM when the cursor was last set: a change sends the next read to its oldest row. */
  rewinds = 0;
  /** The pump running now; `again` asks it for one more round (rows arrived while it ran). */
  pump?: { again: boolean; done: Promise<void> };
  /** Wakes the device when its open batch falls due. */
  timer?: NodeJS.Timeout;
  suspect?: Suspect;
  private held?: HeldPlan;

  constructor(readonly imsi: string) {}

  /** What it holds: nothing, a batch still open, or units made due. */
  get holding(): 'open' | 'due' | undefined {
    return this.held && ('due' in this.held ? 'due' : 'open');
  }

  hold(plan: HeldPlan): void {
    this.held = plan;
  }

  /**
   * Hands over what the lane holds when it still holds (see stillHolds) and forgets it either way:
   * planning continues an open batch in place, so a held plan is used at most once.
   */
  take(now: PlanStamp): HeldPlan | undefined {
    const held = this.held;
    this.held = undefined;
    return held && stillHolds(held.stamp, now) ? held : undefined;
  }

  forget(): void {
    this.held = undefined;
  }

  wakeIn(ms: number, wake: () => void): void {
    this.stopTimer();
    this.timer = setTimeout(wake, Math.max(0, ms));
  }

  stopTimer(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
  }
}

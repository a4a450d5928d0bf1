import { randomUUID } from 'node:crypto';
import type { Logger } from 'pino';
import { sleepingJobsOn } from '../config/jobs.ts';
import type { GroupConfig } from '../config/schema.ts';
import type { AuditStore } from '../storage/audit.ts';
import type { Sim } from '../storage/sims.ts';
import type { DeviceCredentials } from '../vending/vendor.ts';
import type { Metrics } from './metrics.ts';
import type { UpstreamPool } from './upstream/session-pool.ts';

/**
 * IoT Jobs on behalf of devices that sleep between HTTP or CoAP requests (groups.*.sleepingJobs).
 * Everything is asked as the device itself, on its own upstream session, with the Jobs device MQTT API:
 * the pending list (`jobs/get`, then `jobs/{jobId}/get` for each document) rides back in the answer the
 * device was waiting for anyway (HTTP 202, CoAP 2.04), and its report (`POST /v1/jobs/{jobId}`, CoAP
 * `POST /jobs/{jobId}`) becomes `jobs/{jobId}/update`.
 * Answers are told apart by clientToken. While the device's session holds its Jobs subscription (holdMs
 * after its last request), `notify` marks the list stale and it is fetched again in the background.
 */

export interface JobsSettings {
  answerTimeoutMs: number;
  responseWaitMs: number;
  holdMs: number;
}

export interface DeviceJobsOptions {
  pool: Pick<UpstreamPool, 'session' | 'subscribe' | 'unsubscribe'>;
  credentials(sim: Sim): Promise<DeviceCredentials>;
  group(name: string): GroupConfig;
  settings(): JobsSettings;
  audit: AuditStore;
  metrics: Metrics;
  log: Logger;
}

/** A job execution waiting for the device, as its 202 carries it. */
export interface PendingJob {
  jobId: string;
  status: string;
  versionNumber: number;
  executionNumber: number;
  document: unknown;
}

export interface ExecutionState {
  status: string;
  statusDetails?: Record<string, string>;
  versionNumber: number;
}

export type JobUpdateRefusal = 'job_update_invalid' | 'job_version_conflict' | 'job_not_found' | 'job_removed' | 'job_finished' | 'jobs_disabled' | 'upstream_timeout' | 'upstream_unavailable';

export type JobUpdateResult = { ok: true; execution: ExecutionState } | { ok: false; reason: JobUpdateRefusal; message: string; execution?: ExecutionState };

/** What a device may report (UpdateJobExecution). */
const DEVICE_STATUSES = new Set(['IN_PROGRESS', 'SUCCEEDED', 'FAILED', 'REJECTED']);
const JOB_ID = /^[a-zA-Z0-9_-]{1,64}$/;
/** Executions that ended without the device: canceled by the operator, removed, timed out. */
const REMOVED = new Set(['CANCELED', 'REMOVED', 'TIMED_OUT']);

interface Answer {
  accepted: boolean;
  body: Record<string, unknown>;
}

class AnswerTimeout extends Error {}

/** One device's Jobs state: what it has pending, its subscription and the requests waiting for answers. */
class DeviceJobState {
  pending: PendingJob[] | undefined;
  /** The list is current: fetched while subscribed, and no notify since. */
  fresh = false;
  fetching: Promise<PendingJob[]> | undefined;
  subscribed: Promise<void> | undefined;
  hold: NodeJS.Timeout | undefined;
  readonly waiters = new Map<string, (a: Answer) => void>();
}

export class DeviceJobs {
  private readonly devices = new Map<string, DeviceJobState>();

  constructor(private readonly opts: DeviceJobsOptions) {}

  enabled(sim: Sim): boolean {
    return sleepingJobsOn(this.opts.group(sim.group));
  }

  /**
   * Starts finding the device's pending jobs as its request comes in; `settle()` (called once the
   * message is committed) waits at most responseWaitMs more, then gives the last list known.
   * Undefined when the device's group does not run Jobs for sleeping devices.
   */
  forResponse(sim: Sim): { settle(): Promise<PendingJob[]> } | undefined {
    if (!this.enabled(sim)) return undefined;
    const state = this.stateOf(sim);
    const fetched = state.fresh && state.pending ? Promise.resolve(state.pending) : this.refresh(sim, state);
    return {
      settle: async () => {
        let timer: NodeJS.Timeout | undefined;
        const late = new Promise<undefined>((resolve) => {
          timer = setTimeout(() => resolve(undefined), this.opts.settings().responseWaitMs);
        });
        const list = await Promise.race([fetched, late]).finally(() => clearTimeout(timer));
        return list ?? state.pending ?? [];
      },
    };
  }

  /** UpdateJobExecution as the device's thing, with IoT Core's refusal turned into a clear reason. */
  async update(sim: Sim, jobId: string, body: unknown): Promise<JobUpdateResult> {
    if (!this.enabled(sim)) return { ok: false, reason: 'jobs_disabled', message: `group ${sim.group} does not run IoT Jobs for sleeping devices (groups.*.sleepingJobs)` };
    const invalid = checkUpdate(jobId, body);
    if (invalid) return this.refused(sim, jobId, { ok: false, reason: 'job_update_invalid', message: invalid });
    const { status, statusDetails, expectedVersion } = body as { status: string; statusDetails?: Record<string, string>; expectedVersion?: number };
    const state = this.stateOf(sim);
    let answer: Answer;
    try {
      answer = await this.ask(sim, state, `${jobId}/update`, { status, statusDetails, expectedVersion, includeJobExecutionState: true });
    } catch (err) {
      const timeout = err instanceof AnswerTimeout;
      this.opts.metrics.jobRequests.inc({ kind: 'update', result: timeout ? 'timeout' : 'unavailable' });
      return timeout
        ? { ok: false, reason: 'upstream_timeout', message: `IoT Core did not answer within ${this.opts.settings().answerTimeoutMs} ms; the update may or may not have been applied` }
        : { ok: false, reason: 'upstream_unavailable', message: `IoT Core cannot be reached for this device now: ${(err as Error).message}` };
    }
    state.fresh = false;
    const execution = answer.body.executionState as ExecutionState | undefined;
    if (answer.accepted) {
      this.opts.metrics.jobRequests.inc({ kind: 'update', result: 'accepted' });
      return { ok: true, execution: execution ?? { status, versionNumber: 0 } };
    }
    const code = String(answer.body.code);
    this.opts.metrics.jobRequests.inc({ kind: 'update', result: code });
    const message = `IoT Core refused the update (${code}): ${String(answer.body.message ?? '')}`;
    const withState = execution ? { execution } : {};
    switch (code) {
      case 'VersionMismatch':
        return this.refused(sim, jobId, { ok: false, reason: 'job_version_conflict', message, ...withState });
      case 'ResourceNotFound':
        return this.refused(sim, jobId, { ok: false, reason: 'job_not_found', message: `job ${jobId} is not (or no longer) queued for this device` });
      case 'InvalidStateTransition':
        return execution && REMOVED.has(execution.status)
          ? this.refused(sim, jobId, { ok: false, reason: 'job_removed', message: `job ${jobId} was ${execution.status.toLowerCase().replace('_', ' ')} for this device`, ...withState })
          : this.refused(sim, jobId, { ok: false, reason: 'job_finished', message, ...withState });
      default:
        return this.refused(sim, jobId, { ok: false, reason: 'job_update_invalid', message });
    }
  }

  /**
   * The thing's session is no longer here (another node holds its SIM): its Jobs subscription and list
   * are let go, so the device's next request here subscribes again (and brings the SIM back).
   */
  forget(sim: Sim): void {
    const s = this.devices.get(sim.thingName);
    if (!s) return;
    clearTimeout(s.hold);
    this.release(sim, s);
  }

  close(): void {
    for (const s of this.devices.values()) clearTimeout(s.hold);
    this.devices.clear();
  }

  private refused(sim: Sim, jobId: string, r: Extract<JobUpdateResult, { ok: false }>): JobUpdateResult {
    this.opts.audit
      .record('job_update_refused', sim.imsi, { jobId, reason: r.reason, message: r.message })
      .catch((err) => this.opts.log.warn({ err: String(err) }, 'job update refusal not audited'));
    return r;
  }

  private stateOf(sim: Sim): DeviceJobState {
    let s = this.devices.get(sim.thingName);
    if (!s) this.devices.set(sim.thingName, (s = new DeviceJobState()));
    // Each request keeps the subscription (and so notify) for holdMs more.
    clearTimeout(s.hold);
    s.hold = setTimeout(() => this.release(sim, s!), this.opts.settings().holdMs).unref();
    return s;
  }

  private release(sim: Sim, s: DeviceJobState): void {
    this.devices.delete(sim.thingName);
    s.fresh = false;
    if (s.subscribed) void this.opts.pool.unsubscribe(sim.thingName, jobsFilter(sim.thingName)).catch(() => undefined);
  }

  /** Fetches the pending list once at a time; never rejects (the last list known stands). */
  private refresh(sim: Sim, state: DeviceJobState): Promise<PendingJob[]> {
    state.fetching ??= this.fetchPending(sim, state)
      .then((list) => {
        state.pending = list;
        state.fresh = true;
        this.opts.metrics.jobRequests.inc({ kind: 'pending', result: 'accepted' });
        return list;
      })
      .catch((err) => {
        this.opts.metrics.jobRequests.inc({ kind: 'pending', result: err instanceof AnswerTimeout ? 'timeout' : 'unavailable' });
        this.opts.log.warn({ thing: sim.thingName, err: String(err) }, 'pending jobs not fetched');
        return state.pending ?? [];
      })
      .finally(() => (state.fetching = undefined));
    return state.fetching;
  }

  private async fetchPending(sim: Sim, state: DeviceJobState): Promise<PendingJob[]> {
    const list = await this.ask(sim, state, 'get', {});
    if (!list.accepted) throw new Error(`jobs/get refused: ${String(list.body.code)}`);
    const summaries = [...((list.body.inProgressJobs as { jobId: string }[]) ?? []), ...((list.body.queuedJobs as { jobId: string }[]) ?? [])];
    const executions = await Promise.all(summaries.map((s) => this.ask(sim, state, `${s.jobId}/get`, { includeJobDocument: true })));
    // A job removed between the two answers is simply not pending any more.
    return executions
      .filter((a) => a.accepted && a.body.execution)
      .map((a) => {
        const e = a.body.execution as Record<string, unknown>;
        return { jobId: String(e.jobId), status: String(e.status), versionNumber: Number(e.versionNumber), executionNumber: Number(e.executionNumber), document: e.jobDocument };
      });
  }

  /** Publishes a Jobs request on the device's session and waits for IoT Core's answer to it. */
  private async ask(sim: Sim, state: DeviceJobState, request: string, body: Record<string, unknown>): Promise<Answer> {
    const creds = await this.opts.credentials(sim);
    await this.listen(sim, state, creds);
    const clientToken = randomUUID();
    const { answerTimeoutMs } = this.opts.settings();
    let timer: NodeJS.Timeout | undefined;
    const answered = new Promise<Answer>((resolve, reject) => {
      state.waiters.set(clientToken, resolve);
      timer = setTimeout(() => reject(new AnswerTimeout(`no answer to ${request} within ${answerTimeoutMs} ms`)), answerTimeoutMs);
    }).finally(() => {
      clearTimeout(timer);
      state.waiters.delete(clientToken);
    });
    answered.catch(() => undefined); // a failed publish below is the error reported
    const session = await this.opts.pool.session(creds);
    await session.publish(`$aws/things/${sim.thingName}/jobs/${request}`, Buffer.from(JSON.stringify({ ...body, clientToken })), 1);
    return answered;
  }

  /** The device's session listens to its own Jobs topics (answers and notify) while it is held. */
  private listen(sim: Sim, state: DeviceJobState, creds: DeviceCredentials): Promise<void> {
    state.subscribed ??= this.opts.pool
      .subscribe(creds, jobsFilter(sim.thingName), 1, (topic, payload) => this.onMessage(sim, state, topic, payload))
      .then(() => undefined)
      .catch((err) => {
        state.subscribed = undefined;
        throw err;
      });
    return state.subscribed;
  }

  private onMessage(sim: Sim, state: DeviceJobState, topic: string, payload: Buffer): void {
    let body: Record<string, unknown>;
    try {
      body = JSON.parse(payload.toString('utf8')) as Record<string, unknown>;
    } catch {
      return;
    }
    if (topic.endsWith('/jobs/notify')) {
      // The pending list changed in IoT Core: have it ready for the device's next request.
      state.fresh = false;
      if (this.devices.get(sim.thingName) === state) void this.refresh(sim, state);
      return;
    }
    // Only IoT Core's answers settle a request (never a request itself, should it come back).
    const accepted = topic.endsWith('/accepted');
    if (!accepted && !topic.endsWith('/rejected')) return;
    const token = typeof body.clientToken === 'string' ? body.clientToken : undefined;
    const waiter = token === undefined ? undefined : state.waiters.get(token);
    waiter?.({ accepted, body });
  }
}

const jobsFilter = (thing: string) => `$aws/things/${thing}/jobs/#`;

/** Why a device's report cannot be an UpdateJobExecution, or undefined. */
function checkUpdate(jobId: string, body: unknown): string | undefined {
  if (!JOB_ID.test(jobId)) return 'jobId must be 1-64 letters, digits, _ or -';
  if (typeof body !== 'object' || body === null || Array.isArray(body)) return 'the body must be a JSON object {"status", "statusDetails"?, "expectedVersion"?}';
  const b = body as Record<string, unknown>;
  if (typeof b.status !== 'string' || !DEVICE_STATUSES.has(b.status)) return `status must be one of ${[...DEVICE_STATUSES].join(', ')}`;
  if (b.expectedVersion !== undefined && (typeof b.expectedVersion !== 'number' || !Number.isInteger(b.expectedVersion) || b.expectedVersion < 1)) return 'expectedVersion must be a whole number';
  if (b.statusDetails !== undefined) {
    const d = b.statusDetails;
    if (typeof d !== 'object' || d === null || Array.isArray(d) || Object.values(d).some((v) => typeof v !== 'string')) return 'statusDetails must be an object of strings';
    if (Object.keys(d).length > 10) return 'statusDetails holds at most 10 entries';
  }
  for (const k of Object.keys(b)) if (!['status', 'statusDetails', 'expectedVersion'].includes(k)) return `unknown field ${k}`;
  return undefined;
}

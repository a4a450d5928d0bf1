// The Jobs device MQTT API of the data plane (Developer Guide, "Jobs device MQTT API operations"):
//   $aws/things/{thing}/jobs/get               → /get/accepted        {inProgressJobs, queuedJobs}
//   $aws/things/{thing}/jobs/start-next        → /start-next/accepted {execution?}
//   $aws/things/{thing}/jobs/{jobId}/get       → /{jobId}/get/accepted {execution}   ({jobId} may be $next)
//   $aws/things/{thing}/jobs/{jobId}/update    → /{jobId}/update/accepted {executionState?, jobDocument?}
// each answered on .../rejected {code, message, timestamp, clientToken?, executionState?} when refused.
// IoT Core sends the answers to the client that asked, subscribed or not, and to no one else: they
// are handed back for that client only. notify ({jobs: {QUEUED, IN_PROGRESS}}) and notify-next
// ({execution?}) go to subscribers whenever the thing's pending list, or its first entry, changes.
// Devices may publish only the four request topics; the others are IoT Core's (refused like a policy).
import { type ExecutionRecord, type JobStore, JobsDeviceError } from '../jobs.ts';

const JOBS = /^\$aws\/things\/([^/]+)\/jobs\/(.+)$/;

export type Answer = { topic: string; payload: Buffer };

/** The thing and the rest of a Jobs topic, or undefined when the topic is not one. */
function jobsTopic(topic: string): { thing: string; rest: string } | undefined {
  const m = JOBS.exec(topic);
  return m ? { thing: m[1]!, rest: m[2]! } : undefined;
}

/** Why a device may not publish to this Jobs topic (only requests are theirs), or undefined. */
export function jobsPublishViolation(topic: string): string | undefined {
  const t = jobsTopic(topic);
  if (!t) return undefined;
  const parts = t.rest.split('/');
  const request = parts.length === 1 ? parts[0] === 'get' || parts[0] === 'start-next' : parts.length === 2 && (parts[1] === 'get' || parts[1] === 'update');
  return request ? undefined : `${topic} is a reserved Jobs topic devices only subscribe to`;
}

/** A Jobs request topic (get, start-next, {jobId}/get, {jobId}/update): the Jobs service's, never forwarded to subscribers. */
export function isJobsRequest(topic: string): boolean {
  return jobsTopic(topic) !== undefined && jobsPublishViolation(topic) === undefined;
}

/** A Jobs answer topic (…/accepted, …/rejected): delivered to the asking client only. */
export function isJobsAnswer(topic: string): boolean {
  return jobsTopic(topic) !== undefined && /\/(accepted|rejected)$/.test(topic);
}

export class JobsTopics {
  /** The first pending execution last announced on notify-next, per thing ('' = none). */
  private readonly announcedNext = new Map<string, string>();

  constructor(
    private readonly jobs: JobStore,
    private readonly now: () => number = Date.now,
  ) {}

  /** The answers to a request on topic (for the asking client), or undefined when it is not a Jobs request. */
  handle(topic: string, payload: Buffer): Answer[] | undefined {
    const t = jobsTopic(topic);
    if (!t || jobsPublishViolation(topic) !== undefined) return undefined;
    const timestamp = this.seconds();
    let request: Record<string, unknown> = {};
    let clientToken: unknown;
    try {
      if (payload.length > 0) {
        const parsed: unknown = JSON.parse(payload.toString('utf8'));
        if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw new JobsDeviceError('InvalidJson', 'the request is not a JSON object');
        request = parsed as Record<string, unknown>;
      }
      clientToken = request.clientToken;
      const token = clientToken === undefined ? {} : { clientToken };
      return [{ topic: `${topic}/accepted`, payload: json({ ...this.answer(t.thing, t.rest, request), timestamp, ...token }) }];
    } catch (err) {
      const e = err instanceof JobsDeviceError ? err : err instanceof SyntaxError ? new JobsDeviceError('InvalidJson', 'the request is not valid JSON') : undefined;
      if (!e) throw err;
      const body = {
        code: e.code,
        message: e.message,
        timestamp,
        ...(clientToken === undefined ? {} : { clientToken }),
        ...(e.execution ? { executionState: state(e.execution) } : {}),
      };
      return [{ topic: `${topic}/rejected`, payload: json(body) }];
    }
  }

  /** notify and, when the first pending execution changed, notify-next, for a thing whose pending list changed. */
  notifications(thing: string): Answer[] {
    const pending = this.jobs.pending(thing);
    const timestamp = this.seconds();
    const lists: Record<string, unknown[]> = {};
    for (const e of pending) (lists[e.status] ??= []).push(summary(e));
    const out: Answer[] = [{ topic: `$aws/things/${thing}/jobs/notify`, payload: json({ timestamp, jobs: lists }) }];
    const first = pending[0];
    const key = first ? `${first.jobId}#${first.executionNumber}` : '';
    if ((this.announcedNext.get(thing) ?? '') !== key) {
      this.announcedNext.set(thing, key);
      out.push({ topic: `$aws/things/${thing}/jobs/notify-next`, payload: json(first ? { timestamp, execution: this.execution(first, true) } : { timestamp }) });
    }
    return out;
  }

  private answer(thing: string, rest: string, r: Record<string, unknown>): Record<string, unknown> {
    if (rest === 'get') {
      const pending = this.jobs.pending(thing);
      return { inProgressJobs: pending.filter((e) => e.status === 'IN_PROGRESS').map(summary), queuedJobs: pending.filter((e) => e.status === 'QUEUED').map(summary) };
    }
    if (rest === 'start-next') {
      const e = this.jobs.startNext(thing, optionalDetails(r.statusDetails));
      return e ? { execution: this.execution(e, true) } : {};
    }
    const [jobId, op] = rest.split('/') as [string, 'get' | 'update'];
    if (op === 'get') {
      const e = this.jobs.describe(thing, jobId, optionalNumber(r.executionNumber, 'executionNumber'));
      return e ? { execution: this.execution(e, r.includeJobDocument !== false) } : {};
    }
    if (typeof r.status !== 'string') throw new JobsDeviceError('InvalidRequest', 'status is required');
    const e = this.jobs.update(thing, jobId, {
      status: r.status as ExecutionRecord['status'],
      ...(r.statusDetails === undefined ? {} : { statusDetails: r.statusDetails as Record<string, string> }),
      ...(r.expectedVersion === undefined ? {} : { expectedVersion: optionalNumber(r.expectedVersion, 'expectedVersion')! }),
      ...(r.executionNumber === undefined ? {} : { executionNumber: optionalNumber(r.executionNumber, 'executionNumber')! }),
    });
    return {
      ...(r.includeJobExecutionState === true ? { executionState: state(e) } : {}),
      ...(r.includeJobDocument === true ? { jobDocument: JSON.parse(this.jobs.document(e.jobId)) } : {}),
    };
  }

  /** A JobExecution as the device API shows it (timestamps in epoch seconds). */
  private execution(e: ExecutionRecord, withDocument: boolean): Record<string, unknown> {
    return {
      jobId: e.jobId,
      thingName: e.thingName,
      status: e.status,
      statusDetails: e.statusDetails,
      queuedAt: Math.floor(e.queuedAt / 1000),
      ...(e.startedAt === undefined ? {} : { startedAt: Math.floor(e.startedAt / 1000) }),
      lastUpdatedAt: Math.floor(e.lastUpdatedAt / 1000),
      versionNumber: e.versionNumber,
      executionNumber: e.executionNumber,
      ...(withDocument ? { jobDocument: JSON.parse(this.jobs.document(e.jobId)) } : {}),
    };
  }

  private seconds(): number {
    return Math.floor(this.now() / 1000);
  }
}

function summary(e: ExecutionRecord): Record<string, unknown> {
  return {
    jobId: e.jobId,
    queuedAt: Math.floor(e.queuedAt / 1000),
    ...(e.startedAt === undefined ? {} : { startedAt: Math.floor(e.startedAt / 1000) }),
    lastUpdatedAt: Math.floor(e.lastUpdatedAt / 1000),
    versionNumber: e.versionNumber,
    executionNumber: e.executionNumber,
  };
}

function state(e: ExecutionRecord): Record<string, unknown> {
  return { status: e.status, statusDetails: e.statusDetails, versionNumber: e.versionNumber };
}

function optionalNumber(v: unknown, what: string): number | undefined {
  if (v === undefined) return undefined;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0) throw new JobsDeviceError('InvalidRequest', `${what} must be a whole number`);
  return v;
}

function optionalDetails(v: unknown): Record<string, string> | undefined {
  return v === undefined ? undefined : (v as Record<string, string>);
}

function json(v: unknown): Buffer {
  return Buffer.from(JSON.stringify(v));
}

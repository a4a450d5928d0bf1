// IoT Jobs as the sandbox keeps them: jobs and their executions per thing, the state machine an
// execution follows, and the checks IoT Core makes on each change. The control plane (CreateJob,
// CancelJob, DescribeJobExecution, ...: control/jobs.ts) and the device side over MQTT (get,
// start-next, update: data/jobs.ts) both work on this one store; every change of an execution's
// status is announced (`pendingChanged`) so the data plane can publish notify and notify-next.
// Jobs live in memory: a sandbox restart forgets them.
import { EventEmitter } from 'node:events';
import { type Account, thingArn } from './arn.ts';
import { AwsError, alreadyExists, invalidRequest, notFound } from './errors.ts';

export type ExecutionStatus = 'QUEUED' | 'IN_PROGRESS' | 'SUCCEEDED' | 'FAILED' | 'TIMED_OUT' | 'REJECTED' | 'REMOVED' | 'CANCELED';
export type JobStatus = 'IN_PROGRESS' | 'CANCELED' | 'COMPLETED';

const TERMINAL = new Set<ExecutionStatus>(['SUCCEEDED', 'FAILED', 'TIMED_OUT', 'REJECTED', 'REMOVED', 'CANCELED']);
/** What a device may set with UpdateJobExecution (Jobs device API). */
const DEVICE_STATUSES = new Set<ExecutionStatus>(['IN_PROGRESS', 'SUCCEEDED', 'FAILED', 'REJECTED']);

/** IoT Core's limits (API reference, CreateJob and UpdateJobExecution; AWS IoT Jobs quotas). */
export const JOB_ID = /^[a-zA-Z0-9_-]{1,64}$/;
export const MAX_JOB_DOCUMENT_BYTES = 32 * 1024;
export const MAX_STATUS_DETAILS = 10;

export interface JobRecord {
  jobId: string;
  jobArn: string;
  document: string;
  description?: string;
  targets: string[];
  targetSelection: 'SNAPSHOT' | 'CONTINUOUS';
  status: JobStatus;
  forceCanceled: boolean;
  comment?: string;
  reasonCode?: string;
  createdAt: number;
  lastUpdatedAt: number;
  completedAt?: number;
}

export interface ExecutionRecord {
  jobId: string;
  thingName: string;
  thingArn: string;
  status: ExecutionStatus;
  statusDetails: Record<string, string>;
  forceCanceled: boolean;
  queuedAt: number;
  startedAt?: number;
  lastUpdatedAt: number;
  versionNumber: number;
  executionNumber: number;
}

/** A refusal of the Jobs device API, with the code IoT Core puts in the /rejected answer. */
export class JobsDeviceError extends Error {
  constructor(
    readonly code: 'InvalidTopic' | 'InvalidJson' | 'InvalidRequest' | 'InvalidStateTransition' | 'ResourceNotFound' | 'VersionMismatch' | 'TerminalStateReached',
    message: string,
    readonly execution?: ExecutionRecord,
  ) {
    super(message);
  }
}

export interface DeviceUpdate {
  status: ExecutionStatus;
  statusDetails?: Record<string, string>;
  expectedVersion?: number;
  executionNumber?: number;
}

interface Events {
  /** An execution of this thing changed status, was queued or was removed. */
  pendingChanged: [thingName: string];
}

export class JobStore extends EventEmitter<Events> {
  private readonly jobs = new Map<string, JobRecord>();
  /** thingName → its executions, in the order they were queued. */
  private readonly executions = new Map<string, ExecutionRecord[]>();
  private nextExecutionNumber = 1;

  constructor(
    private readonly account: Account,
    /** Whether a thing exists in the registry. */
    private readonly thingExists: (thingName: string) => boolean,
    private readonly now: () => number = Date.now,
  ) {
    super();
  }

  // ---- control plane ----

  createJob(input: { jobId: string; targets?: unknown; document?: unknown; documentSource?: unknown; description?: unknown; targetSelection?: unknown }): JobRecord {
    const { jobId } = input;
    if (!JOB_ID.test(jobId)) throw invalidRequest(`jobId must match [a-zA-Z0-9_-]{1,64}: ${jobId}`);
    if (this.jobs.has(jobId)) throw alreadyExists(`Job ${jobId} already exists.`, jobId, this.jobArn(jobId));
    if (input.documentSource !== undefined) throw invalidRequest('the sandbox takes the job document inline (document), not from documentSource');
    if (typeof input.document !== 'string') throw invalidRequest('document is required');
    if (Buffer.byteLength(input.document) > MAX_JOB_DOCUMENT_BYTES) throw invalidRequest(`document is over ${MAX_JOB_DOCUMENT_BYTES} bytes`);
    try {
      JSON.parse(input.document);
    } catch {
      throw invalidRequest('document is not valid JSON');
    }
    if (!Array.isArray(input.targets) || input.targets.length === 0 || input.targets.some((t) => typeof t !== 'string')) {
      throw invalidRequest('targets must be a non-empty list of thing ARNs');
    }
    const prefix = thingArn(this.account, '');
    const things = (input.targets as string[]).map((arn) => {
      if (!arn.startsWith(prefix)) throw invalidRequest(`target ${arn} is not a thing ARN of this account (the sandbox does not target thing groups)`);
      const name = arn.slice(prefix.length);
      if (!this.thingExists(name)) throw notFound(`Thing ${name} cannot be found.`);
      return name;
    });
    if (input.targetSelection !== undefined && input.targetSelection !== 'SNAPSHOT' && input.targetSelection !== 'CONTINUOUS') {
      throw invalidRequest('targetSelection must be SNAPSHOT or CONTINUOUS');
    }
    const at = this.now();
    const job: JobRecord = {
      jobId,
      jobArn: this.jobArn(jobId),
      document: input.document,
      ...(typeof input.description === 'string' ? { description: input.description } : {}),
      targets: input.targets as string[],
      targetSelection: (input.targetSelection as JobRecord['targetSelection']) ?? 'SNAPSHOT',
      status: 'IN_PROGRESS',
      forceCanceled: false,
      createdAt: at,
      lastUpdatedAt: at,
    };
    this.jobs.set(jobId, job);
    for (const thingName of new Set(things)) {
      const list = this.executions.get(thingName) ?? [];
      list.push({
        jobId,
        thingName,
        thingArn: thingArn(this.account, thingName),
        status: 'QUEUED',
        statusDetails: {},
        forceCanceled: false,
        queuedAt: at,
        lastUpdatedAt: at,
        versionNumber: 1,
        executionNumber: this.nextExecutionNumber++,
      });
      this.executions.set(thingName, list);
      this.emit('pendingChanged', thingName);
    }
    return job;
  }

  job(jobId: string): JobRecord {
    const job = this.jobs.get(jobId);
    if (!job) throw notFound(`Job ${jobId} cannot be found.`);
    return job;
  }

  /** CancelJob: QUEUED executions are canceled, IN_PROGRESS ones too with force. */
  cancelJob(jobId: string, opts: { force: boolean; comment?: string; reasonCode?: string }): JobRecord {
    const job = this.job(jobId);
    if (job.status === 'COMPLETED') throw new AwsError('InvalidStateTransitionException', 409, `Job ${jobId} is COMPLETED and cannot be canceled.`);
    if (job.status === 'CANCELED' && !opts.force) return job;
    const at = this.now();
    Object.assign(job, { status: 'CANCELED', lastUpdatedAt: at, forceCanceled: job.forceCanceled || opts.force });
    if (opts.comment !== undefined) job.comment = opts.comment;
    if (opts.reasonCode !== undefined) job.reasonCode = opts.reasonCode;
    for (const e of this.executionsOf(jobId)) {
      if (e.status === 'QUEUED' || (opts.force && e.status === 'IN_PROGRESS')) {
        Object.assign(e, { status: 'CANCELED', forceCanceled: opts.force && e.status === 'IN_PROGRESS', lastUpdatedAt: at, versionNumber: e.versionNumber + 1 });
        this.emit('pendingChanged', e.thingName);
      }
    }
    return job;
  }

  /** DescribeJobExecution (control plane): the execution of a job on a thing, the latest or a given one. */
  execution(jobId: string, thingName: string, executionNumber?: number): ExecutionRecord {
    const e = (this.executions.get(thingName) ?? []).find((x) => x.jobId === jobId && (executionNumber === undefined || x.executionNumber === executionNumber));
    if (!e) throw notFound(`Job execution of ${jobId} on ${thingName} cannot be found.`);
    return e;
  }

  /** ListJobExecutionsForThing: every execution of the thing, newest first, optionally of one status. */
  executionsForThing(thingName: string, status?: string): ExecutionRecord[] {
    const all = [...(this.executions.get(thingName) ?? [])].reverse();
    return status === undefined ? all : all.filter((e) => e.status === status);
  }

  /** How many of a job's executions are in each status (DescribeJob's jobProcessDetails). */
  processDetails(jobId: string): Record<ExecutionStatus, number> {
    const counts = { QUEUED: 0, IN_PROGRESS: 0, SUCCEEDED: 0, FAILED: 0, TIMED_OUT: 0, REJECTED: 0, REMOVED: 0, CANCELED: 0 };
    for (const e of this.executionsOf(jobId)) counts[e.status]++;
    return counts;
  }

  // ---- device side ----

  /** The thing's executions not yet in a terminal status: IN_PROGRESS first, then QUEUED, each by queue time. */
  pending(thingName: string): ExecutionRecord[] {
    const list = (this.executions.get(thingName) ?? []).filter((e) => !TERMINAL.has(e.status));
    return [...list.filter((e) => e.status === 'IN_PROGRESS'), ...list.filter((e) => e.status === 'QUEUED')];
  }

  document(jobId: string): string {
    return this.job(jobId).document;
  }

  /** DescribeJobExecution on the device side: `$next` is the first pending one (undefined when none). */
  describe(thingName: string, jobId: string, executionNumber?: number): ExecutionRecord | undefined {
    if (jobId === '$next') return this.pending(thingName)[0];
    const e = (this.executions.get(thingName) ?? []).find((x) => x.jobId === jobId && (executionNumber === undefined || x.executionNumber === executionNumber));
    if (!e) throw new JobsDeviceError('ResourceNotFound', `Job execution of ${jobId} on ${thingName} not found`);
    return e;
  }

  /** StartNextPendingJobExecution: the IN_PROGRESS one as it is, else the first QUEUED one started. */
  startNext(thingName: string, statusDetails?: Record<string, string>): ExecutionRecord | undefined {
    const next = this.pending(thingName)[0];
    if (!next || next.status === 'IN_PROGRESS') return next;
    return this.update(thingName, next.jobId, { status: 'IN_PROGRESS', ...(statusDetails ? { statusDetails } : {}) });
  }

  /** UpdateJobExecution as the thing itself, with IoT Core's refusals. */
  update(thingName: string, jobId: string, u: DeviceUpdate): ExecutionRecord {
    if (!DEVICE_STATUSES.has(u.status)) throw new JobsDeviceError('InvalidRequest', `status must be one of ${[...DEVICE_STATUSES].join(', ')}`);
    if (u.statusDetails !== undefined) checkStatusDetails(u.statusDetails);
    const e = this.describe(thingName, jobId, u.executionNumber)!;
    if (u.expectedVersion !== undefined && u.expectedVersion !== e.versionNumber) {
      throw new JobsDeviceError('VersionMismatch', `expected version ${u.expectedVersion}, the execution is at version ${e.versionNumber}`, e);
    }
    if (TERMINAL.has(e.status)) throw new JobsDeviceError('InvalidStateTransition', `the execution is ${e.status}: it cannot become ${u.status}`, e);
    const at = this.now();
    const changed = e.status !== u.status;
    Object.assign(e, {
      status: u.status,
      statusDetails: u.statusDetails ?? e.statusDetails,
      startedAt: e.startedAt ?? at,
      lastUpdatedAt: at,
      versionNumber: e.versionNumber + 1,
    });
    if (TERMINAL.has(e.status)) this.completeIfDone(e.jobId, at);
    if (changed) this.emit('pendingChanged', thingName);
    return e;
  }

  private completeIfDone(jobId: string, at: number): void {
    const job = this.jobs.get(jobId);
    if (!job || job.status !== 'IN_PROGRESS' || job.targetSelection !== 'SNAPSHOT') return;
    if (this.executionsOf(jobId).every((e) => TERMINAL.has(e.status))) Object.assign(job, { status: 'COMPLETED', completedAt: at, lastUpdatedAt: at });
  }

  private executionsOf(jobId: string): ExecutionRecord[] {
    return [...this.executions.values()].flatMap((list) => list.filter((e) => e.jobId === jobId));
  }

  private jobArn(jobId: string): string {
    return thingArn(this.account, '').replace(/:thing\/$/, `:job/${jobId}`);
  }
}

function checkStatusDetails(d: unknown): void {
  if (typeof d !== 'object' || d === null || Array.isArray(d)) throw new JobsDeviceError('InvalidRequest', 'statusDetails must be an object of strings');
  const entries = Object.entries(d);
  if (entries.length > MAX_STATUS_DETAILS) throw new JobsDeviceError('InvalidRequest', `statusDetails holds at most ${MAX_STATUS_DETAILS} entries`);
  for (const [k, v] of entries) {
    if (typeof v !== 'string' || k.length === 0 || k.length > 128 || v.length === 0 || v.length > 1024) {
      throw new JobsDeviceError('InvalidRequest', 'statusDetails keys (1-128 characters) and values (1-1024 characters) must be strings');
    }
  }
}

// The IoT Jobs operations of the control plane. Methods, paths, query bindings and member names are
// those of the operation schemas in @aws-sdk/client-iot (CreateJob `PUT /jobs/{jobId}`, CancelJob
// `PUT /jobs/{jobId}/cancel` with `?force=`, DescribeJob `GET /jobs/{jobId}`, GetJobDocument
// `GET /jobs/{jobId}/job-document`, DescribeJobExecution `GET /things/{thingName}/jobs/{jobId}` with
// `?executionNumber=`, ListJobExecutionsForThing `GET /things/{thingName}/jobs` with `?status=`,
// `?maxResults=`, `?nextToken=`), so the real SDK works with only `endpoint` overridden.
// Timestamps are epoch seconds, the restJson1 default.
import { invalidRequest } from '../errors.ts';
import type { ExecutionRecord, JobRecord, JobStore } from '../jobs.ts';
import type { Route } from './http.ts';

const seconds = (ms: number | undefined) => (ms === undefined ? undefined : ms / 1000);

export function jobRoutes(jobs: JobStore): Route[] {
  return [
    {
      operation: 'CreateJob',
      method: 'PUT',
      path: '/jobs/{jobId}',
      handle(req) {
        const body = req.json();
        const job = jobs.createJob({ ...body, jobId: req.params.jobId! });
        return { jobArn: job.jobArn, jobId: job.jobId, description: job.description };
      },
    },
    {
      operation: 'DescribeJob',
      method: 'GET',
      path: '/jobs/{jobId}',
      handle(req) {
        const job = jobs.job(req.params.jobId!);
        return { job: describeJob(job, jobs.processDetails(job.jobId)) };
      },
    },
    {
      operation: 'GetJobDocument',
      method: 'GET',
      path: '/jobs/{jobId}/job-document',
      handle(req) {
        return { document: jobs.document(req.params.jobId!) };
      },
    },
    {
      operation: 'CancelJob',
      method: 'PUT',
      path: '/jobs/{jobId}/cancel',
      handle(req) {
        const body = req.json();
        const job = jobs.cancelJob(req.params.jobId!, {
          force: req.query.get('force') === 'true',
          ...(typeof body.comment === 'string' ? { comment: body.comment } : {}),
          ...(typeof body.reasonCode === 'string' ? { reasonCode: body.reasonCode } : {}),
        });
        return { jobArn: job.jobArn, jobId: job.jobId, description: job.description };
      },
    },
    {
      operation: 'DescribeJobExecution',
      method: 'GET',
      path: '/things/{thingName}/jobs/{jobId}',
      handle(req) {
        const n = req.query.get('executionNumber');
        const e = jobs.execution(req.params.jobId!, req.params.thingName!, n === null ? undefined : integer(n, 'executionNumber'));
        return {
          execution: {
            jobId: e.jobId,
            status: e.status,
            forceCanceled: e.forceCanceled,
            statusDetails: { detailsMap: e.statusDetails },
            thingArn: e.thingArn,
            queuedAt: seconds(e.queuedAt),
            startedAt: seconds(e.startedAt),
            lastUpdatedAt: seconds(e.lastUpdatedAt),
            executionNumber: e.executionNumber,
            versionNumber: e.versionNumber,
            approximateSecondsBeforeTimedOut: 0,
          },
        };
      },
    },
    {
      operation: 'ListJobExecutionsForThing',
      method: 'GET',
      path: '/things/{thingName}/jobs',
      handle(req) {
        const status = req.query.get('status') ?? undefined;
        const all = jobs.executionsForThing(req.params.thingName!, status);
        const max = req.query.get('maxResults');
        const size = max === null ? 250 : integer(max, 'maxResults');
        if (size < 1 || size > 250) throw invalidRequest('maxResults must be 1-250');
        const start = req.query.get('nextToken') === null ? 0 : integer(req.query.get('nextToken')!, 'nextToken');
        const items = all.slice(start, start + size);
        return {
          executionSummaries: items.map((e) => ({ jobId: e.jobId, jobExecutionSummary: summary(e) })),
          nextToken: start + size < all.length ? String(start + size) : undefined,
        };
      },
    },
  ];
}

function summary(e: ExecutionRecord) {
  return {
    status: e.status,
    queuedAt: seconds(e.queuedAt),
    startedAt: seconds(e.startedAt),
    lastUpdatedAt: seconds(e.lastUpdatedAt),
    executionNumber: e.executionNumber,
    retryAttempt: 0,
  };
}

function describeJob(job: JobRecord, counts: Record<string, number>) {
  return {
    jobArn: job.jobArn,
    jobId: job.jobId,
    targetSelection: job.targetSelection,
    status: job.status,
    forceCanceled: job.forceCanceled,
    comment: job.comment,
    reasonCode: job.reasonCode,
    targets: job.targets,
    description: job.description,
    createdAt: seconds(job.createdAt),
    lastUpdatedAt: seconds(job.lastUpdatedAt),
    completedAt: seconds(job.completedAt),
    isConcurrent: false,
    jobProcessDetails: {
      numberOfQueuedThings: counts.QUEUED,
      numberOfInProgressThings: counts.IN_PROGRESS,
      numberOfSucceededThings: counts.SUCCEEDED,
      numberOfFailedThings: counts.FAILED,
      numberOfRejectedThings: counts.REJECTED,
      numberOfCanceledThings: counts.CANCELED,
      numberOfRemovedThings: counts.REMOVED,
      numberOfTimedOutThings: counts.TIMED_OUT,
    },
  };
}

function integer(v: string, what: string): number {
  if (!/^\d+$/.test(v)) throw invalidRequest(`${what} must be a whole number`);
  return Number(v);
}

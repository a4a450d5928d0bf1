import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { AdmittedDevice } from '../admission.ts';
import { Refusal } from '../identity/source.ts';
import type { DeviceJobs, JobUpdateRefusal } from '../jobs.ts';
import { decodeJobReport, reportJob } from './job-report.ts';
import type { Metrics } from '../metrics.ts';

// Every refusal of a device's job report has its status: a new reason without one does not compile.
const updateStatus: Record<JobUpdateRefusal, number> = {
  job_update_invalid: 400,
  jobs_disabled: 404,
  job_not_found: 404,
  job_version_conflict: 409,
  job_finished: 409,
  job_removed: 410,
  upstream_unavailable: 503,
  upstream_timeout: 504,
};

/** Seconds a device is told to wait before reporting again when IoT Core could not be asked. */
const RETRY_AFTER_S = 30;

/**
 * `POST /v1/jobs/{jobId}` `{"status", "statusDetails"?, "expectedVersion"?}`: a sleeping device reports
 * on a job it found in a 202; it becomes UpdateJobExecution as the device's thing (job-report.ts, as on CoAP).
 */
export function registerJobRoutes(
  app: FastifyInstance,
  deps: { jobs: DeviceJobs; admit(req: FastifyRequest): Promise<AdmittedDevice | Refusal>; refuse(reply: FastifyReply, refusal: Refusal): unknown; metrics: Metrics },
): void {
  app.post<{ Params: { jobId: string } }>('/v1/jobs/:jobId', async (req, reply) => {
    const device = await deps.admit(req);
    if (device instanceof Refusal) return deps.refuse(reply, device);
    const body = Buffer.isBuffer(req.body) ? decodeJobReport(req.body, 'json') : req.body;
    const report = await reportJob(deps.jobs, device.sim, req.params.jobId, body);
    if (report.ok) return reply.code(200).send(report.body);
    deps.metrics.refusals.inc({ protocol: 'http', reason: report.reason });
    if (report.reason === 'upstream_unavailable' || report.reason === 'upstream_timeout') reply.header('retry-after', String(RETRY_AFTER_S));
    return reply.code(updateStatus[report.reason]).send(report.body);
  });
}

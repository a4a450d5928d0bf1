import { decode as cborDecode } from 'cbor-x';
import type { Sim } from '../../storage/sims.ts';
import type { DeviceJobs, ExecutionState, JobUpdateRefusal } from '../jobs.ts';

/**
 * A sleeping device's report on a job, whatever listener it came by (HTTP `POST /v1/jobs/{jobId}`, CoAP
 * `POST /jobs/{jobId}`): the body decoded, UpdateJobExecution as the device's thing (bridge/jobs.ts,
 * which checks the body and audits refusals), and the answer's body. Each listener only maps the
 * outcome onto its own codes.
 */
export type JobReport =
  | { ok: true; body: { status: 'accepted'; jobId: string; execution: ExecutionState } }
  | { ok: false; reason: JobUpdateRefusal; body: { error: JobUpdateRefusal; message: string; execution?: ExecutionState } };

/** The body as sent, JSON or CBOR (CoAP Content-Format 60); undefined when it does not decode (then job_update_invalid). */
export function decodeJobReport(payload: Buffer, format: 'json' | 'cbor'): unknown {
  try {
    return format === 'cbor' ? cborDecode(payload) : JSON.parse(payload.toString('utf8'));
  } catch {
    return undefined;
  }
}

export async function reportJob(jobs: Pick<DeviceJobs, 'update'>, sim: Sim, jobId: string, body: unknown): Promise<JobReport> {
  const result = await jobs.update(sim, jobId, body);
  if (result.ok) return { ok: true, body: { status: 'accepted', jobId, execution: result.execution } };
  return { ok: false, reason: result.reason, body: { error: result.reason, message: result.message, ...(result.execution ? { execution: result.execution } : {}) } };
}

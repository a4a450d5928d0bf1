import type { Logger } from 'pino';
import type { AuditStore } from '../../storage/audit.ts';
import type { Sim } from '../../storage/sims.ts';
import type { DeviceJobs } from '../jobs.ts';
import { FileError, type FileCache, type FileFailure, type OpenFile } from './cache.ts';
import { coapFilePath, FILE_ID, fileRefs, gatewayFilePath, jobsWithGatewayFiles } from './document.ts';

export type FileRefusalReason = FileFailure | 'file_id_invalid' | 'file_not_found' | 'jobs_disabled';

export class FileRefusal {
  constructor(
    readonly reason: FileRefusalReason,
    readonly message: string,
  ) {}
}

/**
 * Who may have which file: a device gets a file only while one of its own pending job executions
 * (IN_PROGRESS or QUEUED, as IoT Core lists them for its thing) names it in its document. The list is
 * the one the 202 carries (bridge/jobs.ts), asked on the device's own session when not current.
 */
export class DeviceFiles {
  constructor(
    private readonly opts: {
      jobs: Pick<DeviceJobs, 'forResponse'>;
      cache: FileCache;
      /** files.prefetch and files.prefetchRetryMs. */
      prefetch: () => { prefetch: boolean; prefetchRetryMs: number };
      audit: AuditStore;
      log: Logger;
    },
  ) {}

  /**
   * The device's pending jobs as its answer carries them (HTTP 202, CoAP 2.04), each file pointed at the
   * gateway's copy on the listener that answers; the files start downloading now (files.prefetch), so
   * they are ready when the device asks.
   */
  announce<J extends { document: unknown }>(jobs: J[], listener: 'http' | 'coap' = 'http'): J[] {
    const { prefetch, prefetchRetryMs } = this.opts.prefetch();
    if (prefetch) for (const ref of jobs.flatMap((j) => fileRefs(j.document))) this.opts.cache.prefetch(ref, prefetchRetryMs);
    return jobsWithGatewayFiles(jobs, listener === 'coap' ? coapFilePath : gatewayFilePath);
  }

  async open(sim: Sim, id: string): Promise<OpenFile | FileRefusal> {
    if (!FILE_ID.test(id)) return new FileRefusal('file_id_invalid', 'a file id is the sha256 of the file, 64 lowercase hex digits');
    const pending = this.opts.jobs.forResponse(sim);
    if (!pending) return new FileRefusal('jobs_disabled', `group ${sim.group} does not run IoT Jobs for sleeping devices (groups.*.sleepingJobs); files come with jobs`);
    const ref = (await pending.settle()).flatMap((j) => fileRefs(j.document)).find((r) => r.id === id);
    if (!ref) {
      this.opts.audit
        .record('file_refused', sim.imsi, { file: id, reason: 'file_not_found' })
        .catch((err) => this.opts.log.warn({ err: String(err) }, 'file refusal not audited'));
      return new FileRefusal('file_not_found', 'no pending job of this device names this file');
    }
    try {
      return await this.opts.cache.open(ref);
    } catch (err) {
      if (err instanceof FileError) return new FileRefusal(err.reason, err.message);
      throw err;
    }
  }
}

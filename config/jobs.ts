import { z } from 'zod';

/** IoT Jobs run on behalf of sleeping HTTP and CoAP devices (docs/jobs.md). */
export const jobsSection = z
  .object({
    answerTimeoutMs: z.number().int().positive().default(10_000).describe('longest wait for IoT Core\'s answer to a Jobs request made for an HTTP or CoAP device; then 504 (CoAP 5.04)'),
    responseWaitMs: z.number().int().min(0).default(2_000).describe('how long a 202 (CoAP 2.04) may wait, after the commit, for the device\'s pending jobs; past it the last list known is sent'),
    holdMs: z.number().int().positive().default(600_000).describe('how long the device\'s session stays subscribed to its Jobs topics after its last request (notify keeps the list fresh meanwhile)'),
  })
  .strict()
  .prefault({});

/** Whether the group runs Jobs for its sleeping HTTP and CoAP devices (sleepingJobs, or its former name httpJobs). */
export const sleepingJobsOn = (group: { sleepingJobs?: boolean; httpJobs?: boolean }): boolean => group.sleepingJobs ?? group.httpJobs ?? false;

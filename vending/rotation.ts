import { schedule } from 'node-cron';
import type { Logger } from 'pino';

/**
 * Runs the rotation job on its cron schedule. Overlapping runs are skipped (a run only queues work);
 * the task does not keep the process alive on its own.
 */
export function scheduleRotation(expression: string, run: () => Promise<number>, log: Logger): { stop(): void } {
  const task = schedule(
    expression,
    async () => {
      try {
        const queued = await run();
        log.info({ queued }, 'certificate rotation: re-vending certificates that expire soon');
      } catch (err) {
        log.warn({ err: String(err) }, 'certificate rotation run failed; the next run tries again');
      }
    },
    { name: 'simbridge-certificate-rotation', noOverlap: true, unref: true },
  );
  return { stop: () => void task.destroy() };
}

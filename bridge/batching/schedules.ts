import cron, { type ScheduledTask } from 'node-cron';
import type { GroupConfig } from '../../config/schema.ts';

/**
 * One cron task per group with a `schedule` policy; each run releases what the group's devices hold.
 * apply() replaces the tasks when the configuration is reloaded.
 */
export class BatchSchedules {
  private tasks: ScheduledTask[] = [];

  constructor(private readonly release: (group: string) => void) {}

  apply(groups: Record<string, GroupConfig>): void {
    this.stop();
    for (const [name, group] of Object.entries(groups)) {
      if (group.batching.policy !== 'schedule') continue;
      this.tasks.push(cron.schedule(group.batching.schedule, () => this.release(name), { timezone: group.batching.timezone, name: `batch-${name}` }));
    }
  }

  stop(): void {
    for (const t of this.tasks) void t.destroy();
    this.tasks = [];
  }
}

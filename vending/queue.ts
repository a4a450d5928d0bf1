/** What one run of a job achieved: finished with a value, or should run again after a pause. */
export type Outcome<T> = { done: T } | { retryInMs: number };

export type Priority = 'urgent' | 'background';

/** The queue is full: the caller should try again later (its work is durable elsewhere, e.g. the outbox). */
export class QueueFullError extends Error {
  override readonly name = 'QueueFullError';
}

interface Job<T> {
  key: string;
  run: () => Promise<Outcome<T>>;
  priority: Priority;
  promise: Promise<T>;
  resolve(v: T): void;
  reject(e: unknown): void;
  timer?: NodeJS.Timeout;
}

/**
 * A bounded work queue with a fixed number of workers. Jobs are deduplicated by key (a hundred callers
 * for one SIM share one job). A job that must wait (backoff, a lease held elsewhere) gives its worker
 * back and re-enters the queue after its pause, so a few stuck SIMs cannot hold up the others. Urgent
 * jobs (devices waiting) go before background ones (rotation, pre-vending).
 */
export class WorkQueue<T> {
  private readonly jobs = new Map<string, Job<T>>();
  private readonly ready: Record<Priority, Job<T>[]> = { urgent: [], background: [] };
  private running = 0;
  private stopped: Error | undefined;

  constructor(private readonly opts: { concurrency: number; maxJobs: number; onDepth?(depth: number): void }) {}

  /** Jobs submitted and not finished (queued, running or pausing). */
  get depth(): number {
    return this.jobs.size;
  }

  has(key: string): boolean {
    return this.jobs.has(key);
  }

  submit(key: string, priority: Priority, run: () => Promise<Outcome<T>>): Promise<T> {
    if (this.stopped) return Promise.reject(this.stopped);
    const existing = this.jobs.get(key);
    if (existing) {
      if (priority === 'urgent' && existing.priority === 'background') this.promote(existing);
      return existing.promise;
    }
    if (this.jobs.size >= this.opts.maxJobs) return Promise.reject(new QueueFullError(`vending queue is full (${this.opts.maxJobs} SIMs waiting)`));
    let resolve!: (v: T) => void;
    let reject!: (e: unknown) => void;
    const promise = new Promise<T>((res, rej) => ((resolve = res), (reject = rej)));
    // Nobody may be listening (background jobs): an unobserved rejection must not crash the process.
    promise.catch(() => undefined);
    const job: Job<T> = { key, run, priority, promise, resolve, reject };
    this.jobs.set(key, job);
    this.ready[priority].push(job);
    this.changed();
    this.pump();
    return promise;
  }

  /** Fails every job not finished yet; running ones finish their current step first. */
  stop(reason = new Error('vending stopped')): void {
    this.stopped = reason;
    for (const job of this.jobs.values()) {
      clearTimeout(job.timer);
      job.reject(reason);
    }
    this.jobs.clear();
    this.ready.urgent.length = 0;
    this.ready.background.length = 0;
    this.changed();
  }

  /** Fails one job (its SIM was revoked); a run in progress notices at its next step. */
  cancel(key: string, reason: Error): void {
    const job = this.jobs.get(key);
    if (!job) return;
    clearTimeout(job.timer);
    this.remove(job);
    job.reject(reason);
  }

  private promote(job: Job<T>): void {
    const i = this.ready.background.indexOf(job);
    job.priority = 'urgent';
    if (i >= 0) {
      this.ready.background.splice(i, 1);
      this.ready.urgent.push(job);
    }
  }

  private pump(): void {
    while (!this.stopped && this.running < this.opts.concurrency) {
      const job = this.ready.urgent.shift() ?? this.ready.background.shift();
      if (!job) return;
      this.running++;
      void this.execute(job);
    }
  }

  private async execute(job: Job<T>): Promise<void> {
    try {
      const outcome = await job.run();
      if (this.jobs.get(job.key) !== job) return; // cancelled or stopped meanwhile
      if ('done' in outcome) {
        this.remove(job);
        job.resolve(outcome.done);
      } else {
        job.timer = setTimeout(() => {
          job.timer = undefined;
          if (this.jobs.get(job.key) !== job) return;
          this.ready[job.priority].push(job);
          this.pump();
        }, outcome.retryInMs);
      }
    } catch (err) {
      if (this.jobs.get(job.key) === job) {
        this.remove(job);
        job.reject(err);
      }
    } finally {
      this.running--;
      this.pump();
    }
  }

  private remove(job: Job<T>): void {
    this.jobs.delete(job.key);
    for (const list of Object.values(this.ready)) {
      const i = list.indexOf(job);
      if (i >= 0) list.splice(i, 1);
    }
    this.changed();
  }

  private changed(): void {
    this.opts.onDepth?.(this.jobs.size);
  }
}

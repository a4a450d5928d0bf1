import { parentPort, Worker, type ResourceLimits } from 'node:worker_threads';

/** Main thread → worker: one call. */
interface Call<Req> {
  seq: number;
  req: Req;
}

/** Worker → main thread: the answer to one call. */
interface Answer {
  seq: number;
  value?: unknown;
  error?: string;
}

/**
 * Worker → main thread: answers (in order), an event of the worker's own, or word that its module has
 * loaded. Calls made in one turn of the event loop travel as one message, and so do the answers given
 * in one turn: a message costs a structured clone and a wake-up of the other thread, whatever it holds.
 */
type Posted<Event> = { answers: Answer[] } | { event: Event } | { ready: true };

/**
 * The URL of a thread module beside the caller, as the caller itself runs: `name.ts` from the sources,
 * `name.js` from the build (the compiler rewrites import specifiers, not URLs built at run time).
 */
export function siblingModule(callerUrl: string, name: string): URL {
  return new URL(`./${name}${callerUrl.endsWith('.ts') ? '.ts' : '.js'}`, callerUrl);
}

export interface WorkerCallsOptions<Event> {
  workerData?: unknown;
  onEvent?(event: Event): void;
  /** The thread died (or was stopped): its open calls have been failed already. */
  onLost?(err: Error): void;
  /** Whether a started thread keeps the process alive. */
  keepAlive?: boolean;
  /** The thread's heap limits (see node:worker_threads). */
  resourceLimits?: ResourceLimits;
}

/**
 * Calls into a worker thread running one of the project's TypeScript modules (which answers through
 * serveCalls). Each call resolves with the thread's answer; the thread starts on first use and again
 * after it died, and a thread that dies takes its open calls with it (they are rejected).
 */
export class WorkerCalls<Req, Event = never> {
  private worker: Worker | undefined;
  /** Settles once the current thread has loaded its module (or died first). */
  private loaded: Promise<void> = Promise.resolve();
  private seq = 0;
  /** Calls made this turn, posted together at its end. */
  private outgoing: Array<Call<Req>> = [];
  private readonly waiting = new Map<number, { resolve: (value: unknown) => void; reject: (err: Error) => void }>();

  constructor(
    private readonly module: URL,
    private readonly opts: WorkerCallsOptions<Event> = {},
  ) {}

  get started(): boolean {
    return this.worker !== undefined;
  }

  /** Starts the thread if needed and resolves once it has loaded its module and takes calls. */
  ready(): Promise<void> {
    this.worker ??= this.start();
    return this.loaded;
  }

  call<T>(req: Req): Promise<T> {
    this.worker ??= this.start();
    const seq = ++this.seq;
    return new Promise((resolve, reject) => {
      this.waiting.set(seq, { resolve: resolve as (value: unknown) => void, reject });
      if (this.outgoing.push({ seq, req }) === 1) queueMicrotask(() => this.post());
    });
  }

  private post(): void {
    const calls = this.outgoing;
    this.outgoing = [];
    // A thread lost meanwhile has failed these calls already (they were waiting).
    if (this.worker && calls.length > 0) this.worker.postMessage(calls);
  }

  async stop(): Promise<void> {
    const w = this.worker;
    if (w) await w.terminate();
  }

  private start(): Worker {
    // Module loaders are per thread and `--import tsx` does not reach workers: a TypeScript module's
    // thread registers tsx itself, then loads the module; the built JavaScript needs no loader.
    const load = `import(${JSON.stringify(this.module.href)})`;
    const boot = this.module.pathname.endsWith('.ts')
      ? `import(${JSON.stringify(import.meta.resolve('tsx/esm/api'))}).then((tsx) => { tsx.register(); return ${load}; })`
      : load;
    const w = new Worker(boot, { eval: true, workerData: this.opts.workerData, resourceLimits: this.opts.resourceLimits });
    let loaded!: () => void;
    let failed!: (err: Error) => void;
    this.loaded = new Promise<void>((resolve, reject) => ((loaded = resolve), (failed = reject)));
    // Nobody may be waiting for it: a thread that dies while loading fails its calls instead.
    this.loaded.catch(() => undefined);
    w.on('message', (msg: Posted<Event>) => {
      if ('ready' in msg) return loaded();
      if ('event' in msg) return this.opts.onEvent?.(msg.event);
      for (const answer of msg.answers) {
        const entry = this.waiting.get(answer.seq);
        this.waiting.delete(answer.seq);
        if (answer.error !== undefined) entry?.reject(new Error(answer.error));
        else entry?.resolve(answer.value);
      }
    });
    w.on('error', (err) => (failed(err as Error), this.lost(w, err as Error)));
    w.on('exit', (code) => {
      const err = new Error(`worker thread ${this.module.pathname.split('/').pop()} exited (${code})`);
      failed(err);
      this.lost(w, err);
    });
    if (!this.opts.keepAlive) w.unref();
    return w;
  }

  private lost(w: Worker, err: Error): void {
    if (this.worker !== w) return;
    this.worker = undefined;
    for (const entry of this.waiting.values()) entry.reject(err);
    this.waiting.clear();
    this.opts.onLost?.(err);
  }
}

/** The worker's side: answers given this turn, posted together at its end (or before an event). */
let answers: Answer[] = [];

function postAnswers(): void {
  if (answers.length === 0) return;
  const posted = answers;
  answers = [];
  parentPort!.postMessage({ answers: posted });
}

/** The worker's side: answers every call with what the handler returns, or the message of what it throws. */
export function serveCalls<Req>(handler: (req: Req) => unknown): void {
  const answer = (a: Answer) => {
    if (answers.push(a) === 1) queueMicrotask(postAnswers);
  };
  parentPort!.on('message', (calls: Array<Call<Req>>) => {
    for (const { seq, req } of calls) {
      new Promise((resolve) => resolve(handler(req))).then(
        (value) => answer({ seq, value }),
        (err) => answer({ seq, error: String((err as Error)?.message ?? err) }),
      );
    }
  });
  parentPort!.postMessage({ ready: true });
}

/** The worker's side: something that is not the answer to a call. */
export function postEvent(event: unknown): void {
  // Answers given before the event arrive before it, as they were given.
  postAnswers();
  parentPort!.postMessage({ event });
}

/**
 * Bytes as they travel between threads: a latin1 string, one character per byte. A structured clone
 * copies a Buffer's whole backing store (a payload sliced from a socket read takes the read along, one
 * from Node's Buffer pool its 8 KB) and gives each one a backing store of its own on arrival; a one-byte
 * string is copied as itself into the other thread's heap: 0.6 µs per 200-byte payload against 12 µs
 * as slices of 16 KB reads (bench/results/thread-bytes.md).
 */
export function bytesToPost(bytes: Uint8Array): string {
  return (Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength)).toString('latin1');
}

/** The other side of bytesToPost: the bytes again, as a Buffer. */
export function postedBytes(text: string): Buffer {
  return Buffer.from(text, 'latin1');
}

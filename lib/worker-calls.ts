import { parentPort, Worker } from 'node:worker_threads';

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
  /** Calls made this turn, posted together at its end, and the buffers they move to the thread. */
  private outgoing: Array<Call<Req>> = [];
  private moving: ArrayBuffer[] = [];
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

  /** `transfer`: buffers the request moves to the thread (packBytes); unusable here afterwards. */
  call<T>(req: Req, transfer: readonly ArrayBuffer[] = []): Promise<T> {
    this.worker ??= this.start();
    const seq = ++this.seq;
    return new Promise((resolve, reject) => {
      this.waiting.set(seq, { resolve: resolve as (value: unknown) => void, reject });
      for (const b of transfer) this.moving.push(b);
      if (this.outgoing.push({ seq, req }) === 1) queueMicrotask(() => this.post());
    });
  }

  private post(): void {
    const calls = this.outgoing;
    const moving = this.moving;
    this.outgoing = [];
    this.moving = [];
    // A thread lost meanwhile has failed these calls already (they were waiting).
    if (this.worker && calls.length > 0) this.worker.postMessage(calls, moving);
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
    const w = new Worker(boot, { eval: true, workerData: this.opts.workerData });
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

/** A Buffer posted to or from a thread arrives as a plain Uint8Array: a Buffer over the same bytes. */
export function asBuffer(bytes: Uint8Array): Buffer {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** The worker's side: something that is not the answer to a call (`transfer`: as for call()). */
export function postEvent(event: unknown, transfer: readonly ArrayBuffer[] = []): void {
  // Answers given before the event arrive before it, as they were given.
  postAnswers();
  parentPort!.postMessage({ event }, [...transfer]);
}

/**
 * Byte views copied into one new buffer, to be moved to the other thread rather than cloned: a
 * structured clone copies a view's whole backing store, so a 200-byte payload sliced from a socket's
 * 64 KB read would cost a 64 KB copy (8 KB from Node's Buffer pool). Packed, each byte is copied once.
 */
export function packBytes(views: readonly Uint8Array[]): { views: Buffer[]; transfer: ArrayBuffer[] } {
  let total = 0;
  for (const v of views) total += v.byteLength;
  const packed = new ArrayBuffer(total);
  const target = new Uint8Array(packed);
  let at = 0;
  const out = views.map((v) => {
    target.set(v, at);
    const copy = Buffer.from(packed, at, v.byteLength);
    at += v.byteLength;
    return copy;
  });
  return { views: out, transfer: [packed] };
}

import { Worker } from 'node:worker_threads';

/**
 * A worker thread running a TypeScript module of this project. Module loaders are per thread and
 * `--import tsx` does not reach workers, so the thread registers tsx itself, then loads the module.
 */
export function tsWorker(module: URL, workerData: unknown): Worker {
  const boot = `import(${JSON.stringify(import.meta.resolve('tsx/esm/api'))}).then((tsx) => { tsx.register(); return import(${JSON.stringify(module.href)}); })`;
  return new Worker(boot, { eval: true, workerData });
}

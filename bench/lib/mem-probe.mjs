// Memory probe for benchmarks, loaded into a process with NODE_OPTIONS="--expose-gc --import=<this file>"
// and BENCH_MEMPROBE_DIR set: on SIGUSR2 it runs two full garbage collections and writes
// process.memoryUsage() to $BENCH_MEMPROBE_DIR/<pid>.json. Does nothing otherwise (no handler is installed).
import { renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

const dir = process.env.BENCH_MEMPROBE_DIR;
if (dir && typeof globalThis.gc === 'function') {
  process.on('SIGUSR2', () => {
    globalThis.gc();
    setTimeout(() => {
      globalThis.gc();
      const file = join(dir, `${process.pid}.json`);
      writeFileSync(`${file}.tmp`, JSON.stringify({ ...process.memoryUsage(), at: Date.now() }));
      renameSync(`${file}.tmp`, file);
    }, 100);
  });
}

// Compiles the gateway to JavaScript (tsc rewrites the .ts import specifiers) and copies the files it
// reads at run time beside the modules that read them. Usage: node scripts/build.mjs [OUT_DIR], default dist.
import { execFileSync } from 'node:child_process';
import { cpSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';

const out = process.argv[2] ?? 'dist';
const assets = ['admin/installer', 'storage/migrations'];

rmSync(out, { recursive: true, force: true });
const tsc = join(dirname(createRequire(import.meta.url).resolve('typescript/package.json')), 'bin/tsc');
execFileSync(process.execPath, [tsc, '-p', 'tsconfig.build.json', '--outDir', out], { stdio: 'inherit' });
for (const dir of assets) cpSync(dir, join(out, dir), { recursive: true });

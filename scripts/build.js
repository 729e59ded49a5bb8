// Builds dist/esm (ES modules) and dist/cjs (CommonJS), each with its own .d.ts. The CommonJS
// entry is lib/index.cjs (and its types, lib/index.d.cts), copied in by hand: it makes
// `require('express-background-tasks')` return the factory itself.
import { execFileSync } from 'node:child_process';
import { copyFileSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';

const tsc = createRequire(import.meta.url).resolve('typescript/bin/tsc');
const compile = (...args) => execFileSync(process.execPath, [tsc, '-p', 'tsconfig.build.json', ...args], { stdio: 'inherit' });

rmSync('dist', { recursive: true, force: true });
compile();
compile('--module', 'commonjs', '--moduleResolution', 'node10', '--outDir', 'dist/cjs');
writeFileSync('dist/cjs/package.json', '{ "type": "commonjs" }\n');
for (const file of ['index.cjs', 'index.d.cts']) copyFileSync(`lib/${file}`, `dist/cjs/${file}`);

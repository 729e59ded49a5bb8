import { execFileSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { fileURLToPath, pathToFileURL } from 'node:url';

/** The library's public module, as the benchmarks use it. */
export type Library = typeof import('../lib/index.js');

/**
 * Compiles `lib/` with the same `tsconfig.build.json` as `npm run build` (ESM half), so the numbers
 * are those of the shipped JavaScript. It goes to `.tmp/bench/dist` rather than `dist/`, because
 * `npm run build` deletes `dist/` and someone may be running it while the benchmarks run.
 * @return the file URL of the compiled `index.js`, for `importLibrary()`
 */
export function buildLibrary(): string {
  const outDir = fileURLToPath(new URL('../.tmp/bench/dist', import.meta.url));
  const tsc = createRequire(import.meta.url).resolve('typescript/bin/tsc');
  execFileSync(process.execPath, [tsc, '-p', 'tsconfig.build.json', '--outDir', outDir, '--declaration', 'false'], {
    cwd: fileURLToPath(new URL('..', import.meta.url)),
    stdio: 'inherit',
  });
  return pathToFileURL(`${outDir}/index.js`).href;
}

/**
 * Loads the compiled library in a benchmark child.
 * @param url - what `buildLibrary()` returned, passed on the child's command line
 * @return the library's exports
 */
export async function importLibrary(url: string | undefined): Promise<Library> {
  if (url === undefined) throw new Error('expected the compiled library URL as an argument');
  return (await import(url)) as Library;
}

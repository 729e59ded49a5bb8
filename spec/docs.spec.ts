// The code in README.md and docs/*.md, checked, so that a doc cannot drift from the code. The
// line before each complete program says how:
//   <!-- checked: typecheck [name.ts] -->   compiled by tsc (strict), against the built package
//   <!-- checked: run [name.ts] -->         compiled, then run with tsx: it must exit 0, in time
//   <!-- checked: vitest [name.test.ts] --> compiled, then run by `vitest run`
//   <!-- unchecked: why -->                  a complete program this suite cannot run, and why
// A ```ts block with an `import` line must carry one of them; blocks without one are fragments.
// Each page's blocks go to .tmp/docs/<page>/, under the name given (else block-<line>.ts), so they
// can import one another. `express-background-tasks` resolves to this package by its own name
// (package.json `exports`, so dist/: `npm run build` first, as `npm test` does).
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { before, describe, it } from 'node:test';

const repo = fileURLToPath(new URL('..', import.meta.url));
const workspace = path.join(repo, '.tmp', 'docs');
const resolve = createRequire(import.meta.url).resolve;

interface Block {
  /** Where the block's first code line is: `docs/testing.md:42`. */
  readonly where: string;
  readonly line: number;
  readonly code: string;
  /** `typecheck`, `run`, `vitest`, `unchecked`, or undefined for a block without a marker. */
  readonly check: string | undefined;
  /** Its file, relative to the workspace: `testing/app.ts`. */
  readonly file: string;
}

const pages = ['README.md', ...(await readdir(path.join(repo, 'docs'))).filter((name) => name.endsWith('.md')).map((name) => `docs/${name}`)];
const blocks = (await Promise.all(pages.map(async (page) => blocksOf(page, await readFile(path.join(repo, page), 'utf8'))))).flat();
const checked = blocks.filter((block) => block.check !== undefined && block.check !== 'unchecked');

describe('the code in the README and docs/', () => {
  let compiled: { code: number; output: string };

  before(async () => {
    assert.ok(existsSync(path.join(repo, 'dist/esm/index.js')), 'dist/ is missing: run `npm run build` before this spec');
    await rm(workspace, { recursive: true, force: true });
    for (const block of checked) {
      await mkdir(path.dirname(path.join(workspace, block.file)), { recursive: true });
      await writeFile(path.join(workspace, block.file), block.code);
    }
    const compilerOptions = {
      target: 'ES2022', module: 'NodeNext', moduleResolution: 'NodeNext', types: ['node'], strict: true,
      exactOptionalPropertyTypes: true, skipLibCheck: true, noEmit: true,
    };
    await writeFile(path.join(workspace, 'tsconfig.json'), JSON.stringify({ compilerOptions, files: checked.map((block) => block.file) }));
    compiled = await run(process.execPath, [resolve('typescript/bin/tsc'), '-p', 'tsconfig.json', '--pretty', 'false'], workspace);
  });

  it('marks every block that imports something: checked, or unchecked with the reason', () => {
    const unmarked = blocks.filter((block) => block.check === undefined && /^import /m.test(block.code));
    assert.deepEqual(unmarked.map((block) => block.where), [], 'put <!-- checked: typecheck --> (or run, or unchecked: why) on the line before each');
  });

  it('links only to files that exist, and to headings that exist in them', async () => {
    const broken: string[] = [];
    for (const page of pages) {
      const markdown = await readFile(path.join(repo, page), 'utf8');
      for (const [, target = ''] of markdown.matchAll(/\]\(([^)\s]+)\)/g)) {
        if (/^[a-z]+:/.test(target)) continue;
        const [file = '', anchor] = target.split('#');
        const linked = file === '' ? page : path.posix.join(path.posix.dirname(page), file);
        if (!existsSync(path.join(repo, linked))) broken.push(`${page}: ${target}`);
        else if (anchor !== undefined && linked.endsWith('.md') && !headingsOf(await readFile(path.join(repo, linked), 'utf8')).includes(anchor)) {
          broken.push(`${page}: ${target} (no such heading)`);
        }
      }
    }
    assert.deepEqual(broken, []);
  });

  it(`compiles, strict, each of the ${checked.length} checked blocks`, () => {
    const errors = [...compiled.output.matchAll(/^(.+?)\((\d+),\d+\): (error TS\d+: .*)$/gm)].map(([, file, line, message]) => {
      const block = checked.find((candidate) => candidate.file === file);
      return block === undefined ? `${file}:${line}: ${message}` : `${block.where.replace(/\d+$/, '')}${block.line + Number(line) - 1}: ${message}`;
    });
    assert.deepEqual(errors, [], compiled.output);
    assert.equal(compiled.code, 0, compiled.output);
  });

  for (const block of checked.filter((candidate) => candidate.check === 'run' || candidate.check === 'vitest')) {
    it(`runs ${block.where} (${block.check === 'run' ? 'tsx' : 'vitest run'}), which exits 0`, async () => {
      const file = path.join(workspace, block.file);
      const { code, output } = block.check === 'run'
        ? await run(process.execPath, ['--import', 'tsx', file], repo)
        : await run(process.execPath, [path.join(path.dirname(resolve('vitest/package.json')), 'vitest.mjs'), 'run', '--root', path.dirname(file), path.basename(file)], repo);
      assert.equal(code, 0, output);
    });
  }
});

/** @return the ```ts blocks of a page, each with the marker on the line before it, if any */
function blocksOf(page: string, markdown: string): Block[] {
  const lines = markdown.split('\n');
  const found: Block[] = [];
  for (let index = 0; index < lines.length; index++) {
    if (!/^\s*```(ts|typescript)\s*$/.test(lines[index] ?? '')) continue;
    const end = lines.findIndex((line, after) => after > index && /^\s*```\s*$/.test(line));
    assert.notEqual(end, -1, `${page}:${index + 1}: a code block that never ends`);
    const previous = lines.slice(0, index).reverse().find((line) => line.trim() !== '') ?? '';
    const marker = previous.trim().match(/^<!-- (?:checked: (typecheck|run|vitest)(?: ([\w.-]+\.ts))?|(unchecked): .+) -->$/);
    const line = index + 2;
    const indent = (lines[index] ?? '').match(/^\s*/)?.[0].length ?? 0;
    found.push({
      where: `${page}:${line}`,
      line,
      code: `${lines.slice(index + 1, end).map((text) => text.slice(indent)).join('\n')}\n`,
      check: marker?.[1] ?? marker?.[3],
      file: `${path.basename(page, '.md').toLowerCase()}/${marker?.[2] ?? `block-${line}.ts`}`,
    });
    index = end;
  }
  return found;
}

/** @return the anchors GitHub and npm give a page's headings: `## Redis down and \`fallback\`` is `redis-down-and-fallback` */
function headingsOf(markdown: string): string[] {
  const outsideCode = markdown.replace(/^```[\s\S]*?^```/gm, '');
  return [...outsideCode.matchAll(/^#{1,6} (.+)$/gm)].map(([, heading = '']) =>
    heading.trim().toLowerCase().replace(/[^\p{L}\p{N} _-]/gu, '').replaceAll(' ', '-'));
}

/** Runs a command without a shell, bounded in time. @return its exit code and all it printed */
function run(command: string, args: string[], cwd: string): Promise<{ code: number; output: string }> {
  return new Promise((done) => {
    execFile(command, args, { cwd, timeout: 60_000, maxBuffer: 16 * 1024 * 1024 }, (error, stdout, stderr) => {
      const code = error === null ? 0 : typeof error.code === 'number' ? error.code : 1;
      done({ code, output: `${stdout}${stderr}${error?.killed === true ? '\n(killed: it did not exit within 60 s)' : ''}` });
    });
  });
}

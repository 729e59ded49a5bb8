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
// It also checks that the pages' links resolve, that every command of a ```sh block is one that
// works (npm scripts that exist, packages the project knows, the node test command run on a file),
// and that the pages stay as short as a reader needs them.
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
const commands = (await Promise.all(pages.map(async (page) => commandsOf(page, await readFile(path.join(repo, page), 'utf8'))))).flat();

/** What this spec reads of package.json. */
interface Manifest {
  readonly name: string;
  readonly scripts: Record<string, string>;
  readonly dependencies?: Record<string, string>;
  readonly peerDependencies?: Record<string, string>;
  readonly devDependencies?: Record<string, string>;
}

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

  it('shows only shell commands that work: npm scripts that exist, packages this project knows, the test command', async () => {
    const manifest = JSON.parse(await readFile(path.join(repo, 'package.json'), 'utf8')) as Manifest;
    const known = new Set([manifest.name, ...Object.keys({ ...manifest.dependencies, ...manifest.peerDependencies, ...manifest.devDependencies })]);
    const wrong: string[] = [];
    const testFiles = new Set<string>();
    for (const { where, command } of commands) {
      const install = command.match(/^npm install(?: -D)?((?: [@\w./-]+)*)$/);
      const script = command.match(/^npm run (\S+)(?: -- .*)?$/);
      const nodeTest = command.match(/^node --import tsx --test (\S+\.test\.ts)$/);
      if (install !== null) {
        const unknown = (install[1] ?? '').split(' ').filter((name) => name !== '' && !known.has(name));
        if (unknown.length > 0) wrong.push(`${where}: ${command} (not a package this project uses: ${unknown.join(', ')})`);
      } else if (script !== null) {
        if (manifest.scripts[script[1] ?? ''] === undefined) wrong.push(`${where}: ${command} (no such script)`);
      } else if (nodeTest !== null) {
        testFiles.add(nodeTest[1] ?? '');
      } else if (command !== 'npm test') {
        wrong.push(`${where}: ${command} (not a command this spec knows how to check)`);
      }
    }
    assert.deepEqual(wrong, []);
    for (const file of testFiles) {
      const directory = path.join(workspace, 'commands');
      await mkdir(directory, { recursive: true });
      await writeFile(path.join(directory, file), "import { test } from 'node:test';\ntest('runs', () => {});\n");
      // NODE_TEST_CONTEXT would make the inner `node --test` skip its files, as a test run inside this one.
      const environment = { ...process.env };
      delete environment['NODE_TEST_CONTEXT'];
      const { code, output } = await run(process.execPath, ['--import', 'tsx', '--test', file], directory, environment);
      assert.equal(code, 0, output);
      assert.match(output, /^# pass 1$/m, `node --import tsx --test ${file} ran no test:\n${output}`);
    }
  });

  it('keeps pages a reader finishes: README ≤ 1,600 words, each guide ≤ 2,000, docs/ < 15,000 in all', async () => {
    const words = Object.fromEntries(await Promise.all(pages.map(async (page) => [page, (await readFile(path.join(repo, page), 'utf8')).split(/\s+/).filter(Boolean).length] as const)));
    const guides = pages.filter((page) => page.startsWith('docs/'));
    assert.ok((words['README.md'] ?? 0) <= 1600, `README.md has ${words['README.md']} words`);
    assert.deepEqual(guides.filter((page) => (words[page] ?? 0) > 2000), [], JSON.stringify(words));
    const total = guides.reduce((sum, page) => sum + (words[page] ?? 0), 0);
    assert.ok(total < 15000, `docs/ holds ${total} words`);
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

/** @return each command of the page's ```sh blocks (commands joined by `&&` apart), with where it is */
function commandsOf(page: string, markdown: string): { where: string; command: string }[] {
  return [...markdown.matchAll(/^```sh\n([\s\S]*?)^```/gm)].flatMap((match) => {
    const line = markdown.slice(0, match.index).split('\n').length + 1;
    return (match[1] ?? '').split('\n').flatMap((text) => text.replace(/#.*$/, '').split('&&'))
      .map((command) => command.trim()).filter(Boolean).map((command) => ({ where: `${page}:${line}`, command }));
  });
}

/** @return the anchors GitHub and npm give a page's headings: `## Redis down and \`fallback\`` is `redis-down-and-fallback` */
function headingsOf(markdown: string): string[] {
  const outsideCode = markdown.replace(/^```[\s\S]*?^```/gm, '');
  return [...outsideCode.matchAll(/^#{1,6} (.+)$/gm)].map(([, heading = '']) =>
    heading.trim().toLowerCase().replace(/[^\p{L}\p{N} _-]/gu, '').replaceAll(' ', '-'));
}

/** Runs a command without a shell, bounded in time. @return its exit code and all it printed */
function run(command: string, args: string[], cwd: string, env = process.env): Promise<{ code: number; output: string }> {
  return new Promise((done) => {
    execFile(command, args, { cwd, env, timeout: 60_000, maxBuffer: 16 * 1024 * 1024 }, (error, stdout, stderr) => {
      const code = error === null ? 0 : typeof error.code === 'number' ? error.code : 1;
      done({ code, output: `${stdout}${stderr}${error?.killed === true ? '\n(killed: it did not exit within 60 s)' : ''}` });
    });
  });
}

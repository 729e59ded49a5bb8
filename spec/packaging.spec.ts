import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';

// What a user gets from `npm install express-background-tasks`: the tarball `npm pack` makes,
// installed into a throwaway consumer project, used from CommonJS, from ES modules and from a
// strict TypeScript project. Relies on `npm run build` having made dist/; no network.

const repo = fileURLToPath(new URL('..', import.meta.url));
const tsc = createRequire(import.meta.url).resolve('typescript/bin/tsc');
const manifest = JSON.parse(await readFile(path.join(repo, 'package.json'), 'utf8')) as {
  name: string;
  dependencies?: Record<string, string>;
  peerDependencies?: Record<string, string>;
};

/** What the tarball may hold, besides dist/**: npm always adds package.json, README and LICENSE. */
const shippedDocs = ['README.md', 'LICENSE', 'CHANGELOG.md'];

/** The hand-written CommonJS entry (lib/index.cjs) and its types, next to the compiled modules. */
const commonJsEntry = ['dist/cjs/index.cjs', 'dist/cjs/index.d.cts'];

/** A user's strict project, compiled the three ways Node projects resolve the package's types. */
const typeProjects = [
  {
    label: 'an ES module project (module NodeNext)',
    dir: 'types-esm-nodenext',
    packageType: 'module',
    entry: 'dist/esm/index.d.ts',
    fixtures: ['valid-usage.ts', 'invalid-usage.ts'],
    compilerOptions: { module: 'NodeNext', moduleResolution: 'NodeNext' },
  },
  {
    label: 'a CommonJS project (module NodeNext)',
    dir: 'types-cjs-nodenext',
    packageType: 'commonjs',
    entry: 'dist/cjs/index.d.cts',
    fixtures: ['valid-usage.ts', 'invalid-usage.ts', 'require-usage.cts'],
    compilerOptions: { module: 'NodeNext', moduleResolution: 'NodeNext' },
  },
  {
    label: 'a CommonJS project (module CommonJS, moduleResolution node10)',
    dir: 'types-cjs-node10',
    packageType: 'commonjs',
    entry: 'dist/cjs/index.d.cts',
    fixtures: ['valid-usage.ts', 'invalid-usage.ts', 'require-usage.cts'],
    compilerOptions: { module: 'CommonJS', moduleResolution: 'node10', esModuleInterop: true },
  },
] as const;

/**
 * The strictest settings a user is likely to have. skipLibCheck is off, so the package's own
 * declarations must compile with nothing installed but its peers' types (@types/express, @types/node).
 */
const strictOptions = {
  strict: true,
  exactOptionalPropertyTypes: true,
  target: 'ES2022',
  noEmit: true,
  skipLibCheck: false,
};

describe('packaging', () => {
  let workspace: string;
  let tarballFiles: string[];
  let consumer: string;

  before(async () => {
    assert.ok(existsSync(path.join(repo, 'dist/esm/index.js')) && existsSync(path.join(repo, 'dist/cjs/index.js')),
      'dist/ is missing: run `npm run build` before this spec');
    workspace = await mkdtemp(path.join(os.tmpdir(), 'express-background-tasks-pack-'));
    const tarball = await pack(workspace);
    tarballFiles = await listTarball(tarball);
    consumer = await installConsumer(workspace, tarball);
  });

  after(async () => {
    if (workspace !== undefined) await rm(workspace, { recursive: true, force: true });
  });

  describe('the tarball', () => {
    it('holds only package.json, the README, LICENSE, CHANGELOG, the guides in docs/ and the build output in dist/', () => {
      const unexpected = tarballFiles.filter((file) => file !== 'package.json' && !shippedDocs.includes(file) && !/^docs\/[\w-]+\.(md|svg)$/.test(file) &&
        !/^dist\/(esm|cjs)\/[\w-]+\.(js|d\.ts|mjs|d\.mts)$/.test(file) && !commonJsEntry.includes(file) && file !== 'dist/cjs/package.json');
      assert.deepEqual(unexpected, [], 'files the tarball should not ship');
      for (const folder of ['lib/', 'spec/', 'bench/', 'examples/', 'scripts/', 'node_modules/', '.tmp/']) {
        assert.ok(!tarballFiles.some((file) => file.startsWith(folder)), `${folder} is shipped`);
      }
    });

    it('holds every file its package.json points to, and the marker that makes dist/cjs CommonJS', async () => {
      const shipped = JSON.parse(await readFile(path.join(consumer, 'node_modules', manifest.name, 'package.json'), 'utf8')) as
        { main: string; types: string; exports: unknown };
      const targets = [shipped.main, shipped.types, ...exportTargets(shipped.exports)].map((target) => path.posix.normalize(target));
      assert.ok(targets.includes('dist/esm/index.js') && targets.includes('dist/cjs/index.cjs'), targets.join(', '));
      for (const file of [...targets, 'dist/cjs/package.json']) {
        assert.ok(tarballFiles.includes(file), `${file} is missing`);
      }
    });

    it('ships the README, LICENSE, CHANGELOG and docs/, and every file they link to, so the links work in node_modules', async () => {
      for (const doc of shippedDocs.filter((file) => existsSync(path.join(repo, file)))) {
        assert.ok(tarballFiles.includes(doc), `${doc} is missing`);
      }
      const pages = tarballFiles.filter((file) => file.endsWith('.md'));
      assert.ok(pages.filter((file) => file.startsWith('docs/')).length >= 5, `the guides in docs/ are missing: ${pages.join(', ')}`);
      const unshipped: string[] = [];
      for (const page of pages) {
        const markdown = await readFile(path.join(repo, page), 'utf8');
        for (const [, target = ''] of markdown.matchAll(/\]\(([^)#\s]+)(?:#[^)\s]*)?\)/g)) {
          const linked = path.posix.join(path.posix.dirname(page), target);
          if (!/^[a-z]+:/.test(target) && !tarballFiles.includes(linked)) unshipped.push(`${page}: ${target}`);
        }
      }
      assert.deepEqual(unshipped, [], 'links to files the tarball lacks');
    });
  });

  describe('installed in a consumer app', () => {
    it('require() returns the factory itself, carrying every named export: .backgroundTasks and .default are the same function', async () => {
      const printed = await runNode(consumer, 'exports.cjs', `
        const assert = require('node:assert/strict');
        const backgroundTasks = require('express-background-tasks');
        assert.equal(typeof backgroundTasks, 'function');
        assert.equal(backgroundTasks.name, 'backgroundTasks');
        assert.equal(backgroundTasks.default, backgroundTasks);
        assert.equal(backgroundTasks.backgroundTasks, backgroundTasks);
        assert.equal(typeof backgroundTasks().drain, 'function');
        assert.equal(typeof backgroundTasks.defineTask('t', () => {}), 'function');
        assert.equal(new backgroundTasks.TimeoutError('late').name, 'TimeoutError');
        assert.equal(new backgroundTasks.QueueFullError('full').name, 'QueueFullError');
        assert.equal(new backgroundTasks.HandOffError('down').name, 'HandOffError');
        const { defineTask, TimeoutError } = require('express-background-tasks');
        assert.equal(defineTask, backgroundTasks.defineTask);
        assert.equal(TimeoutError, backgroundTasks.TimeoutError);
        assert.equal(require('express-background-tasks/package.json').name, 'express-background-tasks');
        console.log(JSON.stringify({ names: Object.keys(backgroundTasks).sort(), loaded: require.resolve('express-background-tasks') }));
      `);
      const { names, loaded } = JSON.parse(printed) as { names: string[]; loaded: string };
      assert.deepEqual(names, ['HandOffError', 'PermanentError', 'QueueFullError', 'ShutdownError', 'TimeoutError', 'backgroundTasks', 'default', 'defineTask', 'withSignal']);
      assert.ok(loaded.endsWith(path.join('dist', 'cjs', 'index.cjs')), loaded);
    });

    it('import loads the ES module build: the same function as default and named export, TimeoutError, QueueFullError', async () => {
      const printed = await runNode(consumer, 'exports.mjs', `
        import assert from 'node:assert/strict';
        import backgroundTasks, { backgroundTasks as named, TimeoutError, QueueFullError } from 'express-background-tasks';
        import * as everything from 'express-background-tasks';
        assert.equal(typeof backgroundTasks, 'function');
        assert.equal(backgroundTasks, named);
        assert.ok(new TimeoutError('late') instanceof Error);
        assert.equal(new TimeoutError('late').name, 'TimeoutError');
        assert.equal(new QueueFullError('full').name, 'QueueFullError');
        console.log(JSON.stringify({ names: Object.keys(everything).sort(), loaded: import.meta.resolve('express-background-tasks') }));
      `);
      const { names, loaded } = JSON.parse(printed) as { names: string[]; loaded: string };
      assert.deepEqual(names, ['HandOffError', 'PermanentError', 'QueueFullError', 'ShutdownError', 'TimeoutError', 'backgroundTasks', 'default', 'defineTask', 'withSignal']);
      assert.ok(loaded.endsWith('/dist/esm/index.js'), loaded);
    });

    it('the main entry never loads bullmq; express-background-tasks/bullmq does, from CommonJS and ES modules alike', async () => {
      const cjs = JSON.parse(await runNode(consumer, 'bullmq-entry.cjs', `
        require('express-background-tasks');
        const loadedByMain = Object.keys(require.cache).filter((file) => file.includes('/bullmq/'));
        const entry = require('express-background-tasks/bullmq');
        console.log(JSON.stringify({ loadedByMain, names: Object.keys(entry).sort(), loaded: require.resolve('express-background-tasks/bullmq') }));
      `)) as { loadedByMain: string[]; names: string[]; loaded: string };
      assert.deepEqual(cjs.loadedByMain, []);
      assert.deepEqual(cjs.names, ['bullmqTransport', 'createWorker']);
      assert.ok(cjs.loaded.endsWith(path.join('dist', 'cjs', 'bullmq.js')), cjs.loaded);

      const esm = JSON.parse(await runNode(consumer, 'bullmq-entry.mjs', `
        import { defineTask } from 'express-background-tasks';
        import * as entry from 'express-background-tasks/bullmq';
        const worker = entry.createWorker({ queueName: 'tasks', connection: { host: '127.0.0.1', port: 1, lazyConnect: true }, tasks: [defineTask('t', () => {})], autorun: false });
        console.log(JSON.stringify({ names: Object.keys(entry).sort(), worker: worker.constructor.name, loaded: import.meta.resolve('express-background-tasks/bullmq') }));
        process.exit(0);
      `)) as { names: string[]; worker: string; loaded: string };
      assert.deepEqual(esm.names, ['bullmqTransport', 'createWorker']);
      assert.equal(esm.worker, 'Worker');
      assert.ok(esm.loaded.endsWith('/dist/esm/bullmq.js'), esm.loaded);
    });

    it('the main entry never loads @opentelemetry/api; express-background-tasks/otel does, from CommonJS and ES modules alike', async () => {
      const cjs = JSON.parse(await runNode(consumer, 'otel-entry.cjs', `
        require('express-background-tasks');
        const loadedByMain = Object.keys(require.cache).filter((file) => file.includes('/@opentelemetry/api/'));
        const entry = require('express-background-tasks/otel');
        const loadedByEntry = Object.keys(require.cache).filter((file) => file.includes('/@opentelemetry/api/'));
        console.log(JSON.stringify({ loadedByMain, loadedByEntry: loadedByEntry.length, names: Object.keys(entry).sort(), loaded: require.resolve('express-background-tasks/otel') }));
      `)) as { loadedByMain: string[]; loadedByEntry: number; names: string[]; loaded: string };
      assert.deepEqual(cjs.loadedByMain, []);
      assert.ok(cjs.loadedByEntry > 0, 'the otel entry did not load @opentelemetry/api');
      assert.deepEqual(cjs.names, ['taskSpans']);
      assert.ok(cjs.loaded.endsWith(path.join('dist', 'cjs', 'otel.js')), cjs.loaded);

      const esm = JSON.parse(await runNode(consumer, 'otel-entry.mjs', `
        import { createRequire } from 'node:module';
        import 'express-background-tasks';
        const loaded = () => Object.keys(createRequire(import.meta.url).cache).filter((file) => file.includes('/@opentelemetry/api/')).length;
        const loadedByMain = loaded();
        const entry = await import('express-background-tasks/otel');
        const returned = entry.taskSpans()({ name: 'audit', waitMs: 0 }, () => 'ran');
        console.log(JSON.stringify({ loadedByMain, loadedByEntry: loaded(), names: Object.keys(entry).sort(), returned, loaded: import.meta.resolve('express-background-tasks/otel') }));
      `)) as { loadedByMain: number; loadedByEntry: number; names: string[]; returned: string; loaded: string };
      assert.equal(esm.loadedByMain, 0);
      assert.ok(esm.loadedByEntry > 0, 'the otel entry did not load @opentelemetry/api');
      assert.deepEqual(esm.names, ['taskSpans']);
      assert.equal(esm.returned, 'ran');
      assert.ok(esm.loaded.endsWith('/dist/esm/otel.js'), esm.loaded);
    });

    it('the main entry never loads piscina; express-background-tasks/piscina runs compiled task modules on threads, from CommonJS and ES modules alike', async () => {
      await writeFile(path.join(consumer, 'thread-tasks.mjs'), threadTasks('import { defineTask } from \'express-background-tasks\';\nimport { isMainThread } from \'node:worker_threads\';', 'export const where ='));
      await writeFile(path.join(consumer, 'thread-tasks.cjs'), threadTasks('const { defineTask } = require(\'express-background-tasks\');\nconst { isMainThread } = require(\'node:worker_threads\');', 'exports.where ='));
      const esm = JSON.parse(await runNode(consumer, 'threads.mjs', `
        import express from 'express';
        import { backgroundTasks } from 'express-background-tasks';
        import * as entry from 'express-background-tasks/piscina';
        import { where } from './thread-tasks.mjs';
        const transport = entry.piscinaTransport({ filename: new URL('./thread-tasks.mjs', import.meta.url), maxThreads: 1 });
        ${serveOnThreads}
        console.log(JSON.stringify({ names: Object.keys(entry).sort(), exported: await transport.ready, errors, loaded: import.meta.resolve('express-background-tasks/piscina') }));
      `)) as ThreadsOutcome;
      assert.deepEqual(esm.names, ['piscinaTransport']);
      assert.deepEqual(esm.exported, ['where']);
      assert.deepEqual(esm.errors, ['where: ran on the main thread: false']);
      assert.ok(esm.loaded.endsWith('/dist/esm/piscina.js'), esm.loaded);

      const cjs = JSON.parse(await runNode(consumer, 'threads.cjs', `
        const express = require('express');
        const { backgroundTasks } = require('express-background-tasks');
        const loadedByMain = Object.keys(require.cache).filter((file) => file.includes('/piscina/'));
        const entry = require('express-background-tasks/piscina');
        const { where } = require('./thread-tasks.cjs');
        const transport = entry.piscinaTransport({ filename: require('node:path').join(__dirname, 'thread-tasks.cjs'), maxThreads: 1 });
        (async () => {
          ${serveOnThreads}
          console.log(JSON.stringify({ loadedByMain, names: Object.keys(entry).sort(), exported: await transport.ready, errors, loaded: require.resolve('express-background-tasks/piscina') }));
        })();
      `)) as ThreadsOutcome & { loadedByMain: string[] };
      assert.deepEqual(cjs.loadedByMain, []);
      assert.deepEqual(cjs.names, ['piscinaTransport']);
      assert.deepEqual(cjs.errors, ['where: ran on the main thread: false']);
      assert.ok(cjs.loaded.endsWith(path.join('dist', 'cjs', 'piscina.js')), cjs.loaded);
    });

    for (const [format, file, importLines] of [
      ['CommonJS', 'serve.cjs', `const express = require('express');\nconst backgroundTasks = require('express-background-tasks');`],
      ['ES module', 'serve.mjs', `import express from 'express';\nimport { backgroundTasks } from 'express-background-tasks';`],
    ] as const) {
      it(`the ${format} build runs a queued task after the response has been sent, over real HTTP`, async () => {
        const outcome = JSON.parse(await runNode(consumer, file, `${importLines}\n${serveOneRequest}`)) as ServeOutcome;
        assert.equal(outcome.status, 201);
        assert.deepEqual(outcome.body, { id: '7' });
        assert.deepEqual(outcome.events, [
          'handler returned',
          'task sendConfirmationEmail(7) ran, response flushed: true',
        ]);
      });
    }
  });

  describe('types in a strict TypeScript project', () => {
    for (const project of typeProjects) {
      it(`${project.label}: the declarations and everyday usage compile without casts, and every misuse is an error`, { timeout: 60_000 }, async () => {
        const dir = await writeTypeProject(path.join(consumer, project.dir), project);
        const { code, output } = await compile(dir, 'tsconfig.json', '--listFiles');
        assert.deepEqual(errorsIn(output), [], output);
        assert.equal(code, 0, output);
        const loaded = output.split('\n').filter((file) => file.includes('node_modules/express-background-tasks/'));
        const expectedFolder = `express-background-tasks/${path.posix.dirname(project.entry)}/`;
        assert.ok(loaded.some((file) => file.endsWith(`express-background-tasks/${project.entry}`)) &&
          loaded.every((file) => file.includes(expectedFolder)), `expected the types from ${project.entry}, got:\n${loaded.join('\n')}`);
      });
    }

    it('the harness can fail: each misuse is an error on its own line once its @ts-expect-error is removed', { timeout: 60_000 }, async () => {
      const project = typeProjects[0];
      const dir = await writeTypeProject(path.join(consumer, 'types-known-bad'), project);
      const misuse = await readFile(path.join(dir, 'invalid-usage.ts'), 'utf8');
      const expectedLines = misuse.split('\n').flatMap((line, index) => (line.trim().startsWith('// @ts-expect-error') ? [index + 2] : []));
      assert.ok(expectedLines.length >= 10, 'invalid-usage.ts lost its @ts-expect-error lines');
      await writeFile(path.join(dir, 'known-bad.ts'), misuse.replaceAll('// @ts-expect-error', '// an error on the next line'));
      await writeTsconfig(dir, 'tsconfig.known-bad.json', project.compilerOptions, ['known-bad.ts']);

      const { code, output } = await compile(dir, 'tsconfig.known-bad.json');
      assert.notEqual(code, 0, 'tsc accepted a file full of misuse');
      const errors = errorsIn(output);
      assert.deepEqual(errors.filter((error) => error.file !== 'known-bad.ts'), [], output);
      assert.deepEqual([...new Set(errors.map((error) => error.line))], expectedLines, output);
    });
  });
});

/** The consumer script shared by the CommonJS and ES module checks (after its import lines). */
const serveOneRequest = `
const tasks = backgroundTasks();
const app = express();
app.use(tasks);
const events = [];
app.post('/items/:id', (req, res) => {
  res.locals.tasks.add(async function sendConfirmationEmail(id) {
    events.push('task sendConfirmationEmail(' + id + ') ran, response flushed: ' + res.writableFinished);
  }, req.params.id);
  res.status(201).json({ id: req.params.id });
  events.push('handler returned');
});
const server = app.listen(0, '127.0.0.1', async () => {
  const response = await fetch('http://127.0.0.1:' + server.address().port + '/items/7', { method: 'POST' });
  const body = await response.json();
  await tasks.drain();
  server.close();
  console.log(JSON.stringify({ status: response.status, body, events }));
});
`;

/**
 * A compiled tasks module, as a production build has it: one task that fails, saying which thread
 * ran it, so that the outcome reaches the main thread through `onError`.
 */
function threadTasks(importLines: string, exportWhere: string): string {
  return `${importLines}\n${exportWhere} defineTask('where', () => {\n  throw new Error('ran on the main thread: ' + isMainThread);\n});\n`;
}

/** Serves one request that queues `where` on the pool, then closes; `errors` holds what onError got. */
const serveOnThreads = `
  const errors = [];
  const tasks = backgroundTasks({ transport, onError: (error, { name }) => errors.push(name + ': ' + error.message) });
  const app = express();
  app.use(tasks);
  app.post('/', (req, res) => { res.locals.tasks.add(where); res.status(202).end(); });
  const server = app.listen(0, '127.0.0.1');
  await new Promise((resolve) => server.once('listening', resolve));
  await fetch('http://127.0.0.1:' + server.address().port + '/', { method: 'POST' });
  server.close();
  await tasks.close({ timeout: 10000 });
`;

interface ThreadsOutcome {
  names: string[];
  exported: string[];
  errors: string[];
  loaded: string;
}

interface ServeOutcome {
  status: number;
  body: unknown;
  events: string[];
}

/**
 * Packs the repository the way `npm publish` would.
 * @return the tarball's path
 */
async function pack(destination: string): Promise<string> {
  const { stdout } = await run('npm', ['pack', '--json', '--pack-destination', destination], repo);
  const [packed] = JSON.parse(stdout) as { filename: string }[];
  assert.ok(packed !== undefined, 'npm pack reported no tarball');
  return path.join(destination, packed.filename);
}

/** @return the tarball's files, relative to the package root */
async function listTarball(tarball: string): Promise<string[]> {
  const { stdout } = await run('tar', ['-tzf', tarball], repo);
  return stdout.split('\n').filter((entry) => entry !== '' && !entry.endsWith('/')).map((entry) => entry.replace(/^package\//, ''));
}

/**
 * Makes `<workspace>/consumer` with the tarball extracted as node_modules/express-background-tasks,
 * and the package's dependencies, peers and @types/node linked from the repository's node_modules
 * (their own dependencies resolve from the links' real paths).
 * @return the consumer's directory
 */
async function installConsumer(workspace: string, tarball: string): Promise<string> {
  const consumer = path.join(workspace, 'consumer');
  const installed = path.join(consumer, 'node_modules', manifest.name);
  await mkdir(installed, { recursive: true });
  await writeFile(path.join(consumer, 'package.json'), '{ "name": "consumer", "private": true }\n');
  await run('tar', ['-xzf', tarball, '-C', installed, '--strip-components=1'], repo);
  const linked = [...Object.keys(manifest.dependencies ?? {}), ...Object.keys(manifest.peerDependencies ?? {}), '@types/node'];
  for (const name of linked) {
    await mkdir(path.dirname(path.join(consumer, 'node_modules', name)), { recursive: true }); // a scope: @types, @opentelemetry
    await symlink(path.join(repo, 'node_modules', name), path.join(consumer, 'node_modules', name), 'dir');
  }
  return consumer;
}

/**
 * Writes `script` into the consumer and runs it with node.
 * @return what it printed on stdout
 */
async function runNode(consumer: string, file: string, script: string): Promise<string> {
  await writeFile(path.join(consumer, file), script);
  const { stdout } = await run(process.execPath, [file], consumer);
  return stdout;
}

/**
 * Writes a type-test project into `dir`, inside the consumer: a package.json with its module type,
 * a strict tsconfig.json, and the fixtures of spec/types importing the package by name, as a user would.
 * @return its directory
 */
async function writeTypeProject(dir: string, project: (typeof typeProjects)[number]): Promise<string> {
  await mkdir(dir, { recursive: true });
  await writeFile(path.join(dir, 'package.json'), `{ "type": "${project.packageType}" }\n`);
  await writeTsconfig(dir, 'tsconfig.json', project.compilerOptions, [...project.fixtures]);
  for (const fixture of project.fixtures) {
    const source = await readFile(path.join(repo, 'spec/types', fixture), 'utf8');
    const asUser = source
      .replaceAll(/(from |require\()'\.\.\/\.\.\/lib\/index\.c?js'/g, `$1'${manifest.name}'`)
      .replaceAll(`from '../../lib/bullmq.js'`, `from '${manifest.name}/bullmq'`)
      .replaceAll(`from '../../lib/otel.js'`, `from '${manifest.name}/otel'`)
      .replaceAll(`from '../../lib/piscina.js'`, `from '${manifest.name}/piscina'`);
    assert.notEqual(asUser, source, `${fixture} should import ../../lib/index.js`);
    await writeFile(path.join(dir, fixture), asUser);
  }
  return dir;
}

/** Writes a tsconfig with the strict options, the project's module settings, and `files`. */
async function writeTsconfig(dir: string, name: string, compilerOptions: object, files: string[]): Promise<void> {
  const tsconfig = { compilerOptions: { ...strictOptions, ...compilerOptions }, files };
  await writeFile(path.join(dir, name), `${JSON.stringify(tsconfig, null, 2)}\n`);
}

/**
 * Runs the repository's TypeScript on a consumer project.
 * @return tsc's exit code and its output
 */
async function compile(dir: string, tsconfig: string, ...flags: string[]): Promise<{ code: number; output: string }> {
  try {
    const { stdout } = await run(process.execPath, [tsc, '-p', tsconfig, '--pretty', 'false', ...flags], dir);
    return { code: 0, output: stdout };
  } catch (error) {
    const failure = error as { code?: unknown; stdout?: string; stderr?: string };
    if (typeof failure.code !== 'number') throw error;
    return { code: failure.code, output: `${failure.stdout ?? ''}${failure.stderr ?? ''}` };
  }
}

/** @return the errors in tsc's output, each with its file (relative to the project) and line */
function errorsIn(output: string): { file: string; line: number; text: string }[] {
  return [...output.matchAll(/^(.+?)\((\d+),\d+\): error (TS\d+: .*)$/gm)].map(([, file = '', line, text = '']) => ({
    file,
    line: Number(line),
    text,
  }));
}

/** @return every file path in a package.json `exports` value, however deeply its conditions nest */
function exportTargets(exports: unknown): string[] {
  if (typeof exports === 'string') return [exports];
  if (typeof exports !== 'object' || exports === null) return [];
  return Object.values(exports).flatMap(exportTargets);
}

/** Runs a command, bounded in time, without a shell. */
function run(command: string, args: string[], cwd: string): Promise<{ stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    execFile(command, args, { cwd, timeout: 50_000, maxBuffer: 16 * 1024 * 1024 }, (error, stdout, stderr) => {
      if (error) reject(Object.assign(error, { stdout, stderr }));
      else resolve({ stdout, stderr });
    });
  });
}

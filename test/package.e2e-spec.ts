import { spawn, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { authed, send } from './support/http-client';
import { childEnv, compileWithRepositoryTsc, installTarball, listTarball, packRepository, readPackedManifest } from './support/package-tarball';
import { createTestDatabase, type TestDatabase } from './support/test-database';

const ROOT = process.cwd();
const PACKAGE = JSON.parse(readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { name: string };

// A user's app, in its own folder outside the repository: it imports the package by name, runs the
// exported migration through its own DataSource, and serves one @Idempotent() route.
const CONSUMER_APP = `
import 'reflect-metadata';
import { Body, Controller, Module, Post } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { TypeOrmModule } from '@nestjs/typeorm';
import { randomUUID } from 'node:crypto';
import { DataSource } from 'typeorm';
import { CreateIdempotencyKeys1764288000000, Idempotent, IdempotencyModule } from '${PACKAGE.name}';
import { idempotentRequest } from '${PACKAGE.name}/client';

const url = process.env.DATABASE_URL;
let calls = 0;

@Controller('orders')
class OrdersController {
  @Post() @Idempotent()
  create(@Body() body: { item: string }) {
    calls += 1;
    return { id: randomUUID(), item: body.item, calls };
  }
}

@Module({
  imports: [TypeOrmModule.forRoot({ type: 'postgres', url, autoLoadEntities: true }), IdempotencyModule.forRoot()],
  controllers: [OrdersController],
})
class AppModule {}

function resolveError(specifier: string): string {
  try {
    require.resolve(specifier);
    return 'resolved';
  } catch (error) {
    return (error as { code?: string }).code ?? String(error);
  }
}

async function main(): Promise<void> {
  const migrator = new DataSource({ type: 'postgres', url, migrations: [CreateIdempotencyKeys1764288000000] });
  await migrator.initialize();
  const ran = await migrator.runMigrations();
  await migrator.destroy();
  const app = await NestFactory.create(AppModule, { logger: ['error', 'warn'] });
  app.enableShutdownHooks();
  await app.listen(0, '127.0.0.1');
  console.log('REPORT ' + JSON.stringify({
    migrations: ran.map((migration) => migration.name),
    client: typeof idempotentRequest,
    swagger: resolveError('@nestjs/swagger'),
    cls: resolveError('nestjs-cls'),
    deepImport: resolveError('${PACKAGE.name}/dist/src/index.js'),
  }));
  console.log('READY ' + (await app.getUrl()));
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
`;

const TSC_COMMON = ['--target', 'ES2022', '--experimentalDecorators', '--emitDecoratorMetadata', '--esModuleInterop', '--skipLibCheck', '--strict', '--types', 'node'];

describe('the npm package (npm pack, installed into an app outside the repository)', () => {
  let workDir: string;
  let tarball: string;
  let files: string[];
  let appDir: string;
  let database: TestDatabase;
  let child: ChildProcess | undefined;
  let output = '';

  beforeAll(async () => {
    workDir = await mkdtemp(path.join(os.tmpdir(), 'package-e2e-'));
    [tarball, database] = await Promise.all([packRepository(ROOT, workDir), createTestDatabase()]);
    files = await listTarball(tarball);
  }, 120_000);
  afterAll(async () => {
    if (child && child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await database?.drop();
    if (workDir) await rm(workDir, { recursive: true, force: true });
  });

  it('holds the compiled module with its declarations and migration, the README, and nothing of sample/, test/ or bench/', async () => {
    for (const file of [
      'package.json',
      'dist/src/index.js',
      'dist/src/index.d.ts',
      'dist/src/store/create-idempotency-keys.migration.js',
      'dist/src/store/create-idempotency-keys.migration.d.ts',
      'dist/src/client/index.js',
      'dist/src/client/index.d.ts',
      'dist/src/cls/index.js',
      'dist/src/cls/index.d.ts',
      'dist/src/openapi/openapi-metadata.js',
    ]) {
      expect(files).toContain(file);
    }
    for (const file of ['README.md', 'LICENSE']) {
      if (existsSync(path.join(ROOT, file))) expect(files).toContain(file);
    }
    // Only the package's own things: compiled src/ (with maps), src/ itself (what the maps point at), docs.
    const unexpected = files.filter((file) => !/^(dist\/src\/|src\/)/.test(file) && !['package.json', 'README.md', 'LICENSE'].includes(file));
    expect(unexpected).toEqual([]);
    expect(files.filter((file) => /(^|\/)(sample|test|bench|bench-build|migrations)\//.test(file) || /\.spec\.|e2e-spec|ormconfig/.test(file))).toEqual([]);
    // Every compiled file of src/ is there, and nothing compiled from elsewhere.
    const sources = (await readdir(path.join(ROOT, 'src'), { recursive: true }))
      .map(String)
      .filter((file) => file.endsWith('.ts') && !file.endsWith('.spec.ts'));
    for (const source of sources) {
      const compiled = `dist/src/${source.replace(/\.ts$/, '')}`;
      expect(files).toEqual(expect.arrayContaining([`${compiled}.js`, `${compiled}.d.ts`, `src/${source}`]));
    }
  });

  it('publishes its frameworks as peers (swagger, nestjs-cls optional), no dependencies, an exports map', async () => {
    const published = await readPackedManifest(tarball);
    expect(published.main).toBe('dist/src/index.js');
    expect(published.types).toBe('dist/src/index.d.ts');
    expect(published.exports).toEqual({
      '.': { types: './dist/src/index.d.ts', default: './dist/src/index.js' },
      './client': { types: './dist/src/client/index.d.ts', default: './dist/src/client/index.js' },
      './cls': { types: './dist/src/cls/index.d.ts', default: './dist/src/cls/index.js' },
      './package.json': './package.json',
    });
    expect(published.dependencies ?? {}).toEqual({});
    const cls = ['nestjs-cls', '@nestjs-cls/transactional', '@nestjs-cls/transactional-adapter-typeorm'];
    const optional = ['@nestjs/swagger', ...cls];
    expect(Object.keys(published.peerDependencies).sort()).toEqual(
      ['@nestjs/common', '@nestjs/core', '@nestjs/typeorm', 'pg', 'reflect-metadata', 'rxjs', 'typeorm']
        .concat(optional)
        .sort(),
    );
    const optionalMeta = Object.fromEntries(optional.map((name) => [name, { optional: true }]));
    expect(published.peerDependenciesMeta).toEqual(optionalMeta);
    // The repository's own install still gets every peer, at the version it is tested with.
    const repository = JSON.parse(await readFile(path.join(ROOT, 'package.json'), 'utf8'));
    for (const peer of Object.keys(published.peerDependencies)) expect(repository.devDependencies[peer]).toMatch(/^\d+\.\d+\.\d+/);
  });

  it('installs into a NestJS app outside the repository, whose migration and @Idempotent() route work from the package', async () => {
    appDir = path.join(workDir, 'app');
    const published = await readPackedManifest(tarball);
    const peers = Object.keys(published.peerDependencies).filter((name) => !published.peerDependenciesMeta?.[name]?.optional);
    // The peers (not the optional @nestjs/swagger), plus what the app itself uses.
    await installTarball(ROOT, tarball, appDir, [...peers, '@nestjs/platform-express', '@types/node']);
    expect((await readdir(path.join(appDir, 'node_modules', ...PACKAGE.name.split('/'), 'dist', 'src'))).length).toBeGreaterThan(5);
    await writeFile(path.join(appDir, 'app.ts'), CONSUMER_APP);
    // The declarations type-check for classic CommonJS apps (moduleResolution node: `typesVersions`)
    // and for node16-style resolution (the `exports` map's `types`).
    await Promise.all([
      compileWithRepositoryTsc(ROOT, appDir, ['app.ts', '--outDir', 'out', '--module', 'commonjs', '--moduleResolution', 'node', ...TSC_COMMON]),
      compileWithRepositoryTsc(ROOT, appDir, ['app.ts', '--noEmit', '--module', 'node20', '--moduleResolution', 'node16', ...TSC_COMMON]),
    ]);

    child = spawn(process.execPath, [path.join(appDir, 'out', 'app.js')], {
      cwd: appDir,
      env: childEnv({ DATABASE_URL: database.url }),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const url = await new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`the app did not start within 20 s:\n${output}`)), 20_000);
      const onData = (chunk: Buffer) => {
        output += chunk.toString();
        const ready = /READY (\S+)/.exec(output);
        if (ready) {
          clearTimeout(timer);
          resolve(ready[1]);
        }
      };
      child!.stdout!.on('data', onData);
      child!.stderr!.on('data', (chunk: Buffer) => (output += chunk.toString()));
      child!.once('exit', (code) => {
        clearTimeout(timer);
        reject(new Error(`the app exited with ${code}:\n${output}`));
      });
    });

    const report = JSON.parse(/REPORT (.*)/.exec(output)![1]);
    expect(report).toEqual({
      migrations: ['CreateIdempotencyKeys1764288000000'],
      client: 'function',
      // It runs without the optional peers, and only the exported entry points can be imported.
      swagger: 'MODULE_NOT_FOUND',
      cls: 'MODULE_NOT_FOUND',
      deepImport: 'ERR_PACKAGE_PATH_NOT_EXPORTED',
    });

    const token = `tok_${randomUUID()}`;
    const key = randomUUID();
    const first = await send(url, { path: '/orders', headers: authed(token, key), body: { item: 'tea' } });
    const second = await send(url, { path: '/orders', headers: authed(token, key), body: { item: 'tea' } });
    expect(first.status).toBe(201);
    expect(first.json).toMatchObject({ item: 'tea', calls: 1 });
    expect(first.headers['idempotency-replayed']).toBeUndefined();
    expect(second.status).toBe(201);
    expect(second.headers['idempotency-replayed']).toBe('true');
    expect(second.body).toEqual(first.body);

    const exited = new Promise<void>((resolve) => child!.once('exit', () => resolve()));
    child.kill('SIGTERM');
    await exited;
  }, 90_000);
});

import { execFile } from 'node:child_process';
import { cp, mkdir, readdir, symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';

const execFileAsync = promisify(execFile);

/** What is never copied into the staging copy of the repository: history, installs, build output, database data. */
const NOT_STAGED = new Set(['.git', 'node_modules', 'dist', '.data', 'coverage']);

/** The environment of the npm and node children: no NODE_PATH, so packages resolve only from the folders under test. */
export function childEnv(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, ...extra };
  delete env.NODE_PATH;
  // `npm test` hands its own lifecycle variables down; the nested npm commands must not inherit them.
  for (const name of Object.keys(env)) if (name.startsWith('npm_lifecycle_') || name.startsWith('npm_package_')) delete env[name];
  return env;
}

/**
 * Runs the real `npm pack` (with its `prepack` build) on a copy of the working tree in `workDir`,
 * whose node_modules is a link to the repository's: the build writes the copy's own dist/, never
 * the shared one, so nothing races with other spec files or a developer's build. The copy has
 * sample/, test/, bench/ and whatever else the repository has, so the tarball's contents show what
 * package.json's `files` lets through. Returns the tarball's path.
 */
export async function packRepository(repositoryRoot: string, workDir: string): Promise<string> {
  const staged = path.join(workDir, 'repository');
  const out = path.join(workDir, 'tarball');
  await mkdir(staged, { recursive: true });
  await mkdir(out, { recursive: true });
  for (const entry of await readdir(repositoryRoot)) {
    if (NOT_STAGED.has(entry) || entry.endsWith('.tgz')) continue;
    await cp(path.join(repositoryRoot, entry), path.join(staged, entry), { recursive: true, verbatimSymlinks: true });
  }
  await symlink(path.join(repositoryRoot, 'node_modules'), path.join(staged, 'node_modules'), 'dir');
  try {
    await execFileAsync('npm', ['pack', '--pack-destination', out, '--loglevel', 'error'], { cwd: staged, env: childEnv(), timeout: 90_000 });
  } catch (error) {
    const { stdout, stderr } = error as { stdout?: string; stderr?: string };
    throw new Error(`npm pack failed: ${(error as Error).message}\n${stdout ?? ''}\n${stderr ?? ''}`);
  }
  const tarballs = (await readdir(out)).filter((name) => name.endsWith('.tgz'));
  if (tarballs.length !== 1) throw new Error(`expected one tarball in ${out}, found ${tarballs.join(', ') || 'none'}`);
  return path.join(out, tarballs[0]);
}

/** The paths inside a tarball made by `npm pack`, without the leading `package/`. */
export async function listTarball(tarball: string): Promise<string[]> {
  const { stdout } = await execFileAsync('tar', ['-tzf', tarball]);
  return stdout
    .split('\n')
    .filter((line) => line && !line.endsWith('/'))
    .map((line) => line.replace(/^package\//, ''))
    .sort();
}

/** The package.json inside a tarball made by `npm pack` (as npm publishes it). */
export async function readPackedManifest(tarball: string): Promise<Record<string, any>> {
  const { stdout } = await execFileAsync('tar', ['-xzOf', tarball, 'package/package.json']);
  return JSON.parse(stdout);
}

/**
 * Makes `appDir` an npm project (outside the repository) that installs `tarball` the way a user
 * would, offline, then links the packages it brings itself (the peers) from the repository's
 * node_modules: no download, and no NODE_PATH, so a require of anything else fails as it would for
 * a user. npm installs before the links exist, so it never sees (or prunes) them.
 */
export async function installTarball(repositoryRoot: string, tarball: string, appDir: string, links: string[]): Promise<void> {
  await mkdir(appDir, { recursive: true });
  await writeFile(path.join(appDir, 'package.json'), JSON.stringify({ name: 'package-e2e-consumer', version: '1.0.0', private: true }, null, 2));
  const args = ['install', '--no-save', '--no-package-lock', '--offline', '--ignore-scripts', '--no-audit', '--no-fund', '--legacy-peer-deps', '--loglevel', 'error', tarball];
  try {
    await execFileAsync('npm', args, { cwd: appDir, env: childEnv(), timeout: 60_000 });
  } catch (error) {
    const { stdout, stderr } = error as { stdout?: string; stderr?: string };
    throw new Error(`npm install of the tarball failed: ${(error as Error).message}\n${stdout ?? ''}\n${stderr ?? ''}`);
  }
  for (const name of links) {
    const link = path.join(appDir, 'node_modules', name);
    await mkdir(path.dirname(link), { recursive: true });
    await symlink(path.join(repositoryRoot, 'node_modules', name), link, 'dir');
  }
}

/** Compiles TypeScript with the repository's tsc; `args` are tsc's command line. */
export async function compileWithRepositoryTsc(repositoryRoot: string, cwd: string, args: string[]): Promise<void> {
  const tsc = path.join(repositoryRoot, 'node_modules', 'typescript', 'bin', 'tsc');
  try {
    await execFileAsync(process.execPath, [tsc, ...args], { cwd, env: childEnv(), timeout: 60_000 });
  } catch (error) {
    const { stdout, stderr } = error as { stdout?: string; stderr?: string };
    throw new Error(`tsc ${args.join(' ')} failed:\n${stdout ?? ''}${stderr ?? ''}`);
  }
}

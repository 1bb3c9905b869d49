import { execFile, spawn, type ChildProcess } from 'node:child_process';
import net from 'node:net';
import path from 'node:path';
import { promisify } from 'node:util';

const execFileAsync = promisify(execFile);

/**
 * Compiles the project as `npm run build` does (tsc -p tsconfig.build.json), into `outDir`, so a
 * test runs the very JavaScript that `npm start` runs without touching the shared `dist/`.
 * `outDir` must be inside the repository, for Node to find `node_modules` from it.
 */
export async function buildProject(repositoryRoot: string, outDir: string): Promise<void> {
  const tsc = path.join(repositoryRoot, 'node_modules', 'typescript', 'bin', 'tsc');
  await execFileAsync(process.execPath, [tsc, '-p', 'tsconfig.build.json', '--outDir', outDir], { cwd: repositoryRoot, timeout: 60_000 });
}

/** A free TCP port on 127.0.0.1 (free when probed). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

/** A `node dist/sample/main.js` process and what it printed. */
export interface SampleProcess {
  child: ChildProcess;
  stdout: string[];
  stderr: string[];
  /** Resolves with the first stdout line matching `pattern`; rejects if the process exits first or on timeout. */
  waitForLine(pattern: RegExp, timeoutMs: number): Promise<string>;
  /** Resolves with how the process ended on its own; rejects (and kills it) after `timeoutMs`. */
  waitForExit(timeoutMs: number): Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Sends `signal` and resolves with how the process ended and how long it took. */
  stop(signal: NodeJS.Signals, timeoutMs: number): Promise<{ code: number | null; signal: NodeJS.Signals | null; ms: number }>;
}

/** Starts the compiled sample like `npm start` does after its build step. */
export function startSampleProcess(mainJs: string, env: NodeJS.ProcessEnv): SampleProcess {
  const child = spawn(process.execPath, [mainJs], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  const stdout: string[] = [];
  const stderr: string[] = [];
  const listeners = new Set<() => void>();
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('exit', (code, signal) => {
      resolve({ code, signal });
      for (const listener of listeners) listener();
    }),
  );
  for (const [stream, lines] of [[child.stdout, stdout], [child.stderr, stderr]] as const) {
    let pending = '';
    stream.setEncoding('utf8');
    stream.on('data', (chunk: string) => {
      const parts = (pending + chunk).split('\n');
      pending = parts.pop() ?? '';
      lines.push(...parts);
      for (const listener of listeners) listener();
    });
  }
  return {
    child,
    stdout,
    stderr,
    waitForLine(pattern, timeoutMs) {
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => finish(new Error(`no stdout line matching ${pattern} within ${timeoutMs} ms`)), timeoutMs);
        const finish = (error?: Error, line?: string) => {
          clearTimeout(timer);
          listeners.delete(check);
          if (error) reject(new Error(`${error.message}\nstdout:\n${stdout.join('\n')}\nstderr:\n${stderr.join('\n')}`));
          else resolve(line as string);
        };
        const check = () => {
          const line = stdout.find((candidate) => pattern.test(candidate));
          if (line !== undefined) finish(undefined, line);
          else if (child.exitCode !== null || child.signalCode !== null) finish(new Error(`the process exited (${child.exitCode ?? child.signalCode})`));
        };
        listeners.add(check);
        check();
      });
    },
    async waitForExit(timeoutMs) {
      let timer: NodeJS.Timeout | undefined;
      const ended = await Promise.race([exited, new Promise<null>((resolve) => (timer = setTimeout(resolve, timeoutMs, null)))]);
      clearTimeout(timer);
      if (ended !== null) return ended;
      child.kill('SIGKILL');
      throw new Error(`the process did not exit within ${timeoutMs} ms\nstdout:\n${stdout.join('\n')}\nstderr:\n${stderr.join('\n')}`);
    },
    async stop(signal, timeoutMs) {
      const started = Date.now();
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      let timer: NodeJS.Timeout | undefined;
      const ended = await Promise.race([exited, new Promise<null>((resolve) => (timer = setTimeout(resolve, timeoutMs, null)))]);
      clearTimeout(timer);
      if (ended === null) {
        child.kill('SIGKILL');
        throw new Error(`the process did not exit within ${timeoutMs} ms of ${signal}\nstdout:\n${stdout.join('\n')}\nstderr:\n${stderr.join('\n')}`);
      }
      return { ...ended, ms: Date.now() - started };
    },
  };
}

import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

// Jest runs from the repository root (its rootDir).
const ROOT = process.cwd();

/** Compiles a test entry point (and what it imports) to CommonJS in a temporary folder; returns the compiled file. */
export function compileEntry(entry: string): string {
  const outDir = mkdtempSync(path.join(os.tmpdir(), 'child-app-'));
  process.once('exit', () => rmSync(outDir, { recursive: true, force: true }));
  const tsc = path.join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc');
  const args = [tsc, path.join(ROOT, entry), '--outDir', outDir, '--rootDir', ROOT, '--module', 'commonjs', '--moduleResolution', 'node', '--target', 'ES2022', '--experimentalDecorators', '--emitDecoratorMetadata', '--esModuleInterop', '--skipLibCheck', '--types', 'node'];
  const result = spawnSync(process.execPath, args, { cwd: ROOT, encoding: 'utf8' });
  if (result.status !== 0) throw new Error(`tsc failed: ${result.stdout}${result.stderr}`);
  return path.join(outDir, entry.replace(/\.ts$/, '.js'));
}

/** A child process running an app; `url` once it printed READY. */
export interface ChildApp {
  process: ChildProcess;
  url: string;
  /** Resolves when the child printed `line`. */
  printed(line: string): Promise<void>;
}

/** Starts a compiled entry in a child process and waits until it prints `READY <url>`. */
export function startChildApp(compiled: string, env: Record<string, string>): Promise<ChildApp> {
  const child = spawn(process.execPath, [compiled], {
    // Node resolves packages from the compiled file's folder upwards; point it at the repository's.
    env: { ...process.env, ...env, NODE_PATH: path.join(ROOT, 'node_modules') },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  const waiters: { line: string; resolve: () => void }[] = [];
  child.stdout!.on('data', (chunk: Buffer) => {
    output += chunk.toString();
    for (const waiter of waiters) if (output.includes(waiter.line)) waiter.resolve();
  });
  child.stderr!.on('data', (chunk: Buffer) => (output += chunk.toString()));
  const printed = (line: string) =>
    new Promise<void>((resolve, reject) => {
      if (output.includes(line)) return resolve();
      waiters.push({ line, resolve });
      child.once('exit', () => reject(new Error(`child exited before printing ${line}: ${output}`)));
    });
  return printed('READY ').then(() => ({ process: child, url: /READY (\S+)/.exec(output)![1], printed }));
}

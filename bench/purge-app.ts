import { fork, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { processRss } from './processes';

/**
 * The app of bench/purge-under-load.server.ts in a process of its own: one `@Idempotent()` route
 * (`POST /payments`), no scheduled purge, and `purge()` runs `IdempotencyService.purgeExpired()` in
 * it, as the module's scheduled task would.
 */
export class PurgeApp {
  private constructor(
    private readonly child: ChildProcess,
    readonly url: string,
  ) {}

  static async start(databaseUrl: string): Promise<PurgeApp> {
    const child = fork(path.join(__dirname, 'purge-under-load.server.js'), [], {
      env: { ...process.env, DATABASE_URL: databaseUrl, NODE_ENV: 'production' },
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    });
    const port = await new Promise<number>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('the app did not start within 60 s')), 60_000);
      child.once('exit', (code) => reject(new Error(`the app exited with code ${code} during startup`)));
      child.once('message', (message: { type: string; port: number }) => {
        clearTimeout(timer);
        resolve(message.port);
      });
    });
    child.removeAllListeners('exit');
    return new PurgeApp(child, `http://127.0.0.1:${port}`);
  }

  /** Purges every expired record; how many and how long it took. */
  purge(): Promise<{ count: number; ms: number }> {
    return new Promise((resolve, reject) => {
      this.child.once('message', (message: { type: string; count: number; ms: number; error?: string }) =>
        message.type === 'purged' ? resolve(message) : reject(new Error(message.error)),
      );
      this.child.send({ type: 'purge' });
    });
  }

  /** Resident set size of the app's process, in bytes. */
  rss(): number {
    return processRss(this.child.pid!);
  }

  async stop(): Promise<void> {
    const exited = new Promise((resolve) => this.child.once('exit', resolve));
    this.child.disconnect();
    const timer = setTimeout(() => this.child.kill('SIGKILL'), 10_000);
    await exited;
    clearTimeout(timer);
  }
}

import 'reflect-metadata';
import type { INestApplication } from '@nestjs/common';
import { existsSync, promises as fs } from 'node:fs';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { loadKeySecret } from './config/key-secret';
import { loadRecordSecret } from './config/record-secret';
import { startEmbeddedDatabase, type EmbeddedDatabase } from './embedded-database';
import { bootstrapApiKey, createSampleApp } from './sample-app';

// What `npm start` runs. Environment:
//   DATABASE_URL        use this PostgreSQL instead of starting the embedded one
//   PORT, HOST          where to listen (default 3000 on 127.0.0.1)
//   PATOMIC_KEY_SECRET  secret API keys are hashed with (default: generated into <data>/key-secret)
//   PATOMIC_RECORD_SECRET
//                       base64 secret stored answers are sealed with (default: generated into <data>/record-secret)
//   SAMPLE_DATA_DIR     data folder (default: .data/ at the repository root, git-ignored)

/** How long a shutdown may take before the process exits anyway. */
const SHUTDOWN_TIMEOUT_MS = 10_000;

let app: INestApplication | undefined;
let database: EmbeddedDatabase | undefined;
let stopping: Promise<void> | undefined;
let startup: Promise<void> = Promise.resolve();

async function main(): Promise<void> {
  process.once('SIGINT', () => void shutdown('SIGINT', 0));
  process.once('SIGTERM', () => void shutdown('SIGTERM', 0));

  const port = Number(process.env.PORT || '3000');
  if (!Number.isInteger(port) || port < 0 || port > 65_535) throw new Error(`PORT must be a TCP port number (0-65535); got "${process.env.PORT}".`);
  const host = process.env.HOST || '127.0.0.1';
  const dataDir = process.env.SAMPLE_DATA_DIR ? path.resolve(process.env.SAMPLE_DATA_DIR) : path.join(repositoryRoot(), '.data');
  // Traversable (711) but not listable: PostgreSQL runs as its own user (as root, "postgres") and
  // must reach its folder inside; the secrets beside it are 600.
  await fs.mkdir(dataDir, { recursive: true, mode: 0o711 });
  const keySecret = await loadKeySecret(dataDir);
  const recordSecret = await loadRecordSecret(dataDir);

  let databaseUrl = process.env.DATABASE_URL;
  if (!databaseUrl) {
    database = await startEmbeddedDatabase({ dataDir: path.join(dataDir, 'postgres') });
    databaseUrl = database.url;
    if (stopping) return;
  }
  app = await createSampleApp(databaseUrl, { keySecret, recordSecret });
  if (stopping) return;

  const bootstrapKey = await bootstrapApiKey(app);
  if (bootstrapKey !== null) console.log(`Bootstrap API key: ${bootstrapKey}`);

  await app.listen(port, host);
  const { port: listening } = app.getHttpServer().address() as AddressInfo;
  const where = database ? `embedded PostgreSQL, data in ${dataDir}` : 'PostgreSQL at DATABASE_URL';
  console.log(`Patomic sample API listening on http://${host}:${listening} (${where})`);
}

/** Closes the app (connections, timers), then stops the embedded database, then exits. */
function shutdown(reason: string, exitCode: number): Promise<void> {
  stopping ??= (async () => {
    // A second Ctrl-C, or a stop that hangs, ends the process at once.
    process.once('SIGINT', () => process.exit(130));
    setTimeout(() => {
      console.error(`Shutdown took longer than ${SHUTDOWN_TIMEOUT_MS} ms; exiting anyway.`);
      process.exit(exitCode || 1);
    }, SHUTDOWN_TIMEOUT_MS).unref();
    if (reason.startsWith('SIG')) console.log(`${reason} received, shutting down.`);
    // A signal during startup lets the step under way finish (main() stops after it), so what it
    // started — a PostgreSQL being initialised, a pool being opened — is closed below, not orphaned.
    await startup.catch(() => undefined);
    await app?.close().catch((error: unknown) => console.error(`Closing the app failed: ${message(error)}`));
    await database?.stop().catch((error: unknown) => console.error(`Stopping PostgreSQL failed: ${message(error)}`));
    process.exit(exitCode);
  })();
  return stopping;
}

/** The nearest folder above this file that holds a package.json: the repository, wherever the cwd is. */
function repositoryRoot(): string {
  let dir = __dirname;
  while (!existsSync(path.join(dir, 'package.json'))) {
    const parent = path.dirname(dir);
    if (parent === dir) return process.cwd();
    dir = parent;
  }
  return dir;
}

function message(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

startup = main();
startup.catch((error: unknown) => {
  // The message is the fix-it text; a stack trace would bury it.
  console.error(`Could not start the sample API: ${message(error)}`);
  void shutdown('startup failure', 1);
});

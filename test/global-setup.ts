import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { startEmbeddedDatabase, type EmbeddedDatabase } from '../sample/embedded-database';

/** Handed from globalSetup to globalTeardown, which Jest runs in the same process. */
export interface EmbeddedDatabaseState {
  database: EmbeddedDatabase;
  dataDir: string;
}

/** Where globalSetup leaves its {@link EmbeddedDatabaseState} for globalTeardown. */
export const EMBEDDED_DATABASE_STATE = Symbol.for('nest-idempotency-pg.test.embedded-database');

/** Starts a throw-away PostgreSQL for the whole run unless DATABASE_URL already names a server. */
export default async function globalSetup(): Promise<void> {
  if (process.env.DATABASE_URL) return;
  const dataDir = await mkdtemp(path.join(os.tmpdir(), 'jest-postgres-'));
  // Jest skips globalTeardown when globalSetup throws.
  const database = await startEmbeddedDatabase({ dataDir, persistent: false }).catch(async (error: unknown) => {
    await rm(dataDir, { recursive: true, force: true });
    throw error;
  });
  (globalThis as Record<symbol, EmbeddedDatabaseState | undefined>)[EMBEDDED_DATABASE_STATE] = { database, dataDir };
  // Jest starts its workers after globalSetup, with a copy of this process's environment.
  process.env.DATABASE_URL = database.url;
}

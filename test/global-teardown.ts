import { rm } from 'node:fs/promises';
import { EMBEDDED_DATABASE_STATE, type EmbeddedDatabaseState } from './global-setup';

/** Stops the PostgreSQL started by globalSetup (if any) and deletes its data. */
export default async function globalTeardown(): Promise<void> {
  const globals = globalThis as Record<symbol, EmbeddedDatabaseState | undefined>;
  const state = globals[EMBEDDED_DATABASE_STATE];
  if (!state) return;
  globals[EMBEDDED_DATABASE_STATE] = undefined;
  try {
    await state.database.stop();
  } finally {
    await rm(state.dataDir, { recursive: true, force: true });
    // In watch mode the next run's globalSetup must not mistake the stopped server for a user-provided one.
    if (process.env.DATABASE_URL === state.database.url) delete process.env.DATABASE_URL;
  }
}

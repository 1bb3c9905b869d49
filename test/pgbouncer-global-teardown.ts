import globalTeardown from './global-teardown';
import { PGBOUNCER_STATE } from './pgbouncer-global-setup';
import type { PgBouncer } from './support/pgbouncer';

/** Stops the PgBouncer, then the PostgreSQL behind it. */
export default async function pgBouncerGlobalTeardown(): Promise<void> {
  const globals = globalThis as Record<symbol, PgBouncer | undefined>;
  try {
    await globals[PGBOUNCER_STATE]?.close();
  } finally {
    globals[PGBOUNCER_STATE] = undefined;
    process.env.DATABASE_URL = process.env.DATABASE_DIRECT_URL;
    delete process.env.DATABASE_DIRECT_URL;
    await globalTeardown();
  }
}

import globalSetup from './global-setup';
import globalTeardown from './global-teardown';
import { startPgBouncer, type PgBouncer, type PoolMode } from './support/pgbouncer';

/** Where the PgBouncer run's globalSetup leaves its PgBouncer for globalTeardown. */
export const PGBOUNCER_STATE = Symbol.for('nest-idempotency-pg.test.pgbouncer');

/**
 * Starts PostgreSQL as `npm test` does, then PgBouncer in front of it (PGBOUNCER_POOL_MODE,
 * transaction by default): the suites reach their databases through PgBouncer, which
 * DATABASE_URL now names, while DATABASE_DIRECT_URL names the server itself.
 */
export default async function pgBouncerGlobalSetup(): Promise<void> {
  await globalSetup();
  const directUrl = process.env.DATABASE_URL as string;
  const poolMode = (process.env.PGBOUNCER_POOL_MODE ?? 'transaction') as PoolMode;
  let bouncer: PgBouncer;
  try {
    // In session mode a client connection keeps its server connection: as many as the apps' pools.
    bouncer = await startPgBouncer(directUrl, { poolMode, poolSize: poolMode === 'session' ? 30 : 4 });
  } catch (error) {
    // Jest skips globalTeardown when globalSetup throws.
    await globalTeardown();
    throw error;
  }
  (globalThis as Record<symbol, PgBouncer | undefined>)[PGBOUNCER_STATE] = bouncer;
  process.env.DATABASE_DIRECT_URL = directUrl;
  process.env.DATABASE_URL = bouncer.via(directUrl);
  process.env.PGBOUNCER_POOL_MODE = poolMode;
}

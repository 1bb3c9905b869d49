import pg from 'pg';
import type { DataSource } from 'typeorm';
import { PostgresIdempotencyStore } from '../src/store/postgres-idempotency.store';
import { runStoreOptions } from './support/pooler';
import { insertCompletedRecords } from './support/records';
import { migratedDataSource } from './support/store-harness';
import { createTestDatabase, type TestDatabase } from './support/test-database';

type Query = (...args: unknown[]) => Promise<unknown>;
type Callback = (error: unknown, result?: unknown) => void;

// Only one instance purges at a time, and the lock that says so lives no longer than one
// transaction: behind a transaction pooler (PgBouncer pool_mode = transaction) a session is not
// the app's own between transactions, so a session-level lock could outlive its purge.
describe('The purge lock', () => {
  let database: TestDatabase;
  let observer: pg.Client;
  /** What the observer saw after each statement the stores' connections ran. */
  let seen: { held: number; heldOutsideTransaction: number }[];

  beforeAll(async () => {
    database = await createTestDatabase();
    observer = new pg.Client({ connectionString: database.url });
    await observer.connect();
  });
  afterAll(async () => {
    await observer?.end();
    await database?.drop();
  });
  beforeEach(async () => {
    seen = [];
    await observer.query(`DROP TABLE IF EXISTS idempotency_keys, migrations, purge_statements CASCADE`);
  });

  /** Advisory locks held in this database, and those held by a session not in a transaction. */
  const observeLocks = async () => {
    const { rows } = await observer.query(
      `SELECT count(*)::int AS held, count(*) FILTER (WHERE a.xact_start IS NULL)::int AS "heldOutsideTransaction"
       FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
       WHERE l.locktype = 'advisory' AND l.granted
         AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())`,
    );
    seen.push(rows[0]);
  };

  /** Lets the observer look at the locks after every statement of the client, before its next one. */
  const observeAfterEachStatement = (client: pg.PoolClient) => {
    const query = client.query.bind(client) as Query;
    (client as unknown as { query: Query }).query = (...args) => {
      // pg's pool passes a callback; the store awaits the promise.
      const callback = typeof args.at(-1) === 'function' ? (args.pop() as Callback) : undefined;
      const answered = query(...args).then(async (result) => {
        await observeLocks();
        return result;
      });
      if (!callback) return answered;
      answered.then((result) => callback(null, result), callback);
      return undefined as never;
    };
  };

  /** An app instance: a DataSource and store of its own, every connection watched by the observer. */
  const instance = async () => {
    const dataSource = await migratedDataSource(database.url);
    const watched = new WeakSet<pg.PoolClient>();
    (dataSource.driver as unknown as { master: pg.Pool }).master.on('acquire', (client) => {
      if (watched.has(client)) return;
      watched.add(client);
      observeAfterEachStatement(client);
    });
    return { dataSource, store: new PostgresIdempotencyStore(dataSource, runStoreOptions) };
  };

  it('is never held by a session between transactions', async () => {
    const { dataSource, store } = await instance();
    try {
      await insertCompletedRecords(dataSource, { to: 35, scopes: 7, expired: true });
      seen = [];
      expect(await store.purgeExpired({ batchSize: 10, skipIfBusy: true })).toBe(35);
      expect(await store.purgeExpired({ batchSize: 10, skipIfBusy: false })).toBe(0);
      // The observer did see the lock while the purge held it, so its silence below means something.
      expect(seen.some(({ held }) => held > 0)).toBe(true);
      expect(seen.filter(({ heldOutsideTransaction }) => heldOutsideTransaction > 0)).toEqual([]);
    } finally {
      await dataSource.destroy();
    }
  });

  it('lets only one of two instances purging at once delete at a time', async () => {
    const first = await instance();
    const second = await instance();
    try {
      await insertCompletedRecords(first.dataSource, { to: 120, scopes: 7, expired: true });
      // Each purge DELETE statement logs when it ran; a pause inside it leaves the other instance
      // plenty of time to run one of its own alongside, unless the lock stops it.
      await first.dataSource.query(`
        CREATE TABLE purge_statements (id serial PRIMARY KEY, started timestamptz NOT NULL, ended timestamptz);
        CREATE FUNCTION purge_statement_starts() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
          INSERT INTO purge_statements (started) VALUES (clock_timestamp());
          PERFORM pg_sleep(0.02);
          RETURN NULL;
        END $$;
        CREATE FUNCTION purge_statement_ends() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
          UPDATE purge_statements SET ended = clock_timestamp() WHERE id = currval('purge_statements_id_seq');
          RETURN NULL;
        END $$;
        CREATE TRIGGER purge_statement_starts BEFORE DELETE ON idempotency_keys
          FOR EACH STATEMENT EXECUTE FUNCTION purge_statement_starts();
        CREATE TRIGGER purge_statement_ends AFTER DELETE ON idempotency_keys
          FOR EACH STATEMENT EXECUTE FUNCTION purge_statement_ends();`);
      const counts = await Promise.all(
        [first, second].map(({ store }) => store.purgeExpired({ batchSize: 10, skipIfBusy: false })),
      );
      expect(counts[0] + counts[1]).toBe(120);
      const [{ statements, overlapping }] = await first.dataSource.query(
        `SELECT (SELECT count(*)::int FROM purge_statements) AS statements,
                (SELECT count(*)::int FROM purge_statements a JOIN purge_statements b
                 ON a.id < b.id AND a.started < b.ended AND b.started < a.ended) AS overlapping`,
      );
      expect(statements).toBeGreaterThanOrEqual(13);
      expect(overlapping).toBe(0);
    } finally {
      await first.dataSource.destroy();
      await second.dataSource.destroy();
    }
  });
});

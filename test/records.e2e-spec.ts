import { jest } from '@jest/globals';
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { DataSource } from 'typeorm';
import { CreateIdempotencyKeys1764288000000, IdempotencyKeyEntity, IdempotencyService, IdempotencyStore } from '../src';
import { PLATFORMS, startFixtureApp, type FixtureApp } from './support/fixture-app';
import { authed, send } from './support/http-client';
import { createTestDatabase, type TestDatabase } from './support/test-database';
import { waitFor } from './support/wait-for';

// W10 (expiry by the database clock), the purge, and the table the migration creates.
describe.each(PLATFORMS)('Record lifetime (%s)', (platform) => {
  let database: TestDatabase;
  let app: FixtureApp;

  beforeAll(async () => {
    database = await createTestDatabase();
    app = await startFixtureApp(database.url, { ttl: 60_000, lease: 1_000, purgeBatchSize: 2, purgeInterval: 0 }, platform);
  });
  afterAll(async () => {
    jest.useRealTimers();
    await app?.close();
    await database?.drop();
  });
  // A test that failed while a handler waited on a gate must not leave it hanging into app.close().
  afterEach(() => app?.probe.openAll());

  const post = (token: string, key: string) => send(app.url, { path: '/things', headers: authed(token, key), body: { ttl: true } });

  it('treats a key as new once its TTL is over: the handler runs again', async () => {
    const token = randomUUID();
    const key = randomUUID();
    const first = await post(token, key);
    expect((await post(token, key)).headers['idempotency-replayed']).toBe('true');
    await app.dataSource.query(`UPDATE idempotency_keys SET expires_at = now() WHERE idem_key = $1`, [key]);
    const afterExpiry = await post(token, key);
    expect(afterExpiry.status).toBe(201);
    expect(afterExpiry.headers['idempotency-replayed']).toBeUndefined();
    expect(afterExpiry.json.created).toBe(first.json.created + 1);
  });

  it('expires a real record after its TTL', async () => {
    const short = await startFixtureApp(database.url, { ttl: 600, lease: 300, purgeInterval: 0 }, platform);
    try {
      const token = randomUUID();
      const key = randomUUID();
      const first = await send(short.url, { path: '/things', headers: authed(token, key) });
      await new Promise((resolve) => setTimeout(resolve, 700));
      const again = await send(short.url, { path: '/things', headers: authed(token, key) });
      expect(again.headers['idempotency-replayed']).toBeUndefined();
      expect(again.json.created).toBe(first.json.created + 1);
    } finally {
      await short.close();
    }
  });

  it('judges expiry by the database clock, not the app instance clock', async () => {
    const token = randomUUID();
    const key = randomUUID();
    await post(token, key);
    // The app's clock jumps two days ahead; the database's does not, so the record is still live.
    jest.useFakeTimers({ now: Date.now() + 2 * 24 * 3600_000, doNotFake: ['nextTick', 'setImmediate', 'setTimeout', 'setInterval', 'clearTimeout', 'clearInterval', 'clearImmediate', 'queueMicrotask', 'hrtime', 'performance'] });
    try {
      const replay = await post(token, key);
      expect(replay.headers['idempotency-replayed']).toBe('true');
    } finally {
      jest.useRealTimers();
    }
  });

  it('keeps the expiry of the claim when the record completes: the TTL runs from the first claim', async () => {
    const token = randomUUID();
    const key = randomUUID();
    const gate = `ttl-from-claim-${key}`;
    const record = async () =>
      (
        await app.dataSource.query(
          `SELECT expires_at::text AS expires_at, (expires_at - created_at) = interval '60 seconds' AS ttl_from_claim,
                  completed_at - created_at >= interval '250 milliseconds' AS completed_later, lease_expires_at, response_status
           FROM idempotency_keys WHERE idem_key = $1`,
          [key],
        )
      )[0];
    const pending = send(app.url, { path: `/things/slow/${gate}`, headers: authed(token, key) });
    await waitFor(() => app.probe.count(`slow:${gate}`) === 1);
    const claimed = await record();
    expect(claimed.ttl_from_claim).toBe(true);
    // Completion comes well after the claim, so an expiry computed again at completion would differ.
    await new Promise((resolve) => setTimeout(resolve, 300));
    app.probe.gate(gate).open();
    expect((await pending).status).toBe(201);
    const completed = await record();
    expect(completed).toEqual({ expires_at: claimed.expires_at, ttl_from_claim: true, completed_later: true, lease_expires_at: null, response_status: 201 });
  });

  it('sets the lease and the expiry of a claim by the database clock, not the app instance clock', async () => {
    const token = randomUUID();
    const key = randomUUID();
    const gate = `db-clock-${key}`;
    // The app's clock is two days ahead; the database's is not.
    jest.useFakeTimers({ now: Date.now() + 2 * 24 * 3600_000, doNotFake: ['nextTick', 'setImmediate', 'setTimeout', 'setInterval', 'clearTimeout', 'clearInterval', 'clearImmediate', 'queueMicrotask', 'hrtime', 'performance'] });
    try {
      const pending = send(app.url, { path: `/things/slow/${gate}`, headers: authed(token, key) });
      await waitFor(() => app.probe.count(`slow:${gate}`) === 1);
      // Read at once, before the first renewal (lease / 3 = 333 ms).
      const [row] = await app.dataSource.query(
        `SELECT extract(epoch FROM lease_expires_at - now()) * 1000 AS lease_left, extract(epoch FROM expires_at - now()) * 1000 AS ttl_left
         FROM idempotency_keys WHERE idem_key = $1`,
        [key],
      );
      expect(Number(row.lease_left)).toBeGreaterThan(0);
      expect(Number(row.lease_left)).toBeLessThanOrEqual(1_000);
      expect(Number(row.ttl_left)).toBeGreaterThan(50_000);
      expect(Number(row.ttl_left)).toBeLessThanOrEqual(60_000);
      app.probe.gate(gate).open();
      expect((await pending).status).toBe(201);
    } finally {
      jest.useRealTimers();
    }
  });

  describe('purgeExpired()', () => {
    const insert = (key: string, lease: string | null, expires: string, completed: boolean) =>
      app.dataSource.query(
        `INSERT INTO idempotency_keys (api_key_id, idem_key, fingerprint, fence, lease_expires_at, expires_at, created_at, response_status, response_headers, response_body)
         VALUES ('purge-scope', $1, $2, 1, ${lease ?? 'NULL'}, ${expires}, now() - interval '2 days', $3, $4, $5)`,
        [key, 'f'.repeat(64), completed ? 200 : null, completed ? {} : null, completed ? Buffer.from('x') : null],
      );
    const remaining = async () =>
      (await app.dataSource.query(`SELECT idem_key FROM idempotency_keys WHERE api_key_id = 'purge-scope' ORDER BY idem_key`)).map(
        (row: { idem_key: string }) => row.idem_key,
      );

    beforeEach(async () => {
      await app.dataSource.query(`DELETE FROM idempotency_keys`);
      await insert('expired-completed-1', null, `now() - interval '1 hour'`, true);
      await insert('expired-completed-2', null, `now() - interval '1 hour'`, true);
      await insert('expired-completed-3', null, `now() - interval '1 second'`, true);
      await insert('expired-abandoned', `now() - interval '1 minute'`, `now() - interval '1 hour'`, false);
      await insert('expired-but-leased', `now() + interval '1 minute'`, `now() - interval '1 hour'`, false);
      await insert('live-completed', null, `now() + interval '1 hour'`, true);
      await insert('live-in-flight', `now() + interval '1 minute'`, `now() + interval '1 hour'`, false);
    });

    it('removes every expired, non-leased record in batches and returns the count', async () => {
      expect(await app.app.get(IdempotencyService).purgeExpired()).toBe(4);
      expect(await remaining()).toEqual(['expired-but-leased', 'live-completed', 'live-in-flight']);
    });

    it('deletes in statements of at most purgeBatchSize rows', async () => {
      await app.dataSource.query(`DELETE FROM idempotency_keys`);
      await app.dataSource.query(
        `INSERT INTO idempotency_keys (api_key_id, idem_key, fingerprint, fence, lease_expires_at, expires_at, created_at, response_status, response_headers, response_body)
         SELECT 'purge-scope', 'bulk-' || i, repeat('f', 64), 1, NULL, now() - interval '1 hour', now() - interval '2 days', 200, '{}'::jsonb, '\\x78'::bytea
         FROM generate_series(1, 25) AS i`,
      );
      // A statement-level trigger sees each DELETE statement's rows as one transition table.
      await app.dataSource.query(`
        CREATE TABLE purge_statements (id serial PRIMARY KEY, deleted integer NOT NULL);
        CREATE FUNCTION record_purge_statement() RETURNS trigger LANGUAGE plpgsql AS $$
          BEGIN INSERT INTO purge_statements (deleted) SELECT count(*) FROM purged_rows; RETURN NULL; END $$;
        CREATE TRIGGER record_purge_statement AFTER DELETE ON idempotency_keys
          REFERENCING OLD TABLE AS purged_rows FOR EACH STATEMENT EXECUTE FUNCTION record_purge_statement();`);
      try {
        expect(await app.app.get(IdempotencyService).purgeExpired()).toBe(25);
        const sizes: number[] = (await app.dataSource.query(`SELECT deleted FROM purge_statements ORDER BY id`)).map((row: { deleted: number }) => row.deleted);
        // purgeBatchSize is 2 in this app: 12 full batches and one of 1.
        expect(sizes.filter((size) => size > 0)).toEqual([...Array(12).fill(2), 1]);
        expect(await remaining()).toEqual([]);
      } finally {
        await app.dataSource.query(`
          DROP TRIGGER record_purge_statement ON idempotency_keys;
          DROP FUNCTION record_purge_statement();
          DROP TABLE purge_statements;`);
      }
    });

    it('never starts a scheduled purge while the previous one still runs', async () => {
      const scheduled = await startFixtureApp(database.url, { purgeInterval: 20 }, platform);
      let running = 0;
      let started = 0;
      let overlapping = 0;
      try {
        // Every purge takes 150 ms, longer than seven intervals.
        const service = scheduled.app.get(IdempotencyService);
        const purge = service.purgeExpired.bind(service);
        service.purgeExpired = async (options) => {
          started++;
          if (++running > 1) overlapping++;
          try {
            await new Promise((resolve) => setTimeout(resolve, 150));
            return await purge(options);
          } finally {
            running--;
          }
        };
        await waitFor(() => started >= 3);
        expect(overlapping).toBe(0);
      } finally {
        await scheduled.close();
      }
      expect(await remaining()).toEqual(['expired-but-leased', 'live-completed', 'live-in-flight']);
    });

    it('skips scheduled runs while another instance holds the purge lock, without waiting for it', async () => {
      const lockHolder = new pg.Client({ connectionString: database.url });
      await lockHolder.connect();
      let scheduled: FixtureApp | undefined;
      try {
        await lockHolder.query('SELECT pg_advisory_lock(7305219447001)');
        scheduled = await startFixtureApp(database.url, { purgeInterval: 20 }, platform);
        const service = scheduled.app.get(IdempotencyService);
        const purge = service.purgeExpired.bind(service);
        const results: number[] = [];
        service.purgeExpired = async (options) => {
          const count = await purge(options);
          results.push(count);
          return count;
        };
        // A run that waited for the lock would never finish while it is held.
        await waitFor(() => results.length >= 3);
        expect(results.every((count) => count === 0)).toBe(true);
        expect(await remaining()).toHaveLength(7);
      } finally {
        await lockHolder.end();
        await scheduled?.close();
      }
    });

    it('skips a scheduled run while another instance holds the purge lock', async () => {
      const lockHolder = new pg.Client({ connectionString: database.url });
      await lockHolder.connect();
      try {
        await lockHolder.query('SELECT pg_advisory_lock(7305219447001)');
        const store = app.app.get(IdempotencyStore);
        expect(await store.purgeExpired({ batchSize: 2, skipIfBusy: true })).toBe(0);
        expect(await remaining()).toHaveLength(7);
      } finally {
        await lockHolder.end();
      }
      expect(await app.app.get(IdempotencyStore).purgeExpired({ batchSize: 2, skipIfBusy: true })).toBe(4);
    });

    it('runs on its own interval without the host scheduling anything', async () => {
      const scheduled = await startFixtureApp(database.url, { purgeInterval: 50 }, platform);
      try {
        await waitFor(async () => (await remaining()).length === 3);
      } finally {
        await scheduled.close();
      }
    });
  });
});

describe('The table', () => {
  let database: TestDatabase;
  afterAll(() => database?.drop());

  it('is the same whether created by the migration or by the entity: synchronize finds nothing to change', async () => {
    database = await createTestDatabase();
    const dataSource = new DataSource({
      type: 'postgres',
      url: database.url,
      entities: [IdempotencyKeyEntity],
      migrations: [CreateIdempotencyKeys1764288000000],
    });
    await dataSource.initialize();
    try {
      await dataSource.runMigrations();
      const pending = await dataSource.driver.createSchemaBuilder().log();
      expect(pending.upQueries.map((query) => query.query)).toEqual([]);
      const constraints = await dataSource.query(
        `SELECT conname, contype, pg_get_constraintdef(oid) AS definition FROM pg_constraint WHERE conrelid = 'idempotency_keys'::regclass AND contype IN ('p', 'u')`,
      );
      expect(constraints).toEqual([{ conname: 'pk_idempotency_keys', contype: 'p', definition: 'PRIMARY KEY (api_key_id, idem_key)' }]);
    } finally {
      await dataSource.destroy();
    }
  });
});

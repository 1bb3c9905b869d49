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

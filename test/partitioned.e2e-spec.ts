import { randomUUID } from 'node:crypto';
import { DataSource } from 'typeorm';
import { CreatePartitionedIdempotencyKeys1764288000000, IdempotencyService } from '../src';
import { PostgresIdempotencyStore } from '../src/store/postgres-idempotency.store';
import { bootFixture, ThingsController, type FixtureApp } from './support/fixture-app';
import { authed, scopeOf, send } from './support/http-client';
import { createTestDatabase, type TestDatabase } from './support/test-database';

// The table may be partitioned by api_key_id: nothing may rely on what is unique only inside one
// partition (such as a row's ctid), and every wire rule holds as on a plain table.
describe('A table hash-partitioned by api_key_id', () => {
  let database: TestDatabase;
  let dataSource: DataSource;

  beforeAll(async () => {
    database = await createTestDatabase();
    dataSource = new DataSource({ type: 'postgres', url: database.url, migrations: [CreatePartitionedIdempotencyKeys1764288000000], migrationsRun: true });
    await dataSource.initialize();
  });
  afterAll(async () => {
    await dataSource?.destroy();
    await database?.drop();
  });

  const partitions = async (db: DataSource) =>
    (await db.query(`SELECT count(*)::int AS n FROM pg_inherits WHERE inhparent = 'idempotency_keys'::regclass`))[0].n;

  it('is created by the partitioned migration with eight partitions by default, or as many as asked', async () => {
    expect(await partitions(dataSource)).toBe(8);
    const other = await createTestDatabase();
    const three = new DataSource({ type: 'postgres', url: other.url, migrations: [CreatePartitionedIdempotencyKeys1764288000000.withPartitions(3)] });
    try {
      await three.initialize();
      await three.runMigrations();
      expect(await partitions(three)).toBe(3);
    } finally {
      await three.destroy();
      await other.drop();
    }
  });

  it('purges exactly the expired records and keeps every live one, whatever partition each is in', async () => {
    // Records 1–300 expired, 301–600 live, spread over 40 scopes and so over every partition.
    await dataSource.query(
      `INSERT INTO idempotency_keys (api_key_id, idem_key, fingerprint, fence, expires_at, created_at, response_status, response_headers, response_body)
       SELECT 'scope-' || (i % 40), 'key-' || i, repeat('f', 64), 1,
              now() + CASE WHEN i <= 300 THEN interval '-1 hour' ELSE interval '1 hour' END,
              now() - interval '2 hours', 200, '{}'::jsonb, '\\x78'::bytea
       FROM generate_series(1, 600) AS i`,
    );
    const store = new PostgresIdempotencyStore(dataSource);
    expect(await store.purgeExpired({ batchSize: 50, skipIfBusy: false })).toBe(300);
    const [left] = await dataSource.query(
      `SELECT count(*) FILTER (WHERE expires_at <= now())::int AS expired, count(*) FILTER (WHERE expires_at > now())::int AS live
       FROM idempotency_keys`,
    );
    expect(left).toEqual({ expired: 0, live: 300 });
  });

  describe('behind the module', () => {
    let app: FixtureApp;

    beforeAll(async () => {
      app = await bootFixture(database.url, {
        controllers: [ThingsController],
        options: { purgeInterval: 0 },
        migration: CreatePartitionedIdempotencyKeys1764288000000,
      });
    });
    afterAll(() => app?.close());

    it('answers a first request, replays it, refuses a conflicting one, and purges it once expired', async () => {
      const token = randomUUID();
      const key = randomUUID();
      const post = (body: unknown) => send(app.url, { path: '/things', headers: authed(token, key), body });

      const first = await post({ n: 1 });
      expect(first.status).toBe(201);
      expect(first.headers['idempotency-replayed']).toBeUndefined();

      const replay = await post({ n: 1 });
      expect(replay.status).toBe(201);
      expect(replay.headers['idempotency-replayed']).toBe('true');
      expect(replay.body.equals(first.body)).toBe(true);

      const conflict = await post({ n: 2 });
      expect(conflict.status).toBe(409);
      expect(conflict.json.error.code).toBe('idempotency_key_conflict');

      const live = await send(app.url, { path: '/things', headers: authed(token, randomUUID()), body: { n: 3 } });
      expect(live.status).toBe(201);
      await app.dataSource.query(`UPDATE idempotency_keys SET expires_at = now() WHERE api_key_id = $1 AND idem_key = $2`, [scopeOf(token), key]);
      expect(await app.app.get(IdempotencyService).purgeExpired()).toBe(1);
      const [{ n }] = await app.dataSource.query(`SELECT count(*)::int AS n FROM idempotency_keys WHERE api_key_id = $1`, [scopeOf(token)]);
      expect(n).toBe(1);

      const runs = app.probe.count('create');
      const afterPurge = await post({ n: 1 });
      expect(afterPurge.status).toBe(201);
      expect(afterPurge.headers['idempotency-replayed']).toBeUndefined();
      expect(app.probe.count('create')).toBe(runs + 1);
    });
  });
});

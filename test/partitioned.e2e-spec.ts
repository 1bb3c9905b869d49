import { randomUUID } from 'node:crypto';
import type { DataSource } from 'typeorm';
import { CreatePartitionedIdempotencyKeys1764288000000, IdempotencyService } from '../src';
import { PostgresIdempotencyStore } from '../src/store/postgres-idempotency.store';
import { bootFixture, ThingsController, type FixtureApp } from './support/fixture-app';
import { authed, scopeOf, send } from './support/http-client';
import { insertCompletedRecords } from './support/records';
import { migratedDataSource } from './support/store-harness';
import { createTestDatabase, type TestDatabase } from './support/test-database';

// The table may be partitioned by api_key_id: nothing may rely on what is unique only inside one
// partition (such as a row's ctid), and every wire rule holds as on a plain table.
describe('A table hash-partitioned by api_key_id', () => {
  let database: TestDatabase;
  let dataSource: DataSource;

  beforeAll(async () => {
    database = await createTestDatabase();
    dataSource = await migratedDataSource(database.url, CreatePartitionedIdempotencyKeys1764288000000);
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
    try {
      const migration = CreatePartitionedIdempotencyKeys1764288000000.withPartitions(3);
      const three = await migratedDataSource(other.url, migration);
      expect(await partitions(three)).toBe(3);
      await three.destroy();
    } finally {
      await other.drop();
    }
  });

  it('is the table the harness creates in npm run test:partitioned (IDEMPOTENCY_TEST_TABLE=partitioned)', async () => {
    const other = await createTestDatabase();
    try {
      const runs = await migratedDataSource(other.url);
      expect(await partitions(runs)).toBe(process.env.IDEMPOTENCY_TEST_TABLE === 'partitioned' ? 8 : 0);
      await runs.destroy();
    } finally {
      await other.drop();
    }
  });

  it('purges exactly the expired records and keeps every live one, whatever partition each is in', async () => {
    await insertCompletedRecords(dataSource, { to: 300, scopes: 40, expired: true });
    await insertCompletedRecords(dataSource, { from: 301, to: 600, scopes: 40, expired: false });
    const store = new PostgresIdempotencyStore(dataSource);
    expect(await store.purgeExpired({ batchSize: 50, skipIfBusy: false })).toBe(300);
    const [left] = await dataSource.query(
      `SELECT count(*) FILTER (WHERE expires_at <= now())::int AS expired,
              count(*) FILTER (WHERE expires_at > now())::int AS live
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

      const liveKey = randomUUID();
      const live = await send(app.url, { path: '/things', headers: authed(token, liveKey), body: { n: 3 } });
      expect(live.status).toBe(201);
      const scope = scopeOf(token);
      await app.dataSource.query(
        `UPDATE idempotency_keys SET expires_at = now() WHERE api_key_id = $1 AND idem_key = $2`,
        [scope, key],
      );
      expect(await app.app.get(IdempotencyService).purgeExpired()).toBe(1);
      const left = await app.dataSource.query(`SELECT idem_key FROM idempotency_keys WHERE api_key_id = $1`, [scope]);
      expect(left).toEqual([{ idem_key: liveKey }]);

      const runs = app.probe.count('create');
      const afterPurge = await post({ n: 1 });
      expect(afterPurge.status).toBe(201);
      expect(afterPurge.headers['idempotency-replayed']).toBeUndefined();
      expect(app.probe.count('create')).toBe(runs + 1);
    });
  });
});

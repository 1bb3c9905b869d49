import { randomUUID } from 'node:crypto';
import pg from 'pg';
import type { DataSource } from 'typeorm';
import { CreatePartitionedIdempotencyKeys1764288000000, type IdempotencyModuleOptions } from '../src';
import { REQUEST_STATEMENTS } from '../src/store/postgres-idempotency.store';
import { TRY_KEY_LOCK } from '../src/store/postgres-store-transaction';
import type { PreparedStatement } from '../src/store/sql-runner';
import { bootFixture, claimOpening, ThingsController, type FixtureApp } from './support/fixture-app';
import { authed, scopeOf, send } from './support/http-client';
import { insertCompletedRecords } from './support/records';
import { migratedDataSource } from './support/store-harness';
import { createTestDatabase, type TestDatabase } from './support/test-database';
import { waitFor } from './support/wait-for';

const { CLAIM, INSERT, LOOK, TAKE_OVER, RENEW, COMPLETE, RELEASE, READ_BODY_PIECE } = REQUEST_STATEMENTS;
const { INSERT_MANY, LOOK_MANY, COMPLETE_MANY } = REQUEST_STATEMENTS;
const BATCH_STATEMENTS = [INSERT_MANY, LOOK_MANY, COMPLETE_MANY];
const PARTITION = /^idempotency_keys_p\d+$/;
type PlanCache = 'force_custom_plan' | 'force_generic_plan';
const sum = (counts: number[]) => counts.reduce((total, count) => total + count, 0);

// On a table hash-partitioned by api_key_id (on Citus: distributed by it), every statement of the
// request path that names one key must reach exactly one partition (one shard). The batch
// statements take the keys of many callers at once; batchStatements: false leaves them out.
describe('The request path on idempotency_keys hash-partitioned into eight', () => {
  let database: TestDatabase;
  let dataSource: DataSource;
  let client: pg.Client;
  /** A completed record: its scope, key and partition. */
  let record: { scope: string; key: string; partition: string };

  beforeAll(async () => {
    database = await createTestDatabase();
    dataSource = await migratedDataSource(database.url, CreatePartitionedIdempotencyKeys1764288000000);
    await insertCompletedRecords(dataSource, { to: 400, scopes: 40, expired: false });
    await dataSource.query('ANALYZE idempotency_keys');
    client = new pg.Client({ connectionString: database.url });
    await client.connect();
    record = await partitionOf('scope-1', 'key-1');
  });
  afterAll(async () => {
    await client?.end();
    await dataSource?.destroy();
    await database?.drop();
  });

  async function partitionOf(scope: string, key: string) {
    const { rows } = await client.query(
      `SELECT api_key_id AS scope, idem_key AS key, tableoid::regclass::text AS partition
       FROM idempotency_keys WHERE api_key_id = $1 AND idem_key = $2`,
      [scope, key],
    );
    return rows[0];
  }

  /** The plan of the statement for these values, as prepared by a client and run under `planCache`. */
  async function plan(statement: PreparedStatement, values: unknown[], planCache: PlanCache) {
    await client.query(`SET plan_cache_mode = ${planCache}`);
    await client.query(`PREPARE probe AS ${statement.text}`);
    try {
      const literals = values.map((value) => client.escapeLiteral(typeof value === 'string' ? value : String(value)));
      const { rows } = await client.query(`EXPLAIN (FORMAT JSON, COSTS OFF) EXECUTE probe(${literals.join(', ')})`);
      const json = JSON.stringify(rows[0]['QUERY PLAN']);
      const named = [...json.matchAll(/"Relation Name":"([^"]+)"/g)].map(([, name]) => name);
      const removed = [...json.matchAll(/"Subplans Removed":(\d+)/g)].map(([, count]) => Number(count));
      return { partitions: [...new Set(named.filter((name) => PARTITION.test(name)))].sort(), removed: sum(removed) };
    } finally {
      await client.query('DEALLOCATE probe');
      await client.query('RESET plan_cache_mode');
    }
  }

  /** The partitions the statement scanned or wrote when run (and rolled back) with these values. */
  async function touched(statement: PreparedStatement, values: unknown[]): Promise<string[]> {
    // The counts of earlier transactions stay in pg_stat_xact_* until the backend flushes them.
    await client.query('SELECT pg_stat_force_next_flush()');
    await client.query('BEGIN');
    try {
      await client.query({ text: statement.text, values });
      const { rows } = await client.query(
        `SELECT relname FROM pg_stat_xact_user_tables
         WHERE relname ~ '^idempotency_keys_p'
           AND seq_scan + coalesce(idx_scan, 0) + n_tup_ins + n_tup_upd + n_tup_del > 0
         ORDER BY relname`,
      );
      return rows.map((row) => row.relname);
    } finally {
      await client.query('ROLLBACK');
    }
  }

  const fingerprint = 'f'.repeat(64);
  const single: [string, PreparedStatement, () => unknown[]][] = [
    ['CLAIM (a key with a record)', CLAIM, () => [record.scope, record.key, fingerprint, 30_000, 60_000]],
    ['INSERT (a new key)', INSERT, () => [record.scope, randomUUID(), fingerprint, 30_000, 60_000]],
    ['LOOK', LOOK, () => [record.scope, record.key]],
    ['TAKE_OVER', TAKE_OVER, () => [record.scope, record.key, fingerprint, 30_000, 60_000, 1]],
    ['RENEW', RENEW, () => [record.scope, record.key, 1, 30_000]],
    ['COMPLETE', COMPLETE, () => [record.scope, record.key, 1, 201, '{}', '\\x00']],
    ['RELEASE', RELEASE, () => [record.scope, record.key, 1]],
    ['READ_BODY_PIECE', READ_BODY_PIECE, () => [record.scope, record.key, 1, 1, 262_144]],
  ];

  describe.each(single)('%s', (_name, statement, values) => {
    it('is planned for the partition of its key alone', async () => {
      // An INSERT routes its one row when it runs: its plan names no partition at all.
      const custom = await plan(statement, values(), 'force_custom_plan');
      expect(custom.partitions).toEqual(statement === INSERT ? [] : [record.partition]);
    });

    it('prunes the other seven partitions when it starts, under a generic plan', async () => {
      const generic = await plan(statement, values(), 'force_generic_plan');
      const pruned = { partitions: [record.partition], removed: 7 };
      expect(generic).toEqual(statement === INSERT ? { partitions: [], removed: 0 } : pruned);
    });

    it('scans or writes that partition only', async () => {
      expect(await touched(statement, values())).toEqual([record.partition]);
    });
  });

  it('takes the advisory try-lock of a transactional claim without reading any table', async () => {
    const values = [record.scope, record.key];
    expect(await plan(TRY_KEY_LOCK, values, 'force_custom_plan')).toEqual({ partitions: [], removed: 0 });
    expect(await touched(TRY_KEY_LOCK, values)).toEqual([]);
  });

  describe('the batch statements, which take the keys of many callers at once', () => {
    /** One completed record in each partition. */
    let spread: { scope: string; key: string; partition: string }[];

    beforeAll(async () => {
      const { rows } = await client.query(
        `SELECT DISTINCT ON (tableoid) api_key_id AS scope, idem_key AS key, tableoid::regclass::text AS partition
         FROM idempotency_keys ORDER BY tableoid, api_key_id, idem_key`,
      );
      spread = rows;
    });

    const every = () => spread.map(({ partition }) => partition).sort();
    const batch = (items: object[]) => [JSON.stringify(items)];

    it('INSERT_MANY writes into the partition of every scope it is given', async () => {
      const items = spread.map(({ scope }) => ({ scope, key: randomUUID(), fingerprint, lease: 30_000, ttl: 60_000 }));
      expect(every()).toHaveLength(8);
      expect(await touched(INSERT_MANY, batch(items))).toEqual(every());
    });

    it('LOOK_MANY and COMPLETE_MANY are planned over every partition and scan them', async () => {
      const looks = batch(spread.map(({ scope, key }) => ({ scope, key })));
      const completion = { fence: 1, status: 201, headers: {}, body: '' };
      const completions = batch(spread.map(({ scope, key }) => ({ scope, key, ...completion })));
      for (const [statement, values] of [[LOOK_MANY, looks], [COMPLETE_MANY, completions]] as const) {
        expect((await plan(statement, values, 'force_generic_plan')).partitions).toEqual(every());
        expect(await touched(statement, values)).toEqual(every());
      }
    });
  });

  describe('what an app sends', () => {
    /** Boots an app on the partitioned table and collects the text of every statement its pool sends from then on. */
    async function watchedApp(options: IdempotencyModuleOptions) {
      const app = await bootFixture(database.url, {
        controllers: [ThingsController],
        options: { purgeInterval: 0, ...options },
        migration: CreatePartitionedIdempotencyKeys1764288000000,
      });
      const sent = new Set<string>();
      const pool = (app.dataSource.driver as unknown as { master: pg.Pool }).master;
      const watched = new WeakSet<pg.PoolClient>();
      pool.on('acquire', (connection) => {
        if (watched.has(connection)) return;
        watched.add(connection);
        const query = connection.query.bind(connection) as (...args: unknown[]) => unknown;
        (connection as unknown as { query: typeof query }).query = (...args) => {
          const [config] = args;
          sent.add(typeof config === 'string' ? config : (config as { text: string }).text);
          return query(...args);
        };
      });
      return { app, sent };
    }

    const token = `tok_${randomUUID()}`;
    const post = (app: FixtureApp, path: string, key: string) =>
      send(app.url, { path, headers: authed(token, key), body: { n: 1 } });
    const burst = (app: FixtureApp, keys: string[]) => Promise.all(keys.map((key) => post(app, '/things', key)));

    it('with batchStatements: false, only statements that name one key: none of the batch statements', async () => {
      const { app, sent } = await watchedApp({ batchStatements: false, lease: 600 });
      try {
        const keys = Array.from({ length: 24 }, () => randomUUID());
        await burst(app, keys);
        // Replayed until the store reads before it claims, then once more all at once.
        for (let round = 0; claimOpening(app) !== 'look'; round++) {
          if (round === 4) throw new Error('the store never turned to reading first');
          await burst(app, keys);
        }
        await burst(app, keys);
        const bulky = randomUUID();
        await post(app, '/things/bulky', bulky);
        expect((await post(app, '/things/bulky', bulky)).headers['idempotency-replayed']).toBe('true');
        expect((await post(app, '/things/crash', randomUUID())).status).toBe(500);
        // A handler held past a third of the lease renews it.
        const slow = post(app, '/things/slow/renewed', randomUUID());
        await waitFor(() => app.probe.count('slow:renewed') === 1);
        await new Promise((resolve) => setTimeout(resolve, 500));
        app.probe.gate('renewed').open();
        expect((await slow).status).toBe(201);
        // Expired: the next request with its key takes the record over.
        const expire = `UPDATE idempotency_keys SET expires_at = now() WHERE api_key_id = $1 AND idem_key = $2`;
        await client.query(expire, [scopeOf(token), keys[0]]);
        expect((await post(app, '/things', keys[0])).headers['idempotency-replayed']).toBeUndefined();

        expect([...sent].filter((text) => BATCH_STATEMENTS.some((statement) => statement.text === text))).toEqual([]);
        const names = new Map(Object.entries(REQUEST_STATEMENTS).map(([name, statement]) => [statement.text, name]));
        expect([...sent].map((text) => names.get(text) ?? text).sort()).toEqual(
          ['CLAIM', 'COMPLETE', 'INSERT', 'LOOK', 'READ_BODY_PIECE', 'RELEASE', 'RENEW', 'TAKE_OVER'],
        );
      } finally {
        app.probe.openAll();
        await app.close();
      }
    });

    it('by default, shares INSERT and COMPLETE among the fresh keys of one turn', async () => {
      const { app, sent } = await watchedApp({});
      try {
        for (let round = 0; round < 3 && !sent.has(INSERT_MANY.text); round++) {
          await burst(app, Array.from({ length: 24 }, () => randomUUID()));
        }
        expect(sent.has(INSERT_MANY.text) || sent.has(COMPLETE_MANY.text)).toBe(true);
      } finally {
        await app.close();
      }
    });
  });
});

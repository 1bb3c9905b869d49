import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { startEmbeddedDatabase } from '../sample/embedded-database';
import { createTestDatabase, type TestDatabase } from './support/test-database';

async function query<T extends pg.QueryResultRow>(url: string, sql: string, params: unknown[] = []): Promise<T[]> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return (await client.query<T>(sql, params)).rows;
  } finally {
    await client.end();
  }
}

describe('test database on the shared embedded PostgreSQL', () => {
  let database: TestDatabase;

  beforeAll(async () => {
    database = await createTestDatabase();
  });

  afterAll(async () => {
    await database?.drop();
  });

  it('connects to its own database and runs a query', async () => {
    const rows = await query<{ one: number; db: string }>(database.url, 'SELECT 1 AS one, current_database() AS db');
    expect(rows).toEqual([{ one: 1, db: new URL(database.url).pathname.slice(1) }]);
    expect(rows[0].db).toMatch(/^test_[0-9a-f]{16}$/);
  });

  it('serves two concurrent sessions from different backends', async () => {
    const first = new pg.Client({ connectionString: database.url });
    const second = new pg.Client({ connectionString: database.url });
    await Promise.all([first.connect(), second.connect()]);
    try {
      const [a, b] = await Promise.all([
        first.query<{ pid: number }>('SELECT pg_backend_pid() AS pid'),
        second.query<{ pid: number }>('SELECT pg_backend_pid() AS pid'),
      ]);
      const firstPid = a.rows[0].pid;
      const secondPid = b.rows[0].pid;
      expect(Number.isInteger(firstPid)).toBe(true);
      expect(secondPid).not.toBe(firstPid);

      // Both sessions are alive at once: a lock held by the first is visible to, and blocks, the second.
      await first.query('BEGIN');
      await first.query('SELECT pg_advisory_xact_lock(4242)');
      const holders = await second.query<{ pid: number }>(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objid = 4242 AND granted",
      );
      expect(holders.rows.map((row) => row.pid)).toEqual([firstPid]);
      expect((await second.query<{ got: boolean }>('SELECT pg_try_advisory_lock(4242) AS got')).rows[0].got).toBe(false);
      await first.query('COMMIT');
      expect((await second.query<{ got: boolean }>('SELECT pg_try_advisory_xact_lock(4242) AS got')).rows[0].got).toBe(true);
    } finally {
      await Promise.all([first.end(), second.end()]);
    }
  });
});

describe('startEmbeddedDatabase', () => {
  let dataDir: string;

  beforeAll(async () => {
    dataDir = await mkdtemp(path.join(os.tmpdir(), 'embedded-database-spec-'));
  });

  afterAll(async () => {
    await rm(dataDir, { recursive: true, force: true });
  });

  it('keeps data in a persistent data dir across stop and start', async () => {
    const first = await startEmbeddedDatabase({ dataDir });
    try {
      expect(first.url).toBe(`postgres://postgres:${new URL(first.url).password}@127.0.0.1:${first.port}/postgres`);
      expect(first.url).not.toBe(process.env.DATABASE_URL);
      await query(first.url, 'CREATE TABLE note (id int PRIMARY KEY, body text NOT NULL)');
      await query(first.url, 'INSERT INTO note VALUES ($1, $2)', [1, 'survives a restart']);
    } finally {
      await first.stop();
    }
    await expect(query(first.url, 'SELECT 1')).rejects.toThrow(/ECONNREFUSED/);

    const second = await startEmbeddedDatabase({ dataDir });
    try {
      expect(await query(second.url, 'SELECT id, body FROM note')).toEqual([{ id: 1, body: 'survives a restart' }]);

      await second.restart?.();
      expect(await query(second.url, 'SELECT count(*)::int AS n FROM note')).toEqual([{ n: 1 }]);
    } finally {
      await second.stop();
    }
    await expect(query(second.url, 'SELECT 1')).rejects.toThrow(/ECONNREFUSED/);
  }, 60_000);
});

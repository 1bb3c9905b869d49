import { createHash } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { DataSource } from 'typeorm';
import { startEmbeddedDatabase } from '../sample/embedded-database';
import { CreateIdempotencyKeys1764288000000 } from '../src';
import { resolveEncryption } from '../src/encryption/encryption-options';
import { RecordCipher } from '../src/encryption/record-sealer';
import {
  BENCH_RECORD_KEY,
  NAIVE_TABLE,
  REQUEST_BODY,
  ROUTES,
  SCOPE,
  SEEDED_KEY_PREFIX,
  SEEDED_SIZED_PREFIX,
  moduleFingerprint,
  naiveFingerprint,
  payment,
  sizedPayment,
} from './common';

export interface BenchDatabase {
  url: string;
  dataDir: string;
  /** true: fsync and synchronous_commit on (the embedded launcher's `persistent: true`). */
  durable: boolean;
  query(text: string, values?: unknown[]): Promise<pg.QueryResult>;
  stop(): Promise<void>;
}

/**
 * Starts a throw-away PostgreSQL for one bench run. BENCH_FSYNC=off starts it with `persistent:
 * false` (fsync, synchronous_commit and full_page_writes off); the default is a durable server.
 * The data dir is deleted on stop either way.
 */
export async function startBenchDatabase(): Promise<BenchDatabase> {
  const durable = process.env.BENCH_FSYNC !== 'off';
  const dataDir = await mkdtemp(path.join(os.tmpdir(), 'bench-postgres-'));
  const database = await startEmbeddedDatabase({ dataDir, persistent: durable }).catch(async (error: unknown) => {
    await rm(dataDir, { recursive: true, force: true });
    throw error;
  });
  const client = new pg.Client({ connectionString: database.url });
  await client.connect();
  return {
    url: database.url,
    dataDir,
    durable,
    query: (text, values) => client.query(text, values),
    async stop() {
      await client.end().catch(() => undefined);
      await database.stop();
      await rm(dataDir, { recursive: true, force: true });
    },
  };
}

/** Creates the module's table through its migration. */
export async function createModuleTable(url: string): Promise<void> {
  const dataSource = new DataSource({ type: 'postgres', url, migrations: [CreateIdempotencyKeys1764288000000] });
  await dataSource.initialize();
  try {
    await dataSource.runMigrations();
  } finally {
    await dataSource.destroy();
  }
}

/** Creates the module's table (through its migration) and the baseline's copy of it. */
export async function createSchema(url: string): Promise<void> {
  await createModuleTable(url);
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    await client.query(`CREATE TABLE ${NAIVE_TABLE} (LIKE idempotency_keys INCLUDING ALL)`);
  } finally {
    await client.end();
  }
}

/** Completed records written straight into a table by {@link insertSeededRecords}. */
export interface SeededRecords {
  /** @default 'idempotency_keys' */
  table?: string;
  /** Keys `<prefix><n>` for n from `from` (default 1) to `to`; with `hashed`, {@link hashedKey} of each. */
  prefix: string;
  from?: number;
  to: number;
  hashed?: boolean;
  /** The fingerprint of the request every record answers. */
  fingerprint: string;
  /** Expired an hour ago, or live for about a day; the n-th a millisecond earlier, so that no two expire together. */
  expired?: boolean;
}

/**
 * Inserts completed records of the benchmark scope with one INSERT … SELECT generate_series: each
 * stores the answer to the benchmark request, a distinct payment.
 */
export function insertSeededRecords(
  query: (text: string, values: unknown[]) => Promise<unknown>,
  { table = 'idempotency_keys', prefix, from = 1, to, hashed = false, fingerprint, expired = false }: SeededRecords,
): Promise<unknown> {
  // %s becomes the record number, so every stored body is a distinct payment.
  const storedBody = JSON.stringify(payment(`pay_seeded_%s`, JSON.parse(REQUEST_BODY)));
  const headers = JSON.stringify({ 'content-type': 'application/json; charset=utf-8' });
  const key = hashed ? `md5($2 || g)::uuid::text` : `$2 || g`;
  return query(
    `INSERT INTO ${table} (api_key_id, idem_key, fingerprint, fence, lease_expires_at, expires_at, created_at,
                           completed_at, response_status, response_headers, response_body)
     SELECT $1, ${key}, $3, 1, NULL, now() + $7::interval - g * interval '1 millisecond', now(), now(),
            201, $4::jsonb, convert_to(format($5, g), 'UTF8')
     FROM generate_series($6::int, $8::int) g`,
    [SCOPE, prefix, fingerprint, headers, storedBody, from, expired ? '-1 hour' : '1 day', to],
  );
}

/** The key {@link insertSeededRecords} gives record `n` with `hashed`: md5(`<prefix><n>`) as a UUID. */
export function hashedKey(prefix: string, n: number): string {
  const hex = createHash('md5').update(`${prefix}${n}`).digest('hex');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/**
 * Inserts `count` completed records straight into each table, with the fingerprints the module
 * and the baseline compute for the benchmark request, so replays of `seeded-1` … `seeded-<count>`
 * succeed without any process having seen those keys.
 */
export async function seedCompletedRecords(database: BenchDatabase, count: number): Promise<void> {
  const records = { prefix: SEEDED_KEY_PREFIX, to: count };
  await insertSeededRecords(database.query, { ...records, fingerprint: moduleFingerprint(ROUTES.idempotent) });
  const naive = naiveFingerprint('POST', ROUTES.naiveReplay, JSON.parse(REQUEST_BODY));
  await insertSeededRecords(database.query, { ...records, table: NAIVE_TABLE, fingerprint: naive });
  await database.query(`VACUUM ANALYZE idempotency_keys`);
  await database.query(`VACUUM ANALYZE ${NAIVE_TABLE}`);
  await database.query('CHECKPOINT');
}

/**
 * Inserts `count` completed records of `ROUTES.sized` twice: `sized-<n>` in clear for the module's
 * app, `sealed-<n>` sealed under BENCH_RECORD_KEY (by the module's own sealer) for the app with
 * `encryption`. Call before seedCompletedRecords, which vacuums and checkpoints.
 */
export async function seedSizedRecords(database: BenchDatabase, count: number): Promise<void> {
  const body = JSON.parse(REQUEST_BODY);
  const fingerprint = moduleFingerprint(ROUTES.sized);
  const encryption = resolveEncryption({ keys: [BENCH_RECORD_KEY] })!;
  const headers = { 'content-type': 'application/json; charset=utf-8' };
  const CHUNK = 1000;
  for (const [kind, prefix] of Object.entries(SEEDED_SIZED_PREFIX)) {
    for (let start = 1; start <= count; start += CHUNK) {
      const rows = [];
      for (let n = start; n < Math.min(start + CHUNK, count + 1); n++) {
        const key = `${prefix}${n}`;
        const response = { status: 201, headers, body: Buffer.from(JSON.stringify(sizedPayment(`pay_${key}`, body))) };
        const stored = kind === 'sealed' ? new RecordCipher(encryption, SCOPE, key, undefined).seal(response) : response;
        rows.push({ key, headers: stored.headers, body: stored.body!.toString('hex') });
      }
      await database.query(
        `INSERT INTO idempotency_keys (api_key_id, idem_key, fingerprint, fence, lease_expires_at, expires_at, created_at, completed_at,
                                       response_status, response_headers, response_body)
         SELECT $1, v.key, $2, 1, NULL, now() + interval '1 day', now(), now(), 201, v.headers, decode(v.body, 'hex')
         FROM jsonb_to_recordset($3::jsonb) AS v(key text, headers jsonb, body text)`,
        [SCOPE, fingerprint, JSON.stringify(rows)],
      );
    }
  }
}

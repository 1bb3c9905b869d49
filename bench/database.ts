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

/** Creates the module's table (through its migration) and the baseline's copy of it. */
export async function createSchema(url: string): Promise<void> {
  const dataSource = new DataSource({ type: 'postgres', url, migrations: [CreateIdempotencyKeys1764288000000] });
  await dataSource.initialize();
  try {
    await dataSource.runMigrations();
  } finally {
    await dataSource.destroy();
  }
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    await client.query(`CREATE TABLE ${NAIVE_TABLE} (LIKE idempotency_keys INCLUDING ALL)`);
  } finally {
    await client.end();
  }
}

/**
 * Inserts `count` completed records straight into each table, with the fingerprints the module
 * and the baseline compute for the benchmark request, so replays of `seeded-1` … `seeded-<count>`
 * succeed without any process having seen those keys.
 */
export async function seedCompletedRecords(database: BenchDatabase, count: number): Promise<void> {
  const body = JSON.parse(REQUEST_BODY);
  // %s becomes the record number, so every stored body is a distinct payment.
  const storedBody = JSON.stringify(payment(`pay_seeded_%s`, body));
  const headers = JSON.stringify({ 'content-type': 'application/json; charset=utf-8' });
  const seed = (table: string, fingerprint: string) =>
    database.query(
      `INSERT INTO ${table} (api_key_id, idem_key, fingerprint, fence, lease_expires_at, expires_at, created_at, completed_at,
                             response_status, response_headers, response_body)
       SELECT $1, $2 || g, $3, 1, NULL, now() + interval '1 day', now(), now(), 201, $4::jsonb, convert_to(format($5, g), 'UTF8')
       FROM generate_series(1, $6::int) g`,
      [SCOPE, SEEDED_KEY_PREFIX, fingerprint, headers, storedBody, count],
    );
  await seed('idempotency_keys', moduleFingerprint(ROUTES.idempotent));
  await seed(NAIVE_TABLE, naiveFingerprint('POST', ROUTES.naiveReplay, body));
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

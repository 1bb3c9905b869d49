/**
 * `npm run bench:scale`: the module on a table of 100,000 records and on one of SCALE_RECORDS
 * (10,000,000), in one run: claims and replays, bytes per record, and a purge of the expired half
 * under live traffic. See bench/README.md.
 */
import { randomUUID } from 'node:crypto';
import os from 'node:os';
import pg from 'pg';
import { BEARER_TOKEN, REQUEST_BODY, ROUTES, moduleFingerprint } from './common';
import { createModuleTable, hashedKey, insertSeededRecords, startBenchDatabase, type BenchDatabase } from './database';
import { runLoad, type LoadResult } from './load';
import { formatMb } from './processes';
import { PurgeApp } from './purge-app';
import { measurePurgeUnderLoad, type PurgeUnderLoad } from './purge-load';

const env = (name: string, fallback: number) => Number(process.env[name] ?? fallback);
const RECORDS = env('SCALE_RECORDS', 10_000_000);
const BASE_RECORDS = 100_000;
const DURATION_S = env('SCALE_DURATION', 10);
const WARMUP_S = env('SCALE_WARMUP', 3);
/** Seconds of each scenario before either is measured, at each size. */
const APP_WARMUP_S = env('SCALE_APP_WARMUP', 15);
const CONNECTIONS = env('SCALE_CONNECTIONS', 8);
const LOAD_SHARE = env('SCALE_LOAD_SHARE', 0.5);
const MAX_PURGE_RATIO = 2;
/** RSS after the purge may be this much above RSS after the cells at 100k and still count as flat. */
const RSS_TOLERANCE = 0.1;
/** Rows per seeding statement, so that no transaction grows for minutes. */
const SEED_CHUNK = 1_000_000;
const KEY_PREFIX = 'scale-';
const FINGERPRINT = moduleFingerprint(ROUTES.idempotent);

/** A scenario measured at a table size. */
interface Cell {
  records: number;
  scenario: 'first' | 'replay';
  load: LoadResult;
}

/** What the table and its indexes take. */
interface Sizes {
  records: number;
  table: number;
  indexes: number;
  /** Each index and its size, as PostgreSQL prints them. */
  each: string;
}

const startedAt = Date.now();
const log = (message: string) => console.error(`[scale +${Math.round((Date.now() - startedAt) / 1000)}s] ${message}`);
const count = (n: number) => n.toLocaleString('en-US');
const fmt = (ms: number) => ms.toFixed(2);
const failures = (load: LoadResult) => load.non2xx + load.errors + load.timeouts;

/**
 * Inserts completed records `from` … `to` in statements of SEED_CHUNK rows, on a session of its
 * own with synchronous_commit off. Each answers the benchmark request; their keys are hashed, so
 * that they lie all over the key order, as real keys do and as the fresh ones of the load land.
 */
async function seed(database: BenchDatabase, from: number, to: number, expired: boolean): Promise<void> {
  const client = new pg.Client({ connectionString: database.url });
  await client.connect();
  try {
    await client.query('SET synchronous_commit = off');
    const query = (text: string, values: unknown[]) => client.query(text, values);
    for (let start = from; start <= to; start += SEED_CHUNK) {
      const end = Math.min(to, start + SEED_CHUNK - 1);
      const records = { prefix: KEY_PREFIX, from: start, to: end, hashed: true, fingerprint: FINGERPRINT, expired };
      await insertSeededRecords(query, records);
      log(`seeded ${count(end)} of ${count(to)}`);
    }
  } finally {
    await client.end();
  }
}

/** Vacuums and checkpoints after seeding, so that neither is owed by the measurements that follow. */
async function settle(database: BenchDatabase): Promise<void> {
  await database.query('VACUUM ANALYZE idempotency_keys');
  await database.query('CHECKPOINT');
}

/** Fails unless a replay of the seeded record `n` is answered from its record. */
async function checkReplay(app: PurgeApp, n: number): Promise<void> {
  const response = await fetch(`${app.url}${ROUTES.idempotent}`, {
    method: 'POST',
    headers: {
      'content-type': 'application/json',
      authorization: `Bearer ${BEARER_TOKEN}`,
      'idempotency-key': hashedKey(KEY_PREFIX, n),
    },
    body: REQUEST_BODY,
  });
  if (response.headers.get('idempotency-replayed') !== 'true') {
    const status = response.status;
    throw new Error(`record ${n} was not replayed (status ${status}): the seeded records do not match the request`);
  }
}

/** First requests (fresh keys), then replays (random records `1` … `live`), each after a warm-up of itself. */
async function measure(app: PurgeApp, records: number, live: number): Promise<Cell[]> {
  await checkReplay(app, live);
  const keys = { first: randomUUID, replay: () => hashedKey(KEY_PREFIX, 1 + Math.floor(Math.random() * live)) };
  const scenarios = ['first', 'replay'] as const;
  const run = (scenario: Cell['scenario'], duration: number) =>
    runLoad({ url: app.url, path: ROUTES.idempotent, connections: CONNECTIONS, duration, nextKey: keys[scenario] });
  // The same long warm-up at both sizes: a new process is slow until its code is compiled, and after
  // the CHECKPOINT that ends seeding, the first write to each page also writes the whole page to WAL.
  for (const scenario of scenarios) await run(scenario, APP_WARMUP_S);
  const cells: Cell[] = [];
  for (const scenario of scenarios) {
    await run(scenario, WARMUP_S);
    const load = await run(scenario, DURATION_S);
    cells.push({ records, scenario, load });
    log(`${count(records)} records, ${scenario}: ${Math.round(load.rps)} req/s`);
  }
  return cells;
}

async function sizes(database: BenchDatabase): Promise<Sizes> {
  const { rows } = await database.query(
    `SELECT (SELECT count(*) FROM idempotency_keys) AS records, pg_table_size('idempotency_keys') AS table,
            pg_indexes_size('idempotency_keys') AS indexes,
            (SELECT string_agg(indexrelid::regclass || ' ' || pg_size_pretty(pg_relation_size(indexrelid)), ', ')
             FROM pg_index WHERE indrelid = 'idempotency_keys'::regclass) AS each`,
  );
  const [{ records, table, indexes, each }] = rows;
  return { records: Number(records), table: Number(table), indexes: Number(indexes), each };
}

function row(records: number, scenario: string, load: LoadResult): string {
  const cells = [count(records), scenario, Math.round(load.rps), fmt(load.p50), fmt(load.p99), failures(load)];
  return `| ${cells.join(' | ')} |`;
}

function sizeLine({ records, table, indexes, each }: Sizes): string {
  const perRecord = (bytes: number) => `${Math.round(bytes / records)} B/record`;
  return (
    `${count(records)} records: table (heap and TOAST) ${formatMb(table)} MB, ${perRecord(table)}; ` +
    `indexes ${formatMb(indexes)} MB, ${perRecord(indexes)} (${each}); ${perRecord(table + indexes)} in all`
  );
}

/** What the run measured, as printed. */
interface Run {
  loadBefore: number;
  seedSeconds: number;
  cells: Cell[];
  sizes: Sizes[];
  purge: PurgeUnderLoad;
  rss: number[];
}

function report(run: Run, durable: boolean): string[] {
  const { loadBefore, seedSeconds, cells, sizes: [small, large], purge, rss } = run;
  const rps = (records: number, scenario: Cell['scenario']) =>
    cells.find((cell) => cell.records === records && cell.scenario === scenario)!.load.rps;
  const ratio = (scenario: Cell['scenario']) => (rps(RECORDS, scenario) / rps(BASE_RECORDS, scenario)).toFixed(2);
  return [
    `PostgreSQL: embedded, fsync ${durable ? 'on' : 'off'}; ${CONNECTIONS} connections, ${DURATION_S} s per cell ` +
      `after ${WARMUP_S} s of warm-up; ${count(RECORDS)} records, ${count(RECORDS - RECORDS / 2)} of them expired ` +
      `(seeded in ${seedSeconds} s); load average (1 min) ${loadBefore.toFixed(2)} before, ` +
      `${os.loadavg()[0].toFixed(2)} after, ${os.cpus().length} cores`,
    '',
    '| records | scenario | req/s | p50 ms | p99 ms | failed |',
    '| ---: | --- | ---: | ---: | ---: | ---: |',
    ...cells.map((cell) => row(cell.records, cell.scenario, cell.load)),
    row(RECORDS, `first at ${purge.rate} req/s, no purge`, purge.base),
    row(RECORDS, `first at ${purge.rate} req/s, during the purge`, purge.during),
    '',
    `size at 100k: ${sizeLine(small)}`,
    `size at ${count(RECORDS)}: ${sizeLine(large)}`,
    `purge: ${count(purge.purged)} expired records in ${fmt(purge.purgeMs / 1000)} s ` +
      `(${Math.round(purge.purged / (purge.purgeMs / 1000))}/s); ` +
      `p99 of the live traffic ${fmt(purge.base.p99)} ms without, ${fmt(purge.during.p99)} ms during it`,
    `app RSS: ${rss.map(formatMb).join(' → ')} MB (after the cells at 100k, at ${count(RECORDS)}, after the purge)`,
    `scale: first_10m/first_100k=${ratio('first')} replay_10m/replay_100k=${ratio('replay')} ` +
      `purge_p99_ratio=${purge.ratio.toFixed(2)}`,
  ];
}

function problemsOf({ cells, purge, rss }: Run, expiredLeft: number): string[] {
  const problems: string[] = [];
  const loads = [...cells.map((cell) => cell.load), purge.base, purge.during];
  if (loads.some((load) => failures(load) > 0)) problems.push('requests failed');
  if (purge.purged !== RECORDS / 2 || expiredLeft !== 0) {
    problems.push(`purged ${purge.purged}, ${expiredLeft} expired left`);
  }
  if (!(purge.ratio <= MAX_PURGE_RATIO)) {
    problems.push(`p99 during the purge is ${purge.ratio.toFixed(2)} times p99 without`);
  }
  if (rss[2] > rss[0] * (1 + RSS_TOLERANCE)) {
    problems.push(`RSS grew from ${formatMb(rss[0])} to ${formatMb(rss[2])} MB`);
  }
  return problems;
}

async function main(): Promise<number> {
  if (!Number.isInteger(RECORDS / 2) || RECORDS < 2 * BASE_RECORDS) {
    throw new Error(`SCALE_RECORDS must be an even number of at least ${2 * BASE_RECORDS}`);
  }
  const loadBefore = os.loadavg()[0];
  const database = await startBenchDatabase();
  let app: PurgeApp | undefined;
  try {
    await createModuleTable(database.url);
    await seed(database, 1, BASE_RECORDS, false);
    await settle(database);
    app = await PurgeApp.start(database.url);
    const cells = await measure(app, BASE_RECORDS, BASE_RECORDS);
    const rss = [app.rss()];
    const sized = [await sizes(database)];

    // The first half of the records stays live (and is replayed), the second half has expired.
    const seeding = Date.now();
    await seed(database, BASE_RECORDS + 1, RECORDS / 2, false);
    await seed(database, RECORDS / 2 + 1, RECORDS, true);
    await settle(database);
    const seedSeconds = Math.round((Date.now() - seeding) / 1000);
    cells.push(...(await measure(app, RECORDS, RECORDS / 2)));
    rss.push(app.rss());
    sized.push(await sizes(database));

    const checkpoint = () => database.query('CHECKPOINT');
    const options = { connections: CONNECTIONS, seconds: DURATION_S, loadShare: LOAD_SHARE, settle: checkpoint };
    const purge = await measurePurgeUnderLoad(app, options);
    rss.push(app.rss());
    const expired = await database.query('SELECT count(*)::int AS n FROM idempotency_keys WHERE expires_at <= now()');

    const run: Run = { loadBefore, seedSeconds, cells, sizes: sized, purge, rss };
    console.log(report(run, database.durable).join('\n'));
    const problems = problemsOf(run, expired.rows[0].n);
    for (const problem of problems) console.error(`PROBLEM: ${problem}`);
    return problems.length === 0 ? 0 : 1;
  } finally {
    await app?.stop();
    await database.stop();
  }
}

main().then(
  (code) => process.exit(code),
  (error: unknown) => {
    console.error(error);
    process.exit(2);
  },
);

/**
 * npm run bench:purge — does purging a big backlog of expired records hurt live traffic?
 *
 * 1. A throw-away PostgreSQL (embedded; durable like `npm run bench`, BENCH_FSYNC=off for fsync off),
 *    the module's table, and PURGE_ROWS (1,000,000) expired, completed records inserted straight
 *    into it with one INSERT … SELECT generate_series.
 * 2. An app with one `@Idempotent()` route in its own process (bench/purge-under-load.server.ts).
 * 3. A steady load of first-time requests (fresh key each, autocannon, PURGE_CONNECTIONS = 8
 *    connections, fixed at PURGE_LOAD_SHARE = 50 % of the rate the app reached when saturated):
 *    measured for PURGE_DURATION (15) seconds without purge, then again while
 *    `IdempotencyService.purgeExpired()` deletes the backlog in the same app process.
 *
 * Prints p50/p99 of both phases, the p99 ratio (target ≤ 2) and the purge duration, last as
 *   purge: rows=N purge_ms=… p99_base_ms=… p99_purge_ms=… ratio=…
 * and exits 1 when the purge did not delete every expired row, a request failed, or the ratio is over
 * PURGE_MAX_RATIO (2).
 */
import { createModuleTable, insertSeededRecords, startBenchDatabase, type BenchDatabase } from './database';
import type { LoadResult } from './load';
import { PurgeApp } from './purge-app';
import { measurePurgeUnderLoad } from './purge-load';

const ROWS = Number(process.env.PURGE_ROWS ?? 1_000_000);
const CONNECTIONS = Number(process.env.PURGE_CONNECTIONS ?? 8);
const DURATION_S = Number(process.env.PURGE_DURATION ?? 15);
const LOAD_SHARE = Number(process.env.PURGE_LOAD_SHARE ?? 0.5);
const MAX_RATIO = Number(process.env.PURGE_MAX_RATIO ?? 2);

const fmt = (ms: number) => ms.toFixed(2);
const failures = (phase: LoadResult) => phase.errors + phase.timeouts;
const row = (name: string, phase: LoadResult) => {
  const latencies = [phase.p50, phase.p99, phase.max].map(fmt);
  const counts = [phase.responses, Math.round(phase.rps)];
  return `| ${[name, fmt(phase.seconds), ...counts, ...latencies, phase.non2xx, failures(phase)].join(' | ')} |`;
};

async function main(): Promise<number> {
  let database: BenchDatabase | undefined;
  let app: PurgeApp | undefined;
  try {
    database = await startBenchDatabase();
    await createModuleTable(database.url);
    const startedAt = performance.now();
    const expired = { prefix: 'expired-', to: ROWS, fingerprint: '0'.repeat(64), expired: true };
    await insertSeededRecords(database.query, expired);
    await database.query('VACUUM ANALYZE idempotency_keys');
    await database.query('CHECKPOINT');
    console.error(`purge bench: ${ROWS} expired rows inserted in ${fmt((performance.now() - startedAt) / 1000)} s`);

    app = await PurgeApp.start(database.url);
    const result = await measurePurgeUnderLoad(app, {
      connections: CONNECTIONS,
      seconds: DURATION_S,
      loadShare: LOAD_SHARE,
      settle: () => database!.query('CHECKPOINT'),
    });
    const { base, during, purged, purgeMs, ratio, rate, saturatedRps } = result;
    const [{ left, live }] = (
      await database.query(
        `SELECT count(*) FILTER (WHERE expires_at <= now())::int AS left,
                count(*) FILTER (WHERE expires_at > now())::int AS live
         FROM idempotency_keys`,
      )
    ).rows;

    const lines = [
      '',
      `purge under load: ${ROWS} expired records, ` +
        `PostgreSQL ${database.durable ? 'durable (fsync on)' : 'fsync off'}, ` +
        `${CONNECTIONS} connections at ${rate} req/s ` +
        `(${LOAD_SHARE * 100} % of ${Math.round(saturatedRps)} req/s saturated), first-time requests`,
      '',
      '| phase | seconds | responses | req/s | p50 ms | p99 ms | max ms | non-2xx | errors |',
      '|---|---:|---:|---:|---:|---:|---:|---:|---:|',
      row('no purge', base),
      row('during purge', during),
      '',
      `purgeExpired(): ${purged} rows in ${fmt(purgeMs / 1000)} s (${Math.round(purged / (purgeMs / 1000))} rows/s); ` +
        `expired rows left: ${left}; live records kept: ${live}`,
      `p99 during purge / p99 without: ${ratio.toFixed(2)} (target ≤ ${MAX_RATIO})`,
      `purge: rows=${purged} purge_ms=${Math.round(purgeMs)} p99_base_ms=${fmt(base.p99)} ` +
        `p99_purge_ms=${fmt(during.p99)} ratio=${ratio.toFixed(2)}`,
    ];
    console.log(lines.join('\n'));
    const problems: string[] = [];
    if (purged !== ROWS || left !== 0) problems.push(`purged ${purged} of ${ROWS} rows, ${left} expired rows left`);
    if ([base, during].some((phase) => phase.non2xx + failures(phase) > 0)) problems.push('requests failed');
    if (!(ratio <= MAX_RATIO)) problems.push(`p99 ratio ${ratio.toFixed(2)} over ${MAX_RATIO}`);
    for (const problem of problems) console.error(`PROBLEM: ${problem}`);
    return problems.length === 0 ? 0 : 1;
  } finally {
    await app?.stop();
    await database?.stop().catch(() => undefined);
  }
}

main().then(
  (code) => process.exit(code),
  (error: unknown) => {
    console.error(error);
    process.exit(2);
  },
);

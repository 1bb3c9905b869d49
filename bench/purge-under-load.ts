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
import autocannon from 'autocannon';
import { fork, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { DataSource } from 'typeorm';
import { startEmbeddedDatabase, type EmbeddedDatabase } from '../sample/embedded-database';
import { CreateIdempotencyKeys1764288000000 } from '../src';

const ROWS = Number(process.env.PURGE_ROWS ?? 1_000_000);
const CONNECTIONS = Number(process.env.PURGE_CONNECTIONS ?? 8);
const DURATION_S = Number(process.env.PURGE_DURATION ?? 15);
const LOAD_SHARE = Number(process.env.PURGE_LOAD_SHARE ?? 0.5);
const MAX_RATIO = Number(process.env.PURGE_MAX_RATIO ?? 2);
const TOKEN = 'sk_purge_bench_7d1e';
const BODY = JSON.stringify({ amount: 1999, currency: 'usd', description: 'purge benchmark payment' });

interface Phase {
  name: string;
  responses: number;
  rps: number;
  p50: number;
  p99: number;
  max: number;
  non2xx: number;
  errors: number;
}

/** Runs first-time requests at `rate` req/s (0: as fast as the connections go) until `until` resolves or `seconds` pass. */
async function load(url: string, name: string, options: { rate?: number; seconds: number; until?: Promise<unknown> }): Promise<Phase> {
  const latencies: number[] = [];
  let non2xx = 0;
  const startedAt = performance.now();
  let settle!: (error: Error | null, result: autocannon.Result) => void;
  const done = new Promise<autocannon.Result>((resolve, reject) => (settle = (error, result) => (error ? reject(error) : resolve(result))));
  const instance = autocannon(
    {
      url,
      connections: CONNECTIONS,
      pipelining: 1,
      timeout: 10,
      duration: options.seconds,
      ...(options.rate ? { overallRate: options.rate } : {}),
      requests: [
        {
          method: 'POST',
          path: '/payments',
          headers: { 'content-type': 'application/json', authorization: `Bearer ${TOKEN}` },
          body: BODY,
          setupRequest: (request: any) => {
            request.headers['idempotency-key'] = randomUUID();
            return request;
          },
        },
      ],
    },
    (error, result) => settle(error, result),
  );
  instance.on('response', (_client: unknown, statusCode: number, _bytes: number, responseTime: number) => {
    latencies.push(responseTime);
    if (statusCode < 200 || statusCode > 299) non2xx++;
  });
  void options.until?.then(() => (instance as unknown as { stop(): void }).stop());
  const result = await done;
  const seconds = (performance.now() - startedAt) / 1000;
  latencies.sort((a, b) => a - b);
  const at = (p: number) => (latencies.length === 0 ? NaN : latencies[Math.min(latencies.length - 1, Math.floor(p * latencies.length))]);
  return {
    name,
    responses: latencies.length,
    rps: latencies.length / seconds,
    p50: at(0.5),
    p99: at(0.99),
    max: latencies[latencies.length - 1] ?? NaN,
    non2xx,
    errors: result.errors + result.timeouts,
  };
}

async function startServer(databaseUrl: string): Promise<{ child: ChildProcess; url: string }> {
  const child = fork(path.join(__dirname, 'purge-under-load.server.js'), [], {
    env: { ...process.env, DATABASE_URL: databaseUrl, NODE_ENV: 'production' },
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  const port = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('the app did not start within 60 s')), 60_000);
    child.once('exit', (code) => reject(new Error(`the app exited with code ${code} during startup`)));
    child.once('message', (message: { type: string; port: number }) => {
      clearTimeout(timer);
      resolve(message.port);
    });
  });
  child.removeAllListeners('exit');
  return { child, url: `http://127.0.0.1:${port}` };
}

function purge(child: ChildProcess): Promise<{ count: number; ms: number }> {
  return new Promise((resolve, reject) => {
    child.once('message', (message: { type: string; count: number; ms: number; error?: string }) =>
      message.type === 'purged' ? resolve(message) : reject(new Error(message.error)),
    );
    child.send({ type: 'purge' });
  });
}

const fmt = (ms: number) => ms.toFixed(2);

async function main(): Promise<number> {
  const durable = process.env.BENCH_FSYNC !== 'off';
  const dataDir = await mkdtemp(path.join(os.tmpdir(), 'purge-bench-postgres-'));
  let database: EmbeddedDatabase | undefined;
  let client: pg.Client | undefined;
  let server: { child: ChildProcess; url: string } | undefined;
  try {
    database = await startEmbeddedDatabase({ dataDir, persistent: durable });
    const schema = new DataSource({ type: 'postgres', url: database.url, migrations: [CreateIdempotencyKeys1764288000000] });
    await schema.initialize();
    await schema.runMigrations();
    await schema.destroy();
    client = new pg.Client({ connectionString: database.url });
    await client.connect();

    let startedAt = performance.now();
    await client.query(
      `INSERT INTO idempotency_keys (api_key_id, idem_key, fingerprint, fence, lease_expires_at, expires_at, created_at, completed_at,
                                     response_status, response_headers, response_body)
       SELECT 'purge-bench-expired', 'expired-' || g, repeat('0', 64), 1, NULL,
              now() - interval '1 hour' - g * interval '1 millisecond', now() - interval '25 hours', now() - interval '25 hours',
              201, '{"content-type":"application/json; charset=utf-8"}'::jsonb,
              convert_to('{"id":"pay_' || g || '","object":"payment","amount":1999,"currency":"usd","status":"succeeded"}', 'UTF8')
       FROM generate_series(1, $1::int) g`,
      [ROWS],
    );
    await client.query('VACUUM ANALYZE idempotency_keys');
    await client.query('CHECKPOINT');
    console.error(`purge bench: ${ROWS} expired rows inserted in ${fmt((performance.now() - startedAt) / 1000)} s`);

    server = await startServer(database.url);
    await load(server.url, 'warm-up', { seconds: 3 });
    const saturated = await load(server.url, 'saturated', { seconds: 5 });
    const rate = Math.max(50, Math.round(saturated.rps * LOAD_SHARE));
    console.error(`purge bench: saturated at ${Math.round(saturated.rps)} req/s; steady load at ${rate} req/s on ${CONNECTIONS} connections`);
    await client.query('CHECKPOINT');

    const base = await load(server.url, 'no purge', { rate, seconds: DURATION_S });
    await client.query('CHECKPOINT');
    startedAt = performance.now();
    const purged = purge(server.child);
    // The load runs while the purge does; it stops when the purge is over (or after 10 min).
    const during = await load(server.url, 'during purge', { rate, seconds: 600, until: purged });
    const { count, ms } = await purged;
    const [{ left }] = (await client.query(`SELECT count(*)::int AS left FROM idempotency_keys WHERE expires_at <= now()`)).rows;
    const [{ live }] = (await client.query(`SELECT count(*)::int AS live FROM idempotency_keys WHERE expires_at > now()`)).rows;

    const ratio = during.p99 / base.p99;
    const lines = [
      '',
      `purge under load: ${ROWS} expired records, PostgreSQL ${durable ? 'durable (fsync on)' : 'fsync off'}, ${CONNECTIONS} connections at ${rate} req/s (${LOAD_SHARE * 100} % of ${Math.round(saturated.rps)} req/s saturated), first-time requests`,
      '',
      '| phase | seconds | responses | req/s | p50 ms | p99 ms | max ms | non-2xx | errors |',
      '|---|---:|---:|---:|---:|---:|---:|---:|---:|',
      ...[base, during].map(
        (phase) =>
          `| ${phase.name} | ${fmt(phase.responses / phase.rps)} | ${phase.responses} | ${Math.round(phase.rps)} | ${fmt(phase.p50)} | ${fmt(phase.p99)} | ${fmt(phase.max)} | ${phase.non2xx} | ${phase.errors} |`,
      ),
      '',
      `purgeExpired(): ${count} rows in ${fmt(ms / 1000)} s (${Math.round(count / (ms / 1000))} rows/s); expired rows left: ${left}; live records kept: ${live}`,
      `p99 during purge / p99 without: ${ratio.toFixed(2)} (target ≤ ${MAX_RATIO})`,
      `purge: rows=${count} purge_ms=${Math.round(ms)} p99_base_ms=${fmt(base.p99)} p99_purge_ms=${fmt(during.p99)} ratio=${ratio.toFixed(2)}`,
    ];
    console.log(lines.join('\n'));
    const problems: string[] = [];
    if (count !== ROWS || left !== 0) problems.push(`purged ${count} of ${ROWS} rows, ${left} expired rows left`);
    if (base.non2xx + base.errors + during.non2xx + during.errors > 0) problems.push('requests failed');
    if (!(ratio <= MAX_RATIO)) problems.push(`p99 ratio ${ratio.toFixed(2)} over ${MAX_RATIO}`);
    for (const problem of problems) console.error(`PROBLEM: ${problem}`);
    return problems.length === 0 ? 0 : 1;
  } finally {
    if (server) {
      const exited = new Promise((resolve) => server!.child.once('exit', resolve));
      server.child.disconnect();
      const timer = setTimeout(() => server!.child.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(timer);
    }
    await client?.end().catch(() => undefined);
    await database?.stop().catch(() => undefined);
    await rm(dataDir, { recursive: true, force: true });
  }
}

main().then(
  (code) => process.exit(code),
  (error: unknown) => {
    console.error(error);
    process.exit(2);
  },
);

/**
 * `npm run bench`: the module against the bare handler and a hand-written SQL baseline, on
 * Express and Fastify, in one run. See bench/README.md.
 */
import { randomBytes } from 'node:crypto';
import { ROUTES, SEEDED_KEY_PREFIX, SEEDED_RECORDS, type Platform } from './common';
import { createSchema, seedCompletedRecords, startBenchDatabase, type BenchDatabase } from './database';
import { runLoad, type LoadResult } from './load';
import { ServerProcess, formatMb, postgresCpuMs } from './processes';

type AppKind = 'plain' | 'module';
type ScenarioName = 'bare' | 'untouched' | 'naive' | 'first' | 'naive-replay' | 'replay';

interface Scenario {
  name: ScenarioName;
  app: AppKind;
  path: string;
  keys: 'fresh' | 'seeded';
  /** The handler's counter, to check it ran once per response (fresh keys) or never (replays). */
  handler: string;
}

const SCENARIOS: Scenario[] = [
  { name: 'bare', app: 'plain', path: ROUTES.plain, keys: 'fresh', handler: 'plain' },
  { name: 'untouched', app: 'module', path: ROUTES.plain, keys: 'fresh', handler: 'plain' },
  { name: 'naive', app: 'plain', path: ROUTES.naive, keys: 'fresh', handler: 'naive' },
  { name: 'first', app: 'module', path: ROUTES.idempotent, keys: 'fresh', handler: 'payments' },
  { name: 'naive-replay', app: 'plain', path: ROUTES.naiveReplay, keys: 'seeded', handler: 'naive' },
  { name: 'replay', app: 'module', path: ROUTES.idempotent, keys: 'seeded', handler: 'payments' },
];

/** The ratios of the last line: module scenario over its baseline. */
const RATIOS: [string, ScenarioName, ScenarioName, number][] = [
  ['first/naive', 'first', 'naive', 1.0],
  ['replay/naive', 'replay', 'naive-replay', 1.0],
  ['untouched/bare', 'untouched', 'bare', 0.98],
];

const env = (name: string, fallback: string) => process.env[name] ?? fallback;
const DURATION = Number(env('BENCH_DURATION', '10'));
const WARMUP = Number(env('BENCH_WARMUP', '3'));
const CONNECTIONS = env('BENCH_CONNECTIONS', '1,8,32').split(',').map(Number);
const PLATFORMS = env('BENCH_PLATFORMS', 'express,fastify').split(',') as Platform[];
const ROUNDS = Number(env('BENCH_ROUNDS', '3'));
const RATIO_CONNECTIONS = 8;

interface Cell {
  platform: Platform;
  scenario: Scenario;
  connections: number;
  round: number;
  load: LoadResult;
  rss: number;
  appCpuPerRequest: number;
  pgCpuPerRequest: number;
  handlerCalls: number;
  problems: string[];
}

const runId = randomBytes(4).toString('hex');
let keyCounter = 0;
const freshKey = () => `bench-${runId}-${++keyCounter}`;
const seededKey = () => `${SEEDED_KEY_PREFIX}${1 + Math.floor(Math.random() * SEEDED_RECORDS)}`;

async function measure(
  database: BenchDatabase,
  apps: Record<AppKind, ServerProcess>,
  platform: Platform,
  scenario: Scenario,
  connections: number,
  round: number,
): Promise<Cell> {
  const app = apps[scenario.app];
  const nextKey = scenario.keys === 'fresh' ? freshKey : seededKey;
  // Start every cell from the same place: no checkpoint owed from the previous cell.
  await database.query('CHECKPOINT');
  if (WARMUP > 0) await runLoad({ url: app.url, path: scenario.path, connections, duration: WARMUP, nextKey });
  const before = await app.stats();
  const appCpu = app.cpuMs();
  const pgCpu = postgresCpuMs(database.dataDir);
  const load = await runLoad({ url: app.url, path: scenario.path, connections, duration: DURATION, nextKey });
  const appCpuPerRequest = ((app.cpuMs() - appCpu) * 1000) / load.responses;
  const pgCpuPerRequest = ((postgresCpuMs(database.dataDir) - pgCpu) * 1000) / load.responses;
  // Let requests cut off at the end of the run finish before counting handler calls.
  await new Promise((resolve) => setTimeout(resolve, 200));
  const after = await app.stats();
  const handlerCalls = (after.calls[scenario.handler] ?? 0) - (before.calls[scenario.handler] ?? 0);

  const problems: string[] = [];
  if (load.non2xx > 0) problems.push(`${load.non2xx} non-2xx responses ${JSON.stringify(load.statusCodes)}`);
  if (load.errors > 0) problems.push(`${load.errors} connection errors`);
  if (load.timeouts > 0) problems.push(`${load.timeouts} timeouts`);
  if (scenario.keys === 'seeded' && handlerCalls !== 0) problems.push(`handler ran ${handlerCalls} times on replays`);
  // Requests cut off at the end of the run may have run the handler without their response being counted.
  if (scenario.keys === 'fresh' && (handlerCalls < load.responses || handlerCalls > load.responses + connections)) {
    problems.push(`handler ran ${handlerCalls} times for ${load.responses} responses`);
  }
  return {
    platform,
    scenario,
    connections,
    round,
    load,
    rss: app.rss(),
    appCpuPerRequest,
    pgCpuPerRequest,
    handlerCalls,
    problems,
  };
}

function row(cell: Cell): string {
  const { load } = cell;
  return `| ${cell.platform} | ${cell.scenario.name} | ${cell.connections} | ${Math.round(load.rps)} | ${load.p50.toFixed(2)} | ${load.p99.toFixed(2)} | ${formatMb(cell.rss)} | ${load.non2xx} | ${Math.round(cell.appCpuPerRequest)} | ${Math.round(cell.pgCpuPerRequest)} |`;
}

const HEADER = [
  '| platform | scenario | connections | req/s | p50 ms | p99 ms | server RSS MB | non-2xx | app CPU µs/req | pg CPU µs/req |',
  '| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
];

const median = (values: number[]) => {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
};

async function main(): Promise<void> {
  const startedAt = Date.now();
  const log = (message: string) => console.error(`[bench +${((Date.now() - startedAt) / 1000).toFixed(0)}s] ${message}`);
  const database = await startBenchDatabase();
  const cells: Cell[] = [];
  let apps: Record<AppKind, ServerProcess> | undefined;
  try {
    const version = (await database.query('SHOW server_version')).rows[0].server_version;
    const settings = (await database.query(`SELECT name, setting FROM pg_settings WHERE name IN ('fsync', 'synchronous_commit', 'shared_buffers', 'max_connections')`)).rows;
    log(`PostgreSQL ${version} (${settings.map((s) => `${s.name}=${s.setting}`).join(', ')}), data dir ${database.dataDir}`);
    await createSchema(database.url);
    await seedCompletedRecords(database, SEEDED_RECORDS);
    log(`seeded ${SEEDED_RECORDS} completed records into each table`);

    for (const platform of PLATFORMS) {
      apps = {
        plain: await ServerProcess.start({ platform, withModule: false, databaseUrl: database.url }),
        module: await ServerProcess.start({ platform, withModule: true, databaseUrl: database.url }),
      };
      for (let round = 1; round <= ROUNDS; round++) {
        // Round 1 covers every connection count; later rounds repeat the cells of the ratios.
        const connectionCounts = round === 1 ? CONNECTIONS : [RATIO_CONNECTIONS];
        for (const connections of connectionCounts) {
          for (const scenario of SCENARIOS) {
            const cell = await measure(database, apps, platform, scenario, connections, round);
            cells.push(cell);
            log(`round ${round} ${row(cell)}${cell.problems.length ? ` PROBLEMS: ${cell.problems.join('; ')}` : ''}`);
          }
        }
      }
      await apps.plain.stop();
      await apps.module.stop();
      apps = undefined;
    }
  } finally {
    if (apps) await Promise.all([apps.plain.stop(), apps.module.stop()]);
    await database.stop();
  }

  const out: string[] = [];
  out.push(
    `PostgreSQL: embedded, ${database.durable ? 'persistent: true (fsync on, synchronous_commit on)' : 'persistent: false (fsync off)'}; ` +
      `${DURATION} s per cell after ${WARMUP} s warm-up; pools of 10 (module DataSource and baseline pg Pool); ${SEEDED_RECORDS} seeded records per table.`,
  );
  out.push('');
  out.push(...HEADER);
  for (const cell of cells.filter((c) => c.round === 1)) out.push(row(cell));
  out.push('');

  let verdict = true;
  const lastLines: Record<string, string> = {};
  for (const platform of PLATFORMS) {
    const rounds = [...new Set(cells.filter((c) => c.platform === platform && c.connections === RATIO_CONNECTIONS).map((c) => c.round))];
    const parts: string[] = [];
    for (const [label, numerator, denominator, target] of RATIOS) {
      const ratios = rounds.map((round) => {
        const find = (name: ScenarioName) =>
          cells.find((c) => c.platform === platform && c.round === round && c.connections === RATIO_CONNECTIONS && c.scenario.name === name)!;
        return find(numerator).load.rps / find(denominator).load.rps;
      });
      const value = median(ratios);
      const met = value >= target;
      verdict &&= met;
      out.push(
        `${platform}, ${RATIO_CONNECTIONS} connections, median of ${ratios.length} rounds: ${label}=${value.toFixed(3)} ` +
          `(rounds ${ratios.map((r) => r.toFixed(3)).join(', ')}; target ≥ ${target.toFixed(2)}: ${met ? 'met' : 'NOT met'})`,
      );
      parts.push(`${label}=${value.toFixed(3)}`);
    }
    lastLines[platform] = `bench: ${parts.join(' ')}`;
  }
  const problems = cells.filter((c) => c.problems.length > 0);
  out.push('');
  if (problems.length === 0) out.push('checks: every response 2xx, no errors or timeouts; handler ran once per fresh key and never on replays.');
  for (const cell of problems) out.push(`PROBLEM ${cell.platform} ${cell.scenario.name} c=${cell.connections} round ${cell.round}: ${cell.problems.join('; ')}`);
  out.push(`targets: ${verdict ? 'all met' : 'NOT all met'}; took ${((Date.now() - startedAt) / 1000).toFixed(0)} s`);
  for (const platform of PLATFORMS) if (platform !== 'express') out.push(`(${platform}) ${lastLines[platform]}`);
  out.push(lastLines.express ?? lastLines[PLATFORMS[0]]);
  console.log(out.join('\n'));
  if (problems.length > 0) process.exitCode = 1;
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});

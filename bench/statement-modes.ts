/**
 * npm run bench:statements — what `preparedStatements: false` costs on a direct connection.
 *
 * A throw-away PostgreSQL (embedded; durable like `npm run bench`, BENCH_FSYNC=off for fsync off)
 * and two stores on DataSources of their own (pools of 10): one sending named statements (planned
 * once per connection), one sending unnamed ones (parsed and planned on every execution). For
 * each scenario both run in alternating slices of STATEMENTS_SLICE_MS (1500) ms, STATEMENTS_SLICES
 * (6) times each, so machine noise hits both alike:
 * - `first`: a fresh key claimed, then its response stored (INSERT, COMPLETE);
 * - `replay`: a recorded key claimed (LOOK, since nearly every key comes back recorded);
 * each one request at a time (the latency of its statements) and 16 at a time (throughput, where
 * the statements of one turn go out as one batch).
 *
 * Prints per scenario and mode the operations per second, the median latency of one operation and
 * the CPU time one operation cost this process (the store and pg) and PostgreSQL (its postmaster
 * and backends): on a machine shared with other work, CPU time per operation moves far less than
 * throughput. Last, the unnamed/named ratios of throughput and of CPU time per operation:
 *   statements: first_1=…/… first_16=…/… replay_1=…/… replay_16=…/…   (unnamed/named: op/s, cpu/op)
 */
import { randomUUID } from 'node:crypto';
import { DataSource } from 'typeorm';
import type { ClaimRequest } from '../src/store/idempotency.store';
import { PostgresIdempotencyStore } from '../src/store/postgres-idempotency.store';
import { createSchema, startBenchDatabase } from './database';
import { ownCpuMs, postgresCpuMs } from './processes';

const SLICE_MS = Number(process.env.STATEMENTS_SLICE_MS ?? 1500);
const SLICES = Number(process.env.STATEMENTS_SLICES ?? 6);
const RECORDED_KEYS = 2000;
const FINGERPRINT = 'f'.repeat(64);
const BODY = Buffer.from(JSON.stringify({ id: 'pay_123', amount: 1999, currency: 'usd', status: 'succeeded' }));

type Mode = 'named' | 'unnamed';
type Scenario = 'first' | 'replay';

interface Tally {
  operations: number;
  ms: number;
  latencies: number[];
  nodeCpuMs: number;
  postgresCpuMs: number;
}

const claimRequest = (scope: string, key: string): ClaimRequest =>
  ({ scope, key, fingerprint: FINGERPRINT, lease: 30_000, ttl: 3_600_000 });

async function main(): Promise<void> {
  const database = await startBenchDatabase();
  const dataSources: DataSource[] = [];
  try {
    await createSchema(database.url);
    const stores = {} as Record<Mode, { store: PostgresIdempotencyStore; recorded: ClaimRequest[] }>;
    for (const mode of ['named', 'unnamed'] as const) {
      const dataSource = await new DataSource({ type: 'postgres', url: database.url, extra: { max: 10 } }).initialize();
      dataSources.push(dataSource);
      const store = new PostgresIdempotencyStore(dataSource, { preparedStatements: mode === 'named' });
      const recorded = Array.from({ length: RECORDED_KEYS }, () => claimRequest(`scope-${mode}`, randomUUID()));
      for (const request of recorded) await runOne(store, 'first', request);
      stores[mode] = { store, recorded };
    }
    const ratios: string[] = [];
    for (const scenario of ['first', 'replay'] as const) {
      for (const concurrency of [1, 16]) {
        const tallies: Record<Mode, Tally> = { named: newTally(), unnamed: newTally() };
        for (let slice = 0; slice < SLICES; slice++) {
          // Alternating which mode goes first, so neither always runs right after the other.
          const order: Mode[] = slice % 2 === 0 ? ['named', 'unnamed'] : ['unnamed', 'named'];
          for (const mode of order) {
            const { store, recorded } = stores[mode];
            const fresh = () => claimRequest(`scope-${mode}`, randomUUID());
            const next = scenario === 'first' ? fresh : () => recorded[Math.floor(Math.random() * recorded.length)];
            const tally = tallies[mode];
            const [postgresBefore, nodeBefore] = [postgresCpuMs(database.dataDir), ownCpuMs()];
            await runSlice(tally, concurrency, () => runOne(store, scenario, next()));
            tally.nodeCpuMs += ownCpuMs() - nodeBefore;
            tally.postgresCpuMs += postgresCpuMs(database.dataDir) - postgresBefore;
          }
        }
        const rate = (tally: Tally) => (tally.operations * 1000) / tally.ms;
        const cpuMicros = (tally: Tally) => ((tally.nodeCpuMs + tally.postgresCpuMs) * 1000) / tally.operations;
        for (const mode of ['named', 'unnamed'] as const) {
          const tally = tallies[mode];
          const perOperation = (ms: number) => ((ms * 1000) / tally.operations).toFixed(0);
          console.log(
            `${scenario} concurrency=${concurrency} ${mode}: ${rate(tally).toFixed(0)} op/s, ` +
              `p50 ${median(tally.latencies).toFixed(3)} ms, CPU per operation ` +
              `${perOperation(tally.nodeCpuMs)} µs node + ${perOperation(tally.postgresCpuMs)} µs PostgreSQL, ` +
              `${tally.operations} operations`,
          );
        }
        const throughput = (rate(tallies.unnamed) / rate(tallies.named)).toFixed(2);
        const cpu = (cpuMicros(tallies.unnamed) / cpuMicros(tallies.named)).toFixed(2);
        ratios.push(`${scenario}_${concurrency}=${throughput}/${cpu}`);
      }
    }
    console.log(`statements: ${ratios.join(' ')}   (unnamed/named: op/s, cpu/op)`);
  } finally {
    for (const dataSource of dataSources) await dataSource.destroy();
    await database.stop();
  }
}

/** One request's store work: a claim, and for a fresh key the stored response. */
async function runOne(store: PostgresIdempotencyStore, scenario: Scenario, request: ClaimRequest): Promise<void> {
  const outcome = await store.claim(request);
  if (scenario === 'first') {
    if (outcome.kind !== 'claimed') throw new Error(`a fresh key was not claimed: ${outcome.kind}`);
    await store.complete(outcome.owner, { status: 201, headers: { 'content-type': 'application/json' }, body: BODY });
  } else if (outcome.kind !== 'completed') {
    throw new Error(`a recorded key was not replayed: ${outcome.kind}`);
  }
}

/** `concurrency` loops of `operation` for one slice, counted into `tally`. */
async function runSlice(tally: Tally, concurrency: number, operation: () => Promise<void>): Promise<void> {
  const started = performance.now();
  const end = started + SLICE_MS;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (performance.now() < end) {
        const before = performance.now();
        await operation();
        tally.latencies.push(performance.now() - before);
        tally.operations++;
      }
    }),
  );
  tally.ms += performance.now() - started;
}

function newTally(): Tally {
  return { operations: 0, ms: 0, latencies: [], nodeCpuMs: 0, postgresCpuMs: 0 };
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)] ?? NaN;
}

main().then(
  () => process.exit(0),
  (error: unknown) => {
    console.error(error);
    process.exit(1);
  },
);

import { randomUUID } from 'node:crypto';
import { runLoad, type LoadResult } from './load';
import type { PurgeApp } from './purge-app';

/** How live traffic fared with and without a purge running in the same app. */
export interface PurgeUnderLoad {
  /** req/s of first-time requests as fast as the connections go, before the phases. */
  saturatedRps: number;
  /** The steady rate of both phases. */
  rate: number;
  base: LoadResult;
  during: LoadResult;
  /** Records the purge deleted, and how long it took. */
  purged: number;
  purgeMs: number;
  /** p99 during the purge over p99 without it. */
  ratio: number;
}

export interface PurgeLoadOptions {
  connections: number;
  /** Seconds of the phase without purge. */
  seconds: number;
  /** Share of the saturated rate both phases run at. */
  loadShare: number;
  /** Brings the database to the same state before each phase (a CHECKPOINT). */
  settle: () => Promise<unknown>;
}

const WARMUP_S = 3;
const SATURATION_S = 5;
/** The phase during the purge ends with it, or after this long. */
const LONGEST_PURGE_S = 3600;

/**
 * Measures steady first-time traffic (a fresh key each) on `app` for `seconds` without a purge, then
 * at the same rate while the app purges every expired record, until the purge is over. The rate is
 * `loadShare` of what the app reaches when saturated, so that latency measures the purge, not a queue.
 */
export async function measurePurgeUnderLoad(app: PurgeApp, options: PurgeLoadOptions): Promise<PurgeUnderLoad> {
  const load = (extra: { duration: number; rate?: number; until?: Promise<unknown> }) =>
    runLoad({ url: app.url, path: '/payments', connections: options.connections, nextKey: randomUUID, ...extra });
  await load({ duration: WARMUP_S });
  const saturatedRps = (await load({ duration: SATURATION_S })).rps;
  const rate = Math.max(50, Math.round(saturatedRps * options.loadShare));
  await options.settle();
  const base = await load({ duration: options.seconds, rate });
  await options.settle();
  const purge = app.purge();
  const during = await load({ duration: LONGEST_PURGE_S, rate, until: purge });
  const { count, ms } = await purge;
  return { saturatedRps, rate, base, during, purged: count, purgeMs: ms, ratio: during.p99 / base.p99 };
}

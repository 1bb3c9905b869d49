import { createHash } from 'node:crypto';
import { fingerprintRequest } from '../src/fingerprint';

/** What every scenario sends: the same method, headers and body; only the route and the key differ. */
export const BEARER_TOKEN = 'sk_bench_4f6c2b9e';
export const SCOPE = createHash('sha256').update(BEARER_TOKEN).digest('hex');
export const REQUEST_BODY = JSON.stringify({ amount: 1999, currency: 'usd', description: 'benchmark payment', customer: 'cus_bench' });

export const ROUTES = {
  /** The handler with `@Idempotent()`: `first` and `replay` in the app with the module. */
  idempotent: '/payments',
  /** The same handler with `@Idempotent({ transactional: true })` (`first-tx`, BENCH_EXTRA=1). */
  transactional: '/payments/transactional',
  /** The same handler without `@Idempotent()`: `bare` (app without the module) and `untouched` (app with it). */
  plain: '/plain/payments',
  /** The same handler wrapped in hand-written SQL (BENCH_NAIVE=raw: `/naive-raw/…`, answering past Nest's reply path). */
  naive: process.env.BENCH_NAIVE === 'raw' ? '/naive-raw/payments' : '/naive/payments',
  /** One SELECT by key, answering the stored response. */
  naiveReplay: process.env.BENCH_NAIVE === 'raw' ? '/naive-raw/replay' : '/naive/replay',
  /** The same handler padded to `SIZED_RESPONSE_BYTES`: the encryption pairs, in the module's app with and without `encryption`. */
  sized: '/payments/sized',
  /** The same handler, padded to `BIG_RESPONSE_BYTES`, with and without `@Idempotent()` (memory bench). */
  bigIdempotent: '/big/payments',
  bigPlain: '/big/plain',
} as const;

/** Size of the large response of the memory bench. */
export const BIG_RESPONSE_BYTES = 5 * 1024 * 1024;

/** Size of the answers of the encryption pairs (BENCH_SEALED_BYTES): the goal holds up to 4 KiB. */
export const SIZED_RESPONSE_BYTES = Number(process.env.BENCH_SEALED_BYTES ?? 4096);

/** The ring of the app with `encryption`, also used to seal its seeded records. */
export const BENCH_RECORD_KEY = { id: 'bench', secret: Buffer.alloc(32, 7) };

/** Completed records of `ROUTES.sized` seeded for each app of the encryption pairs, in clear and sealed. */
export const SEEDED_SIZED_RECORDS = 20_000;
export const SEEDED_SIZED_PREFIX = { clear: 'sized-', sealed: 'sealed-' } as const;

/** Completed records seeded straight into each table before the run. */
export const SEEDED_RECORDS = 100_000;
export const SEEDED_KEY_PREFIX = 'seeded-';

/** The response the handler gives, also stored in the seeded records. */
export function payment(id: string, body: { amount?: unknown; currency?: unknown }) {
  return { id, object: 'payment', amount: body.amount, currency: body.currency, status: 'succeeded' };
}

/** The answer of `ROUTES.sized`: a payment padded so that its JSON is `SIZED_RESPONSE_BYTES` long. */
export function sizedPayment(id: string, body: { amount?: unknown; currency?: unknown }) {
  const unpadded = JSON.stringify({ ...payment(id, body), padding: '' }).length;
  return { ...payment(id, body), padding: 'x'.repeat(Math.max(0, SIZED_RESPONSE_BYTES - unpadded)) };
}

/** The fingerprint the module computes for a benchmark request to `path` (JSON body, parsed). */
export function moduleFingerprint(path: string): string {
  return fingerprintRequest({
    method: 'POST',
    url: path,
    hasBody: true,
    body: JSON.parse(REQUEST_BODY),
  });
}

/** The fingerprint the hand-written baseline computes (method, URL and body as sent). */
export function naiveFingerprint(method: string, url: string, body: unknown): string {
  return createHash('sha256').update(`${method} ${url} ${JSON.stringify(body)}`).digest('hex');
}

/** DDL of the baseline's table: the module's table, copied. */
export const NAIVE_TABLE = 'naive_idempotency_keys';

export type Platform = 'express' | 'fastify';

/** Messages between the orchestrator and a server process. */
export type ServerRequest = { type: 'stats' } | { type: 'gc' } | { type: 'sample-start' } | { type: 'sample-stop' };
export interface ServerStats {
  type: 'stats';
  /** Handler executions per route name since start. */
  calls: Record<string, number>;
  memory: NodeJS.MemoryUsage;
  /** After `sample-stop`: the largest values seen since `sample-start`, sampled every millisecond. */
  peak?: NodeJS.MemoryUsage;
}

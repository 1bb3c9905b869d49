import autocannon from 'autocannon';
import { BEARER_TOKEN, REQUEST_BODY } from './common';

export interface LoadOptions {
  url: string;
  path: string;
  connections: number;
  /** Seconds; ignored when `amount` is given. */
  duration?: number;
  /** Total number of requests instead of a duration. */
  amount?: number;
  /** The Idempotency-Key of each request. */
  nextKey: () => string;
  /** Requests per second over all connections; as fast as they go when absent. */
  rate?: number;
  /** Stops the run early once it settles. */
  until?: Promise<unknown>;
}

export interface LoadResult {
  /** Responses received in the run. */
  responses: number;
  /** Responses per second over the run. */
  rps: number;
  /** Latency percentiles of all responses, in ms (sub-millisecond precision). */
  p50: number;
  p99: number;
  max: number;
  /** Responses whose status was not 2xx. */
  non2xx: number;
  statusCodes: Record<string, number>;
  errors: number;
  timeouts: number;
  seconds: number;
  /** Every response's latency in ms. */
  latencies: Float64Array;
}

/** What runs add up to: everything but the figures derived from it. */
type LoadCounts = Pick<LoadResult, 'latencies' | 'seconds' | 'statusCodes' | 'non2xx' | 'errors' | 'timeouts'>;

/**
 * Sends the benchmark request (POST, JSON body, Bearer token, a key from `nextKey`) with
 * autocannon and records every response's status and latency itself (autocannon's histogram
 * only has whole milliseconds and only for 2xx).
 */
export async function runLoad(options: LoadOptions): Promise<LoadResult> {
  let latencies = new Float64Array(1 << 16);
  let count = 0;
  const statusCodes: Record<string, number> = {};
  let non2xx = 0;
  const started = process.hrtime.bigint();
  let settle!: (error: Error | null, result: autocannon.Result) => void;
  const done = new Promise<autocannon.Result>((resolve, reject) => {
    settle = (error, result) => (error ? reject(error) : resolve(result));
  });
  const instance = autocannon({
    url: options.url,
    connections: options.connections,
    pipelining: 1,
    timeout: 10,
    ...(options.amount !== undefined ? { amount: options.amount } : { duration: options.duration ?? 10 }),
    ...(options.rate ? { overallRate: options.rate } : {}),
    requests: [
      {
        method: 'POST',
        path: options.path,
        headers: { 'content-type': 'application/json', authorization: `Bearer ${BEARER_TOKEN}` },
        body: REQUEST_BODY,
        setupRequest: (request: any) => {
          request.headers['idempotency-key'] = options.nextKey();
          return request;
        },
      },
    ],
  }, (error, result) => settle(error, result));
  instance.on('response', (_client: unknown, statusCode: number, _bytes: number, responseTime: number) => {
    if (count === latencies.length) {
      const grown = new Float64Array(latencies.length * 2);
      grown.set(latencies);
      latencies = grown;
    }
    latencies[count++] = responseTime;
    statusCodes[statusCode] = (statusCodes[statusCode] ?? 0) + 1;
    if (statusCode < 200 || statusCode > 299) non2xx++;
  });
  void options.until?.then(() => (instance as unknown as { stop(): void }).stop());
  const result = await done;
  return combineLoads([
    {
      latencies: latencies.subarray(0, count),
      seconds: Number(process.hrtime.bigint() - started) / 1e9,
      statusCodes,
      non2xx,
      errors: result.errors,
      timeouts: result.timeouts,
    },
  ]);
}

/** Several runs against the same route as one run: responses, seconds and latencies added up. */
export function combineLoads(runs: LoadCounts[]): LoadResult {
  const count = runs.reduce((total, run) => total + run.latencies.length, 0);
  const latencies = new Float64Array(count);
  const statusCodes: Record<string, number> = {};
  let offset = 0;
  for (const run of runs) {
    latencies.set(run.latencies, offset);
    offset += run.latencies.length;
    for (const [code, n] of Object.entries(run.statusCodes)) statusCodes[code] = (statusCodes[code] ?? 0) + n;
  }
  latencies.sort();
  const sum = (field: 'seconds' | 'non2xx' | 'errors' | 'timeouts') => runs.reduce((total, run) => total + run[field], 0);
  const seconds = sum('seconds');
  const percentile = (p: number) => (count === 0 ? NaN : latencies[Math.min(count - 1, Math.floor((p / 100) * count))]);
  return {
    responses: count,
    rps: count / seconds,
    p50: percentile(50),
    p99: percentile(99),
    max: count === 0 ? NaN : latencies[count - 1],
    non2xx: sum('non2xx'),
    statusCodes,
    errors: sum('errors'),
    timeouts: sum('timeouts'),
    seconds,
    latencies,
  };
}

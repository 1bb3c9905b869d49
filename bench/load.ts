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
}

export interface LoadResult {
  /** Responses received in the run. */
  responses: number;
  /** Responses per second over the run. */
  rps: number;
  /** Latency percentiles of all responses, in ms (sub-millisecond precision). */
  p50: number;
  p99: number;
  /** Responses whose status was not 2xx. */
  non2xx: number;
  statusCodes: Record<string, number>;
  errors: number;
  timeouts: number;
  seconds: number;
}

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
  const result = await done;
  const seconds = options.amount !== undefined ? Number(process.hrtime.bigint() - started) / 1e9 : result.duration;
  const sorted = latencies.subarray(0, count).sort();
  const percentile = (p: number) => (count === 0 ? NaN : sorted[Math.min(count - 1, Math.floor((p / 100) * count))]);
  return {
    responses: count,
    rps: count / seconds,
    p50: percentile(50),
    p99: percentile(99),
    non2xx,
    statusCodes,
    errors: result.errors,
    timeouts: result.timeouts,
    seconds,
  };
}

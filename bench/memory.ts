/**
 * `npm run bench:memory`: (1) the module's server RSS over 250,000 first-time requests, after a
 * warm-up; (2) peak memory while serving one 5 MB idempotent response, against the bare handler
 * serving the same 5 MB. See bench/README.md.
 */
import http from 'node:http';
import { randomBytes } from 'node:crypto';
import { BEARER_TOKEN, BIG_RESPONSE_BYTES, REQUEST_BODY, ROUTES, type Platform } from './common';
import { createSchema, startBenchDatabase } from './database';
import { runLoad } from './load';
import { ServerProcess, formatMb } from './processes';

const env = (name: string, fallback: string) => process.env[name] ?? fallback;
const PLATFORMS = env('BENCH_PLATFORMS', 'express,fastify').split(',') as Platform[];
const REQUESTS = Number(env('BENCH_MEMORY_REQUESTS', '250000'));
const WARMUP_REQUESTS = Number(env('BENCH_MEMORY_WARMUP', '25000'));
const CONNECTIONS = Number(env('BENCH_MEMORY_CONNECTIONS', '8'));
const BIG_SAMPLES = Number(env('BENCH_MEMORY_BIG_SAMPLES', '5'));
const RSS_TOLERANCE = 0.1;

const runId = randomBytes(4).toString('hex');
let keyCounter = 0;
const freshKey = () => `memory-${runId}-${++keyCounter}`;
const MB = 1024 * 1024;

/** One request, read to the end: status, body size and replay header. */
function post(url: string, path: string, key: string): Promise<{ status: number; bytes: number; replayed: boolean }> {
  return new Promise((resolve, reject) => {
    const request = http.request(`${url}${path}`, {
      method: 'POST',
      agent: false,
      headers: { 'content-type': 'application/json', authorization: `Bearer ${BEARER_TOKEN}`, 'idempotency-key': key },
    });
    request.on('response', (response) => {
      let bytes = 0;
      response.on('data', (chunk: Buffer) => (bytes += chunk.length));
      response.on('end', () => resolve({ status: response.statusCode ?? 0, bytes, replayed: response.headers['idempotency-replayed'] === 'true' }));
      response.on('error', reject);
    });
    request.on('error', reject);
    request.end(REQUEST_BODY);
  });
}

const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];
const settle = () => new Promise((resolve) => setTimeout(resolve, 100));

interface BigMeasurement {
  /** VmHWM after the request minus RSS before it (peak RSS growth). */
  rss: number;
  /** Peak growth of V8 heap used and of external memory (Buffers), sampled every ms in the server. */
  heapUsed: number;
  external: number;
}

/** Peak memory growth of `app` while serving one request; median of BIG_SAMPLES. */
async function measureBig(app: ServerProcess, path: string, key: () => string, expectReplay: boolean): Promise<BigMeasurement> {
  const samples: BigMeasurement[] = [];
  // Warm-up: first use allocates pools, compiles code, prepares statements.
  for (let i = 0; i < 2; i++) await post(app.url, path, key());
  for (let i = 0; i < BIG_SAMPLES; i++) {
    await app.stats(true);
    await settle();
    await app.stats(true);
    const before = app.rss();
    app.resetPeakRss();
    const start = await app.ask({ type: 'sample-start' });
    const response = await post(app.url, path, key());
    const stop = await app.ask({ type: 'sample-stop' });
    const peakRss = app.peakRss();
    if (response.status !== 201 || response.bytes < BIG_RESPONSE_BYTES || response.replayed !== expectReplay) {
      throw new Error(`${path}: unexpected response ${JSON.stringify(response)}`);
    }
    samples.push({
      rss: peakRss - before,
      heapUsed: stop.peak!.heapUsed - start.memory.heapUsed,
      external: stop.peak!.external - start.memory.external,
    });
  }
  return {
    rss: median(samples.map((s) => s.rss)),
    heapUsed: median(samples.map((s) => s.heapUsed)),
    external: median(samples.map((s) => s.external)),
  };
}

async function main(): Promise<void> {
  const startedAt = Date.now();
  const log = (message: string) => console.error(`[bench:memory +${((Date.now() - startedAt) / 1000).toFixed(0)}s] ${message}`);
  const database = await startBenchDatabase();
  const out: string[] = [];
  let ok = true;
  const running: ServerProcess[] = [];
  const start = async (platform: Platform, withModule: boolean, maxResponseBytes?: number) => {
    const app = await ServerProcess.start({ platform, withModule, databaseUrl: database.url, maxResponseBytes });
    running.push(app);
    return app;
  };
  const stop = async (app: ServerProcess) => {
    await app.stop();
    running.splice(running.indexOf(app), 1);
  };
  try {
    await createSchema(database.url);
    out.push(`PostgreSQL: embedded, ${database.durable ? 'persistent: true (fsync on)' : 'persistent: false (fsync off)'}.`);
    out.push('');
    out.push(`## Server RSS over ${REQUESTS} first-time requests (module, fresh key each, ${CONNECTIONS} connections, after ${WARMUP_REQUESTS} warm-up requests)`);
    out.push('');
    out.push('| platform | start RSS MB | end RSS MB | growth | peak RSS MB (sampled) | start / end RSS after GC MB | heap used after GC MB | non-2xx | req/s |');
    out.push('| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |');
    for (const platform of PLATFORMS) {
      const app = await start(platform, true);
      const warmup = await runLoad({ url: app.url, path: ROUTES.idempotent, connections: CONNECTIONS, amount: WARMUP_REQUESTS, nextKey: freshKey });
      await settle();
      const startRss = app.rss();
      const startGc = await app.stats(true);
      const startGcRss = app.rss();
      log(`${platform}: after warm-up (${warmup.responses} requests) RSS ${formatMb(startRss)} MB, after GC ${formatMb(startGcRss)} MB; sending ${REQUESTS}`);
      let peak = startRss;
      const sampler = setInterval(() => {
        peak = Math.max(peak, app.rss());
      }, 1000);
      const load = await runLoad({ url: app.url, path: ROUTES.idempotent, connections: CONNECTIONS, amount: REQUESTS, nextKey: freshKey });
      clearInterval(sampler);
      await settle();
      const endRss = app.rss();
      peak = Math.max(peak, endRss);
      const endGc = await app.stats(true);
      const endGcRss = app.rss();
      const growth = (endRss - startRss) / startRss;
      const problems = load.non2xx + load.errors + load.timeouts;
      // Flat: no growth past 10% (RSS may shrink as the warm-up's garbage is returned).
      const flat = growth <= RSS_TOLERANCE && problems === 0 && load.responses === REQUESTS;
      ok &&= flat;
      out.push(
        `| ${platform} | ${formatMb(startRss)} | ${formatMb(endRss)} | ${(growth * 100).toFixed(1)}% ${flat ? '(flat)' : '(NOT flat)'} | ${formatMb(peak)} | ` +
          `${formatMb(startGcRss)} / ${formatMb(endGcRss)} | ${formatMb(startGc.memory.heapUsed)} → ${formatMb(endGc.memory.heapUsed)} | ${load.non2xx} | ${Math.round(load.rps)} |`,
      );
      log(`${platform}: ${load.responses} responses, RSS ${formatMb(startRss)} → ${formatMb(endRss)} MB`);
      await stop(app);
    }

    out.push('');
    out.push(`## One ${BIG_RESPONSE_BYTES / MB} MB response: peak memory growth while serving it (median of ${BIG_SAMPLES})`);
    out.push('');
    out.push('| platform | scenario | peak RSS growth MB | peak heap-used growth MB | peak external growth MB | extra over bare (RSS) | in copies of the body |');
    out.push('| --- | --- | ---: | ---: | ---: | ---: | ---: |');
    for (const platform of PLATFORMS) {
      const plain = await start(platform, false);
      const bare = await measureBig(plain, ROUTES.bigPlain, freshKey, false);
      await stop(plain);
      // maxResponseBytes above the body size, so the 5 MB response is captured and stored.
      const withModule = await start(platform, true, 8 * MB);
      const first = await measureBig(withModule, ROUTES.bigIdempotent, freshKey, false);
      // Replays of one stored 5 MB record.
      const replayKey = freshKey();
      await post(withModule.url, ROUTES.bigIdempotent, replayKey);
      const replay = await measureBig(withModule, ROUTES.bigIdempotent, () => replayKey, true);
      await stop(withModule);
      const line = (scenario: string, m: BigMeasurement) => {
        const extra = m.rss - bare.rss;
        return `| ${platform} | ${scenario} | ${formatMb(m.rss)} | ${formatMb(m.heapUsed)} | ${formatMb(m.external)} | ${scenario === 'bare' ? '' : `${formatMb(extra)}`} | ${scenario === 'bare' ? `${(m.rss / BIG_RESPONSE_BYTES).toFixed(1)}` : `${(extra / BIG_RESPONSE_BYTES).toFixed(1)}`} |`;
      };
      out.push(line('bare', bare), line('first (captured + stored)', first), line('replay', replay));
      log(`${platform}: 5 MB peak RSS growth bare ${formatMb(bare.rss)} MB, first ${formatMb(first.rss)} MB, replay ${formatMb(replay.rss)} MB`);
    }
    out.push('');
    out.push('"in copies of the body": for bare, its whole peak growth / 5 MB; for the module, its peak growth beyond bare / 5 MB.');
    out.push(`bench:memory: RSS ${ok ? 'flat (within 10%)' : 'NOT flat'} over ${REQUESTS} first-time requests on ${PLATFORMS.join(', ')}`);
  } finally {
    for (const app of [...running]) await app.stop();
    await database.stop();
  }
  console.log(out.join('\n'));
  if (!ok) process.exitCode = 1;
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});

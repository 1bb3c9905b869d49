// npm run test:chaos — exactly-once under load and faults, end to end.
//
// Starts its own PostgreSQL (embedded, so it can restart it), three instances of the chaos app
// (test/chaos/chaos-app.ts; Express, Fastify with hooks, Express) and drives them from this process
// with 32 concurrent clients (half of them on keep-alive connections, a quarter pipelining) for
// CHAOS_LOAD_MS, at least CHAOS_SENDS (≥ 2,000) requests over 500 keys, on routes without an
// interceptor of the app's own, behind an outer async interceptor, or behind a timeout interceptor
// that answers 408 while slow handlers still run: random duplicates, concurrent duplicates of one
// key, client aborts, spread over the instances. Clients retry 503, other 5xx, 408, 409
// idempotency_key_in_use / transaction_conflict and network errors with the same key and body.
// During the run one instance is SIGKILLed (while it has requests in flight) and started again, and
// PostgreSQL gets a fast shutdown and starts again. Then it checks, from the answers and the database:
//
//   duplicate_effects       effect rows beyond what the mode allows for one key (transactional:
//                           exactly one per 2xx record, none for a stored 4xx; leased: one, plus one
//                           per execution orphaned by the SIGKILL, by a failure midway, or by a fault
//                           or a release the module reported)
//   mismatched_replays      answers (first-hand or replayed) that disagree with the key's final
//                           record: a 2xx/4xx whose status or bytes differ, a replayed 408, a 408
//                           whose attempt ran the handler when that effect was committed (tx) or the
//                           record is not one completed without an answer (leased), a 409
//                           idempotency_response_not_stored for a record that has an answer (except
//                           first-hand answers of a leased key that a fault explains)
//   stuck_keys              in-flight records still not claimable one lease after the run
//   raw_tokens_stored       rows of any table holding a raw bearer token used in the run
//   cross_scope_replays     answers whose embedded scope is not the caller's
//   unexpected_5xx          5xx outside the database restart, and any 5xx other than 503
//   outage_503              503s of requests that overlapped the database restart (expected)
//   open_transactions_after sessions idle in a transaction once everything is done
//
// Settings (env): CHAOS_SEED, CHAOS_SENDS (3000), CHAOS_LOAD_MS (45000), CHAOS_LOGS=1 (app logs on
// stderr), CHAOS_KEEP_LOGS=1 (keep the per-instance logs folder, kept anyway when the run fails),
// CHAOS_SABOTAGE=shared-scope|raw-token|double-effect|idle-transaction (break the app on purpose: the
// run must then fail; see chaos-app.ts).
import { type ChildProcess } from 'node:child_process';
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { createWriteStream, type WriteStream } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { Agent } from 'node:http';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { DataSource } from 'typeorm';
import { startEmbeddedDatabase, type EmbeddedDatabase } from '../../sample/embedded-database';
import { CreateIdempotencyKeys1764288000000 } from '../../src';
import { keyHash } from '../../src/log-format';
import { startChildApp } from '../support/child-app';
import { attempt, type AttemptResult } from './attempt';
import { pipelined } from './raw-http';
import { DELAY_HEADER, EFFECTS_SCHEMA, type EffectAnswer, type EffectRequest } from './effects';

const LEASE_MS = 2000;
const KEY_VALUES = 250; // each used by two scopes: 500 keys
const TOKENS = 4;
const SENDS = Math.max(2000, Number(process.env.CHAOS_SENDS ?? 3000));
const LOAD_MS = Number(process.env.CHAOS_LOAD_MS ?? 45_000);
const IN_FLIGHT = 32;
const KILL_AT_MS = Math.round(LOAD_MS * 0.25);
const DB_RESTART_AT_MS = Math.round(LOAD_MS * 0.6);
/** After PostgreSQL accepts connections again, 503s may still come from requests already past their claim. */
const OUTAGE_GRACE_MS = 3000;
/** A logical request gives up after this long (then its key is reported). */
const SEND_DEADLINE_MS = 60_000;
const SEED = Number(process.env.CHAOS_SEED ?? Math.floor(Math.random() * 2 ** 31));
const PLATFORMS = ['express', 'fastify', 'express'] as const;
/** After the run, how long sessions left idle in a transaction get to go away by themselves. */
const OPEN_TRANSACTIONS_GRACE_MS = 3000;

// ---------------------------------------------------------------------------------------------
// Plan

/** A seeded PRNG (mulberry32), so a failing run can be replayed with CHAOS_SEED. */
function prng(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
const random = prng(SEED);
const between = (low: number, high: number) => low + Math.floor(random() * (high - low + 1));

/** The chaos app's route prefixes: no interceptor of its own, an outer async one, a timeout interceptor. */
type Route = 'effects' | 'held' | 'timed';

interface KeyPlan {
  id: number;
  value: string;
  token: string;
  scope: string;
  hash: string;
  mode: 'tx' | 'leased';
  route: Route;
  path: string;
  body: string;
  reject: boolean;
}

interface Send {
  index: number;
  key: KeyPlan;
  abortAfterMs?: number;
  phase: 'load' | 'verify';
}

const sha256 = (text: string) => createHash('sha256').update(text).digest('hex');
const runId = randomBytes(3).toString('hex');
const tokens = Array.from({ length: TOKENS }, () => `chaos_tok_${randomBytes(16).toString('hex')}`);

function planKeys(): KeyPlan[] {
  const keys: KeyPlan[] = [];
  for (let v = 0; v < KEY_VALUES; v++) {
    const mode = v % 2 === 0 ? 'tx' : 'leased';
    const roll = random();
    const route: Route = roll < 0.4 ? 'effects' : roll < 0.7 ? 'held' : 'timed';
    const request: EffectRequest = { item: v, reject: random() < 0.1 };
    // The same key value and the same body under two scopes: identical fingerprints, so only the
    // scope keeps their records apart.
    const first = between(0, TOKENS - 1);
    const second = (first + between(1, TOKENS - 1)) % TOKENS;
    for (const t of [first, second]) {
      const value = `chaos-${runId}-${v}`;
      const scope = sha256(tokens[t]);
      keys.push({
        id: keys.length,
        value,
        token: tokens[t],
        scope,
        hash: keyHash(scope, value),
        mode,
        route,
        path: `/${route}/${mode}`,
        body: JSON.stringify(request),
        reject: request.reject ?? false,
      });
    }
  }
  return keys;
}

/**
 * How long one execution of a handler takes, drawn for every attempt: 80 % 0-20 ms, 16 % 0.1-0.4 s,
 * 4 % 2.5-3.2 s (longer than the lease). Per attempt, not per key: a transactional handler that
 * outlived the timeout interceptor must have a chance to be quicker on its retry.
 */
function handlerDelay(): number {
  const roll = random();
  return roll < 0.8 ? between(0, 20) : roll < 0.96 ? between(100, 400) : between(2500, 3200);
}

/**
 * The load, generated as it is consumed. Keys come into use one after the other, spread over the
 * first 85 % of LOAD_MS, so first executions keep happening all along the run (and so during the
 * faults); a key's first request goes ahead of the queue. Between them, duplicates: half of them of
 * the 20 keys that came into use last (likely still in flight: concurrent retries), half of any key
 * in use; 20 % as a burst of 2-4 copies back to back, which idle clients pick up at once (a client
 * and its impatient retries, or a request fanned out by a proxy, likely on different instances).
 * 8 % of sends are aborted by the client, three in four of them 1-60 ms after sending (while the
 * handler runs or its answer is held), the others 60-400 ms after. It ends once LOAD_MS has passed
 * and at least SENDS were handed out.
 */
function loadSource(keys: KeyPlan[], start: number): { next: () => Send | undefined; count: () => number } {
  const queue: Send[] = [];
  let index = 0;
  const make = (key: KeyPlan): Send => {
    const abortAfterMs = random() < 0.08 ? (random() < 0.75 ? between(1, 60) : between(60, 400)) : undefined;
    return { index: index++, key, abortAfterMs, phase: 'load' };
  };
  const order = [...keys];
  for (let i = order.length - 1; i > 0; i--) {
    const j = between(0, i);
    [order[i], order[j]] = [order[j], order[i]];
  }
  const activation = order.map((_, i) => (i / order.length) * LOAD_MS * 0.85);
  let active = 0;
  return {
    next() {
      const elapsed = Date.now() - start;
      while (active < order.length && activation[active] <= elapsed) queue.unshift(make(order[active++]));
      if (queue.length === 0) {
        if (elapsed >= LOAD_MS && index >= SENDS) return undefined;
        if (active === 0) queue.push(make(order[active++]));
        const recent = random() < 0.5;
        const pick = recent ? between(Math.max(0, active - 20), active - 1) : between(0, active - 1);
        const copies = random() < 0.2 ? between(2, 4) : 1;
        for (let i = 0; i < copies; i++) queue.push(make(order[pick]));
      }
      return queue.shift();
    },
    count: () => index,
  };
}

// ---------------------------------------------------------------------------------------------
// Instances

interface Instance {
  name: string;
  platform: 'express' | 'fastify';
  port: number;
  url: string;
  epoch: string;
  generation: number;
  child?: ChildProcess;
  /** Serving (false between its SIGKILL and the READY of its next process). */
  up: boolean;
  inFlight: Set<{ key: KeyPlan; delayMs: number; sentAt: number }>;
  killedByUs: boolean;
}

const compiledApp = path.join(__dirname, 'chaos-app.js');
let logDir = '';
const logs: WriteStream[] = [];
const events: { name: string; hash: string; status: string; instance: string; at: number }[] = [];
const crashes: string[] = [];

function label(instance: Instance): string {
  return instance.up ? `${instance.name}#${instance.generation} (${instance.platform})` : `${instance.name} (down)`;
}

async function startInstance(instance: Instance, databaseUrl: string): Promise<void> {
  instance.generation += 1;
  instance.epoch = randomUUID();
  instance.killedByUs = false;
  const log = createWriteStream(path.join(logDir, `${instance.name}-${instance.generation}.log`));
  logs.push(log);
  const env = {
    DATABASE_URL: databaseUrl,
    CHAOS_INSTANCE: instance.name,
    CHAOS_EPOCH: instance.epoch,
    CHAOS_PLATFORM: instance.platform,
    CHAOS_PORT: String(instance.port),
    CHAOS_LEASE_MS: String(LEASE_MS),
    // Warnings and errors of the module go to the instance's log file (CHAOS_LOGS=1 echoes them).
    CHAOS_LOGS: '1',
    CHAOS_SABOTAGE: process.env.CHAOS_SABOTAGE ?? '',
  };
  const started = startChildApp(compiledApp, env);
  let timer: NodeJS.Timeout | undefined;
  const child = await Promise.race([
    started,
    new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`instance ${instance.name} did not start within 60 s`)), 60_000))),
  ]).finally(() => clearTimeout(timer));
  instance.child = child.process;
  instance.url = child.url;
  instance.port = Number(new URL(child.url).port);
  instance.up = true;
  const name = label(instance);
  let pending = '';
  child.process.stdout!.on('data', (chunk: Buffer) => {
    log.write(chunk);
    const lines = (pending + chunk.toString()).split('\n');
    pending = lines.pop() ?? '';
    for (const line of lines) {
      const match = /^EVENT (\S+) (\S+) (\S+) (\d+)$/.exec(line);
      if (!match) continue;
      const [, event, hash, status, at] = match;
      events.push({ name: event, hash, status, at: Number(at), instance: name });
    }
  });
  child.process.stderr!.on('data', (chunk: Buffer) => {
    log.write(chunk);
    if (process.env.CHAOS_LOGS === '1') process.stderr.write(`[${name}] ${chunk.toString()}`);
  });
  const thisChild = child.process;
  thisChild.once('exit', (code, signal) => {
    if (!instance.killedByUs || instance.child !== thisChild) crashes.push(`${name} exited (code ${code}, signal ${signal})`);
  });
}

async function killInstance(instance: Instance): Promise<void> {
  const child = instance.child;
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  instance.killedByUs = true;
  instance.up = false;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill('SIGKILL');
  await exited;
}

// ---------------------------------------------------------------------------------------------
// Load

interface Answer {
  key: KeyPlan;
  requestId: string;
  sentAt: number;
  doneAt: number;
  status: number;
  body: Buffer;
  replayed: boolean;
  instance: string;
  phase: Send['phase'];
}

/** One row of `effects`: one execution of a handler, by the attempt `requestId`. */
interface Effect {
  execution: string;
  epoch: string;
  instance: string;
  requestId: string;
  done: boolean;
}

interface StoredRecord {
  status: number | null;
  body: Buffer | null;
}

/** Executions of a leased key that its record does not stand for, and why. */
interface Orphans {
  killed: number;
  /** Effects never marked done: a handler that failed midway (its key freed, or left to its lease). */
  failed: number;
  storeFailed: number;
  leaseLost: number;
  released: number;
}

interface FiveXX {
  status: number;
  code: string;
  sentAt: number;
  doneAt: number;
  instance: string;
}

const OUTCOMES = [
  'attempts',
  '201',
  '201 replay',
  '422',
  '422 replay',
  '408',
  '409 in_use',
  '409 tx_conflict',
  '409 not_stored',
  '503',
  '5xx other',
  '4xx other',
  'net error',
  'aborted',
] as const;
type Outcome = (typeof OUTCOMES)[number];

const stats = new Map<string, Map<Outcome, number>>();
const otherOutcomes = new Map<string, number>();
const answers: Answer[] = [];
const fiveXX: FiveXX[] = [];
const gaveUp: KeyPlan[] = [];
/** Answers of the Fastify instance whose x-request-id is not the one its onRequest hook set for them. */
const foreignRequestIds = { replays: 0, others: 0, samples: [] as string[] };
let httpRequests = 0;

function count(instance: string, outcome: Outcome): void {
  let row = stats.get(instance);
  if (!row) stats.set(instance, (row = new Map()));
  row.set(outcome, (row.get(outcome) ?? 0) + 1);
}

function errorCode(body: Buffer): string {
  try {
    const json = JSON.parse(body.toString('utf8'));
    return String(json?.error?.code ?? json?.message?.error?.code ?? json?.message ?? '-');
  } catch {
    return '-';
  }
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const NOT_STORED = 'idempotency_response_not_stored';

/** One attempt of a send, on its way to an instance: its own x-request-id and handler delay. */
interface Outgoing {
  send: Send;
  instance: Instance;
  /** The instance's label when the attempt left (a kill does not rename what it was sent to). */
  name: string;
  requestId: string;
  flight: { key: KeyPlan; delayMs: number; sentAt: number };
}

function outgoing(send: Send, instance: Instance): Outgoing {
  const flight = { key: send.key, delayMs: handlerDelay(), sentAt: Date.now() };
  instance.inFlight.add(flight);
  return { send, instance, name: label(instance), requestId: `${runId}-${httpRequests++}`, flight };
}

function requestHeaders({ send: { key }, requestId, flight }: Outgoing): Record<string, string> {
  return {
    authorization: `Bearer ${key.token}`,
    'idempotency-key': key.value,
    'x-request-id': requestId,
    [DELAY_HEADER]: String(flight.delayMs),
  };
}

/**
 * One logical client request: the same key and body on every attempt until a final answer, on
 * `agent`'s keep-alive connections if given; `first` is its first attempt when that went out in a
 * pipeline.
 */
async function runSend(
  send: Send,
  instances: Instance[],
  agent?: Agent,
  first?: Promise<[Outgoing, AttemptResult]>,
): Promise<void> {
  const deadline = Date.now() + SEND_DEADLINE_MS;
  for (let n = 0; ; n++) {
    let sent: Outgoing;
    let result: AttemptResult;
    if (n === 0 && first) [sent, result] = await first;
    else {
      sent = outgoing(send, instances[n === 0 ? send.index % instances.length : between(0, instances.length - 1)]);
      const { path, body } = send.key;
      const abortAfterMs = n === 0 ? send.abortAfterMs : undefined;
      const headers = requestHeaders(sent);
      result = await attempt({ url: sent.instance.url, path, headers, body, abortAfterMs, agent });
    }
    sent.instance.inFlight.delete(sent.flight);
    const retryIn = judge(sent, result);
    if (retryIn === undefined) return;
    if (Date.now() + retryIn > deadline) {
      gaveUp.push(send.key);
      return;
    }
    await sleep(retryIn);
  }
}

/** Sends `batch` pipelined on one connection, then goes on with each as a send of its own. */
async function runPipeline(batch: Send[], instances: Instance[]): Promise<void> {
  const instance = instances[batch[0].index % instances.length];
  const sent = batch.map((send) => outgoing(send, instance));
  const sentAt = Date.now();
  const requests = sent.map((one) => ({
    path: one.send.key.path,
    headers: Object.entries({ ...requestHeaders(one), 'content-type': 'application/json' }),
    body: Buffer.from(one.send.key.body),
  }));
  const abortAfterMs = batch.find((send) => send.abortAfterMs !== undefined)?.abortAfterMs;
  const answered = pipelined(instance.url, requests, abortAfterMs).then((responses) => {
    const doneAt = Date.now();
    return responses.map((response): AttemptResult => {
      const aborted = abortAfterMs !== undefined;
      if (!response) return { kind: 'network', error: 'no answer in the pipeline', aborted, sentAt, doneAt };
      const headers = Object.fromEntries(Object.entries(response.headers).map(([name, values]) => [name, values[0]]));
      return { kind: 'response', status: response.status, headers, body: response.body, sentAt, doneAt };
    });
  });
  const firsts = sent.map((one, i) => answered.then((results): [Outgoing, AttemptResult] => [one, results[i]]));
  await Promise.all(batch.map((send, i) => runSend(send, instances, undefined, firsts[i])));
}

/**
 * What one attempt's result means: counted, and recorded when it is an answer to check. Returns
 * how long to wait before the next attempt, or undefined when this was the final answer.
 */
function judge({ send, name, instance, requestId }: Outgoing, result: AttemptResult): number | undefined {
  const { key } = send;
  count(name, 'attempts');
  if (result.kind === 'network') {
    count(name, result.aborted ? 'aborted' : 'net error');
    return between(50, 300);
  }
  const { status, body } = result;
  const replayed = result.headers['idempotency-replayed'] === 'true';
  if (instance.platform === 'fastify' && result.headers['x-request-id'] !== requestId) {
    foreignRequestIds[replayed ? 'replays' : 'others']++;
    if (foreignRequestIds.samples.length < 3) {
      const got = result.headers['x-request-id'] ?? 'none';
      const what = `${status}${replayed ? ' (replayed)' : ''}`;
      foreignRequestIds.samples.push(`${what} on ${name}: x-request-id ${got}, sent ${requestId}`);
    }
  }
  const { sentAt, doneAt } = result;
  const answer: Answer = { key, requestId, sentAt, doneAt, status, body, replayed, instance: name, phase: send.phase };
  if (status >= 200 && status < 300) {
    count(name, replayed ? '201 replay' : '201');
    answers.push(answer);
    return undefined;
  }
  const code = errorCode(body);
  if (status === 408) {
    // The timeout interceptor answered while the handler still ran: retried, and checked against
    // the record like a final answer. A replayed one is what the record says.
    count(name, '408');
    answers.push(answer);
    return replayed ? undefined : between(50, 300);
  }
  if (status === 409 && code === NOT_STORED) {
    count(name, '409 not_stored');
    answers.push(answer);
    return undefined;
  }
  if (status === 409 && (code === 'idempotency_key_in_use' || code === 'transaction_conflict')) {
    count(name, code === 'idempotency_key_in_use' ? '409 in_use' : '409 tx_conflict');
    const retryAfter = Number(result.headers['retry-after'] ?? 1);
    return Math.round(Math.min(retryAfter, 1) * 1000 * (0.25 + random() * 0.5));
  }
  if (status >= 500) {
    count(name, status === 503 ? '503' : '5xx other');
    fiveXX.push({ status, code, sentAt: result.sentAt, doneAt: result.doneAt, instance: name });
    return between(100, 400);
  }
  if (status === 422) count(name, replayed ? '422 replay' : '422');
  else {
    count(name, '4xx other');
    const what = `${status} ${code}`;
    otherOutcomes.set(what, (otherOutcomes.get(what) ?? 0) + 1);
  }
  answers.push(answer);
  return undefined;
}

/**
 * IN_FLIGHT clients, each sending one logical request after the other (retries included) until
 * `next` runs dry. A quarter open a connection per attempt; half keep theirs alive between requests
 * (their aborts then cut a connection that has served others); a quarter pipeline 2-4 sends at a
 * time on one connection (an abort cuts the answers still queued behind the running ones).
 */
async function runClients(next: () => Send | undefined, instances: Instance[]): Promise<void> {
  await Promise.all(
    Array.from({ length: IN_FLIGHT }, async (_, client) => {
      if (client % 4 === 1) {
        for (;;) {
          const batch: Send[] = [];
          for (let size = between(2, 4), send; batch.length < size && (send = next()); ) batch.push(send);
          if (batch.length === 0) return;
          await runPipeline(batch, instances);
        }
      }
      const agent = client % 4 >= 2 ? new Agent({ keepAlive: true }) : undefined;
      try {
        for (let send = next(); send; send = next()) await runSend(send, instances, agent);
      } finally {
        agent?.destroy();
      }
    }),
  );
}

// ---------------------------------------------------------------------------------------------
// Main

interface Timeline {
  loadStart: number;
  killAt?: number;
  killedEpoch?: string;
  killedInFlight?: number;
  restartedAt?: number;
  dbRestartBegin?: number;
  dbRestartEnd?: number;
  loadEnd?: number;
}

async function main(): Promise<number> {
  const startedAt = Date.now();
  logDir = await mkdtemp(path.join(os.tmpdir(), 'chaos-logs-'));
  const dataDir = await mkdtemp(path.join(os.tmpdir(), 'chaos-postgres-'));
  let database: EmbeddedDatabase | undefined;
  let client: pg.Client | undefined;
  const instances: Instance[] = PLATFORMS.map((platform, i) => ({
    name: String.fromCharCode(97 + i),
    platform,
    port: 0,
    url: '',
    epoch: '',
    generation: 0,
    up: false,
    inFlight: new Set(),
    killedByUs: false,
  }));
  const stopEverything = async (keepLogs: boolean) => {
    for (const instance of instances) await killInstance(instance).catch(() => undefined);
    await client?.end().catch(() => undefined);
    await database?.stop().catch(() => undefined);
    await rm(dataDir, { recursive: true, force: true });
    for (const log of logs) log.end();
    if (keepLogs) console.error(`chaos: instance logs kept in ${logDir}`);
    else await rm(logDir, { recursive: true, force: true });
  };
  const keepLogs = process.env.CHAOS_KEEP_LOGS === '1';
  process.once('SIGINT', () => void stopEverything(keepLogs).finally(() => process.exit(130)));
  let passed = false;

  try {
    console.error(`chaos: seed=${SEED} sends=${SENDS} load=${LOAD_MS} ms lease=${LEASE_MS} ms`);
    const pgLog = createWriteStream(path.join(logDir, 'postgres.log'));
    logs.push(pgLog);
    database = await startEmbeddedDatabase({ dataDir, persistent: false, onLog: (line) => pgLog.write(`${line}\n`) });
    const schema = new DataSource({ type: 'postgres', url: database.url, migrations: [CreateIdempotencyKeys1764288000000] });
    await schema.initialize();
    await schema.runMigrations();
    await schema.query(EFFECTS_SCHEMA);
    await schema.destroy();

    await Promise.all(instances.map((instance) => startInstance(instance, database!.url)));
    console.error(`chaos: PostgreSQL and 3 instances up after ${Date.now() - startedAt} ms`);

    const keys = planKeys();
    const load = loadSource(keys, Date.now());
    const timeline: Timeline = { loadStart: Date.now() };
    const start = timeline.loadStart;

    const faults = (async () => {
      // SIGKILL an instance while its handlers run: two slow leased ones that have had time to
      // write their effect and a transactional one if that comes within 4 s, else one slow leased
      // one within 8 s; then start it again on its port.
      await sleep(start + KILL_AT_MS - Date.now());
      const victim = instances[1];
      const since = Date.now();
      const running = (mode: KeyPlan['mode']) =>
        [...victim.inFlight].filter((f) => f.key.mode === mode && f.delayMs >= 100 && Date.now() - f.sentAt > 40)
          .length;
      while (Date.now() - since < 8000) {
        if (running('leased') >= 2 && running('tx') >= 1) break;
        if (Date.now() - since > 4000 && running('leased') >= 1) break;
        await sleep(2);
      }
      timeline.killAt = Date.now();
      timeline.killedEpoch = victim.epoch;
      timeline.killedInFlight = victim.inFlight.size;
      await killInstance(victim);
      await startInstance(victim, database!.url);
      timeline.restartedAt = Date.now();
      console.error(`chaos: killed ${victim.name} with ${timeline.killedInFlight} requests in flight; back after ${timeline.restartedAt - timeline.killAt} ms`);

      // Fast shutdown of PostgreSQL and start again, while the apps keep running.
      await sleep(start + DB_RESTART_AT_MS - Date.now());
      timeline.dbRestartBegin = Date.now();
      await database!.restart!();
      timeline.dbRestartEnd = Date.now();
      console.error(`chaos: PostgreSQL restarted in ${timeline.dbRestartEnd - timeline.dbRestartBegin} ms`);
    })();
    await Promise.all([runClients(load.next, instances), faults]);
    timeline.loadEnd = Date.now();
    console.error(`chaos: load done after ${timeline.loadEnd - start} ms; waiting one lease`);

    // One lease after the run: nothing may still be in flight and unclaimable.
    await sleep(LEASE_MS + 500);
    client = new pg.Client({ connectionString: database.url });
    await client.connect();
    const [{ stuck }] = (
      await client.query(`SELECT count(*)::int AS stuck FROM idempotency_keys WHERE response_status IS NULL AND lease_expires_at > now()`)
    ).rows;

    // Every key once more, through every instance: replays of the final records (and the takeover
    // of any record left in flight by a failed store).
    const verify: Send[] = keys.map((key, i) => ({ index: i, key, phase: 'verify' }));
    const verifySends = verify.length;
    await runClients(() => verify.shift(), instances);
    const open = await openTransactions(client);

    // ---- Collect the final state
    const records = new Map<string, StoredRecord>();
    for (const row of (await client.query('SELECT api_key_id, idem_key, response_status, response_body FROM idempotency_keys')).rows) {
      records.set(`${row.api_key_id}|${row.idem_key}`, { status: row.response_status, body: row.response_body });
    }
    const effects = new Map<string, Effect[]>();
    const effectOfRequest = new Map<string, Effect>();
    const effectRows = await client.query(
      'SELECT scope, idem_key, execution, epoch, instance, request_id, done_at IS NOT NULL AS done FROM effects',
    );
    for (const row of effectRows.rows) {
      const id = `${row.scope}|${row.idem_key}`;
      const { execution, epoch, instance, request_id: requestId, done } = row;
      const effect: Effect = { execution, epoch, instance, requestId, done };
      if (!effects.has(id)) effects.set(id, []);
      effects.get(id)!.push(effect);
      effectOfRequest.set(effect.requestId, effect);
    }
    let rawTokens = 0;
    const tables = (await client.query(`SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'`)).rows.map((r) => r.table_name as string);
    for (const token of tokens) {
      for (const table of tables) {
        const { rows } = await client.query(`SELECT count(*)::int AS n FROM "${table}" t WHERE strpos(t::text, $1) > 0`, [token]);
        rawTokens += rows[0].n;
      }
      const { rows } = await client.query(
        `SELECT count(*)::int AS n FROM idempotency_keys WHERE position(convert_to($1, 'UTF8') in coalesce(response_body, ''::bytea)) > 0
           AND strpos(idempotency_keys::text, $1) = 0`,
        [token],
      );
      rawTokens += rows[0].n;
    }

    // ---- Checks
    const killedEpochs = new Set(timeline.killedEpoch ? [timeline.killedEpoch] : []);
    // Executions of a leased key that its record does not stand for, by key hash (`killed` and
    // `failed` are filled in from the effects below).
    const orphans = new Map<string, Orphans>();
    const orphansOf = (hash: string): Orphans =>
      orphans.get(hash) ?? { killed: 0, failed: 0, storeFailed: 0, leaseLost: 0, released: 0 };
    const claims = new Map<string, number>();
    const keyByHash = new Map(keys.map((key) => [key.hash, key]));
    const leasedReleases: string[] = [];
    for (const event of events) {
      if (event.name === 'claimed') {
        claims.set(event.hash, (claims.get(event.hash) ?? 0) + 1);
        continue;
      }
      const entry = orphansOf(event.hash);
      if (event.name === 'store_error' && Number(event.status) < 500) entry.storeFailed++;
      else if (event.name === 'lease_lost') entry.leaseLost++;
      // The key was freed after its handler ran (a 5xx, a handler that failed after a 408, a client
      // gone before any answer could come): the retry runs it again.
      else if (event.name === 'released') entry.released++;
      else continue;
      orphans.set(event.hash, entry);
      if (event.name === 'released' && keyByHash.get(event.hash)?.mode === 'leased') {
        leasedReleases.push(event.status === '-' ? 'without an answer' : `after a ${event.status}`);
      }
    }
    // A lease is only lost to a takeover, a second claim of the record: a lease_lost event for a
    // record claimed once explains nothing (and is reported below as spurious).
    let spuriousLeaseLost = 0;
    for (const [hash, entry] of orphans) {
      const key = keyByHash.get(hash);
      const record = key && records.get(`${key.scope}|${key.value}`);
      if (entry.leaseLost > 0 && record && (claims.get(hash) ?? 0) <= 1) {
        spuriousLeaseLost += entry.leaseLost;
        entry.leaseLost = 0;
      }
    }
    const reasons = { killed: 0, failed: 0, storeFailed: 0, leaseLost: 0, released: 0 };
    let duplicateEffects = 0;
    let explainedReexecutions = 0;
    let missingEffects = 0;
    let unfinishedKeys = 0;
    let unreplayableRecords = 0;
    let partialCommits = 0;
    let answerlessKeys = 0;
    let effectCount = { tx: 0, leased: 0 };
    const duplicateSamples: string[] = [];
    // What the apps reported of a key, for the samples of what went wrong with it.
    const trail = (key: KeyPlan) => {
      const shown = events
        .filter((event) => event.hash === key.hash)
        .map((e) => `${e.name}${e.status === '-' ? '' : ` ${e.status}`} on ${e.instance} at +${e.at - start}`);
      return `key hash ${key.hash}, events: ${shown.join(', ') || 'none'}`;
    };
    const sampleDuplicates = (key: KeyPlan, record: StoredRecord, rows: Effect[], allowed: number) => {
      if (rows.length <= allowed || duplicateSamples.length >= 5) return;
      const executions = rows.map((row) => `${row.instance} ${row.requestId}${row.done ? '' : ' (not done)'}`);
      const what = `${key.mode} key ${key.value} on /${key.route}: record ${record.status}`;
      const effectsSeen = `${rows.length} effects (${allowed} allowed): ${executions.join(', ')}`;
      duplicateSamples.push(`${what}, ${effectsSeen}; ${trail(key)}`);
    };
    for (const key of keys) {
      const id = `${key.scope}|${key.value}`;
      const record = records.get(id);
      const rows = effects.get(id) ?? [];
      effectCount[key.mode] += rows.length;
      if (!record || record.status === null) {
        unfinishedKeys++;
        continue;
      }
      if (record.body === null && !completedWithoutAnswer(key, record)) {
        unreplayableRecords++;
        continue;
      }
      const stored = record.body && parseAnswer(record.body);
      if (key.mode === 'tx') {
        const expected = record.status < 300 ? 1 : 0;
        if (rows.length > expected) duplicateEffects += rows.length - expected;
        sampleDuplicates(key, record, rows, expected);
        if (rows.length < expected || (expected === 1 && !rows.some((row) => row.execution === stored?.execution))) missingEffects++;
        // Committed before its handler ended (a 408's or a hang-up's transaction that was not abandoned).
        partialCommits += rows.filter((row) => !row.done).length;
      } else {
        const orphaned = orphansOf(key.hash);
        const others = rows.filter((row) => row.execution !== stored?.execution);
        orphaned.killed = others.filter((row) => killedEpochs.has(row.epoch)).length;
        orphaned.failed = others.filter((row) => !row.done && !killedEpochs.has(row.epoch)).length;
        orphans.set(key.hash, orphaned);
        const { killed, failed, storeFailed, leaseLost, released } = orphaned;
        const allowed = 1 + killed + failed + storeFailed + leaseLost + released;
        if (rows.length > allowed) duplicateEffects += rows.length - allowed;
        sampleDuplicates(key, record, rows, allowed);
        if (rows.length > 1) {
          explainedReexecutions += Math.min(rows.length, allowed) - 1;
          reasons.killed += Math.min(killed, rows.length - 1);
          reasons.failed += failed;
          reasons.storeFailed += storeFailed;
          reasons.leaseLost += leaseLost;
          reasons.released += released;
        }
        // Without an answer on record, the one execution it stands for cannot be named.
        if (!stored) answerlessKeys++;
        if (stored ? !rows.some((row) => row.execution === stored.execution) : rows.length === 0) missingEffects++;
      }
    }

    let mismatched = 0;
    let unstoredAnswers = 0;
    let crossScope = 0;
    const answerCounts = { timeouts: { tx: 0, leased: 0 }, notStored: 0 };
    const mismatchSamples: string[] = [];
    const sampled = new Set<KeyPlan>();
    for (const answer of answers) {
      const parsed = parseAnswer(answer.body);
      if (parsed && 'scope' in parsed && parsed.scope !== answer.key.scope) crossScope++;
      if (answer.status === 408) answerCounts.timeouts[answer.key.mode]++;
      else if (errorCode(answer.body) === NOT_STORED) answerCounts.notStored++;
      const record = records.get(`${answer.key.scope}|${answer.key.value}`);
      const ran = effectOfRequest.get(answer.requestId);
      if (agrees(answer, record, ran)) continue;
      if (answer.key.mode === 'leased' && !answer.replayed) {
        // Sent first-hand, then not stored, or a 408 whose execution is not the one on record
        // (freed after it, died with its process, failed midway, or its lease ran out).
        const { storeFailed, leaseLost, killed, failed, released } = orphansOf(answer.key.hash);
        const onRecord = record?.body && parseAnswer(record.body)?.execution === ran?.execution;
        if (storeFailed + leaseLost > 0 || (answer.status === 408 && !onRecord && killed + failed + released > 0)) {
          unstoredAnswers++;
          continue;
        }
      }
      mismatched++;
      if (mismatchSamples.length < 5 && !sampled.has(answer.key)) {
        const { key, replayed, requestId, status, body } = answer;
        sampled.add(key);
        const how = replayed ? ' (replayed)' : ` as ${requestId}`;
        mismatchSamples.push(
          `${key.mode} key ${key.value} on /${key.route} via ${answer.instance}${how} ` +
            `at +${answer.sentAt - start}..+${answer.doneAt - start}: ` +
            `got ${status} ${body.toString().slice(0, 160)}; ` +
            `stored ${record?.status ?? 'nothing'} ${record?.body?.toString().slice(0, 160) ?? '(no answer)'}; ` +
            trail(key),
        );
      }
    }

    const windowBegin = timeline.dbRestartBegin ?? Infinity;
    const windowEnd = (timeline.dbRestartEnd ?? -Infinity) + OUTAGE_GRACE_MS;
    let outage503 = 0;
    let unexpected5xx = 0;
    let last503AfterRestart = -Infinity;
    const unexpectedSamples = new Map<string, number>();
    for (const answer of fiveXX) {
      const inOutage = answer.sentAt <= windowEnd && answer.doneAt >= windowBegin;
      if (answer.status === 503 && inOutage) {
        outage503++;
        last503AfterRestart = Math.max(last503AfterRestart, answer.doneAt - (timeline.dbRestartEnd ?? 0));
      } else {
        unexpected5xx++;
        const what = `${answer.status} ${answer.code} on ${answer.instance} at +${answer.sentAt - start} ms`;
        unexpectedSamples.set(what, (unexpectedSamples.get(what) ?? 0) + 1);
      }
    }
    const recordsStats = [...records.values()];

    // ---- Report
    const columns = ['instance', ...OUTCOMES];
    const rows: string[][] = [];
    const totals = new Map<Outcome, number>();
    for (const [name, row] of [...stats.entries()].sort(([a], [b]) => a.localeCompare(b))) {
      rows.push([name, ...OUTCOMES.map((outcome) => String(row.get(outcome) ?? 0))]);
      for (const outcome of OUTCOMES) totals.set(outcome, (totals.get(outcome) ?? 0) + (row.get(outcome) ?? 0));
    }
    rows.push(['total', ...OUTCOMES.map((outcome) => String(totals.get(outcome) ?? 0))]);
    const widths = columns.map((column, i) => Math.max(column.length, ...rows.map((row) => row[i].length)));
    const line = (cells: string[]) => `| ${cells.map((cell, i) => (i === 0 ? cell.padEnd(widths[i]) : cell.padStart(widths[i]))).join(' | ')} |`;
    const out: string[] = [];
    out.push('');
    out.push(`chaos run: seed ${SEED}, ${keys.length} keys (${KEY_VALUES} values × 2 scopes of ${TOKENS} tokens; tx and leased), ${load.count()} load sends by ${IN_FLIGHT} concurrent clients over ${LOAD_MS / 1000} s + ${verifySends} verification sends, lease ${LEASE_MS} ms, ${IN_FLIGHT} in flight`);
    out.push(line(columns));
    out.push(`|${widths.map((w, i) => (i === 0 ? '-'.repeat(w + 2) : `${'-'.repeat(w + 1)}:`)).join('|')}|`);
    for (const row of rows) out.push(line(row));
    out.push('');
    const rel = (t?: number) => (t === undefined ? 'never' : `+${t - start} ms`);
    out.push(`faults: SIGKILL ${instances[1].name} at ${rel(timeline.killAt)} with ${timeline.killedInFlight} requests in flight, serving again at ${rel(timeline.restartedAt)}; PostgreSQL fast shutdown at ${rel(timeline.dbRestartBegin)}, accepting again at ${rel(timeline.dbRestartEnd)}; load ended at ${rel(timeline.loadEnd)}`);
    out.push(`outage: ${outage503} × 503 overlapping the restart window; last one ${Number.isFinite(last503AfterRestart) ? `${last503AfterRestart} ms after PostgreSQL was back` : '-'}`);
    out.push(`records: ${recordsStats.length} (${recordsStats.filter((r) => r.status !== null && r.status < 300).length} × 2xx, ${recordsStats.filter((r) => r.status !== null && r.status >= 400).length} × 4xx, ${recordsStats.filter((r) => r.status === null).length} in flight, ${[...claims.values()].filter((n) => n > 1).length} claimed more than once); effects: tx ${effectCount.tx}, leased ${effectCount.leased}`);
    out.push(
      `leased re-executions explained by a fault: ${explainedReexecutions} (effects of the killed process: ` +
        `${reasons.killed}, failed midway: ${reasons.failed}, ` +
        `store failed after the handler: ${reasons.storeFailed}, ` +
        `lease lost: ${reasons.leaseLost}, released: ${reasons.released}); ` +
        `first-hand answers not on record (not stored, or a 408 of a freed key): ${unstoredAnswers}`,
    );
    out.push(`leased keys released: ${summarise(leasedReleases)}`);
    out.push(
      `timeouts: 408 × ${answerCounts.timeouts.leased} leased, × ${answerCounts.timeouts.tx} tx; leased keys ` +
        `completed without an answer: ${answerlessKeys}, 409 not_stored answers: ${answerCounts.notStored}`,
    );
    out.push(
      `x-request-id: ${foreignRequestIds.replays} replays and ${foreignRequestIds.others} other answers of the ` +
        `Fastify instance without the id its onRequest hook set (reported, not counted)`,
    );
    for (const sample of foreignRequestIds.samples) out.push(`x-request-id: ${sample}`);
    out.push(`events from the apps: ${summarise(events.map((e) => `${e.name}${e.name === 'released' ? ` ${e.status}` : ''}`))}`);
    out.push(`lease_lost events for records claimed once (so no lease was lost): ${spuriousLeaseLost}`);
    out.push(`unfinished keys: ${unfinishedKeys}; keys whose stored answer has no matching effect: ${missingEffects}; clients that gave up: ${gaveUp.length}; instance crashes: ${crashes.length}`);
    out.push(
      `records without an answer but a leased 408 behind the timeout: ${unreplayableRecords}; ` +
        `tx effects committed before their handler ended: ${partialCommits}`,
    );
    for (const session of open) out.push(`open transaction: ${session}`);
    if (otherOutcomes.size > 0) out.push(`other 4xx: ${summarise([...otherOutcomes].flatMap(([what, n]) => Array(n).fill(what)))}`);
    for (const [what, n] of [...unexpectedSamples].slice(0, 10)) out.push(`unexpected 5xx: ${n} × ${what}`);
    for (const sample of mismatchSamples) out.push(`mismatch: ${sample}`);
    for (const sample of duplicateSamples) out.push(`duplicate: ${sample}`);
    for (const crash of crashes) out.push(`crash: ${crash}`);
    out.push(`took ${((Date.now() - startedAt) / 1000).toFixed(1)} s`);
    console.log(out.join('\n'));

    const counters = {
      duplicate_effects: duplicateEffects,
      mismatched_replays: mismatched,
      stuck_keys: stuck,
      raw_tokens_stored: rawTokens,
      cross_scope_replays: crossScope,
      unexpected_5xx: unexpected5xx,
      outage_503: outage503,
      open_transactions_after: open.length,
    };
    const shown = Object.entries(counters).map(([name, value]) => `${name}=${value}`);
    console.log(`chaos: requests=${httpRequests} keys=${keys.length} ${shown.join(' ')}`);
    const failed = Object.entries(counters).some(([name, value]) => name !== 'outage_503' && value !== 0);
    const broken = crashes.length + unfinishedKeys + missingEffects + unreplayableRecords + partialCommits;
    if (broken > 0) {
      console.error(
        'chaos: an instance crashed, a key never completed, a stored answer has no effect, a record has no answer ' +
          'where it must, or a transaction committed early: see the lines above',
      );
      return 1;
    }
    passed = !failed;
    return failed ? 1 : 0;
  } finally {
    await stopEverything(keepLogs || !passed);
  }
}

/** Whether an answer agrees with the key's final record; `ran` is the execution its attempt ran, if any. */
function agrees(answer: Answer, record: StoredRecord | undefined, ran: Effect | undefined): boolean {
  if (!record || record.status === null) return false;
  const { key } = answer;
  if (answer.status === 408) {
    if (answer.replayed || key.route !== 'timed') return false;
    // The time ran out while the attempt still waited for the key: no handler ran for it.
    if (!ran) return true;
    // Never stored: a transactional 408 commits nothing, a leased one leaves its record without an answer.
    return key.mode === 'leased' && completedWithoutAnswer(key, record);
  }
  if (errorCode(answer.body) === NOT_STORED) return record.body === null;
  return record.status === answer.status && record.body !== null && record.body.equals(answer.body);
}

/** The only record allowed without an answer: a leased handler that outlived the timeout interceptor's 408. */
function completedWithoutAnswer(key: KeyPlan, record: StoredRecord): boolean {
  return key.mode === 'leased' && key.route === 'timed' && record.status === 408 && record.body === null;
}

/**
 * Sessions of the run's database idle inside a transaction, once those still ending have had
 * OPEN_TRANSACTIONS_GRACE_MS to go.
 */
async function openTransactions(client: pg.Client): Promise<string[]> {
  const deadline = Date.now() + OPEN_TRANSACTIONS_GRACE_MS;
  for (;;) {
    const { rows } = await client.query(
      `SELECT pid, state, round(extract(epoch FROM now() - xact_start) * 1000)::int AS open_ms,
              left(query, 200) AS query
         FROM pg_stat_activity
        WHERE datname = current_database() AND state IN ('idle in transaction', 'idle in transaction (aborted)')`,
    );
    if (rows.length === 0 || Date.now() >= deadline) {
      return rows.map((row) => `pid ${row.pid} ${row.state} for ${row.open_ms} ms, last statement: ${row.query}`);
    }
    await sleep(200);
  }
}

function parseAnswer(body: Buffer): Partial<EffectAnswer> | undefined {
  try {
    const json = JSON.parse(body.toString('utf8'));
    return json && typeof json === 'object' ? json : undefined;
  } catch {
    return undefined;
  }
}

function summarise(items: string[]): string {
  const counts = new Map<string, number>();
  for (const item of items) counts.set(item, (counts.get(item) ?? 0) + 1);
  return counts.size === 0 ? 'none' : [...counts].map(([item, n]) => `${item} ${n}`).join(', ');
}

main().then(
  (code) => process.exit(code),
  (error: unknown) => {
    console.error(`chaos: run failed: ${error instanceof Error ? error.stack : String(error)}`);
    process.exit(2);
  },
);

// npm run test:chaos — exactly-once under load and faults, end to end.
//
// Starts its own PostgreSQL (embedded, so it can restart it), three instances of the chaos app
// (test/chaos/chaos-app.ts; Express, Fastify, Express) and drives them from this process with
// 32 concurrent clients for CHAOS_LOAD_MS, at least CHAOS_SENDS (≥ 2,000) requests over 500 keys:
// random duplicates, concurrent duplicates of one key, client aborts, spread over the instances. Clients retry 503, other 5xx, 409
// idempotency_key_in_use / transaction_conflict and network errors with the same key and body. During
// the run one instance is SIGKILLed (while it has requests in flight) and started again, and
// PostgreSQL gets a fast shutdown and starts again. Then it checks, from the answers and the database:
//
//   duplicate_effects    effect rows beyond what the mode allows for one key (transactional: exactly
//                        one per 2xx record and none for a stored 4xx; leased: one, plus one per
//                        execution orphaned by a fault the module reported or by the SIGKILL)
//   mismatched_replays   2xx/4xx answers (first-hand or replayed) whose status or bytes differ from
//                        the key's final stored record (except first-hand answers of a leased key
//                        whose record the module reported it could not store: SPEC W12, counted
//                        as unstored_answers)
//   stuck_keys           in-flight records still not claimable one lease after the run
//   raw_tokens_stored    rows of any table holding a raw bearer token used in the run
//   cross_scope_replays  answers whose embedded scope is not the caller's
//   unexpected_5xx       5xx outside the database restart, and any 5xx other than 503
//   outage_503           503s of requests that overlapped the database restart (expected)
//
// Settings (env): CHAOS_SEED, CHAOS_SENDS (3000), CHAOS_LOAD_MS (45000), CHAOS_LOGS=1 (app logs on
// stderr), CHAOS_KEEP_LOGS=1 (keep the per-instance logs folder), CHAOS_SABOTAGE=shared-scope|
// raw-token|double-effect (break the app on purpose: the run must then fail; see chaos-app.ts).
import { type ChildProcess } from 'node:child_process';
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { createWriteStream, type WriteStream } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { DataSource } from 'typeorm';
import { startEmbeddedDatabase, type EmbeddedDatabase } from '../../sample/embedded-database';
import { CreateIdempotencyKeys1764288000000 } from '../../src';
import { keyHash } from '../../src/log-format';
import { startChildApp } from '../support/child-app';
import { attempt, type AttemptResult } from './attempt';
import { EFFECTS_SCHEMA, type EffectAnswer, type EffectRequest } from './effects';

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

interface KeyPlan {
  id: number;
  value: string;
  token: string;
  scope: string;
  hash: string;
  mode: 'tx' | 'leased';
  path: string;
  body: string;
  reject: boolean;
  delayMs: number;
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
    const delayMs = roll < 0.8 ? between(0, 20) : roll < 0.96 ? between(100, 400) : between(2500, 3200);
    const request: EffectRequest = { item: v, delayMs, reject: random() < 0.1 };
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
        path: `/effects/${mode}`,
        body: JSON.stringify(request),
        reject: request.reject ?? false,
        delayMs,
      });
    }
  }
  return keys;
}

/**
 * The load, generated as it is consumed. Keys come into use one after the other, spread over the
 * first 85 % of LOAD_MS, so first executions keep happening all along the run (and so during the
 * faults); a key's first request goes ahead of the queue. Between them, duplicates: half of them of
 * the 20 keys that came into use last (likely still in flight: concurrent retries), half of any key
 * in use; 20 % as a burst of 2-4 copies back to back, which idle clients pick up at once (a client
 * and its impatient retries, or a request fanned out by a proxy, likely on different instances).
 * 8 % of sends are aborted by the client. It ends once LOAD_MS has passed and at least SENDS were
 * handed out.
 */
function loadSource(keys: KeyPlan[], start: number): { next: () => Send | undefined; count: () => number } {
  const queue: Send[] = [];
  let index = 0;
  const make = (key: KeyPlan): Send => ({ index: index++, key, abortAfterMs: random() < 0.08 ? between(1, 60) : undefined, phase: 'load' });
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
  inFlight: Set<{ key: KeyPlan; sentAt: number }>;
  killedByUs: boolean;
}

const compiledApp = path.join(__dirname, 'chaos-app.js');
let logDir = '';
const logs: WriteStream[] = [];
const events: { name: string; hash: string; status: string; instance: string }[] = [];
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
      const match = /^EVENT (\S+) (\S+) (\S+)$/.exec(line);
      if (match) events.push({ name: match[1], hash: match[2], status: match[3], instance: name });
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
  status: number;
  body: Buffer;
  replayed: boolean;
  instance: string;
  phase: Send['phase'];
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
  '409 in_use',
  '409 tx_conflict',
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

/** One logical client request: the same key and body on every attempt until a final answer. */
async function runSend(send: Send, instances: Instance[]): Promise<void> {
  const { key } = send;
  const deadline = Date.now() + SEND_DEADLINE_MS;
  for (let n = 0; ; n++) {
    const instance = n === 0 ? instances[send.index % instances.length] : instances[between(0, instances.length - 1)];
    const name = label(instance);
    const flight = { key, sentAt: Date.now() };
    instance.inFlight.add(flight);
    httpRequests++;
    const result: AttemptResult = await attempt({
      url: instance.url,
      path: key.path,
      headers: { authorization: `Bearer ${key.token}`, 'idempotency-key': key.value },
      body: key.body,
      abortAfterMs: n === 0 ? send.abortAfterMs : undefined,
    });
    instance.inFlight.delete(flight);
    count(name, 'attempts');
    let retryIn: number;
    if (result.kind === 'network') {
      count(name, result.aborted ? 'aborted' : 'net error');
      retryIn = between(50, 300);
    } else {
      const { status, body } = result;
      const replayed = result.headers['idempotency-replayed'] === 'true';
      if (status >= 200 && status < 300) {
        count(name, replayed ? '201 replay' : '201');
        answers.push({ key, status, body, replayed, instance: name, phase: send.phase });
        return;
      }
      const code = errorCode(body);
      if (status === 409 && (code === 'idempotency_key_in_use' || code === 'transaction_conflict')) {
        count(name, code === 'idempotency_key_in_use' ? '409 in_use' : '409 tx_conflict');
        const retryAfter = Number(result.headers['retry-after'] ?? 1);
        retryIn = Math.round(Math.min(retryAfter, 1) * 1000 * (0.25 + random() * 0.5));
      } else if (status >= 500) {
        count(name, status === 503 ? '503' : '5xx other');
        fiveXX.push({ status, code, sentAt: result.sentAt, doneAt: result.doneAt, instance: name });
        retryIn = between(100, 400);
      } else {
        if (status === 422) count(name, replayed ? '422 replay' : '422');
        else {
          count(name, '4xx other');
          const what = `${status} ${code}`;
          otherOutcomes.set(what, (otherOutcomes.get(what) ?? 0) + 1);
        }
        answers.push({ key, status, body, replayed, instance: name, phase: send.phase });
        return;
      }
    }
    if (Date.now() + retryIn > deadline) {
      gaveUp.push(key);
      return;
    }
    await sleep(retryIn);
  }
}

/** IN_FLIGHT clients, each sending one logical request after the other (retries included) until `next` runs dry. */
async function runClients(next: () => Send | undefined, instances: Instance[]): Promise<void> {
  await Promise.all(
    Array.from({ length: IN_FLIGHT }, async () => {
      for (let send = next(); send; send = next()) await runSend(send, instances);
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
  const stopEverything = async () => {
    for (const instance of instances) await killInstance(instance).catch(() => undefined);
    await client?.end().catch(() => undefined);
    await database?.stop().catch(() => undefined);
    await rm(dataDir, { recursive: true, force: true });
    for (const log of logs) log.end();
    if (process.env.CHAOS_KEEP_LOGS === '1') console.error(`chaos: instance logs kept in ${logDir}`);
    else await rm(logDir, { recursive: true, force: true });
  };
  process.once('SIGINT', () => void stopEverything().finally(() => process.exit(130)));

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
        [...victim.inFlight].filter((f) => f.key.mode === mode && f.key.delayMs >= 100 && Date.now() - f.sentAt > 40).length;
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

    // ---- Collect the final state
    const records = new Map<string, { status: number | null; body: Buffer | null }>();
    for (const row of (await client.query('SELECT api_key_id, idem_key, response_status, response_body FROM idempotency_keys')).rows) {
      records.set(`${row.api_key_id}|${row.idem_key}`, { status: row.response_status, body: row.response_body });
    }
    const effects = new Map<string, { execution: string; epoch: string }[]>();
    for (const row of (await client.query('SELECT scope, idem_key, execution, epoch FROM effects')).rows) {
      const id = `${row.scope}|${row.idem_key}`;
      if (!effects.has(id)) effects.set(id, []);
      effects.get(id)!.push({ execution: row.execution, epoch: row.epoch });
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
    const explanations = new Map<string, { storeFailed: number; leaseLost: number; released5xx: number }>();
    const claims = new Map<string, number>();
    for (const event of events) {
      if (event.name === 'claimed') {
        claims.set(event.hash, (claims.get(event.hash) ?? 0) + 1);
        continue;
      }
      const entry = explanations.get(event.hash) ?? { storeFailed: 0, leaseLost: 0, released5xx: 0 };
      if (event.name === 'store_error' && Number(event.status) < 500) entry.storeFailed++;
      else if (event.name === 'lease_lost') entry.leaseLost++;
      else if (event.name === 'released' && Number(event.status) >= 500) entry.released5xx++;
      else continue;
      explanations.set(event.hash, entry);
    }
    // A lease is only lost to a takeover, a second claim of the record: a lease_lost event for a
    // record claimed once explains nothing (and is reported below as spurious).
    const keyByHash = new Map(keys.map((key) => [key.hash, key]));
    let spuriousLeaseLost = 0;
    for (const [hash, entry] of explanations) {
      const key = keyByHash.get(hash);
      const record = key && records.get(`${key.scope}|${key.value}`);
      if (entry.leaseLost > 0 && record && (claims.get(hash) ?? 0) <= 1) {
        spuriousLeaseLost += entry.leaseLost;
        entry.leaseLost = 0;
      }
    }
    const reasons = { killed: 0, storeFailed: 0, leaseLost: 0, released5xx: 0 };
    let duplicateEffects = 0;
    let explainedReexecutions = 0;
    let missingEffects = 0;
    let unfinishedKeys = 0;
    let effectCount = { tx: 0, leased: 0 };
    for (const key of keys) {
      const id = `${key.scope}|${key.value}`;
      const record = records.get(id);
      const rows = effects.get(id) ?? [];
      effectCount[key.mode] += rows.length;
      if (!record || record.status === null || record.body === null) {
        unfinishedKeys++;
        continue;
      }
      const stored = parseAnswer(record.body);
      if (key.mode === 'tx') {
        const expected = record.status < 300 ? 1 : 0;
        if (rows.length > expected) duplicateEffects += rows.length - expected;
        if (rows.length < expected || (expected === 1 && !rows.some((row) => row.execution === stored?.execution))) missingEffects++;
      } else {
        const explained = explanations.get(key.hash) ?? { storeFailed: 0, leaseLost: 0, released5xx: 0 };
        const killed = rows.filter((row) => killedEpochs.has(row.epoch) && row.execution !== stored?.execution).length;
        const orphans = killed + explained.storeFailed + explained.leaseLost + explained.released5xx;
        const allowed = 1 + orphans;
        if (rows.length > allowed) duplicateEffects += rows.length - allowed;
        if (rows.length > 1) {
          explainedReexecutions += Math.min(rows.length, allowed) - 1;
          reasons.killed += Math.min(killed, rows.length - 1);
          reasons.storeFailed += explained.storeFailed;
          reasons.leaseLost += explained.leaseLost;
          reasons.released5xx += explained.released5xx;
        }
        if (!rows.some((row) => row.execution === stored?.execution)) missingEffects++;
      }
    }

    let mismatched = 0;
    let unstoredAnswers = 0;
    let crossScope = 0;
    const mismatchSamples: string[] = [];
    for (const answer of answers) {
      const parsed = parseAnswer(answer.body);
      if (parsed && 'scope' in parsed && parsed.scope !== answer.key.scope) crossScope++;
      const record = records.get(`${answer.key.scope}|${answer.key.value}`);
      const same = record && record.status === answer.status && record.body !== null && record.body.equals(answer.body);
      if (same) continue;
      const explained = explanations.get(answer.key.hash);
      if (answer.key.mode === 'leased' && !answer.replayed && explained && explained.storeFailed + explained.leaseLost > 0) {
        unstoredAnswers++;
        continue;
      }
      mismatched++;
      if (mismatchSamples.length < 5) {
        mismatchSamples.push(
          `${answer.key.mode} key ${answer.key.value} via ${answer.instance}${answer.replayed ? ' (replayed)' : ''}: got ${answer.status} ${answer.body.toString().slice(0, 160)}; stored ${record?.status ?? 'nothing'} ${record?.body?.toString().slice(0, 160) ?? ''}`,
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
    out.push(`leased re-executions explained by a fault: ${explainedReexecutions} (effects of the killed process: ${reasons.killed}, store failed after the handler: ${reasons.storeFailed}, lease lost: ${reasons.leaseLost}, released after a 5xx: ${reasons.released5xx}); answers sent but not stored (W12): ${unstoredAnswers}`);
    out.push(`events from the apps: ${summarise(events.map((e) => `${e.name}${e.name === 'released' ? ` ${e.status}` : ''}`))}`);
    out.push(`lease_lost events for records claimed once (so no lease was lost): ${spuriousLeaseLost}`);
    out.push(`unfinished keys: ${unfinishedKeys}; keys whose stored answer has no matching effect: ${missingEffects}; clients that gave up: ${gaveUp.length}; instance crashes: ${crashes.length}`);
    if (otherOutcomes.size > 0) out.push(`other 4xx: ${summarise([...otherOutcomes].flatMap(([what, n]) => Array(n).fill(what)))}`);
    for (const [what, n] of [...unexpectedSamples].slice(0, 10)) out.push(`unexpected 5xx: ${n} × ${what}`);
    for (const sample of mismatchSamples) out.push(`mismatch: ${sample}`);
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
    };
    console.log(
      `chaos: requests=${httpRequests} keys=${keys.length} ${Object.entries(counters)
        .map(([name, value]) => `${name}=${value}`)
        .join(' ')} outage_503=${outage503}`,
    );
    const failed = Object.values(counters).some((value) => value !== 0);
    if (crashes.length > 0 || unfinishedKeys > 0 || missingEffects > 0) {
      console.error('chaos: an instance crashed, a key never completed or a stored answer has no effect: see the lines above');
      return 1;
    }
    return failed ? 1 : 0;
  } finally {
    await stopEverything();
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

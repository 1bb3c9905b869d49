import { randomUUID } from 'node:crypto';
import { idempotentRequest, IdempotentRequestError, type IdempotentRequestInit, type RetryEvent } from '../src/client';
import { startFaultProxy, type FaultProxy, type ProxyPlan } from './support/sample-fault-proxy';
import { startSample, type RunningSample } from './support/sample-server';

const UUID_V4 = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

// The safe-retry client against the live sample API, with failures injected on the real network
// path (a proxy in front of the app) and in the real database (a table lock). Whatever happens,
// one logical request mints exactly one key.
describe('idempotentRequest against the live sample API', () => {
  let sample: RunningSample;
  let proxy: FaultProxy | undefined;

  beforeAll(async () => {
    sample = await startSample();
  });
  afterEach(async () => {
    await proxy?.close();
    proxy = undefined;
  });
  afterAll(async () => {
    await sample?.close();
  });

  const through = async (plans: ProxyPlan[], then?: ProxyPlan) => {
    proxy = await startFaultProxy(sample.url, plans, then);
    return proxy;
  };
  const mintInit = (name: string, extra: IdempotentRequestInit = {}): IdempotentRequestInit => ({
    method: 'POST',
    headers: { Authorization: `Bearer ${sample.bootstrapKey}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({ name }),
    baseDelayMs: 10,
    ...extra,
  });
  const keysNamed = async (name: string) => Number((await sample.dataSource.query('SELECT count(*) AS n FROM api_keys WHERE name = $1', [name]))[0].n);
  /** The JSON of an answer of the sample (a key or an error envelope). */
  const jsonOf = async (response: Response) => (await response.json()) as { plain_key?: string; error?: { code: string } };
  const uniqueName = (label: string) => `${label} ${randomUUID().slice(0, 8)}`;
  /** Counts the attempts that really went out, whatever the client reports. */
  const countingFetch = () => {
    const calls: Request[] = [];
    const counted: typeof fetch = (input, init) => {
      calls.push(new Request(input, init));
      return fetch(input, init);
    };
    return { calls, fetch: counted };
  };

  it('gets the replay after the connection dropped once the server had committed: one key, same generated key on both attempts', async () => {
    const name = uniqueName('dropped answer');
    const { url, seen } = await through(['drop-response']);
    const retries: RetryEvent[] = [];
    const result = await idempotentRequest(`${url}/v1/keys`, mintInit(name, { onRetry: (retry) => retries.push(retry) }));
    expect(result.response.status).toBe(201);
    expect(result.replayed).toBe(true);
    expect(result.attempts).toBe(2);
    expect(result.idempotencyKey).toMatch(UUID_V4);
    expect(retries).toEqual([expect.objectContaining({ attempt: 1, reason: 'network_error' })]);
    expect(seen.map((request) => request.headers['idempotency-key'])).toEqual([result.idempotencyKey, result.idempotencyKey]);
    const body = await jsonOf(result.response);
    expect(body.plain_key).toMatch(/^ptmc_[A-Za-z0-9_-]{43}$/);
    expect(await keysNamed(name)).toBe(1);
  });

  it('retries a 503 answered before the request reached the app: the retry runs it for the first time', async () => {
    const name = uniqueName('behind a gateway');
    const { url, seen } = await through([{ status: 503 }]);
    const result = await idempotentRequest(`${url}/v1/keys`, mintInit(name, { idempotencyKey: 'mint-behind-gateway-1' }));
    expect(result.response.status).toBe(201);
    expect(result.replayed).toBe(false);
    expect(result.attempts).toBe(2);
    expect(seen.map((request) => request.headers['idempotency-key'])).toEqual(['mint-behind-gateway-1', 'mint-behind-gateway-1']);
    expect(await keysNamed(name)).toBe(1);
  });

  it('waits out a 409 idempotency_key_in_use from a concurrent duplicate, then gets the replay of the one execution', async () => {
    const name = uniqueName('concurrent duplicate');
    const idempotencyKey = randomUUID();
    // Hold every insert into api_keys: the first request to claim the key stays in flight.
    const lock = sample.dataSource.createQueryRunner();
    await lock.connect();
    await lock.startTransaction();
    await lock.query('LOCK TABLE api_keys IN EXCLUSIVE MODE');
    let released = false;
    const release = async () => {
      if (released) return;
      released = true;
      await lock.commitTransaction();
      await lock.release();
    };
    const retries: RetryEvent[] = [];
    try {
      const init = mintInit(name, {
        idempotencyKey,
        onRetry: (retry) => {
          retries.push(retry);
          void release();
        },
      });
      const results = await Promise.all([idempotentRequest(`${sample.url}/v1/keys`, init), idempotentRequest(`${sample.url}/v1/keys`, init)]);
      const [original, duplicate] = [...results].sort((a, b) => a.attempts - b.attempts);
      expect([original.attempts, original.replayed]).toEqual([1, false]);
      expect([duplicate.attempts, duplicate.replayed]).toEqual([2, true]);
      expect(retries).toEqual([expect.objectContaining({ attempt: 1, reason: 'idempotency_key_in_use', status: 409 })]);
      // The module answers in_use with Retry-After: 1, and the client did not come back sooner.
      expect(retries[0].delayMs).toBeGreaterThanOrEqual(1000);
      expect(await duplicate.response.text()).toBe(await original.response.text());
    } finally {
      await release();
    }
    expect(await keysNamed(name)).toBe(1);
  });

  it('honours Retry-After: the second attempt waits the seconds the server asked for', async () => {
    const name = uniqueName('retry after');
    const { url } = await through([{ status: 503, headers: { 'Retry-After': '1' } }]);
    const started = Date.now();
    const result = await idempotentRequest(`${url}/v1/keys`, mintInit(name));
    expect(Date.now() - started).toBeGreaterThanOrEqual(1000);
    expect(result.attempts).toBe(2);
    expect(result.response.status).toBe(201);
  });

  it('returns at once when Retry-After asks for longer than maxDelayMs', async () => {
    const { url } = await through([{ status: 503, headers: { 'Retry-After': '120' } }]);
    const started = Date.now();
    const result = await idempotentRequest(`${url}/v1/keys`, mintInit(uniqueName('long retry after'), { maxDelayMs: 1000 }));
    expect(Date.now() - started).toBeLessThan(1000);
    expect([result.attempts, result.response.status]).toEqual([1, 503]);
  });

  it('gives up after `retries` retries and hands back the last 5xx', async () => {
    const name = uniqueName('always down');
    const { url, seen } = await through([], { status: 502 });
    const result = await idempotentRequest(`${url}/v1/keys`, mintInit(name, { retries: 2 }));
    expect([result.attempts, result.response.status]).toEqual([3, 502]);
    expect(new Set(seen.map((request) => request.headers['idempotency-key'])).size).toBe(1);
    expect(await keysNamed(name)).toBe(0);
  });

  it('throws IdempotentRequestError with the key when every attempt fails on the network; the key resumes it later', async () => {
    const name = uniqueName('resumed');
    const { url } = await through([], 'reset');
    const error = await idempotentRequest(`${url}/v1/keys`, mintInit(name, { retries: 2 })).catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(IdempotentRequestError);
    const failure = error as IdempotentRequestError;
    expect(failure.attempts).toBe(3);
    expect(failure.idempotencyKey).toMatch(UUID_V4);
    const resumed = await idempotentRequest(`${sample.url}/v1/keys`, mintInit(name, { idempotencyKey: failure.idempotencyKey }));
    const again = await idempotentRequest(`${sample.url}/v1/keys`, mintInit(name, { idempotencyKey: failure.idempotencyKey }));
    expect([resumed.response.status, resumed.replayed, again.replayed]).toEqual([201, false, true]);
    expect(await keysNamed(name)).toBe(1);
  });

  it('never retries a 400', async () => {
    const { calls, fetch } = countingFetch();
    const result = await idempotentRequest(`${sample.url}/v1/keys`, mintInit('', { fetch }));
    expect([result.response.status, result.attempts, calls.length]).toEqual([400, 1, 1]);
    expect((await jsonOf(result.response)).error?.code).toBe('invalid_parameter');
  });

  it('never retries a 401', async () => {
    const { calls, fetch } = countingFetch();
    const result = await idempotentRequest(`${sample.url}/v1/keys`, {
      ...mintInit(uniqueName('unauthenticated'), { fetch }),
      headers: { Authorization: `Bearer ptmc_${'A'.repeat(43)}`, 'Content-Type': 'application/json' },
    });
    expect([result.response.status, result.attempts, calls.length]).toEqual([401, 1, 1]);
  });

  it('never retries a 409 idempotency_key_conflict', async () => {
    const idempotencyKey = randomUUID();
    const first = await idempotentRequest(`${sample.url}/v1/keys`, mintInit(uniqueName('first intent'), { idempotencyKey }));
    expect(first.response.status).toBe(201);
    const { calls, fetch } = countingFetch();
    const reused = await idempotentRequest(`${sample.url}/v1/keys`, mintInit(uniqueName('other intent'), { idempotencyKey, fetch }));
    expect([reused.response.status, reused.attempts, calls.length]).toEqual([409, 1, 1]);
    expect((await jsonOf(reused.response)).error?.code).toBe('idempotency_key_conflict');
  });

  it('uses an Idempotency-Key already in the headers, and refuses an invalid key or a stream body before sending anything', async () => {
    const name = uniqueName('key from headers');
    const init = mintInit(name);
    const result = await idempotentRequest(`${sample.url}/v1/keys`, { ...init, headers: { ...(init.headers as Record<string, string>), 'Idempotency-Key': 'from-headers-1' } });
    expect(result.idempotencyKey).toBe('from-headers-1');
    const { calls, fetch } = countingFetch();
    await expect(idempotentRequest(`${sample.url}/v1/keys`, mintInit(name, { idempotencyKey: 'clé', fetch }))).rejects.toThrow(TypeError);
    await expect(
      idempotentRequest(`${sample.url}/v1/keys`, mintInit(name, { fetch, body: new Blob(['{}']).stream() })),
    ).rejects.toThrow(/stream body/);
    expect(calls).toHaveLength(0);
  });

  it('stops waiting as soon as the caller aborts', async () => {
    const { url } = await through([], { status: 503, headers: { 'Retry-After': '5' } });
    const controller = new AbortController();
    setTimeout(() => controller.abort(new Error('caller gave up')), 100);
    const started = Date.now();
    await expect(idempotentRequest(`${url}/v1/keys`, mintInit(uniqueName('aborted'), { signal: controller.signal }))).rejects.toThrow('caller gave up');
    expect(Date.now() - started).toBeLessThan(2000);
  });
});

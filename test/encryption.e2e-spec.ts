import diagnostics_channel from 'node:diagnostics_channel';
import { randomBytes, randomUUID } from 'node:crypto';
import { IDEMPOTENCY_CHANNELS, IdempotencyService, type IdempotencyEvent, type IdempotencyModuleOptions } from '../src';
import { resolveEncryption } from '../src/encryption/encryption-options';
import { RecordSealer } from '../src/encryption/record-sealer';
import { PLATFORMS, ThingsController, bootFixture, type FixtureApp, type Platform } from './support/fixture-app';
import { authed, scopeOf, send, type WireResponse } from './support/http-client';
import { LEDGER_SCHEMA, LedgerController } from './support/ledger-controller';
import { createTestDatabase, type TestDatabase } from './support/test-database';
import { waitFor } from './support/wait-for';

const K1 = { id: 'k1', secret: randomBytes(32) };
const K2 = { id: 'k2', secret: randomBytes(32).toString('base64') };

// Sealed records: what reaches PostgreSQL, what replays, and what never does.
describe.each(PLATFORMS)('Encrypted records (%s)', (platform: Platform) => {
  let database: TestDatabase;
  let sealed: FixtureApp;
  const others: FixtureApp[] = [];
  const unreadable: IdempotencyEvent[] = [];
  const onUnreadable = (message: unknown) => unreadable.push(message as IdempotencyEvent);

  const boot = async (options: IdempotencyModuleOptions) => {
    const app = await bootFixture(database.url, { controllers: [ThingsController, LedgerController], options, platform });
    others.push(app);
    return app;
  };

  beforeAll(async () => {
    database = await createTestDatabase();
    sealed = await bootFixture(database.url, { controllers: [ThingsController, LedgerController], options: { encryption: { keys: [K1] } }, platform });
    await sealed.dataSource.query(LEDGER_SCHEMA);
    diagnostics_channel.subscribe(IDEMPOTENCY_CHANNELS.unreadable, onUnreadable);
  });
  afterAll(async () => {
    diagnostics_channel.unsubscribe(IDEMPOTENCY_CHANNELS.unreadable, onUnreadable);
    for (const app of [sealed, ...others]) await app?.close();
    await database?.drop();
  });
  afterEach(async () => {
    for (const app of [sealed, ...others]) app?.probe.openAll();
    while (others.length) await others.pop()!.close();
  });

  const post = (app: FixtureApp, path: string, token: string, key: string, body: unknown = { a: 1 }, extra: [string, string][] = []) =>
    send(app.url, { path, headers: authed(token, key, extra), body });
  const stored = async (key: string) =>
    (
      await sealed.dataSource.query(
        `SELECT api_key_id, fingerprint, response_status, response_headers, response_body FROM idempotency_keys WHERE idem_key = $1`,
        [key],
      )
    )[0];
  const expectReplayOf = (replay: WireResponse, first: WireResponse) => {
    expect(replay.status).toBe(first.status);
    expect(replay.headers['idempotency-replayed']).toBe('true');
    expect(replay.body.equals(first.body)).toBe(true);
  };
  const expectUnreadable = (response: WireResponse) => {
    expect(response.status).toBe(409);
    expect(response.headers['idempotency-replayed']).toBeUndefined();
    expect(response.json.error).toMatchObject({
      type: 'idempotency_error',
      code: 'idempotency_record_unreadable',
      param: null,
      docs_url: 'https://docs.patomic.dev/errors/idempotency-record-unreadable',
      suggestion: expect.any(String),
    });
  };

  describe('what is stored', () => {
    it('keeps the status and the fingerprint in clear and seals headers and body; the retry replays them byte for byte', async () => {
      const token = randomUUID();
      const key = randomUUID();
      const first = await post(sealed, '/things/text', token, key);
      expect(first.status).toBe(202);
      const row = await stored(key);
      expect(row.response_status).toBe(202);
      expect(row.fingerprint).toMatch(/^[0-9a-f]{64}$/);
      expect(row.response_headers).toEqual({ ':sealed': 'k1' });
      const text = first.body.toString();
      for (const clear of [text, text.slice(6), 'custom-', '/things/1', 'text/plain']) {
        expect(row.response_body.includes(Buffer.from(clear))).toBe(false);
        expect(row.response_body.toString('hex')).not.toContain(Buffer.from(clear).toString('hex'));
      }
      const replay = await post(sealed, '/things/text', token, key);
      expectReplayOf(replay, first);
      for (const header of ['x-custom', 'location', 'content-type']) expect(replay.headers[header]).toBe(first.headers[header]);
      expect(sealed.probe.count('text')).toBeGreaterThanOrEqual(1);
    });

    it('seals a transactional answer inside its transaction', async () => {
      const token = randomUUID();
      const key = randomUUID();
      const note = `secret note ${randomUUID()}`;
      const first = await post(sealed, '/ledger', token, key, { note });
      expect(first.status).toBe(201);
      const row = await stored(key);
      expect(row.response_headers).toEqual({ ':sealed': 'k1' });
      expect(row.response_body.includes(first.body)).toBe(false);
      const before = sealed.probe.count('ledger');
      expectReplayOf(await post(sealed, '/ledger', token, key, { note }), first);
      expect(sealed.probe.count('ledger')).toBe(before);
    });

    it('seals answers completed together in one statement, each under its own record', async () => {
      const token = randomUUID();
      const keys = Array.from({ length: 12 }, () => randomUUID());
      const firsts = await Promise.all(keys.map((key, n) => post(sealed, '/things', token, key, { n })));
      for (const [n, key] of keys.entries()) {
        const row = await stored(key);
        expect(row.response_headers).toEqual({ ':sealed': 'k1' });
        expect(row.response_body.includes(firsts[n].body)).toBe(false);
        expectReplayOf(await post(sealed, '/things', token, key, { n }), firsts[n]);
      }
    });

    it('replays a sealed body over 64 KiB, read back in pieces', async () => {
      const token = randomUUID();
      const key = randomUUID();
      const first = await post(sealed, '/things/bulky', token, key);
      expect(first.body.length).toBeGreaterThan(256 * 1024);
      expect((await stored(key)).response_headers).toEqual({ ':sealed': 'k1' });
      expectReplayOf(await post(sealed, '/things/bulky', token, key), first);
    });

    it('leaves a record whose body was not stored as it is: no headers kept, and the retry gets not_stored', async () => {
      const small = await boot({ maxResponseBytes: 1000, encryption: { keys: [K1] } });
      const token = randomUUID();
      const key = randomUUID();
      expect((await post(small, '/things/large', token, key)).status).toBe(201);
      // An answer over the cap streams out as it is written; its record completes after.
      await waitFor(async () => (await stored(key)).response_status !== null);
      const row = await stored(key);
      expect([row.response_status, row.response_headers, row.response_body]).toEqual([201, {}, null]);
      expect((await post(small, '/things/large', token, key)).json.error.code).toBe('idempotency_response_not_stored');
    });
  });

  describe('a record it cannot open is never replayed and never runs the handler again', () => {
    const firstAnswer = async () => {
      const token = randomUUID();
      const key = randomUUID();
      const first = await post(sealed, '/things', token, key, { secret: key });
      expect(first.status).toBe(201);
      return { token, key, first, runs: sealed.probe.count('create') };
    };
    const expectRefused = async (app: FixtureApp, token: string, key: string, runs: number) => {
      unreadable.length = 0;
      const response = await post(app, '/things', token, key, { secret: key });
      expectUnreadable(response);
      expect(sealed.probe.count('create')).toBe(runs);
      expect(app.probe.count('create')).toBe(app === sealed ? runs : 0);
      expect(unreadable).toEqual([expect.objectContaining({ name: 'unreadable', status: 409, keyHash: expect.stringMatching(/^[0-9a-f]{16}$/), error: expect.any(String) })]);
      return response;
    };

    it('a body changed in the table (one bit)', async () => {
      const { token, key, runs } = await firstAnswer();
      await sealed.dataSource.query(`UPDATE idempotency_keys SET response_body = set_byte(response_body, 60, get_byte(response_body, 60) # 1) WHERE idem_key = $1`, [key]);
      await expectRefused(sealed, token, key, runs);
    });

    it('a status changed in the table', async () => {
      const { token, key, runs } = await firstAnswer();
      await sealed.dataSource.query(`UPDATE idempotency_keys SET response_status = 200 WHERE idem_key = $1`, [key]);
      await expectRefused(sealed, token, key, runs);
    });

    it('a record copied to another scope', async () => {
      const { key, runs } = await firstAnswer();
      const other = randomUUID();
      await sealed.dataSource.query(
        `INSERT INTO idempotency_keys (api_key_id, idem_key, fingerprint, fence, expires_at, created_at, completed_at, response_status, response_headers, response_body)
         SELECT $2, idem_key, fingerprint, fence, expires_at, created_at, completed_at, response_status, response_headers, response_body FROM idempotency_keys WHERE idem_key = $1`,
        [key, scopeOf(other)],
      );
      await expectRefused(sealed, other, key, runs);
    });

    it('a record moved to another key', async () => {
      const { token, key, runs } = await firstAnswer();
      const moved = randomUUID();
      await sealed.dataSource.query(`UPDATE idempotency_keys SET idem_key = $2 WHERE idem_key = $1`, [key, moved]);
      unreadable.length = 0;
      // The fingerprint covers the body, which names the first key: send exactly that body under the new key.
      expectUnreadable(await post(sealed, '/things', token, moved, { secret: key }));
      expect(sealed.probe.count('create')).toBe(runs);
      expect(unreadable).toHaveLength(1);
    });

    it('a record sealed under a key no longer in the ring', async () => {
      const { token, key, runs } = await firstAnswer();
      const rotated = await boot({ encryption: { keys: [K2] } });
      const response = await expectRefused(rotated, token, key, runs);
      expect(response.json.error.message).toMatch(/cannot be opened/);
      expect(unreadable[0].error).toMatch(/"k1"/);
    });

    it('a sealed record met by a module whose encryption is off: never the ciphertext as the answer', async () => {
      const { token, key, runs } = await firstAnswer();
      const clear = await boot({});
      await expectRefused(clear, token, key, runs);
    });
  });

  describe('key rotation', () => {
    it('opens records sealed under any listed key and seals new ones under the first', async () => {
      const token = randomUUID();
      const old = randomUUID();
      const first = await post(sealed, '/things', token, old);
      const rotated = await boot({ encryption: { keys: [K2, K1] } });
      expectReplayOf(await post(rotated, '/things', token, old), first);
      const fresh = randomUUID();
      await post(rotated, '/things', token, fresh);
      expect((await stored(fresh)).response_headers).toEqual({ ':sealed': 'k2' });
      expect((await stored(old)).response_headers).toEqual({ ':sealed': 'k1' });
    });

    it('re-seals live records under the newest key in batches while traffic goes on, so the old key can be retired', async () => {
      const token = randomUUID();
      const keys = Array.from({ length: 30 }, () => randomUUID());
      const firsts = new Map<string, Buffer>();
      for (const key of keys) firsts.set(key, (await post(sealed, '/things', token, key, { key })).body);
      const runs = sealed.probe.count('create');
      const rotated = await boot({ encryption: { keys: [K2, K1] } });

      // Replays of the records being re-sealed, and new keys, all the while.
      let traffic = true;
      const problems: string[] = [];
      const load = (async () => {
        for (let n = 0; traffic || n < keys.length; n++) {
          const key = keys[n % keys.length];
          const replay = await post(rotated, '/things', token, key, { key });
          if (replay.headers['idempotency-replayed'] !== 'true' || !replay.body.equals(firsts.get(key)!)) problems.push(`${key}: ${replay.status} ${replay.body}`);
          const fresh = await post(rotated, '/things', token, randomUUID());
          if (fresh.status !== 201) problems.push(`fresh: ${fresh.status}`);
        }
      })();
      const resealed = await rotated.app.get(IdempotencyService).reencrypt({ batchSize: 4 });
      traffic = false;
      await load;
      expect(problems).toEqual([]);
      expect(resealed).toBeGreaterThanOrEqual(keys.length);
      for (const key of keys) expect((await stored(key)).response_headers).toEqual({ ':sealed': 'k2' });

      // k1 retired: every record still replays, and no handler ran again.
      const retired = await boot({ encryption: { keys: [K2] } });
      for (const key of keys) {
        const replay = await post(retired, '/things', token, key, { key });
        expect(replay.headers['idempotency-replayed']).toBe('true');
        expect(replay.body.equals(firsts.get(key)!)).toBe(true);
      }
      expect(sealed.probe.count('create')).toBe(runs);
      expect(retired.probe.count('create')).toBe(0);
      expect(await rotated.app.get(IdempotencyService).reencrypt()).toBe(0);
    });

    it('refuses reencrypt() without the encryption option, saying how to fix it', async () => {
      const clear = await boot({});
      await expect(clear.app.get(IdempotencyService).reencrypt()).rejects.toThrow(/needs the "encryption" option/);
    });
  });

  describe('bindToCaller', () => {
    const keys = [K1];

    it('replays to the caller whose bearer token sealed the record; the server secret and the table alone open nothing', async () => {
      const bound = await boot({ encryption: { keys, bindToCaller: true } });
      const token = `tok_${randomUUID()}`;
      const key = randomUUID();
      const first = await post(bound, '/things', token, key);
      expectReplayOf(await post(bound, '/things', token, key), first);

      const row = await stored(key);
      const record = { status: row.response_status, headers: row.response_headers, body: row.response_body };
      const serverOnly = await new RecordSealer(resolveEncryption({ keys })!).cipherFor({ headers: {} }, row.api_key_id, key);
      expect(() => serverOnly!.open(record)).toThrow(/bound to its caller/);
      const wrongCaller = await new RecordSealer(resolveEncryption({ keys, bindToCaller: true })!).cipherFor(
        { headers: { authorization: 'Bearer tok_guess' } },
        row.api_key_id,
        key,
      );
      expect(() => wrongCaller!.open(record)).toThrow(/does not authenticate/);
      const rightCaller = await new RecordSealer(resolveEncryption({ keys, bindToCaller: true })!).cipherFor(
        { headers: { authorization: `Bearer ${token}` } },
        row.api_key_id,
        key,
      );
      expect(rightCaller!.open(record).body?.equals(first.body)).toBe(true);
    });

    it('answers another token of the same custom scope record_unreadable, never a second run', async () => {
      const account = (request: { headers: Record<string, string> }) => request.headers['x-account'];
      const bound = await boot({ scope: account, encryption: { keys, bindToCaller: true } });
      const key = randomUUID();
      const accountHeader: [string, string][] = [['x-account', `acct_${randomUUID()}`]];
      const first = await post(bound, '/things', 'tok_old', key, { a: 1 }, accountHeader);
      expect(first.status).toBe(201);
      unreadable.length = 0;
      expectUnreadable(await post(bound, '/things', 'tok_new', key, { a: 1 }, accountHeader));
      expect(bound.probe.count('create')).toBe(1);
      expect(unreadable).toHaveLength(1);
      expectReplayOf(await post(bound, '/things', 'tok_old', key, { a: 1 }, accountHeader), first);
    });

    it('takes the caller secret from callerSecret when given, and answers 401 when it resolves to nothing', async () => {
      const bound = await boot({
        scope: (request: { headers: Record<string, string> }) => request.headers['x-account'],
        encryption: { keys, bindToCaller: true, callerSecret: (request: { headers: Record<string, string> }) => request.headers['x-account-secret'] },
      });
      const key = randomUUID();
      const account: [string, string] = ['x-account', `acct_${randomUUID()}`];
      const first = await post(bound, '/things', 'tok_a', key, { a: 1 }, [account, ['x-account-secret', 's3cret']]);
      // Another bearer token, the same account secret: the same caller.
      expectReplayOf(await post(bound, '/things', 'tok_b', key, { a: 1 }, [account, ['x-account-secret', 's3cret']]), first);
      expectUnreadable(await post(bound, '/things', 'tok_a', key, { a: 1 }, [account, ['x-account-secret', 'other']]));
      const missing = await post(bound, '/things', 'tok_a', randomUUID(), { a: 1 }, [account]);
      expect(missing.status).toBe(401);
      expect(missing.json.error.code).toBe('idempotency_scope_unresolved');
      expect(bound.probe.count('create')).toBe(1);
    });
  });
});


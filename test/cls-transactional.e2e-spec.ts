import { randomUUID } from 'node:crypto';
import { DataSource } from 'typeorm';
import { compileEntry, startChildApp, type ChildApp } from './support/child-app';
import { PLATFORMS } from './support/fixture-app';
import { authed, send } from './support/http-client';
import { LEDGER_SCHEMA } from './support/ledger-controller';
import { createTestDatabase, type TestDatabase } from './support/test-database';

// IdempotencyClsModule: on a transactional route, @nestjs-cls/transactional's transaction is the
// request's. The app runs in a child process (see test/support/cls-child.ts for why).
describe('@nestjs-cls/transactional joins the idempotency transaction', () => {
  let database: TestDatabase;
  let dataSource: DataSource;
  let compiled: string;

  beforeAll(async () => {
    database = await createTestDatabase();
    dataSource = await new DataSource({ type: 'postgres', url: database.url }).initialize();
    await dataSource.query(LEDGER_SCHEMA);
    compiled = compileEntry('test/support/cls-child.ts');
  }, 60_000);
  afterAll(async () => {
    await dataSource?.destroy();
    await database?.drop();
  });

  it('refuses to start without the transactional plugin of nestjs-cls, saying how to fix it', async () => {
    const start = startChildApp(compiled, { DATABASE_URL: database.url, CLS_PLUGIN: 'none' });
    await expect(start).rejects.toThrow(/IdempotencyClsModule found no TransactionHost.*ClsPluginTransactional/);
  });

  describe.each(PLATFORMS)('on %s', (platform) => {
    let child: ChildApp;
    let token: string;

    beforeAll(async () => {
      child = await startChildApp(compiled, { DATABASE_URL: database.url, PLATFORM: platform });
    }, 30_000);
    afterAll(() => {
      child?.process.kill('SIGKILL');
    });
    beforeEach(() => {
      token = `tok_${randomUUID()}`;
    });

    const post = (path: string, key: string | undefined, body: { note: string; fail?: boolean }) =>
      send(child.url, { path, headers: authed(token, key), body });
    const notes = async (note: string): Promise<string[]> => {
      const sql = 'SELECT note FROM ledger WHERE note LIKE $1 ORDER BY note';
      const rows: { note: string }[] = await dataSource.query(sql, [`${note}:%`]);
      return rows.map((row) => row.note);
    };
    const every = (note: string) => [`${note}:decorated`, `${note}:host`, `${note}:injected`];

    it("gives the handler's services the request's transaction: their writes commit with the answer", async () => {
      const key = randomUUID();
      const note = randomUUID();
      const first = await post('/cls/ledger', key, { note });
      expect(first.status).toBe(201);
      // TransactionHost.tx was the request's EntityManager, and nothing was committed before the answer.
      expect(first.json).toEqual({ run: 1, active: true, same: true, visibleOutside: 0 });
      expect(await notes(note)).toEqual(every(note));
      const replay = await post('/cls/ledger', key, { note });
      expect(replay.headers['idempotency-replayed']).toBe('true');
      expect(replay.body.equals(first.body)).toBe(true);
      expect(await notes(note)).toEqual(every(note));
    });

    it('rolls their writes back with the claim on a 5xx, so the retry runs again and writes once', async () => {
      const key = randomUUID();
      const note = randomUUID();
      expect((await post('/cls/ledger', key, { note, fail: true })).status).toBe(500);
      expect(await notes(note)).toEqual([]);
      const retry = await post('/cls/ledger', key, { note, fail: true });
      expect(retry.status).toBe(201);
      expect(retry.json.run).toBe(2);
      expect(await notes(note)).toEqual(every(note));
    });

    it('gives a request without a key its transaction too', async () => {
      const note = randomUUID();
      const answer = await post('/cls/ledger', undefined, { note });
      expect(answer.json).toEqual({ run: 1, active: true, same: true, visibleOutside: 0 });
      expect(await notes(note)).toEqual(every(note));
    });

    it('leaves routes that are not transactional to @nestjs-cls/transactional alone', async () => {
      const note = randomUUID();
      const answer = await post('/cls/plain', undefined, { note });
      expect(answer.json).toEqual({ before: false });
      expect(await notes(note)).toEqual([`${note}:decorated`]);
    });
  });
});

import { randomUUID } from 'node:crypto';
import { DataSource } from 'typeorm';
import { compileEntry, startChildApp, type ChildApp } from './support/child-app';
import { authed, send } from './support/http-client';
import { LEDGER_SCHEMA } from './support/ledger-controller';
import { createTestDatabase, type TestDatabase } from './support/test-database';

// SPEC §4: a process killed between the handler's write and COMMIT leaves nothing behind.
describe('A transactional request whose process is killed mid-flight', () => {
  let database: TestDatabase;
  let dataSource: DataSource;
  let compiled: string;
  const children: ChildApp[] = [];

  beforeAll(async () => {
    database = await createTestDatabase();
    dataSource = await new DataSource({ type: 'postgres', url: database.url }).initialize();
    await dataSource.query(LEDGER_SCHEMA);
    compiled = compileEntry('test/support/crash-child.ts');
  }, 60_000);
  afterAll(async () => {
    for (const child of children) child.process.kill('SIGKILL');
    await dataSource?.destroy();
    await database?.drop();
  });

  it('lets a new process serve the retry at once: exactly one business row, then byte-identical replays', async () => {
    const token = randomUUID();
    const key = randomUUID();
    const note = randomUUID();
    const doomed = await startChildApp(compiled, { DATABASE_URL: database.url, CRASH_AFTER_WRITE: '1' });
    children.push(doomed);
    const lost = send(doomed.url, { path: '/crash', headers: authed(token, key), body: { note } }).then(
      () => 'answered',
      (error: Error) => error.message,
    );
    await doomed.printed('WROTE');
    doomed.process.kill('SIGKILL');
    expect(await lost).toMatch(/socket hang up|ECONNRESET/);

    const survivor = await startChildApp(compiled, { DATABASE_URL: database.url });
    children.push(survivor);
    const startedAt = Date.now();
    const retry = await send(survivor.url, { path: '/crash', headers: authed(token, key), body: { note } });
    expect(retry.status).toBe(201);
    // No lease to wait out: the killed transaction rolled back the claim with the write.
    expect(Date.now() - startedAt).toBeLessThan(2000);
    const [{ n }] = await dataSource.query('SELECT count(*)::int AS n FROM ledger WHERE note = $1', [note]);
    expect(n).toBe(1);
    const replay = await send(survivor.url, { path: '/crash', headers: authed(token, key), body: { note } });
    expect(replay.headers['idempotency-replayed']).toBe('true');
    expect(replay.body.equals(retry.body)).toBe(true);
  });
});

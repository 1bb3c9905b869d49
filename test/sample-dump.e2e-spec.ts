import type { NestExpressApplication } from '@nestjs/platform-express';
import { execFile } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { chmod, mkdtemp, readdir, readFile, rm, stat } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import pg from 'pg';
import { loadRecordSecret, RECORD_SECRET_FILE } from '../sample/config/record-secret';
import { startEmbeddedDatabase, type EmbeddedDatabase } from '../sample/embedded-database';
import { bootstrapApiKey, createSampleApp } from '../sample/sample-app';
import { authed, send } from './support/http-client';

const execFileAsync = promisify(execFile);

/**
 * Every form in which `secret` could sit in a dump or a data file: as text, as hex (how pg_dump
 * writes bytea) in either case, and as base64 or base64url at each of the three byte alignments
 * (for base64, only the characters that depend on the secret's bytes alone).
 */
function encodingsOf(secret: string): Buffer[] {
  const bytes = Buffer.from(secret);
  const forms = [secret, bytes.toString('hex'), bytes.toString('hex').toUpperCase()];
  for (let shift = 0; shift < 3; shift++) {
    const base64 = Buffer.concat([Buffer.alloc(shift), bytes]).toString('base64').slice(4, -4);
    forms.push(base64, base64.replace(/\+/g, '-').replace(/\//g, '_'));
  }
  return forms.map((form) => Buffer.from(form));
}

const foundIn = (haystack: Buffer, needles: Buffer[]) => needles.some((needle) => haystack.includes(needle));

/** Every file under `dir`, recursively: heap and TOAST files, WAL, everything a base backup copies. */
async function filesUnder(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { withFileTypes: true, recursive: true });
  return entries.filter((entry) => entry.isFile()).map((entry) => path.join(entry.parentPath, entry.name));
}

/** A pg_dump that can dump this server (its major version at least the server's), or undefined. */
async function compatiblePgDump(serverMajor: number): Promise<string | undefined> {
  for (const candidate of [process.env.PG_DUMP, 'pg_dump'].filter((name): name is string => Boolean(name))) {
    const version = await execFileAsync(candidate, ['--version']).then(
      ({ stdout }) => /(\d+)\.\d+/.exec(stdout)?.[1],
      () => undefined,
    );
    if (version !== undefined && Number(version) >= serverMajor) return candidate;
  }
  return undefined;
}

/**
 * The database as a dump holds it: pg_dump's plain output when a compatible pg_dump is installed;
 * otherwise (the embedded server's npm package ships no pg_dump) every row of every table of the
 * database as PostgreSQL renders it as text, which is what COPY and pg_dump write for each row.
 */
async function dumpDatabase(url: string): Promise<{ dump: Buffer; by: string }> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    const { server_version_num: version } = (await client.query('SHOW server_version_num')).rows[0];
    const serverMajor = Math.floor(Number(version) / 10_000);
    const pgDump = await compatiblePgDump(serverMajor);
    if (pgDump) {
      const dumped = await execFileAsync(pgDump, ['--dbname', url], { encoding: 'buffer', maxBuffer: 256 * 2 ** 20 });
      return { dump: dumped.stdout, by: pgDump };
    }
    const { rows: tables } = await client.query(
      `SELECT format('%I.%I', schemaname, tablename) AS name FROM pg_tables
       WHERE schemaname NOT IN ('pg_catalog', 'information_schema')`,
    );
    const rows: string[] = [];
    for (const { name } of tables) {
      const { rows: lines } = await client.query(`SELECT t::text AS line FROM ${name} t`);
      for (const { line } of lines) rows.push(`${name} ${line}`);
    }
    return { dump: Buffer.from(rows.join('\n')), by: 'every table read as text' };
  } finally {
    await client.end();
  }
}

// The sample's minted keys never rest in clear: not in a dump, not in the server's files.
describe('Sample API: a minted plain_key in a dump of its database', () => {
  let dataDir: string;
  let database: EmbeddedDatabase;
  let app: NestExpressApplication;
  let url: string;

  beforeAll(async () => {
    dataDir = await mkdtemp(path.join(os.tmpdir(), 'sample-dump-'));
    // As root, PostgreSQL runs as "postgres" and must traverse the folder (main.ts makes .data/ 711).
    await chmod(dataDir, 0o711);
    database = await startEmbeddedDatabase({ dataDir: path.join(dataDir, 'postgres'), persistent: false });
    // Loaded the way main.ts loads it: generated into the data folder on first use.
    const recordSecret = await loadRecordSecret(dataDir, {});
    app = await createSampleApp(database.url, { keySecret: randomBytes(32), recordSecret, logger: false });
    await app.listen(0, '127.0.0.1');
    url = `http://127.0.0.1:${(app.getHttpServer().address() as AddressInfo).port}`;
  }, 60_000);
  afterAll(async () => {
    await app?.close();
    await database?.stop();
    if (dataDir) await rm(dataDir, { recursive: true, force: true });
  });

  it('keeps the record secret in the data folder, readable by its owner only', async () => {
    expect((await stat(path.join(dataDir, RECORD_SECRET_FILE))).mode & 0o777).toBe(0o600);
  });

  it('finds the plain key nowhere after a mint, in the dump or any file of the server; the retry replays it', async () => {
    const bootstrapKey = (await bootstrapApiKey(app))!;
    const idempotencyKey = randomUUID();
    const body = { name: 'dumped', rate_limit_rpm: 10 };
    const request = { path: '/v1/keys', headers: authed(bootstrapKey, idempotencyKey), body };
    const minted = await send(url, request);
    expect(minted.status).toBe(201);
    const plainKey: string = minted.json.plain_key;
    const replayed = await send(url, request);
    expect(replayed.headers['idempotency-replayed']).toBe('true');
    expect(replayed.body.equals(minted.body)).toBe(true);

    // A control: the same checks find a key-like value that is stored in clear, as text and as bytea.
    const canary = `ptmc_${randomBytes(32).toString('base64url')}`;
    const client = new pg.Client({ connectionString: database.url });
    await client.connect();
    try {
      await client.query('CREATE TABLE dump_canary (as_text text, as_bytes bytea)');
      const [asText, asBytes] = [canary.slice(0, 30), Buffer.from(canary.slice(30))];
      await client.query('INSERT INTO dump_canary VALUES ($1, $2)', [asText, asBytes]);
      // Flush every dirty page to the heap files (WAL has the rows already).
      await client.query('CHECKPOINT');
    } finally {
      await client.end();
    }

    // What the prefix column shows in clear is not a secret; the rest of the key is.
    const secret = encodingsOf(plainKey.slice(13));
    const { dump, by } = await dumpDatabase(database.url);
    expect(dump.includes(Buffer.from(idempotencyKey))).toBe(true);
    expect(foundIn(dump, encodingsOf(canary.slice(5, 30))) && foundIn(dump, encodingsOf(canary.slice(30)))).toBe(true);
    expect({ by, found: foundIn(dump, secret) }).toEqual({ by, found: false });

    const files = await filesUnder(path.join(dataDir, 'postgres'));
    let sawCanary = false;
    for (const file of files) {
      const bytes = await readFile(file).catch(() => Buffer.alloc(0));
      expect({ file, found: foundIn(bytes, secret) }).toEqual({ file, found: false });
      sawCanary ||= foundIn(bytes, encodingsOf(canary.slice(30)));
    }
    expect(sawCanary).toBe(true);
  });
});

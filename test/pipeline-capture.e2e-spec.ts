import {
  Controller,
  type INestApplication,
  InternalServerErrorException,
  Param,
  Post,
  StreamableFile,
} from '@nestjs/common';
import type { NestFastifyApplication } from '@nestjs/platform-fastify';
import { randomUUID } from 'node:crypto';
import { Readable } from 'node:stream';
import { Idempotent } from '../src';
import { rawRequest, type RawRequest } from './chaos/raw-http';
import { PLATFORMS, Probe, bootFixture, type FixtureApp } from './support/fixture-app';
import { authed, scopeOf } from './support/http-client';
import { createTestDatabase, type TestDatabase } from './support/test-database';
import { waitFor } from './support/wait-for';

/** The capture holds a body up to this many bytes, and streams a larger one out. */
const MAX_RESPONSE_BYTES = 1024;
/** Sizes of files whose first half the capture holds, or streams out (past its cap: headers sent). */
const HELD = 500;
const STREAMED = 8 * MAX_RESPONSE_BYTES;

/** A stream that sends `chunk`, then fails, as a file read that hits a disk error midway. */
function failingAfter(chunk: Buffer): Readable {
  let sent = false;
  return new Readable({
    read() {
      if (sent) return void setImmediate(() => this.destroy(new Error('source failed midway')));
      sent = true;
      this.push(chunk);
    },
  });
}

@Controller('pipeline')
class PipelineController {
  constructor(private readonly probe: Probe) {}

  /** A file of `bytes` bytes whose stream fails after its first half on the first call for `name`, whole afterwards. */
  @Post('file/:bytes/:name') @Idempotent()
  file(@Param('bytes') bytes: string, @Param('name') name: string) {
    const content = Buffer.alloc(Number(bytes), 'f');
    if (this.probe.hit(`file:${name}`) > 1) return new StreamableFile(content);
    return new StreamableFile(failingAfter(content.subarray(0, content.length / 2)));
  }

  /** The same file on a transactional route. */
  @Post('txfile/:bytes/:name') @Idempotent({ transactional: true })
  txfile(@Param('bytes') bytes: string, @Param('name') name: string) {
    return this.file(bytes, name);
  }

  /** A 500 whose body is larger than the capture holds. */
  @Post('failure') @Idempotent()
  failure(): never {
    this.probe.hit('failure');
    throw new InternalServerErrorException('x'.repeat(2 * MAX_RESPONSE_BYTES));
  }

  @Post('echo') @Idempotent()
  echo() {
    return { n: this.probe.hit('echo'), id: randomUUID() };
  }
}

/** `body` in chunked transfer coding, as one chunk and the last one. */
const chunked = (body: string) => Buffer.from(`${Buffer.byteLength(body).toString(16)}\r\n${body}\r\n0\r\n\r\n`);

/** A keyed request whose body is sent in chunks, of a type no parser reads on Express. */
const chunkedRequest = (path: string, token: string, key: string, body: string): RawRequest => ({
  path,
  headers: authed(token, key, [['Content-Type', 'application/octet-stream'], ['Transfer-Encoding', 'chunked']]),
  body: chunked(body),
  contentLength: false,
});

/** A key's record as stored: status (null while none), headers, and whether it was released (its life ended). */
interface KeyRecord {
  status: number | null;
  headers: Record<string, string> | null;
  released: boolean;
}

async function recordOf(fixture: FixtureApp, token: string, key: string): Promise<KeyRecord | undefined> {
  const [row] = await fixture.dataSource.query(
    `SELECT response_status AS status, response_headers AS headers, expires_at <= now() AS released
       FROM idempotency_keys WHERE api_key_id = $1 AND idem_key = $2`,
    [scopeOf(token), key],
  );
  return row;
}

// Streams that fail, error bodies past the capture's cap, and bodies no parser read.
describe.each(PLATFORMS)('Capture of answers that go wrong (%s)', (platform) => {
  let database: TestDatabase;
  let fixture: FixtureApp;
  let token: string;

  beforeAll(async () => {
    database = await createTestDatabase();
    const options = { maxResponseBytes: MAX_RESPONSE_BYTES };
    fixture = await bootFixture(database.url, { controllers: [PipelineController], options, platform });
  });
  afterAll(async () => {
    await fixture?.close();
    await database?.drop();
  });
  beforeEach(() => {
    token = `tok_${randomUUID()}`;
  });

  const post = (path: string, key: string) => rawRequest(fixture.url, { path, headers: authed(token, key) });

  it.each([
    { on: 'a leased route', when: 'while the capture still held its first half', route: 'file', bytes: HELD },
    { on: 'a leased route', when: 'after its first half went out with the headers', route: 'file', bytes: STREAMED },
    { on: 'a transactional route', when: 'while the capture still held its first half', route: 'txfile', bytes: HELD },
  ])(
    'on $on, breaks the connection of a file whose stream fails $when, stores nothing, and runs a retry again',
    async ({ route, bytes }) => {
      const key = randomUUID();
      const path = `/pipeline/${route}/${bytes}/${key}`;
      const failed = await post(path, key);
      // Never an answer whose Content-Length disagrees with its bytes (a desynchronised connection).
      expect(failed.excess).toHaveLength(0);
      expect(failed.body.length).toBeLessThan(bytes);
      // Released, or (transactional) rolled back with its claim.
      await waitFor(async () => [undefined, true].includes((await recordOf(fixture, token, key))?.released));
      expect((await recordOf(fixture, token, key))?.status ?? null).toBeNull();

      const retry = await post(path, key);
      expect(retry.status).toBe(201);
      expect(retry.headers['idempotency-replayed']).toBeUndefined();
      expect(retry.body.equals(Buffer.alloc(bytes, 'f'))).toBe(true);
      expect(fixture.probe.count(`file:${key}`)).toBe(2);
    },
  );

  it('releases the key of a 5xx whose body outgrew the capture, so a retry runs the handler again', async () => {
    const key = randomUUID();
    const before = fixture.probe.count('failure');
    const first = await post('/pipeline/failure', key);
    expect(first.status).toBe(500);
    expect(first.body.length).toBeGreaterThan(2 * MAX_RESPONSE_BYTES);
    expect(first.excess).toHaveLength(0);
    const retry = await post('/pipeline/failure', key);
    expect(retry.status).toBe(500);
    expect(fixture.probe.count('failure')).toBe(before + 2);
  });

  it('never replays one chunked body no parser read for another: the retry is a conflict', async () => {
    const key = randomUUID();
    const before = fixture.probe.count('echo');
    const first = await rawRequest(fixture.url, chunkedRequest('/pipeline/echo', token, key, 'aaaa'));
    const other = await rawRequest(fixture.url, chunkedRequest('/pipeline/echo', token, key, 'bbbb'));
    if (platform === 'fastify') {
      // Fastify refuses a content type it has no parser for (415) before the route runs.
      expect([first.status, other.status]).toEqual([415, 415]);
      expect(fixture.probe.count('echo')).toBe(before);
      expect(await recordOf(fixture, token, key)).toBeUndefined();
    } else {
      expect(first.status).toBe(201);
      expect(other.status).toBe(409);
      expect(other.json.error.code).toBe('idempotency_key_conflict');
      expect(fixture.probe.count('echo')).toBe(before + 1);
    }
  });
});

describe('Headers a Fastify hook set with reply.header() (fastify)', () => {
  let database: TestDatabase;
  let fixture: FixtureApp;

  /** Gives each request the id it asks for in x-hook-id, the way a request-id plugin does. */
  const addRequestIdHook = (app: INestApplication) =>
    (app as NestFastifyApplication)
      .getHttpAdapter()
      .getInstance()
      .addHook('onRequest', (request, reply, done) => {
        reply.header('x-request-id', `hook-${String(request.headers['x-hook-id'])}`);
        done();
      });

  beforeAll(async () => {
    database = await createTestDatabase();
    const spec = { controllers: [PipelineController], platform: 'fastify' as const, configure: addRequestIdHook };
    fixture = await bootFixture(database.url, spec);
  });
  afterAll(async () => {
    await fixture?.close();
    await database?.drop();
  });

  it('keeps on a replay the excluded x-request-id the hook set for that request, and never stores it', async () => {
    const token = `tok_${randomUUID()}`;
    const key = randomUUID();
    const ask = (id: string) =>
      rawRequest(fixture.url, { path: '/pipeline/echo', headers: authed(token, key, [['X-Hook-Id', id]]) });
    const first = await ask('first');
    expect(first.headers['x-request-id']).toEqual(['hook-first']);
    const stored = Object.keys((await recordOf(fixture, token, key))?.headers ?? {});
    expect(stored).toContain('content-type');
    expect(stored).not.toContain('x-request-id');

    const replay = await ask('second');
    expect(replay.headers['idempotency-replayed']).toEqual(['true']);
    expect(replay.body.equals(first.body)).toBe(true);
    expect(replay.headers['x-request-id']).toEqual(['hook-second']);
  });
});

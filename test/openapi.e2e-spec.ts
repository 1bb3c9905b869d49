import { Body, Controller, Get, HttpCode, Post, Put } from '@nestjs/common';
import { ApiBadRequestResponse, ApiHeader, ApiOkResponse, DocumentBuilder, SwaggerModule, type OpenAPIObject } from '@nestjs/swagger';
import { randomUUID } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { Idempotent, IdempotencyErrorCode, IdempotencyTransaction } from '../src';
import { describeError } from '../src/idempotency.exceptions';
import { documentedErrors } from '../src/openapi/error-envelope.schema';
import { bootFixture, type FixtureApp } from './support/fixture-app';
import { authed, send } from './support/http-client';
import { createTestDatabase, type TestDatabase } from './support/test-database';

@Controller('docs')
class DocsController {
  @Post('optional') @Idempotent()
  optional(@Body() body: unknown) {
    return { body, random: randomUUID() };
  }

  @Post('required') @Idempotent({ required: true })
  required() {
    return { random: randomUUID() };
  }

  // Decorators on both sides of @Idempotent(), and an explicit success and 400 of the host's own.
  @Put('declared/:id')
  @ApiOkResponse({ description: 'The replaced thing.' })
  @Idempotent({ transactional: true })
  @ApiBadRequestResponse({ description: 'Validation failed.', schema: { type: 'object', properties: { problems: { type: 'array', items: { type: 'string' } } } } })
  declared(@IdempotencyTransaction() _manager: unknown) {
    return { ok: true };
  }

  @HttpCode(202) @Post('accepted') @Idempotent()
  accepted() {
    return { accepted: true };
  }

  // The host documents the header itself: its words win, and the header is not listed twice.
  @Post('own-header') @Idempotent() @ApiHeader({ name: 'idempotency-key', description: 'Our own words.', required: true })
  ownHeader() {
    return { ok: true };
  }

  @Get('read') @Idempotent()
  read() {
    return { read: true };
  }

  @Post('plain')
  plain() {
    return { plain: true };
  }
}

@Controller('whole') @Idempotent({ required: true })
class WholeController {
  @Post()
  create() {
    return { random: randomUUID() };
  }

  @Post('optional') @Idempotent()
  optional() {
    return { random: randomUUID() };
  }

  @Get()
  list() {
    return [];
  }
}

const ENVELOPE_FIELDS = ['type', 'code', 'message', 'param', 'docs_url', 'request_id', 'suggestion'];

describe('OpenAPI document of @Idempotent() routes (@nestjs/swagger)', () => {
  let database: TestDatabase;
  let fixture: FixtureApp;
  let document: OpenAPIObject;

  beforeAll(async () => {
    database = await createTestDatabase();
    fixture = await bootFixture(database.url, { controllers: [DocsController, WholeController] });
    document = SwaggerModule.createDocument(fixture.app, new DocumentBuilder().setTitle('docs').build());
  });
  afterAll(async () => {
    await fixture?.close();
    await database?.drop();
  });

  const operation = (method: string, route: string): any => {
    const found = (document.paths[route] as any)?.[method];
    if (!found) throw new Error(`no ${method.toUpperCase()} ${route} in the document: ${Object.keys(document.paths).join(', ')}`);
    return found;
  };
  const keyHeaders = (op: any) => (op.parameters ?? []).filter((p: any) => p.in === 'header' && p.name.toLowerCase() === 'idempotency-key');
  const keyHeader = (op: any) => {
    const headers = keyHeaders(op);
    expect(headers).toHaveLength(1);
    return headers[0];
  };
  const errorSchema = (op: any, status: number) => op.responses[String(status)]?.content?.['application/json']?.schema;
  const codesOf = (op: any, status: number): string[] => errorSchema(op, status)?.properties?.error?.properties?.code?.enum;

  it('documents the Idempotency-Key header: optional by default, required with { required: true }, a string of 1-255 characters', () => {
    const optional = keyHeader(operation('post', '/docs/optional'));
    expect(optional).toMatchObject({ name: 'Idempotency-Key', in: 'header', required: false, schema: { type: 'string', minLength: 1, maxLength: 255 } });
    expect(optional.description).toMatch(/retry/i);
    expect(optional.description).toMatch(/Optional/);

    const required = keyHeader(operation('post', '/docs/required'));
    expect(required).toMatchObject({ name: 'Idempotency-Key', in: 'header', required: true, schema: { type: 'string', minLength: 1, maxLength: 255 } });
    expect(required.description).toMatch(/Required on this route/);
  });

  it('documents the 400, 401, 409 and 503 answers with the error envelope and the codes each can carry', () => {
    for (const [route, required] of [['/docs/optional', false], ['/docs/required', true]] as const) {
      const op = operation('post', route);
      expect(Object.keys(op.responses).sort()).toEqual(['201', '400', '401', '409', '503']);
      for (const status of [400, 401, 409, 503]) {
        const schema = errorSchema(op, status);
        expect(schema).toMatchObject({ type: 'object', required: ['error'] });
        expect(schema.properties.error.required).toEqual(ENVELOPE_FIELDS);
        expect(Object.keys(schema.properties.error.properties)).toEqual(ENVELOPE_FIELDS);
        expect(schema.properties.error.properties.type).toEqual({ type: 'string', enum: ['idempotency_error'] });
        expect(schema.properties.error.properties.param).toMatchObject({ type: 'string', nullable: true });
        expect(schema.properties.error.properties.request_id).toMatchObject({ type: 'string', nullable: true });
        // Each code is named in the description too, for readers of the rendered docs.
        for (const code of codesOf(op, status)) expect(op.responses[String(status)].description).toContain(`\`${code}\``);
      }
      expect(codesOf(op, 400)).toEqual(required ? ['invalid_idempotency_key', 'missing_idempotency_key'] : ['invalid_idempotency_key']);
      expect(codesOf(op, 401)).toEqual(['idempotency_scope_unresolved']);
      expect(codesOf(op, 409)).toEqual(['idempotency_key_conflict', 'idempotency_key_in_use', 'idempotency_response_not_stored', 'idempotency_record_unreadable']);
      expect(codesOf(op, 503)).toEqual(['idempotency_store_unavailable']);
      expect(op.responses['409'].headers['Retry-After'].schema).toEqual({ type: 'integer', minimum: 0 });
      expect(op.responses['503'].headers['Retry-After'].schema).toEqual({ type: 'integer', minimum: 0 });
      expect(op.responses['400'].headers).toBeUndefined();
    }
  });

  it('documents idempotency-replayed on the success response, which keeps the status @nestjs/swagger infers', () => {
    const replayed = { required: false, schema: { type: 'string', enum: ['true'] } };
    expect(operation('post', '/docs/optional').responses['201'].headers['idempotency-replayed']).toMatchObject(replayed);
    expect(operation('post', '/docs/optional').responses['201'].headers['idempotency-replayed'].description).toMatch(/replay/);
    expect(operation('post', '/docs/required').responses['201'].headers['idempotency-replayed']).toMatchObject(replayed);
    const accepted = operation('post', '/docs/accepted');
    expect(Object.keys(accepted.responses).sort()).toEqual(['202', '400', '401', '409', '503']);
    expect(accepted.responses['202'].headers['idempotency-replayed']).toMatchObject(replayed);
    for (const status of ['400', '401', '409', '503']) expect(accepted.responses[status].headers?.['idempotency-replayed']).toBeUndefined();
  });

  it("merges with the host's own response decorators and adds the transactional answers", () => {
    const op = operation('put', '/docs/declared/{id}');
    expect(Object.keys(op.responses).sort()).toEqual(['200', '400', '401', '409', '500', '503']);
    expect(op.responses['200'].description).toBe('The replaced thing.');
    expect(op.responses['200'].headers['idempotency-replayed']).toBeDefined();
    // The host's 400 keeps its schema and gains the module's codes in its description.
    expect(op.responses['400'].content['application/json'].schema.properties.problems).toBeDefined();
    expect(op.responses['400'].description).toMatch(/^Validation failed\.\n\n/);
    expect(op.responses['400'].description).toContain('`invalid_idempotency_key`');
    expect(codesOf(op, 409)).toEqual([
      'idempotency_key_conflict',
      'idempotency_key_in_use',
      'idempotency_response_not_stored',
      'idempotency_record_unreadable',
      'transaction_conflict',
    ]);
    expect(codesOf(op, 500)).toEqual(['internal_error']);
    expect(keyHeader(op).required).toBe(false);
  });

  it('keeps a host-documented Idempotency-Key header as the only one', () => {
    const op = operation('post', '/docs/own-header');
    expect(keyHeader(op)).toMatchObject({ name: 'idempotency-key', description: 'Our own words.', required: true });
    expect(codesOf(op, 409)).toHaveLength(4);
  });

  it('documents every POST of a controller-level @Idempotent(), with handler options overriding, and leaves GET and unmarked routes alone', () => {
    expect(keyHeader(operation('post', '/whole')).required).toBe(true);
    expect(codesOf(operation('post', '/whole'), 400)).toContain('missing_idempotency_key');
    expect(keyHeader(operation('post', '/whole/optional')).required).toBe(false);
    for (const [method, route] of [['get', '/whole'], ['get', '/docs/read'], ['post', '/docs/plain']]) {
      const op = operation(method, route);
      expect(keyHeaders(op)).toHaveLength(0);
      expect(Object.keys(op.responses)).toEqual([method === 'get' ? '200' : '201']);
      expect(op.responses[method === 'get' ? '200' : '201'].headers).toBeUndefined();
    }
  });

  it('lists every error code under the status the module really answers it with', () => {
    const listed = new Map<string, number>();
    for (const route of [{}, { required: true }, { transactional: true }, { required: true, transactional: true }]) {
      for (const error of documentedErrors(route)) {
        for (const code of error.codes) {
          expect(describeError(code, { requestId: null, docsUrl: () => 'x' }).status).toBe(error.status);
          listed.set(code, error.status);
        }
      }
    }
    expect([...listed.keys()].sort()).toEqual(Object.values(IdempotencyErrorCode).sort());
  });

  it('describes what goes over the wire: the envelope of a real 400 and the replayed header of a real replay', async () => {
    const token = `tok_${randomUUID()}`;
    const missing = await send(fixture.url, { path: '/docs/required', headers: authed(token) });
    expect(missing.status).toBe(400);
    const schema = errorSchema(operation('post', '/docs/required'), 400);
    expect(Object.keys(missing.json)).toEqual(schema.required);
    expect(Object.keys(missing.json.error).sort()).toEqual([...schema.properties.error.required].sort());
    expect(schema.properties.error.properties.code.enum).toContain(missing.json.error.code);

    const key = randomUUID();
    const first = await send(fixture.url, { path: '/docs/optional', headers: authed(token, key), body: { a: 1 } });
    const second = await send(fixture.url, { path: '/docs/optional', headers: authed(token, key), body: { a: 1 } });
    expect(first.status).toBe(201);
    const documented = Object.keys(operation('post', '/docs/optional').responses['201'].headers);
    expect(documented).toContain('idempotency-replayed');
    expect(second.headers['idempotency-replayed']).toBe('true');
    expect(second.body).toEqual(first.body);
  });

  it('never imports @nestjs/swagger from src/ (an optional peer dependency)', () => {
    const files = (readdirSync(path.join(process.cwd(), 'src'), { recursive: true }) as string[]).filter((file) => file.endsWith('.ts'));
    expect(files.length).toBeGreaterThan(10);
    for (const file of files) {
      const source = readFileSync(path.join(process.cwd(), 'src', file), 'utf8');
      expect({ file, imports: /from\s+['"]@nestjs\/swagger|import\(\s*['"]@nestjs\/swagger|require\(\s*['"]@nestjs\/swagger/.test(source) }).toEqual({ file, imports: false });
    }
  });
});

@Controller('standards')
class StandardsController {
  @Post() @Idempotent({ required: true })
  create() {
    return { random: randomUUID() };
  }

  @Post('ledger') @Idempotent({ transactional: true })
  @ApiBadRequestResponse({ description: 'Validation failed.' })
  ledger(@IdempotencyTransaction() _manager: unknown) {
    return { ok: true };
  }
}

@Controller('unmarked-replays')
class UnmarkedReplaysController {
  @Post() @Idempotent()
  create() {
    return { random: randomUUID() };
  }
}

const PROBLEM_MEMBERS = ['type', 'title', 'status', 'detail', 'instance', 'code', 'retryable'];

describe('OpenAPI document under the module options errorFormat, header and replayedHeader', () => {
  let database: TestDatabase;
  let fixtures: FixtureApp[];
  let document: OpenAPIObject;
  let unmarked: OpenAPIObject;

  beforeAll(async () => {
    database = await createTestDatabase();
    fixtures = [
      await bootFixture(database.url, {
        controllers: [StandardsController],
        options: { errorFormat: 'problem+json', header: 'X-Request-Key', replayedHeader: 'Idempotent-Replayed' },
      }),
      await bootFixture(database.url, { controllers: [UnmarkedReplaysController], options: { replayedHeader: false } }),
    ];
    [document, unmarked] = fixtures.map(({ app }) => SwaggerModule.createDocument(app, new DocumentBuilder().build()));
  });
  afterAll(async () => {
    for (const fixture of fixtures ?? []) await fixture.close();
    await database?.drop();
  });

  const operation = (route: string, source = document): any => (source.paths[route] as any).post;

  it('documents the key header under its configured name, and no Idempotency-Key', () => {
    const headers = operation('/standards').parameters.filter((p: any) => p.in === 'header');
    expect(headers).toEqual([expect.objectContaining({ name: 'X-Request-Key', required: true })]);
    expect(headers[0].description).toMatch(/`Idempotent-Replayed: true`/);
  });

  it('documents the configured replayed header on the success response, or none with replayedHeader: false', () => {
    expect(Object.keys(operation('/standards').responses['201'].headers)).toEqual(['Idempotent-Replayed']);
    expect(operation('/unmarked-replays', unmarked).responses['201'].headers).toBeUndefined();
  });

  it('documents the errors as application/problem+json with every problem member and the codes of each status', () => {
    const op = operation('/standards');
    for (const status of ['400', '401', '409', '503']) {
      const { content } = op.responses[status];
      expect(Object.keys(content)).toEqual(['application/problem+json']);
      const { schema } = content['application/problem+json'];
      expect(schema.required).toEqual(PROBLEM_MEMBERS);
      expect(Object.keys(schema.properties)).toEqual(PROBLEM_MEMBERS);
      expect(schema.properties.retryable).toMatchObject({ type: 'boolean' });
    }
    expect(op.responses['400'].content['application/problem+json'].schema.properties.code.enum).toEqual([
      'invalid_idempotency_key',
      'missing_idempotency_key',
    ]);
    expect(op.responses['400'].description).toContain('`X-Request-Key`');
    expect(op.responses['400'].description).not.toContain('Idempotency-Key');
  });

  it("keeps a host's own error schema, adding the transactional answers as problem details", () => {
    const op = operation('/standards/ledger');
    expect(op.responses['400'].description).toMatch(/^Validation failed\.\n\n/);
    const codes = (status: string) =>
      op.responses[status].content['application/problem+json'].schema.properties.code.enum;
    expect(codes('409')).toContain('transaction_conflict');
    expect(codes('500')).toEqual(['internal_error']);
  });

  it('documents the same routes afresh for an application created again with other options', async () => {
    const again = await bootFixture(database.url, { controllers: [StandardsController] });
    fixtures.push(again);
    const op = operation('/standards/ledger', SwaggerModule.createDocument(again.app, new DocumentBuilder().build()));
    expect(op.parameters.map((parameter: any) => parameter.name)).toEqual(['Idempotency-Key']);
    expect(Object.keys(op.responses['201'].headers)).toEqual(['idempotency-replayed']);
    expect(op.responses['409'].content['application/json'].schema.properties.error).toBeDefined();
    expect(op.responses['400'].description.match(/Validation failed\./g)).toHaveLength(1);
    expect(op.responses['400'].description.match(/invalid_idempotency_key/g)).toHaveLength(1);
  });

  it('describes what goes over the wire: the members of a real problem', async () => {
    const missing = await send(fixtures[0].url, { path: '/standards', headers: authed(`tok_${randomUUID()}`) });
    expect(missing.status).toBe(400);
    expect(missing.headers['content-type']).toMatch(/^application\/problem\+json/);
    expect(Object.keys(missing.json).sort()).toEqual([...PROBLEM_MEMBERS].sort());
  });
});

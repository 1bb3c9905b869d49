import { IncomingMessage, ServerResponse } from 'node:http';
import { Socket } from 'node:net';
import express from 'express';
import request from 'supertest';
import { captureResponse, replayResponse, type CapturedResponse } from './response-capture';

const WRITE_METHODS = ['writeHead', 'write', 'end'];

describe('replayResponse and captureResponse on a response whose prototype was replaced (as Express does)', () => {
  /** A response with a prototype of its own kind, as Express gives each: write methods inherited, none on the object itself. */
  function expressLikeResponse(prototype: object): ServerResponse {
    return Object.setPrototypeOf(new ServerResponse(new IncomingMessage(new Socket())), prototype);
  }

  /** Write methods that record what reaches them, as `defineProperties` descriptors (configurable unless said otherwise). */
  function recordingMethods(written: string[], configurable = true): PropertyDescriptorMap {
    const record = (name: string) => ({
      configurable,
      value(this: ServerResponse, chunk?: unknown) {
        written.push(`${name}:${String(chunk)}`);
        return name === 'write' ? true : this;
      },
    });
    return { write: record('write'), end: record('end') };
  }

  it('on a real Express app: replays without changing the response (no own methods, same prototype), and its other routes answer as before', async () => {
    const app = express();
    const replayed: ServerResponse[] = [];
    app.post('/replayed', (_request, response) => {
      replayResponse(response, { status: 201, headers: { 'content-type': 'text/plain' }, body: Buffer.from('stored') }, () => false, {
        'idempotency-replayed': 'true',
      });
      replayed.push(response);
      response.status(500).json({ rendered: true });
    });
    app.post('/plain', (_request, response) => {
      response.status(202).send('plain');
    });

    const replay = await request(app).post('/replayed');
    const plain = await request(app).post('/plain');

    expect([replay.status, replay.text, replay.headers['content-type'], replay.headers['idempotency-replayed']]).toEqual([201, 'stored', 'text/plain', 'true']);
    expect(Object.getPrototypeOf(replayed[0])).toBe(app.response);
    expect(WRITE_METHODS.filter((name) => Object.hasOwn(replayed[0], name))).toEqual([]);
    expect([plain.status, plain.text]).toEqual([202, 'plain']);
  });

  it('on a real Express app: a write method the app puts on its response prototype later still runs, below a replay and below a capture that streams', async () => {
    const app = express();
    app.post('/replayed', (_request, response) => {
      replayResponse(response, { status: 201, headers: {}, body: Buffer.from('stored') }, () => false, {});
      response.status(500).send('rendered');
    });
    expect((await request(app).post('/replayed')).text).toBe('stored');
    // Put there after the module took the prototype's methods over, as a late instrumentation would.
    const ended: string[] = [];
    const end = app.response.end;
    app.response.end = function (this: ServerResponse, ...args: unknown[]) {
      ended.push(String(args[0]));
      return (end as (...args: unknown[]) => ServerResponse).apply(this, args);
    } as typeof end;

    app.post('/streamed', (_request, response) => {
      // Past 4 bytes the capture streams what it holds through the methods it took over.
      captureResponse(response, 4, async () => undefined);
      response.write('abcdef');
      response.end('gh');
    });

    const replay = await request(app).post('/replayed');
    const streamed = await request(app).post('/streamed');

    expect([replay.status, replay.text]).toEqual([201, 'stored']);
    expect(streamed.text).toBe('abcdefgh');
    expect(ended).toEqual(['stored', 'gh']);
  });

  it('a method reference kept past the replay writes through the original', () => {
    const written: string[] = [];
    const response = expressLikeResponse(Object.create(ServerResponse.prototype, recordingMethods(written)));

    replayResponse(response, { status: 200, headers: {}, body: Buffer.from('stored') }, () => false, {});
    // Middleware that wraps end() keeps a reference to the method it found.
    const heldEnd = response.end as (chunk?: unknown) => ServerResponse;
    response.end('rendered');
    heldEnd.call(response, 'late');

    expect(written).toEqual(['end:stored', 'end:late']);
  });

  it('replays through methods of its own when the prototype’s are read-only', () => {
    const written: string[] = [];
    const response = expressLikeResponse(Object.create(ServerResponse.prototype, recordingMethods(written, false)));

    replayResponse(response, { status: 201, headers: {}, body: Buffer.from('stored') }, () => false, {});
    response.end('rendered');

    expect(written).toEqual(['end:stored']);
    expect(response.statusCode).toBe(201);
  });

  it('captures a response again after a replay of it', async () => {
    const written: string[] = [];
    const response = expressLikeResponse(Object.create(ServerResponse.prototype, recordingMethods(written)));

    replayResponse(response, { status: 200, headers: {}, body: Buffer.from('stored') }, () => false, {});
    response.end('rendered');
    // Past 4 bytes the capture streams what it holds through the original write().
    const captured = new Promise((resolve) => captureResponse(response, 4, async (value) => resolve(value.body)));
    response.write('abcdef');
    response.end('gh');

    expect(await captured).toBeNull();
    await new Promise(setImmediate);
    expect(written).toEqual(['end:stored', 'write:abcdef', 'end:gh']);
  });
});

describe('Content-Length of what is sent', () => {
  it('is the length of the body written, when the app declared another (res.send() after a write())', async () => {
    const app = express();
    const captured: CapturedResponse[] = [];
    app.post('/', (_request, response) => {
      captureResponse(response, undefined, async (value) => void captured.push(value));
      response.write('abc');
      response.send('de');
    });

    const answer = await request(app).post('/');

    expect([answer.text, answer.headers['content-length']]).toEqual(['abcde', '5']);
    expect(captured[0].headers['content-length']).toBe(5);
  });

  it('is the length of the stored body on a replay, whatever the stored headers say', async () => {
    const app = express();
    app.post('/', (_request, response) => {
      const stored = { status: 200, headers: { 'content-length': '11' }, body: Buffer.from('stored body, whole') };
      replayResponse(response, stored, () => false, {});
      response.end();
    });

    const answer = await request(app).post('/');

    expect([answer.text, answer.headers['content-length']]).toEqual(['stored body, whole', '18']);
  });
});

describe('writeHead() while a response is captured', () => {
  it.each([
    ['flat', ['x-a', '1', 'x-a', '2', 'x-b', '3']],
    ['nested', [['x-a', '1'], ['x-a', '2'], ['x-b', '3']]],
  ])('with a %s header array replaces earlier values of those headers, as Node does', async (_form, headers) => {
    const response = new ServerResponse(new IncomingMessage(new Socket()));
    response.setHeader('x-a', '0');
    response.setHeader('x-b', '0');
    response.setHeader('x-c', 'kept');
    const captured = new Promise<CapturedResponse>((resolve) => {
      captureResponse(response, undefined, async (value) => resolve(value));
    });

    response.writeHead(201, headers as string[]);
    response.end();

    expect((await captured).headers).toEqual({ 'x-a': ['1', '2'], 'x-b': '3', 'x-c': 'kept' });
  });
});

import { IncomingMessage, ServerResponse } from 'node:http';
import { Socket } from 'node:net';
import { captureResponse, replayResponse } from './response-capture';

describe('replayResponse on a response whose prototype was replaced (as Express does)', () => {
  it('replays through read-only inherited methods, and a method reference taken during the replay writes through the original after it', () => {
    const ends: unknown[] = [];
    // A replaced response prototype, as Express's: write methods inherited, none on the object
    // itself; this one's end() is read-only (defineProperty's default).
    const expressLike = Object.create(ServerResponse.prototype, {
      end: {
        value(this: ServerResponse, chunk?: unknown) {
          ends.push(chunk);
          return this;
        },
      },
    });
    const response: ServerResponse = Object.setPrototypeOf(new ServerResponse(new IncomingMessage(new Socket())), expressLike);

    replayResponse(response, { status: 200, headers: { 'content-type': 'text/plain' }, body: Buffer.from('stored') }, () => false, {});
    // Middleware that wraps end() keeps a reference to the method it found, the stand-in.
    const heldEnd = response.end as (chunk?: unknown) => ServerResponse;
    response.end('rendered');
    heldEnd.call(response, 'late');
    response.end('direct');

    expect(ends.map(String)).toEqual(['stored', 'late', 'direct']);
    expect(response.statusCode).toBe(200);
  });

  it('captures a response again after a replay left its stand-in prototype in place', async () => {
    const written: string[] = [];
    const record = (name: string) => ({
      value(this: ServerResponse, chunk?: unknown) {
        written.push(`${name}:${String(chunk)}`);
        return name === 'write' ? true : this;
      },
    });
    const expressLike = Object.create(ServerResponse.prototype, { write: record('write'), end: record('end') });
    const response: ServerResponse = Object.setPrototypeOf(new ServerResponse(new IncomingMessage(new Socket())), expressLike);

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

import { IncomingMessage, ServerResponse } from 'node:http';
import { Socket } from 'node:net';
import { replayResponse } from './response-capture';

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
    expect(Object.getPrototypeOf(response)).toBe(expressLike);
    heldEnd.call(response, 'late');

    expect(ends.map(String)).toEqual(['stored', 'late']);
    expect(response.statusCode).toBe(200);
  });
});

import type { Server } from 'node:http';
import net from 'node:net';
import { waitFor } from './wait-for';

/** A request whose client leaves once the app reaches a point the test waits for. */
export interface HangUp {
  path: string;
  headers: [string, string][];
  body?: unknown;
  /** The client leaves once this holds (e.g. the handler has started). */
  leaveWhen: () => boolean | Promise<boolean>;
  /** Leave with a TCP RST instead of a FIN. */
  reset?: boolean;
}

/**
 * Sends a request over a raw connection, leaves when `leaveWhen` holds, and resolves once the
 * server has seen the connection close (so what the app does about it has begun).
 */
export async function hangUp(server: Server, { path, headers, body, leaveWhen, reset }: HangUp): Promise<void> {
  const accepted: net.Socket[] = [];
  const onConnection = (socket: net.Socket) => accepted.push(socket);
  server.on('connection', onConnection);
  const { port } = server.address() as net.AddressInfo;
  const client = net.connect(port, '127.0.0.1');
  try {
    await new Promise<void>((resolve, reject) => client.once('connect', resolve).once('error', reject));
    client.on('error', () => undefined);
    const payload = Buffer.from(JSON.stringify(body ?? {}));
    const head = [`POST ${path} HTTP/1.1`, 'Host: 127.0.0.1', 'Content-Type: application/json', `Content-Length: ${payload.length}`];
    for (const [name, value] of headers) head.push(`${name}: ${value}`);
    client.write(Buffer.concat([Buffer.from(`${head.join('\r\n')}\r\n\r\n`), payload]));
    await waitFor(leaveWhen);
    const serverSide = accepted.find((socket) => socket.remotePort === client.localPort);
    if (!serverSide) throw new Error('the server side of the connection was not seen');
    const closed = serverSide.destroyed ? Promise.resolve() : new Promise((resolve) => serverSide.once('close', resolve));
    if (reset) client.resetAndDestroy();
    else client.destroy();
    await closed;
  } finally {
    server.off('connection', onConnection);
    client.destroy();
  }
}

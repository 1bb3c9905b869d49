import net from 'node:net';

/** A TCP proxy in front of the database that a test can cut and restore, to play a database outage. */
export interface TcpProxy {
  port: number;
  /** Drops every connection and refuses new ones. */
  cut(): Promise<void>;
  /** Accepts connections again on the same port. */
  restore(): Promise<void>;
  /** Keeps every connection open, and accepts new ones, but forwards nothing: a database that does not answer. */
  stall(): void;
  /** Forwards again what a stall held back. */
  resume(): void;
  close(): Promise<void>;
}

export async function startTcpProxy(targetHost: string, targetPort: number): Promise<TcpProxy> {
  const sockets = new Set<net.Socket>();
  let stalled = false;
  // Writes only while not stalled; a paused socket keeps what it receives until it is resumed.
  const forward = (from: net.Socket, to: net.Socket) => {
    from.on('data', (chunk) => {
      if (!to.write(chunk)) from.pause();
    });
    to.on('drain', () => {
      if (!stalled) from.resume();
    });
    from.on('end', () => to.end());
  };
  const server = net.createServer((client) => {
    const upstream = net.connect(targetPort, targetHost);
    for (const socket of [client, upstream]) {
      sockets.add(socket);
      socket.on('close', () => sockets.delete(socket));
      socket.on('error', () => {
        client.destroy();
        upstream.destroy();
      });
    }
    forward(client, upstream);
    forward(upstream, client);
    if (stalled) for (const socket of [client, upstream]) socket.pause();
  });
  const listen = (port: number) => new Promise<void>((resolve) => server.listen(port, '127.0.0.1', () => resolve()));
  await listen(0);
  const port = (server.address() as net.AddressInfo).port;
  const stop = () =>
    new Promise<void>((resolve) => {
      for (const socket of sockets) socket.destroy();
      server.close(() => resolve());
    });
  const flow = (paused: boolean) => {
    stalled = paused;
    for (const socket of sockets) {
      if (paused) socket.pause();
      else socket.resume();
    }
  };
  const restore = () => listen(port);
  return { port, cut: stop, restore, stall: () => flow(true), resume: () => flow(false), close: stop };
}

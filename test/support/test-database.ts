import { randomBytes } from 'node:crypto';
import pg from 'pg';

/** A database of its own for one spec file; `drop()` removes it even if sessions are still open. */
export interface TestDatabase {
  /** What apps connect to: through the pooler when the run has one. */
  url: string;
  /** The same database on the server itself, never through a pooler. */
  directUrl: string;
  name: string;
  drop(): Promise<void>;
}

/**
 * Creates a uniquely named database on the server at DATABASE_URL, so spec files running in
 * parallel never share state. When DATABASE_URL is a pooler, DATABASE_DIRECT_URL names the server
 * behind it, which creates and drops the database.
 */
export async function createTestDatabase(): Promise<TestDatabase> {
  const serverUrl = process.env.DATABASE_URL;
  if (!serverUrl) {
    throw new Error('DATABASE_URL is not set: run the suite through Jest (test/global-setup.ts starts a PostgreSQL) or point it at a server.');
  }
  const adminUrl = process.env.DATABASE_DIRECT_URL ?? serverUrl;
  const name = `test_${randomBytes(8).toString('hex')}`;
  await withClient(adminUrl, async (client) => {
    // CREATE DATABASE fails while any other session is connected to template1; that is brief, so retry.
    for (let attempt = 1; ; attempt++) {
      try {
        await client.query(`CREATE DATABASE ${name}`);
        return;
      } catch (error) {
        if ((error as { code?: string }).code !== '55006' || attempt >= 20) throw error;
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
    }
  });
  let dropped = false;
  return {
    url: inDatabase(serverUrl, name),
    directUrl: inDatabase(adminUrl, name),
    name,
    async drop() {
      if (dropped) return;
      dropped = true;
      await withClient(adminUrl, (client) => client.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`));
    },
  };
}

function inDatabase(serverUrl: string, name: string): string {
  const url = new URL(serverUrl);
  url.pathname = `/${name}`;
  return url.toString();
}

async function withClient<T>(url: string, work: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return await work(client);
  } finally {
    await client.end();
  }
}

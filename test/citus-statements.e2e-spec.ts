import pg from 'pg';
import type { DataSource } from 'typeorm';
import { REQUEST_STATEMENTS } from '../src/store/postgres-idempotency.store';
import { migratedDataSource } from './support/store-harness';
import { createTestDatabase, type TestDatabase } from './support/test-database';

const { CLAIM, INSERT, TAKE_OVER } = REQUEST_STATEMENTS;

// Citus refuses a distributed INSERT or UPDATE whose RETURNING calls a function that is not
// IMMUTABLE ("non-IMMUTABLE functions are not allowed in the RETURNING clause"). No Citus here:
// PostgreSQL itself says whether an expression is IMMUTABLE, as it accepts only those in an index.
describe('The RETURNING of the claim statements on a distributed table', () => {
  let database: TestDatabase;
  let dataSource: DataSource;
  let client: pg.Client;

  beforeAll(async () => {
    database = await createTestDatabase();
    dataSource = await migratedDataSource(database.url);
    client = new pg.Client({ connectionString: database.url });
    await client.connect();
    // Named as the statements name the table, so that their expressions read the same here.
    await client.query('CREATE TEMP TABLE k (LIKE idempotency_keys)');
  });
  afterAll(async () => {
    await client?.end();
    await dataSource?.destroy();
    await database?.drop();
  });

  it.each([
    ['CLAIM', CLAIM],
    ['INSERT', INSERT],
    ['TAKE_OVER', TAKE_OVER],
  ])('%s returns IMMUTABLE expressions only', async (_name, statement) => {
    const [, list] = /RETURNING\s+([\s\S]*?)\s*(?:\)\s*SELECT[\s\S]*)?$/.exec(statement.text)!;
    for (const column of columnsOf(list)) {
      await expect(client.query(`CREATE INDEX ON k ((${column}))`)).resolves.toBeDefined();
    }
  });
});

/** The expressions of a RETURNING list, without their aliases. */
function columnsOf(list: string): string[] {
  const columns = [''];
  let depth = 0;
  for (const char of list) {
    depth += char === '(' ? 1 : char === ')' ? -1 : 0;
    if (char === ',' && depth === 0) columns.push('');
    else columns[columns.length - 1] += char;
  }
  return columns.map((column) => column.replace(/\s+AS\s+\w+\s*$/i, '').trim());
}

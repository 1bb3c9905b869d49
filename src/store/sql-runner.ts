import type { Pool, PoolClient, QueryResultRow } from 'pg';

/** Runs a prepared statement on the pool or on one connection. */
export type SqlRunner = (statement: PreparedStatement, values: unknown[]) => Promise<{ rows: QueryResultRow[]; rowCount: number }>;

/** A SqlRunner over anything with pg's `query()`: the pool, or one client inside a transaction. */
export function sqlRunner(queryable: Pool | PoolClient): SqlRunner {
  return async (statement, values) => {
    const result = await queryable.query({ name: statement.name, text: statement.text, values });
    return { rows: result.rows, rowCount: result.rowCount ?? 0 };
  };
}

/** A statement with a stable name, so `pg` prepares it once per connection. */
export interface PreparedStatement {
  name: string;
  text: string;
}

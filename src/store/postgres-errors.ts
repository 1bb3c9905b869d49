/** The SQLSTATE of an error raised by pg, or wrapped by TypeORM (`driverError`). */
function sqlState(error: unknown): string | undefined {
  const candidate = error as { code?: unknown; driverError?: { code?: unknown } } | null;
  const code = candidate?.code ?? candidate?.driverError?.code;
  return typeof code === 'string' && /^[0-9A-Z]{5}$/.test(code) ? code : undefined;
}

/** A serialization failure (40001) or deadlock (40P01): the transaction was rolled back and may simply be retried. */
export function isTransactionConflict(error: unknown): boolean {
  const state = sqlState(error);
  return state === '40001' || state === '40P01';
}

/**
 * The database went away under the statement: a connection exception (class 08), a server shutting
 * down (57P01–57P03), or a socket-level error pg raises without any SQLSTATE.
 */
export function isConnectionFailure(error: unknown): boolean {
  const state = sqlState(error);
  return state === undefined ? error instanceof Error : state.startsWith('08') || /^57P0[123]$/.test(state);
}

/**
 * A named statement was missing on its connection (26000) or already prepared there (42P05): the
 * statement failed before it ran. Behind a transaction pooler a connection's prepared statements
 * stay with the server connection, which serves other clients between transactions.
 */
export function isLostPreparedStatement(error: unknown): boolean {
  const state = sqlState(error);
  return state === '26000' || state === '42P05';
}

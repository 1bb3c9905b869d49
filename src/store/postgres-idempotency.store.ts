import type { Pool, PoolClient, QueryResultRow } from 'pg';
import type { DataSource } from 'typeorm';
import {
  IdempotencyStore,
  type ClaimOutcome,
  type ClaimRequest,
  type IsolationLevel,
  type RecordId,
  type RecordOwner,
  type StoreTransaction,
  type StoredResponse,
} from './idempotency.store';
import { PostgresStoreTransaction, tryKeyLock } from './postgres-store-transaction';
import { RecordedKeyRate, type ClaimOpening } from './recorded-key-rate';
import { StatementSender, type PreparedStatement, type SqlRunner } from './sql-runner';
import { StatementBatcher } from './statement-batcher';
import { DEFAULT_STORE_TIMEOUT } from './store-timeout';

// A record whose TTL is over and that no live claim holds: purged, or taken over by any request.
const expired = (row: string) =>
  `(${row}.expires_at <= now() AND (${row}.response_status IS NOT NULL OR ${row}.lease_expires_at <= now()))`;

// A record may be taken over when it is expired, or when it is in flight, its lease has run out
// (the owner crashed) and the request is the same one. Written once and used in both the look-up
// and the take-over below.
const claimable = (row: string, fingerprint: string) => `(${expired(row)}
  OR (${row}.response_status IS NULL AND ${row}.lease_expires_at <= now() AND ${row}.fingerprint = ${fingerprint}))`;

// pg reads bytea as hex text, so a body costs several times its size while it is read. Bodies up
// to this size come with the claim; larger ones are read in pieces of BODY_PIECE_BYTES.
const INLINE_BODY_BYTES = 64 * 1024;
const BODY_PIECE_BYTES = 256 * 1024;

// The expiry as epoch milliseconds: a number is cheaper to read than a timestamp's text. Taken from
// an interval, as extract() of a timestamptz is only STABLE, and Citus refuses a distributed INSERT or
// UPDATE whose RETURNING calls anything but IMMUTABLE functions.
const EXPIRES_MS = (row: string) =>
  `(extract(epoch FROM ${row}.expires_at - timestamptz 'epoch') * 1000)::double precision AS expires_ms`;

// What CLAIM returns for a record already there: as it is, and whether it may be taken over.
const RECORD_COLUMNS = (row: string) => `${row}.fence, ${row}.fingerprint, ${row}.response_status, ${row}.response_headers,
  CASE WHEN octet_length(${row}.response_body) <= ${INLINE_BODY_BYTES} THEN ${row}.response_body END AS response_body,
  octet_length(${row}.response_body) AS body_length, ${claimable(row, '$3')} AS claimable`;

// The columns of a key just claimed, by INSERT or TAKE_OVER.
const CLAIMED_COLUMNS = (row: string) => `true AS claimed, ${row}.fence, ${EXPIRES_MS(row)}`;

/**
 * A new record for the key, unless it has one. A fresh record's fencing token starts at a random
 * value, not 1: should the row ever vanish while its owner still runs (purged after its TTL, lost
 * with the database), the next record of the key still gets a token that owner does not hold.
 */
const INSERT_RECORD = `
  INSERT INTO idempotency_keys AS k (api_key_id, idem_key, fingerprint, fence, lease_expires_at, expires_at, created_at)
  VALUES ($1::text, $2::varchar, $3::varchar, 1 + floor(random() * 1073741823)::integer,
          now() + $4::double precision * interval '1 millisecond', now() + $5::double precision * interval '1 millisecond', now())
  ON CONFLICT (api_key_id, idem_key) DO NOTHING
  RETURNING ${CLAIMED_COLUMNS('k')}`;

/**
 * The claim in one statement and one round trip: either the INSERT of a new record wins, or the
 * record already there comes back (for a replay, a conflict, or a take-over below). Both parts
 * read the table as it was when the statement started, so one of them returns a row (see takeOrFind()
 * for the one case where both do); two racing INSERTs are decided by the unique key, and the loser
 * gets no row at all (its snapshot predates the winner's row), so the caller asks again and then
 * sees the winner's claim. A key that has a record costs the INSERT only its look-up in the unique
 * index: nothing is written.
 */
const CLAIM: PreparedStatement = {
  name: 'idempotency_claim_v6',
  text: `
    WITH claimed AS (${INSERT_RECORD})
    SELECT c.fence, NULL::varchar AS fingerprint, NULL::smallint AS response_status, NULL::jsonb AS response_headers,
           NULL::bytea AS response_body, NULL::integer AS body_length, false AS claimable, c.claimed, c.expires_ms
    FROM claimed c
    UNION ALL
    SELECT ${RECORD_COLUMNS('e')}, false, NULL FROM idempotency_keys e WHERE e.api_key_id = $1 AND e.idem_key = $2`,
};

/**
 * CLAIM's INSERT alone. CLAIM's look-up of the record costs every fresh key a second index scan
 * and PostgreSQL the plan around it, so when nearly all keys are new (see RecordedKeyRate) this is
 * tried first; a key it does not win then goes on to CLAIM.
 */
const INSERT: PreparedStatement = { name: 'idempotency_insert_v2', text: INSERT_RECORD };

// The statements for a batch take its items as one JSON array of objects ($1), read with
// jsonb_to_recordset(). PostgreSQL knows an array parameter's length when it plans a statement for
// its values, which makes it plan a statement over unnest() anew on every execution (a custom plan
// always looks cheaper than the generic one); a JSON recordset's size is unknown either way, so the
// statement is planned once per connection.
const BATCH = (columns: string) => `jsonb_to_recordset($1::jsonb) AS v(${columns})`;

/**
 * INSERT for a batch of keys, all different (INSERT's values as scope, key, fingerprint, lease, ttl). A key whose
 * transactional claim is not committed yet (its advisory lock is held) is left out, as the INSERT
 * would wait for that transaction and hold up the whole batch; its request goes on to CLAIM alone.
 * Rows go in key order, so two batches never wait on each other's keys in opposite orders.
 */
const INSERT_MANY: PreparedStatement = {
  name: 'idempotency_insert_many_v3',
  text: `
    INSERT INTO idempotency_keys AS k (api_key_id, idem_key, fingerprint, fence, lease_expires_at, expires_at, created_at)
    SELECT v.scope, v.key, v.fingerprint, 1 + floor(random() * 1073741823)::integer,
           now() + v.lease * interval '1 millisecond', now() + v.ttl * interval '1 millisecond', now()
    FROM ${BATCH('scope text, key varchar, fingerprint varchar, lease double precision, ttl double precision')}
    WHERE ${tryKeyLock('v.scope', 'v.key')}
    ORDER BY v.scope, v.key
    ON CONFLICT (api_key_id, idem_key) DO NOTHING
    RETURNING k.api_key_id, k.idem_key, ${CLAIMED_COLUMNS('k')}`,
};

const ANSWERABLE = (row: string) =>
  `${row}.response_status IS NOT NULL AND ${row}.expires_at > now() AND octet_length(${row}.response_body) <= ${INLINE_BODY_BYTES}`;

/**
 * The record, if it is one a replay (or a conflict) is answered from: completed, not expired, its
 * body short enough to come along. A statement that may write costs PostgreSQL noticeably more to
 * start than a plain SELECT, even when it writes nothing, so when most keys come back recorded (see
 * RecordedKeyRate) this is asked first; any other key (none, in flight, expired, a body read in
 * pieces) goes on to CLAIM. Only the columns of the answer: each costs a little on every replay.
 */
const LOOK: PreparedStatement = {
  name: 'idempotency_look_v3',
  text: `
    SELECT k.fingerprint, k.response_status, k.response_headers, k.response_body FROM idempotency_keys k
    WHERE k.api_key_id = $1 AND k.idem_key = $2 AND ${ANSWERABLE('k')}`,
};

/** LOOK for a batch of keys, all different (scope, key). */
const LOOK_MANY: PreparedStatement = {
  name: 'idempotency_look_many_v1',
  text: `
    SELECT k.api_key_id, k.idem_key, k.fingerprint, k.response_status, k.response_headers, k.response_body
    FROM ${BATCH('scope text, key varchar')}
    JOIN idempotency_keys k ON k.api_key_id = v.scope AND k.idem_key = v.key
    WHERE ${ANSWERABLE('k')}`,
};

/**
 * Reads a piece of a stored body. The fence pins the record: a completed record never changes under
 * the same fence, so pieces read one after the other belong to the same body.
 */
const READ_BODY_PIECE: PreparedStatement = {
  name: 'idempotency_read_body_piece_v1',
  text: `
    SELECT substring(response_body FROM $4::integer FOR $5::integer) AS piece
    FROM idempotency_keys WHERE api_key_id = $1 AND idem_key = $2 AND fence = $3 AND response_status IS NOT NULL`,
};

/**
 * Takes over a record CLAIM found claimable. The fence CLAIM saw and the condition are checked
 * again under the row lock, so of two racing take-overs only one matches.
 */
const TAKE_OVER: PreparedStatement = {
  name: 'idempotency_take_over_v2',
  text: `
    UPDATE idempotency_keys AS k SET
      fingerprint = $3, fence = k.fence + 1, lease_expires_at = now() + $4::double precision * interval '1 millisecond',
      expires_at = now() + $5::double precision * interval '1 millisecond', created_at = now(), completed_at = NULL,
      response_status = NULL, response_headers = NULL, response_body = NULL
    WHERE k.api_key_id = $1 AND k.idem_key = $2 AND k.fence = $6 AND ${claimable('k', '$3')}
    RETURNING ${CLAIMED_COLUMNS('k')}`,
};

const OWNED = `api_key_id = $1 AND idem_key = $2 AND fence = $3 AND response_status IS NULL`;

const RENEW: PreparedStatement = {
  name: 'idempotency_renew_v1',
  text: `UPDATE idempotency_keys SET lease_expires_at = now() + $4::double precision * interval '1 millisecond' WHERE ${OWNED}`,
};

const COMPLETE: PreparedStatement = {
  name: 'idempotency_complete_v1',
  text: `UPDATE idempotency_keys
         SET response_status = $4, response_headers = $5, response_body = $6, completed_at = now(), lease_expires_at = NULL
         WHERE ${OWNED}`,
};

/** COMPLETE for a batch of records (COMPLETE's values, the body in hex); returns those it stored. */
const COMPLETE_MANY: PreparedStatement = {
  name: 'idempotency_complete_many_v2',
  text: `UPDATE idempotency_keys AS k
         SET response_status = v.status, response_headers = v.headers, response_body = decode(v.body, 'hex'), completed_at = now(), lease_expires_at = NULL
         FROM ${BATCH('scope text, key varchar, fence integer, status smallint, headers jsonb, body text')}
         WHERE k.api_key_id = v.scope AND k.idem_key = v.key AND k.fence = v.fence AND k.response_status IS NULL
         RETURNING k.api_key_id, k.idem_key, k.fence`,
};

// Releasing ends the record's life now instead of deleting it, so its fencing token survives: an
// old owner can never match the record of a later claim. The token is bumped too, which ends the
// ownership itself: a renewal or completion still on its way when the key was released matches nothing.
const RELEASE: PreparedStatement = {
  name: 'idempotency_release_v2',
  text: `UPDATE idempotency_keys SET expires_at = now(), lease_expires_at = now(), fence = fence + 1 WHERE ${OWNED}`,
};

/**
 * Deletes up to $1 expired records, skipping those another transaction holds. Records are picked by
 * their primary key, never by ctid: a ctid is unique only inside one partition of a partitioned table.
 */
const PURGE_BATCH: PreparedStatement = {
  name: 'idempotency_purge_batch_v2',
  text: `
    DELETE FROM idempotency_keys k USING (
      SELECT e.api_key_id, e.idem_key FROM idempotency_keys e WHERE ${expired('e')} LIMIT $1 FOR UPDATE SKIP LOCKED
    ) d
    WHERE k.api_key_id = d.api_key_id AND k.idem_key = d.idem_key AND ${expired('k')}`,
};

/**
 * The advisory lock that lets only one instance purge a batch at a time ("idempotency purge"). Taken
 * per transaction, never per session: behind a transaction pooler (PgBouncer pool_mode = transaction)
 * the session that took a session-level lock may serve another client, or never be asked to unlock.
 */
const PURGE_LOCK_ID = 7_305_219_447_001;
const TAKE_PURGE_LOCK = {
  try: 'SELECT pg_try_advisory_xact_lock($1) AS locked',
  wait: 'SELECT true AS locked FROM pg_advisory_xact_lock($1)',
};

/** How many times a claim is re-asked after losing a race for the key. */
const CLAIM_ATTEMPTS = 5;

/** How the store talks to PostgreSQL: the module options of the same names. */
export interface PostgresStoreOptions {
  /** @default true */
  preparedStatements?: boolean;
  /** @default 5_000 */
  storeTimeout?: number;
  /** @default true */
  batchStatements?: boolean;
}

/**
 * The PostgreSQL store. It borrows the pool of the host's TypeORM DataSource and talks to it
 * with its own statements, prepared unless told otherwise: no entity hydration or query building
 * on the request path.
 */
export class PostgresIdempotencyStore extends IdempotencyStore {
  private readonly statements: StatementSender;
  private readonly timeout: number;
  private readonly batched: boolean;

  constructor(
    private readonly dataSource: DataSource,
    {
      preparedStatements = true,
      storeTimeout = DEFAULT_STORE_TIMEOUT,
      batchStatements = true,
    }: PostgresStoreOptions = {},
  ) {
    super();
    this.timeout = storeTimeout;
    this.batched = batchStatements;
    this.statements = new StatementSender({ preparedStatements, timeout: storeTimeout });
    this.run = this.statements.onPool(() => this.pool());
  }

  /** Runs a statement on a connection of the pool, as the store's own statements outside a transaction. */
  readonly run: SqlRunner;

  /** Whether statements still go out named: false once a transaction pooler lost one. */
  get preparedStatements(): boolean {
    return this.statements.prepared;
  }

  private readonly recordedKeys = new RecordedKeyRate();

  // Fresh keys on the pool share their INSERT and their COMPLETE with the others of their turn.
  private readonly insertBatches = new StatementBatcher<ClaimRequest, QueryResultRow | undefined>(
    (requests) => this.insertMany(requests),
    async (request) => (await this.run(INSERT, claimValues(request))).rows[0],
  );

  private readonly completeBatches = new StatementBatcher<Completion, boolean>(
    (completions) => this.completeMany(completions),
    async ({ owner, response }) => (await this.run(COMPLETE, completeValues(owner, response))).rowCount === 1,
  );

  private readonly lookBatches = new StatementBatcher<ClaimRequest, QueryResultRow | undefined>(
    (requests) => this.lookMany(requests),
    async (request) => (await this.run(LOOK, [request.scope, request.key])).rows[0],
  );

  async claim(request: ClaimRequest, run: SqlRunner = this.run): Promise<ClaimOutcome> {
    const outcome = await this.settle(request, run);
    this.recordedKeys.observe(outcome.kind !== 'claimed');
    return outcome;
  }

  private async settle(request: ClaimRequest, run: SqlRunner): Promise<ClaimOutcome> {
    const values = claimValues(request);
    for (let attempt = 0; attempt < CLAIM_ATTEMPTS; attempt++) {
      // The first attempt may open with a cheaper statement. A record LOOK finds and that may not
      // be taken over settles the request (the key is never taken on the strength of a read), as
      // does a record INSERT creates; anything else goes on to CLAIM.
      let row = attempt === 0 ? await this.open(this.recordedKeys.opening, request, run) : undefined;
      row ??= await this.takeOrFind(values, run);
      // No row: another claim won a race for the key; ask again to see what it left.
      if (!row) continue;
      if (row.claimed) return { kind: 'claimed', owner: { scope: request.scope, key: request.key, fence: row.fence }, expiresAt: new Date(row.expires_ms) };
      if (row.response_status === null) return { kind: 'in_flight', fingerprint: row.fingerprint };
      let body: Buffer | null = row.response_body;
      // Only a replay (same fingerprint) needs a body that did not come with the record.
      if (body === null && row.body_length !== null && row.fingerprint === request.fingerprint) {
        const read = await this.readBody({ scope: request.scope, key: request.key, fence: row.fence }, row.body_length, run);
        // The record changed while it was read (taken over after its TTL, purged): claim again.
        if (!read) continue;
        body = read;
      }
      const response: StoredResponse = { status: row.response_status, headers: row.response_headers ?? {}, body };
      return { kind: 'completed', fingerprint: row.fingerprint, response };
    }
    // Lost the race for the key every time: someone else holds it now.
    return { kind: 'in_flight', fingerprint: null };
  }

  /** What the opening statement settles: a record to answer from (LOOK), a new record (INSERT). */
  private async open(opening: ClaimOpening, request: ClaimRequest, run: SqlRunner): Promise<QueryResultRow | undefined> {
    if (opening === 'insert') {
      return this.batching(run) ? this.insertBatches.send(request) : (await run(INSERT, claimValues(request))).rows[0];
    }
    if (opening === 'look') {
      const key = [request.scope, request.key];
      return this.batching(run) ? this.lookBatches.send(request) : (await run(LOOK, key)).rows[0];
    }
    return undefined;
  }

  /** Whether a statement on `run` may be shared: on the pool only (never in a transaction), and with batches on. */
  private batching(run: SqlRunner): boolean {
    return this.batched && run === this.run;
  }

  // Two requests of one key in a batch: the first tries the INSERT, the other goes on to CLAIM.
  private async insertMany(requests: ClaimRequest[]): Promise<(QueryResultRow | undefined)[]> {
    const ids = requests.map(recordId);
    const isFirst = ids.map((id, index) => ids.indexOf(id) === index);
    const batch = requests.filter((_, index) => isFirst[index]).map(({ scope, key, fingerprint, lease, ttl }) => ({ scope, key, fingerprint, lease, ttl }));
    const { rows } = await this.run(INSERT_MANY, [JSON.stringify(batch)]);
    const inserted = new Map(rows.map((row) => [recordId({ scope: row.api_key_id, key: row.idem_key }), row]));
    return ids.map((id, index) => (isFirst[index] ? inserted.get(id) : undefined));
  }

  private async lookMany(requests: ClaimRequest[]): Promise<(QueryResultRow | undefined)[]> {
    const unique = [...new Map(requests.map((request) => [recordId(request), request])).values()];
    const { rows } = await this.run(LOOK_MANY, [JSON.stringify(unique.map(({ scope, key }) => ({ scope, key })))]);
    const found = new Map(rows.map((row) => [recordId({ scope: row.api_key_id, key: row.idem_key }), row]));
    return requests.map((request) => found.get(recordId(request)));
  }

  /** CLAIM, and the take-over of what it found claimable; undefined when a racing claim won. */
  private async takeOrFind(values: unknown[], run: SqlRunner): Promise<QueryResultRow | undefined> {
    const { rows } = await run(CLAIM, values);
    // Both rows come back only when a purge deleted the old record after the statement began
    // (the INSERT then no longer conflicts): the new claim is what counts.
    const row = rows.find((candidate) => candidate.claimed) ?? rows[0];
    return row?.claimable ? (await run(TAKE_OVER, [...values, row.fence])).rows[0] : row;
  }

  /** Reads a stored body piece by piece into one buffer; undefined when the record changed meanwhile. */
  private async readBody(record: RecordOwner, length: number, run: SqlRunner): Promise<Buffer | undefined> {
    const body = Buffer.allocUnsafe(length);
    for (let offset = 0; offset < length; offset += BODY_PIECE_BYTES) {
      const [row] = (await run(READ_BODY_PIECE, [...ownerValues(record), offset + 1, BODY_PIECE_BYTES])).rows;
      if (!row || row.piece.length !== Math.min(BODY_PIECE_BYTES, length - offset)) return undefined;
      row.piece.copy(body, offset);
    }
    return body;
  }

  async renew(owner: RecordOwner, lease: number): Promise<boolean> {
    return (await this.run(RENEW, [...ownerValues(owner), lease])).rowCount === 1;
  }

  async complete(owner: RecordOwner, response: StoredResponse, run: SqlRunner = this.run): Promise<boolean> {
    // A large body goes alone: in a batch it would be sent as hex text.
    if (this.batching(run) && (response.body?.length ?? 0) <= INLINE_BODY_BYTES) {
      return this.completeBatches.send({ owner, response });
    }
    return (await run(COMPLETE, completeValues(owner, response))).rowCount === 1;
  }

  private async completeMany(completions: Completion[]): Promise<boolean[]> {
    const batch = completions.map(({ owner: { scope, key, fence }, response: { status, headers, body } }) => ({ scope, key, fence, status, headers, body: body?.toString('hex') ?? null }));
    const { rows } = await this.run(COMPLETE_MANY, [JSON.stringify(batch)]);
    const stored = new Set(rows.map((row) => `${row.fence}/${recordId({ scope: row.api_key_id, key: row.idem_key })}`));
    return completions.map(({ owner }) => stored.has(`${owner.fence}/${recordId(owner)}`));
  }

  async release(owner: RecordOwner): Promise<boolean> {
    return (await this.run(RELEASE, ownerValues(owner))).rowCount === 1;
  }

  async purgeExpired({ batchSize, skipIfBusy }: { batchSize: number; skipIfBusy: boolean }): Promise<number> {
    let total = 0;
    for (;;) {
      const purged = await this.purgeBatch(batchSize, skipIfBusy);
      // Busy: another instance is purging and takes care of the rest.
      if (purged === undefined) return total;
      total += purged;
      if (purged < batchSize) return total;
    }
  }

  /**
   * One batch in a transaction of its own, so no batch holds its row locks for long and the purge
   * lock lives no longer than the batch. Undefined when the lock was busy and `skipIfBusy`.
   */
  private async purgeBatch(batchSize: number, skipIfBusy: boolean): Promise<number | undefined> {
    const client: PoolClient = await this.pool().connect();
    try {
      await client.query('BEGIN');
      const { rows } = await client.query(TAKE_PURGE_LOCK[skipIfBusy ? 'try' : 'wait'], [PURGE_LOCK_ID]);
      const purged = rows[0].locked ? await this.statements.onClient(client)(PURGE_BATCH, [batchSize]) : undefined;
      await client.query('COMMIT');
      client.release();
      return purged?.rowCount;
    } catch (error) {
      // Closing the connection rolls back whatever the batch began, even when it broke.
      client.release(true);
      throw error;
    }
  }

  async begin(isolation: IsolationLevel): Promise<StoreTransaction> {
    return PostgresStoreTransaction.begin(this.dataSource, isolation, this, this.statements, this.timeout);
  }

  private pool(): Pool {
    return (this.dataSource.driver as unknown as { master: Pool }).master;
  }
}

interface Completion {
  owner: RecordOwner;
  response: StoredResponse;
}

function ownerValues(owner: RecordOwner): unknown[] {
  return [owner.scope, owner.key, owner.fence];
}

function claimValues(request: ClaimRequest): unknown[] {
  return [request.scope, request.key, request.fingerprint, request.lease, request.ttl];
}

function completeValues(owner: RecordOwner, response: StoredResponse): unknown[] {
  return [...ownerValues(owner), response.status, response.headers, response.body];
}

// Length-prefixed, so ("a b", "c") and ("a", "b c") stay apart.
function recordId(record: RecordId): string {
  return `${record.scope.length}:${record.scope}${record.key}`;
}

/** The statements of the request path, for tests that read their plans; not part of the package's API. */
export const REQUEST_STATEMENTS = {
  CLAIM, INSERT, LOOK, TAKE_OVER, RENEW, COMPLETE, RELEASE, READ_BODY_PIECE, INSERT_MANY, LOOK_MANY, COMPLETE_MANY,
};

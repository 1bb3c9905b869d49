import { Body, Controller, HttpException, Param, Post } from '@nestjs/common';
import type { EntityManager } from 'typeorm';
import { Idempotent, IdempotencyTransaction } from '../../src';
import { Probe } from './fixture-app';

/** Business tables the transactional handlers write to. */
export const LEDGER_SCHEMA = `
  CREATE TABLE ledger (id serial PRIMARY KEY, note text NOT NULL, parent_id integer);
  CREATE TABLE ledger_parent (id integer PRIMARY KEY);
  -- Checked only at COMMIT, so a violation makes the commit itself fail.
  ALTER TABLE ledger ADD CONSTRAINT ledger_parent_fk FOREIGN KEY (parent_id) REFERENCES ledger_parent (id) DEFERRABLE INITIALLY DEFERRED;
  CREATE TABLE counter (id integer PRIMARY KEY, value integer NOT NULL);
  INSERT INTO counter VALUES (1, 0);
  -- Two rows that concurrent handlers lock or read in opposite orders (deadlock, write skew).
  CREATE TABLE pair (id integer PRIMARY KEY, value integer NOT NULL);
  INSERT INTO pair VALUES (1, 0), (2, 0);`;

type Note = { note: string };

/** Transactional handlers that write a business row, then succeed, throw or stall. */
@Controller('ledger')
export class LedgerController {
  constructor(private readonly probe: Probe) {}

  private async write(manager: EntityManager, note: string, parentId: number | null = null): Promise<number> {
    const [row] = await manager.query('INSERT INTO ledger (note, parent_id) VALUES ($1, $2) RETURNING id', [note, parentId]);
    return row.id;
  }

  @Post() @Idempotent({ transactional: true })
  async create(@Body() body: Note, @IdempotencyTransaction() manager: EntityManager) {
    this.probe.hit('ledger');
    const inTransaction = manager.queryRunner?.isTransactionActive ?? false;
    return { id: await this.write(manager, body.note), inTransaction };
  }

  @Post('then-reject') @Idempotent({ transactional: true })
  async thenReject(@Body() body: Note, @IdempotencyTransaction() manager: EntityManager) {
    const attempt = this.probe.hit('then-reject');
    await this.write(manager, body.note);
    throw new HttpException({ rejected: body.note, attempt }, 422);
  }

  @Post('then-crash') @Idempotent({ transactional: true })
  async thenCrash(@Body() body: Note, @IdempotencyTransaction() manager: EntityManager) {
    const attempt = this.probe.hit('then-crash');
    await this.write(manager, body.note);
    if (attempt === 1) throw new Error('crash after the write');
    return { attempt };
  }

  @Post('bad-commit') @Idempotent({ transactional: true })
  async badCommit(@Body() body: Note, @IdempotencyTransaction() manager: EntityManager) {
    const attempt = this.probe.hit('bad-commit');
    // The first attempt points at a parent that does not exist: the deferred check fails at COMMIT.
    await this.write(manager, body.note, attempt === 1 ? 999 : null);
    return { attempt };
  }

  @Post('slow/:gate') @Idempotent({ transactional: true })
  async slow(@Param('gate') gate: string, @Body() body: Note, @IdempotencyTransaction() manager: EntityManager) {
    this.probe.hit(`ledger-slow:${gate}`);
    const id = await this.write(manager, body.note);
    await this.probe.gate(gate).promise;
    return { id };
  }

  @Post('isolation') @Idempotent({ transactional: true })
  async isolation(@IdempotencyTransaction() manager: EntityManager) {
    const [row] = await manager.query('SHOW transaction_isolation');
    return { isolation: row.transaction_isolation };
  }

  @Post('swallow') @Idempotent({ transactional: true })
  async swallow(@Body() body: Note, @IdempotencyTransaction() manager: EntityManager) {
    await this.write(manager, body.note);
    // The handler swallows a failed statement: the transaction is aborted, COMMIT would roll back.
    await manager.query('SELECT 1/0').catch(() => undefined);
    return { ok: true };
  }

  @Post('large') @Idempotent({ transactional: true })
  async large(@Body() body: Note, @IdempotencyTransaction() manager: EntityManager) {
    const n = this.probe.hit('ledger-large');
    return { id: await this.write(manager, body.note), n, padding: 'x'.repeat(5000) };
  }

  /** Locks one row of `pair`, waits at the gate, then locks the other: two opposite orders deadlock. */
  @Post('lock/:gate/:first/:second') @Idempotent({ transactional: true })
  async lock(@Param('gate') gate: string, @Param('first') first: string, @Param('second') second: string, @IdempotencyTransaction() manager: EntityManager) {
    await manager.query('UPDATE pair SET value = value + 1 WHERE id = $1', [Number(first)]);
    this.probe.hit(`lock:${gate}`);
    await this.probe.gate(gate).promise;
    await manager.query('UPDATE pair SET value = value + 1 WHERE id = $1', [Number(second)]);
    return { locked: [first, second] };
  }

  /**
   * Write skew: reads one row of `pair` and writes the other, then waits at the gate without
   * another statement. Two of them crossed under SERIALIZABLE: whichever commits second fails,
   * and only at its commit.
   */
  @Post('skew/:gate/:read/:write') @Idempotent({ transactional: true, isolation: 'SERIALIZABLE' })
  async skew(@Param('gate') gate: string, @Param('read') read: string, @Param('write') write: string, @IdempotencyTransaction() manager: EntityManager) {
    const [{ value }] = await manager.query('SELECT value FROM pair WHERE id = $1', [Number(read)]);
    await manager.query('UPDATE pair SET value = $2 WHERE id = $1', [Number(write), value + 1]);
    this.probe.hit(`skew:${gate}`);
    await this.probe.gate(gate).promise;
    return { read, write, value: value + 1 };
  }

  @Post('increment') @Idempotent({ transactional: true, isolation: 'SERIALIZABLE' })
  async increment(@Param('gate') _gate: string, @IdempotencyTransaction() manager: EntityManager) {
    this.probe.hit('increment');
    const [{ value }] = await manager.query('SELECT value FROM counter WHERE id = 1');
    await this.probe.gate('increment').promise;
    await manager.query('UPDATE counter SET value = $1 WHERE id = 1', [value + 1]);
    return { value: value + 1 };
  }
}

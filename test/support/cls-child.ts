// A fixture app with nestjs-cls and @nestjs-cls/transactional, in a process of its own: those
// packages are CommonJS that require the ESM-only @nestjs/common, which Node loads (require(esm))
// but Jest's module loader does not on Node 20. PLATFORM picks express or fastify; with
// CLS_PLUGIN=none the app registers nestjs-cls without its transactional plugin (and so without
// the controller and service that need it).
import 'reflect-metadata';
import { Body, Controller, Injectable, Post } from '@nestjs/common';
import { getDataSourceToken } from '@nestjs/typeorm';
import { ClsPluginTransactional, InjectTransaction, Transactional, TransactionHost } from '@nestjs-cls/transactional';
import type { Transaction } from '@nestjs-cls/transactional';
import { TransactionalAdapterTypeOrm } from '@nestjs-cls/transactional-adapter-typeorm';
import { ClsModule } from 'nestjs-cls';
import { DataSource, type EntityManager } from 'typeorm';
import { Idempotent, IdempotencyTransaction } from '../../src';
import { IdempotencyClsModule } from '../../src/cls';
import { Probe, bootFixture, type Platform } from './fixture-app';

type Adapter = TransactionalAdapterTypeOrm;
type Note = { note: string; fail?: boolean };

/** A service of the host's, written for @nestjs-cls/transactional: it knows nothing of idempotency. */
@Injectable()
class LedgerService {
  constructor(
    private readonly txHost: TransactionHost<Adapter>,
    @InjectTransaction() private readonly tx: Transaction<Adapter>,
  ) {}

  /** Writes through the TransactionHost, the injected transaction and a @Transactional() method. */
  async writeEveryWay(note: string): Promise<void> {
    await this.txHost.tx.query('INSERT INTO ledger (note) VALUES ($1)', [`${note}:host`]);
    await this.tx.query('INSERT INTO ledger (note) VALUES ($1)', [`${note}:injected`]);
    await this.decorated(note);
  }

  @Transactional()
  async decorated(note: string): Promise<void> {
    await this.txHost.tx.query('INSERT INTO ledger (note) VALUES ($1)', [`${note}:decorated`]);
  }

  /** What the service sees as its transaction. */
  current(): { active: boolean; manager: EntityManager } {
    return { active: this.txHost.isTransactionActive(), manager: this.txHost.tx };
  }
}

@Controller('cls')
class ClsLedgerController {
  constructor(
    private readonly ledger: LedgerService,
    private readonly probe: Probe,
    private readonly dataSource: DataSource,
  ) {}

  /** Writes every way, reports what it saw, then fails the first time when asked to. */
  @Post('ledger') @Idempotent({ transactional: true })
  async write(@Body() body: Note, @IdempotencyTransaction() manager: EntityManager) {
    const run = this.probe.hit(body.note);
    await this.ledger.writeEveryWay(body.note);
    const { active, manager: seen } = this.ledger.current();
    // Another connection of the pool sees only what is committed.
    const sql = 'SELECT count(*)::int AS n FROM ledger WHERE note LIKE $1';
    const [{ n }] = await this.dataSource.query(sql, [`${body.note}:%`]);
    if (body.fail && run === 1) throw new Error('after the writes');
    return { run, active, same: seen === manager, visibleOutside: n };
  }

  /** Not idempotent: @Transactional() opens a transaction of its own, as without the module. */
  @Post('plain')
  async plain(@Body() body: Note) {
    const before = this.ledger.current().active;
    await this.ledger.decorated(body.note);
    return { before };
  }
}

const withPlugin = process.env.CLS_PLUGIN !== 'none';
const plugin = new ClsPluginTransactional({
  adapter: new TransactionalAdapterTypeOrm({ dataSourceToken: getDataSourceToken() }),
  enableTransactionProxy: true,
});

void bootFixture(process.env.DATABASE_URL!, {
  controllers: withPlugin ? [ClsLedgerController] : [],
  platform: process.env.PLATFORM as Platform,
  imports: [
    ClsModule.forRoot({
      global: true,
      middleware: { mount: true },
      plugins: withPlugin ? [plugin] : [],
    }),
    IdempotencyClsModule.forRoot(),
  ],
  providers: withPlugin ? [LedgerService] : [],
}).then((app) => process.stdout.write(`READY ${app.url}\n`));

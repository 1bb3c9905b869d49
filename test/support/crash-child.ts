// A fixture app in a process of its own, for tests that kill it. With CRASH_AFTER_WRITE=1 the
// transactional ledger handler writes its row, says so on stdout, and then never answers.
import 'reflect-metadata';
import { Body, Controller, Post } from '@nestjs/common';
import type { EntityManager } from 'typeorm';
import { Idempotent, IdempotencyTransaction } from '../../src';
import { bootFixture } from './fixture-app';

@Controller('crash')
class CrashController {
  @Post() @Idempotent({ transactional: true })
  async create(@Body() body: { note: string }, @IdempotencyTransaction() manager: EntityManager) {
    const [row] = await manager.query('INSERT INTO ledger (note) VALUES ($1) RETURNING id', [body.note]);
    if (process.env.CRASH_AFTER_WRITE === '1') {
      process.stdout.write('WROTE\n');
      await new Promise(() => undefined);
    }
    return { id: row.id, note: body.note, pid: process.pid };
  }
}

void bootFixture(process.env.DATABASE_URL!, { controllers: [CrashController] }).then((app) => process.stdout.write(`READY ${app.url}\n`));

import {
  Body,
  type CallHandler,
  Controller,
  type ExecutionContext,
  Injectable,
  type NestInterceptor,
  Param,
  Post,
  StreamableFile,
  UseInterceptors,
} from '@nestjs/common';
import { Readable } from 'node:stream';
import { type Observable, from, map, mergeMap, switchMap } from 'rxjs';
import type { EntityManager } from 'typeorm';
import { Idempotent, IdempotencyTransaction } from '../../src';
import { Probe } from './fixture-app';
import { timeoutInterceptor } from './timeout-interceptor';

/** How long the timeout interceptor lets a handler run before it answers 408 in its place. */
export const TIMEOUT_MS = 300;

type Note = { note: string };

/** An outer interceptor that still works after the handler answered: it waits at the gate `after:<gate>`. */
@Injectable()
class HoldAfterHandlerInterceptor implements NestInterceptor {
  constructor(private readonly probe: Probe) {}

  intercept(context: ExecutionContext, next: CallHandler): Observable<unknown> {
    const gate: string = context.switchToHttp().getRequest().params.gate;
    return next.handle().pipe(
      mergeMap(async (value) => {
        await this.probe.gate(`after:${gate}`).promise;
        return value;
      }),
    );
  }
}

const writeNote = (manager: EntityManager, note: string) => manager.query('INSERT INTO ledger (note) VALUES ($1)', [note]);

/** Leased and transactional routes behind an outer interceptor that holds their answer. */
@Controller('held')
@UseInterceptors(HoldAfterHandlerInterceptor)
export class HeldController {
  constructor(private readonly probe: Probe) {}

  @Post(':gate') @Idempotent()
  leased(@Param('gate') gate: string) {
    return { n: this.probe.hit(`held:${gate}`) };
  }

  @Post('ledger/:gate') @Idempotent({ transactional: true })
  async ledger(@Param('gate') gate: string, @Body() body: Note, @IdempotencyTransaction() manager: EntityManager) {
    await writeNote(manager, body.note);
    return { n: this.probe.hit(`held-ledger:${gate}`) };
  }
}

/** Routes behind Nest's documented timeout interceptor whose handlers outlive it. */
@Controller('timed')
@UseInterceptors(timeoutInterceptor(TIMEOUT_MS))
export class TimedController {
  constructor(private readonly probe: Probe) {}

  @Post(':gate') @Idempotent()
  async leased(@Param('gate') gate: string) {
    const n = this.probe.hit(`timed:${gate}`);
    await this.probe.gate(gate).promise;
    return { n };
  }

  /** Writes a row, waits at the gate, writes a second one. */
  @Post('ledger/:gate') @Idempotent({ transactional: true })
  async ledger(@Param('gate') gate: string, @Body() body: Note, @IdempotencyTransaction() manager: EntityManager) {
    const n = this.probe.hit(`timed-ledger:${gate}`);
    await writeNote(manager, body.note);
    await this.probe.gate(gate).promise;
    await writeNote(manager, body.note);
    return { n };
  }
}

/** Handlers that answer with an Observable or a stream, which Nest tears down when the client leaves. */
@Controller('torn')
export class TornController {
  constructor(private readonly probe: Probe) {}

  @Post('leased/:gate') @Idempotent()
  leased(@Param('gate') gate: string) {
    const n = this.probe.hit(`torn-leased:${gate}`);
    return from(this.probe.gate(gate).promise).pipe(map(() => ({ n })));
  }

  @Post('observable/:gate') @Idempotent({ transactional: true })
  observable(@Param('gate') gate: string, @Body() body: Note, @IdempotencyTransaction() manager: EntityManager) {
    const n = this.probe.hit(`torn-observable:${gate}`);
    return from(writeNote(manager, body.note)).pipe(
      switchMap(() => from(this.probe.gate(gate).promise)),
      map(() => ({ n })),
    );
  }

  /** A file whose first chunk is ready at once and whose rest waits at the gate. */
  @Post('stream/:gate') @Idempotent({ transactional: true })
  async stream(@Param('gate') gate: string, @Body() body: Note, @IdempotencyTransaction() manager: EntityManager) {
    this.probe.hit(`torn-stream:${gate}`);
    await writeNote(manager, body.note);
    const file = new Readable({ read() {} });
    file.push(Buffer.alloc(1000, 1));
    void this.probe.gate(gate).promise.then(() => {
      file.push(Buffer.alloc(1000, 2));
      file.push(null);
    });
    return new StreamableFile(file, { type: 'application/octet-stream' });
  }
}

import { isConnectionFailure } from './postgres-errors';

// Bounds a statement's arrays; more waiting items leave as several batches.
const MOST_PER_BATCH = 64;

interface Waiting<T, R> {
  item: T;
  resolve: (result: R) => void;
  reject: (error: unknown) => void;
}

/**
 * Sends together what requests ask for in the same turn of the event loop: at the end of that turn
 * (setImmediate) the items leave as one statement over all of them. Under load, when one turn
 * handles several requests, PostgreSQL then starts, plans and commits one statement (one WAL
 * flush) for several of them; a lone request waits only for the end of its turn and is sent with
 * the plain statement. A failed batch is sent again item by item, so an error stays with its item;
 * unless the database could not be reached or did not answer in time: every item then fails with
 * the batch, as sending each again would only make its request wait as long once more.
 */
export class StatementBatcher<T, R> {
  private waiting: Waiting<T, R>[] = [];

  /** `many` answers its items in their order; `one` is the plain statement for a batch of one. */
  constructor(
    private readonly many: (items: T[]) => Promise<R[]>,
    private readonly one: (item: T) => Promise<R>,
  ) {}

  send(item: T): Promise<R> {
    return new Promise<R>((resolve, reject) => {
      if (this.waiting.push({ item, resolve, reject }) === 1) setImmediate(() => this.sendWaiting());
    });
  }

  private sendWaiting(): void {
    const waiting = this.waiting;
    this.waiting = [];
    for (let start = 0; start < waiting.length; start += MOST_PER_BATCH) {
      const batch = waiting.slice(start, start + MOST_PER_BATCH);
      if (batch.length === 1) this.sendOne(batch[0]);
      else this.sendMany(batch);
    }
  }

  private sendOne(waiting: Waiting<T, R>): void {
    this.one(waiting.item).then(waiting.resolve, waiting.reject);
  }

  private sendMany(batch: Waiting<T, R>[]): void {
    this.many(batch.map((waiting) => waiting.item)).then(
      (results) => batch.forEach((waiting, index) => waiting.resolve(results[index])),
      (error: unknown) =>
        batch.forEach((waiting) => (isConnectionFailure(error) ? waiting.reject(error) : this.sendOne(waiting))),
    );
  }
}

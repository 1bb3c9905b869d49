import { StatementBatcher } from './statement-batcher';

/** An error PostgreSQL raised for a statement (it has a SQLSTATE), as opposed to a lost connection. */
const statementError = (message: string) => Object.assign(new Error(message), { code: '23505' });

/**
 * A batcher over doubling statements that records what each was sent; `failing` items make theirs
 * fail with a statement error, or, with `connectionLost`, the batch with an error of no SQLSTATE.
 */
function doubling(failing: number[] = [], connectionLost = false) {
  const sent = { many: [] as number[][], one: [] as number[] };
  const fail = (items: number[]) => items.some((item) => failing.includes(item));
  const batcher = new StatementBatcher<number, number>(
    async (items) => {
      sent.many.push(items);
      if (fail(items)) throw connectionLost ? new Error('Connection terminated') : statementError('batch failed');
      return items.map((item) => item * 2);
    },
    async (item) => {
      sent.one.push(item);
      if (fail([item])) throw statementError(`item ${item} failed`);
      return item * 2;
    },
  );
  return { batcher, sent };
}

// The batcher sends at setImmediate; an immediate queued after the sends runs after it.
const endOfTurn = () => new Promise((resolve) => setImmediate(resolve));

const range = (count: number) => Array.from({ length: count }, (_, index) => index);

describe('StatementBatcher', () => {
  it('sends a lone item with the plain statement', async () => {
    const { batcher, sent } = doubling();
    const result = batcher.send(21);
    await endOfTurn();
    expect(sent).toEqual({ many: [], one: [21] });
    await expect(result).resolves.toBe(42);
  });

  it('sends the items of one turn as one batch and answers each with its own result', async () => {
    const { batcher, sent } = doubling();
    const results = [1, 2, 3].map((item) => batcher.send(item));
    await endOfTurn();
    expect(sent).toEqual({ many: [[1, 2, 3]], one: [] });
    await expect(Promise.all(results)).resolves.toEqual([2, 4, 6]);
  });

  it('sends the items of a later turn apart from those already sent', async () => {
    const { batcher, sent } = doubling();
    const first = [batcher.send(1), batcher.send(2)];
    await endOfTurn();
    const later = batcher.send(3);
    await endOfTurn();
    expect(sent).toEqual({ many: [[1, 2]], one: [3] });
    await expect(Promise.all([...first, later])).resolves.toEqual([2, 4, 6]);
  });

  it('sends 64 waiting items, the most a batch takes, as one batch', async () => {
    const { batcher, sent } = doubling();
    const items = range(64);
    items.forEach((item) => batcher.send(item));
    await endOfTurn();
    expect(sent).toEqual({ many: [items], one: [] });
  });

  it('splits more than 64 waiting items into batches of at most 64, a last one of one going alone', async () => {
    const { batcher, sent } = doubling();
    const items = range(129);
    const results = items.map((item) => batcher.send(item));
    await endOfTurn();
    expect(sent).toEqual({ many: [items.slice(0, 64), items.slice(64, 128)], one: [128] });
    await expect(Promise.all(results)).resolves.toEqual(items.map((item) => item * 2));
  });

  it('sends a failed batch again item by item, so only the failing item fails', async () => {
    const { batcher, sent } = doubling([2]);
    const settled = Promise.allSettled([1, 2, 3].map((item) => batcher.send(item)));
    await expect(settled).resolves.toEqual([
      { status: 'fulfilled', value: 2 },
      { status: 'rejected', reason: new Error('item 2 failed') },
      { status: 'fulfilled', value: 6 },
    ]);
    expect(sent).toEqual({ many: [[1, 2, 3]], one: [1, 2, 3] });
  });

  it('fails every item of a batch whose connection was lost, without sending them again', async () => {
    const { batcher, sent } = doubling([2], true);
    const settled = await Promise.allSettled([1, 2, 3].map((item) => batcher.send(item)));
    expect(settled.map((result) => result.status)).toEqual(['rejected', 'rejected', 'rejected']);
    expect(sent).toEqual({ many: [[1, 2, 3]], one: [] });
  });

  it('rejects a lone item with the error of its statement', async () => {
    const { batcher } = doubling([5]);
    await expect(batcher.send(5)).rejects.toThrow('item 5 failed');
  });
});

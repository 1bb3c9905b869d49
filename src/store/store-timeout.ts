/** Default of the `storeTimeout` option, in ms. */
export const DEFAULT_STORE_TIMEOUT = 5_000;

/** The database did not answer one step of the store within the `storeTimeout` option. */
export class StoreTimeoutError extends Error {
  constructor(timeout: number) {
    super(`the database did not answer within ${timeout} ms (IdempotencyModule option storeTimeout)`);
    this.name = 'StoreTimeoutError';
  }
}

/**
 * What `work` settles to, or a StoreTimeoutError once `timeout` ms have passed. `onLate` then cleans
 * up after the work, whose outcome nobody waits for any more; it starts before the error is thrown,
 * so a connection it closes cannot be handed back to the pool by the caller first.
 */
export function withinTimeout<T>(work: Promise<T>, timeout: number, onLate: () => unknown): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => {
      work.catch(() => undefined);
      // The executor runs onLate at once; whatever it throws or rejects with is of no use to anyone.
      new Promise((settle) => settle(onLate())).catch(() => undefined);
      reject(new StoreTimeoutError(timeout));
    }, timeout);
    work.then(
      (value) => {
        clearTimeout(timer);
        resolve(value);
      },
      (error: unknown) => {
        clearTimeout(timer);
        reject(error);
      },
    );
  });
}

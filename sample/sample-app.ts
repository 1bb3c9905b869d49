import type { INestApplication, LoggerService, LogLevel } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import type { NestExpressApplication } from '@nestjs/platform-express';
import { randomBytes } from 'node:crypto';
import { AppModule } from './app.module';
import { KeysService } from './keys/keys.service';
import { requestIdMiddleware } from './request-id/request-id.middleware';

/** Options of {@link createSampleApp}. */
export interface SampleAppOptions {
  /**
   * Secret API keys are hashed with (HMAC-SHA256). Keys only authenticate under the secret they
   * were minted with. @default 32 random bytes, new for each app (fine for tests, not for main.ts)
   */
  keySecret?: string | Buffer;
  /**
   * Secret the stored idempotent answers are sealed with (32 bytes). Stored answers open only under
   * the secret they were sealed with. @default 32 random bytes, new for each app (as keySecret)
   */
  recordSecret?: Buffer;
  /** Nest's logger setting. @default ['error', 'warn'] */
  logger?: LoggerService | LogLevel[] | false;
}

/**
 * Builds the sample API on the PostgreSQL at `databaseUrl`, runs the migrations and initialises it,
 * without listening: `main.ts` calls `listen()`, tests may too. The one place the app is wired.
 */
export async function createSampleApp(databaseUrl: string, options: SampleAppOptions = {}): Promise<NestExpressApplication> {
  const keySecret = options.keySecret === undefined ? randomBytes(32) : Buffer.from(options.keySecret);
  const recordSecret = options.recordSecret ?? randomBytes(32);
  const appModule = AppModule.forRoot({ databaseUrl, keySecret, recordSecret });
  const app = await NestFactory.create<NestExpressApplication>(appModule, {
    logger: options.logger ?? ['error', 'warn'],
    // Let a failed start reject (main.ts prints it and stops the database) instead of aborting the process.
    abortOnError: false,
  });
  app.disable('x-powered-by');
  // No conditional requests here; an ETag on a POST answer would only be noise in every replay.
  app.set('etag', false);
  // Mounted before init(), hence before the body parser: even an unparsable request gets an id.
  app.use(requestIdMiddleware);
  try {
    await app.init();
  } catch (error) {
    await app.close().catch(() => undefined);
    throw error;
  }
  return app;
}

/**
 * Mints the first API key when the database has none and returns it (main.ts prints it once);
 * null when keys exist already.
 */
export function bootstrapApiKey(app: INestApplication): Promise<string | null> {
  return app.get(KeysService).bootstrap();
}

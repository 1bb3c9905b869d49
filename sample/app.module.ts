import { type DynamicModule, Module } from '@nestjs/common';
import { APP_FILTER, APP_GUARD } from '@nestjs/core';
import { TypeOrmModule } from '@nestjs/typeorm';
import { CreateIdempotencyKeys1764288000000, IdempotencyModule } from '../src';
import { CreateApiKeys1764374400000 } from '../migrations/1764374400000-CreateApiKeys';
import { ApiKeyGuard } from './auth/api-key.guard';
import { recordKeyId } from './config/record-secret';
import { apiKeyScope } from './auth/authenticated-request';
import { ApiExceptionFilter } from './errors/api-exception.filter';
import { KeysModule } from './keys/keys.module';

/** What the sample needs from its host: the database, the secrets keys are hashed and answers sealed with. */
export interface AppModuleOptions {
  databaseUrl: string;
  keySecret: Buffer;
  recordSecret: Buffer;
}

/**
 * The sample API: TypeORM on PostgreSQL (migrations run on start), the idempotency module scoped
 * per authenticated API key, the key API, a global API key guard and one error filter for all.
 */
@Module({})
export class AppModule {
  static forRoot(options: AppModuleOptions): DynamicModule {
    return {
      module: AppModule,
      imports: [
        TypeOrmModule.forRoot({
          type: 'postgres',
          url: options.databaseUrl,
          autoLoadEntities: true,
          // Listed explicitly, in order: the module's table, then the sample's own.
          migrations: [CreateIdempotencyKeys1764288000000, CreateApiKeys1764374400000],
          migrationsRun: true,
          // A database that is still starting gets a few seconds; a wrong URL fails fast.
          retryAttempts: 3,
          retryDelay: 1000,
          extra: { max: 10, connectionTimeoutMillis: 5000 },
        }),
        IdempotencyModule.forRoot({
          // Guards run before interceptors, so the key is known when the module resolves the scope.
          scope: apiKeyScope,
          // A replay is the original answer in full, x-request-id included: the request_id inside a
          // replayed error body then still equals the header (the module's default would give the
          // replay a new id that the stored body cannot know). idempotency-replayed tells them apart.
          excludeHeaders: [],
          // A mint's answer holds the plain key: it is stored sealed, and opens only with the
          // caller's own API key (the bearer token) besides the record secret.
          encryption: {
            keys: [{ id: recordKeyId(options.recordSecret), secret: options.recordSecret }],
            bindToCaller: true,
          },
        }),
        KeysModule.forRoot(options.keySecret),
      ],
      providers: [
        { provide: APP_GUARD, useClass: ApiKeyGuard },
        { provide: APP_FILTER, useClass: ApiExceptionFilter },
      ],
    };
  }
}

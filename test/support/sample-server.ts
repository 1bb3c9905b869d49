import type { AddressInfo } from 'node:net';
import { randomBytes } from 'node:crypto';
import type { NestExpressApplication } from '@nestjs/platform-express';
import { DataSource } from 'typeorm';
import { bootstrapApiKey, createSampleApp } from '../../sample/sample-app';
import { createTestDatabase, type TestDatabase } from './test-database';

/** The sample API listening on a real port, on a database of its own, with its bootstrap key. */
export interface RunningSample {
  app: NestExpressApplication;
  url: string;
  dataSource: DataSource;
  /** The secret the app hashes keys with, so a test can check what is stored. */
  keySecret: Buffer;
  /** The first key, minted the way main.ts mints it. */
  bootstrapKey: string;
  close(): Promise<void>;
}

/** Boots the sample exactly as main.ts wires it (createSampleApp), on a fresh test database. */
export async function startSample(): Promise<RunningSample> {
  const database: TestDatabase = await createTestDatabase();
  const keySecret = randomBytes(32);
  let app: NestExpressApplication | undefined;
  try {
    app = await createSampleApp(database.url, { keySecret, logger: process.env.TEST_LOGS ? undefined : false });
    const bootstrapKey = await bootstrapApiKey(app);
    if (bootstrapKey === null) throw new Error('a fresh database must get a bootstrap key');
    await app.listen(0, '127.0.0.1');
    const { port } = app.getHttpServer().address() as AddressInfo;
    const running = app;
    return {
      app: running,
      url: `http://127.0.0.1:${port}`,
      dataSource: running.get(DataSource),
      keySecret,
      bootstrapKey,
      async close() {
        await running.close();
        await database.drop();
      },
    };
  } catch (error) {
    await app?.close().catch(() => undefined);
    await database.drop();
    throw error;
  }
}

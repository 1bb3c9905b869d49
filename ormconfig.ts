import 'reflect-metadata';
import path from 'node:path';
import { DataSource } from 'typeorm';

/**
 * The DataSource of the TypeORM CLI (`npm run migration:run`, which builds first and loads the
 * compiled `dist/ormconfig.js`). It runs every migration in `migrations/` against DATABASE_URL.
 */
export default new DataSource({
  type: 'postgres',
  url: process.env.DATABASE_URL,
  migrations: [path.join(__dirname, 'migrations', '*.js')],
});

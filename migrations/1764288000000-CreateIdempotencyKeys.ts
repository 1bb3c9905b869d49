// The migration ships inside the module (so a host can import it from the package); this file
// puts it where the TypeORM CLI of this repository looks for migrations.
export { CreateIdempotencyKeys1764288000000 } from '../src/store/create-idempotency-keys.migration';

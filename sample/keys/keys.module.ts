import { type DynamicModule, Module } from '@nestjs/common';
import { TypeOrmModule } from '@nestjs/typeorm';
import { ApiKeyEntity } from './api-key.entity';
import { API_KEY_SECRET } from './keys.constants';
import { KeysController } from './keys.controller';
import { KeysService } from './keys.service';

/** The key API: its table, service and controller; the secret keys are hashed with comes from the host. */
@Module({})
export class KeysModule {
  static forRoot(keySecret: Buffer): DynamicModule {
    return {
      module: KeysModule,
      imports: [TypeOrmModule.forFeature([ApiKeyEntity])],
      controllers: [KeysController],
      providers: [KeysService, { provide: API_KEY_SECRET, useValue: keySecret }],
      exports: [KeysService],
    };
  }
}

// Loading the protocol: the .proto files the build copied into the package's proto/.
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { join } from 'node:path';
import { packageRoot } from '#root';

/** The services, by the short names the rest of the library uses. */
export const SERVICES = {
  cache: 'cachelock.cache.v1.CacheService',
  lock: 'cachelock.lock.v1.LockService',
  ratelimit: 'cachelock.ratelimit.v1.RateLimitService',
  session: 'cachelock.session.v1.SessionService',
  pubsub: 'cachelock.pubsub.v1.PubSubService',
  election: 'cachelock.election.v1.ElectionService',
} as const;

export type ServiceName = keyof typeof SERVICES;

let loaded: grpc.GrpcObject | undefined;

/**
 * The client constructor of a service. The files are loaded once, on first use, with
 * options that keep values exact: 64-bit integers as decimal strings (`longs: String`),
 * enums by name, unset fields as their defaults (`found: false`, never missing) and
 * unset message fields as null.
 */
export function serviceConstructor(service: ServiceName): grpc.ServiceClientConstructor {
  loaded ??= grpc.loadPackageDefinition(
    protoLoader.loadSync(
      Object.keys(SERVICES).map((name) => `cachelock/${name}/v1/${name}.proto`),
      { includeDirs: [join(packageRoot, 'proto')], longs: String, enums: String, defaults: true, oneofs: true },
    ),
  );
  let found: unknown = loaded;
  for (const part of SERVICES[service].split('.')) {
    found = (found as grpc.GrpcObject)[part];
  }
  return found as grpc.ServiceClientConstructor;
}

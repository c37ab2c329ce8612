// One channel to cachelock, shared by the services' generated clients, and the way every
// call goes over it: with the token, a deadline, the retry policy and the error mapping.
import * as grpc from '@grpc/grpc-js';
import { toError } from './errors.js';
import { SERVICES, serviceConstructor, type ServiceName } from './proto.js';
import { withRetries, type RetryEvent } from './retry.js';

/** TLS settings: a CA bundle, and a client certificate and key for mutual TLS. PEM. */
export interface TlsOptions {
  ca?: Buffer | string;
  cert?: Buffer | string;
  key?: Buffer | string;
}

/** Options every call takes. */
export interface CallOptions {
  /** This call's deadline, in milliseconds from now; the client's `timeoutMs` by default. */
  timeoutMs?: number;
}

type UnaryMethod = (
  request: object,
  metadata: grpc.Metadata,
  options: grpc.CallOptions,
  callback: (error: grpc.ServiceError | null, response: unknown) => void,
) => grpc.ClientUnaryCall;

type StreamMethod = (request: object, metadata: grpc.Metadata) => grpc.ClientReadableStream<unknown>;

function pem(value: Buffer | string | undefined): Buffer | null {
  return value === undefined ? null : Buffer.from(value);
}

/**
 * The services' clients on one channel. Not part of the public API: the services
 * (cache.ts, lock.ts…) call through it. The token is a private field, so it shows in no
 * string form of anything that holds this.
 */
export class Transport {
  readonly #clients: Record<ServiceName, grpc.Client>;
  readonly #token: string | undefined;
  readonly #timeoutMs: number;
  readonly #onRetry: ((event: RetryEvent) => void) | undefined;

  constructor(
    address: string,
    options: { token?: string | undefined; tls?: TlsOptions | true | undefined; timeoutMs: number; onRetry?: ((event: RetryEvent) => void) | undefined },
  ) {
    const { tls } = options;
    const credentials =
      tls === undefined
        ? grpc.credentials.createInsecure()
        : tls === true
          ? grpc.credentials.createSsl()
          : grpc.credentials.createSsl(pem(tls.ca), pem(tls.key), pem(tls.cert));
    // No service config from DNS: a TXT record's retry or hedging policy would repeat
    // calls the library never repeats (an Increment, a Check) behind its back.
    const first = new (serviceConstructor('cache'))(address, credentials, {
      'grpc.service_config_disable_resolution': 1,
    });
    // Every other service rides on the first one's channel: one connection, one TLS session.
    const shared = { channelOverride: first.getChannel() };
    this.#clients = {
      cache: first,
      lock: new (serviceConstructor('lock'))(address, credentials, shared),
      ratelimit: new (serviceConstructor('ratelimit'))(address, credentials, shared),
      session: new (serviceConstructor('session'))(address, credentials, shared),
      pubsub: new (serviceConstructor('pubsub'))(address, credentials, shared),
      election: new (serviceConstructor('election'))(address, credentials, shared),
    };
    this.#token = options.token;
    this.#timeoutMs = options.timeoutMs;
    this.#onRetry = options.onRetry;
  }

  /** The client's default deadline, in milliseconds. */
  get timeoutMs(): number {
    return this.#timeoutMs;
  }

  /** The metadata of every call: the bearer token, when there is one. */
  #metadata(): grpc.Metadata {
    const metadata = new grpc.Metadata();
    if (this.#token !== undefined) metadata.set('authorization', `Bearer ${this.#token}`);
    return metadata;
  }

  /**
   * Calls a unary method, under a deadline of the call's (or the client's) timeout plus
   * `waitMs` (the time the call may wait in the server), retried by the policy of
   * retry.ts; a failure is raised as the library's error.
   */
  unary<Response>(
    service: ServiceName,
    method: string,
    request: object,
    options: CallOptions & { waitMs?: number | undefined } = {},
  ): Promise<Response> {
    const timeoutMs = options.timeoutMs ?? this.#timeoutMs;
    if (!Number.isFinite(timeoutMs) || timeoutMs <= 0) {
      throw new RangeError(`timeoutMs must be a positive number of milliseconds, got ${String(timeoutMs)}`);
    }
    const deadline = Date.now() + timeoutMs + (options.waitMs ?? 0);
    const client = this.#clients[service];
    const call = (client as unknown as Record<string, UnaryMethod>)[method];
    if (call === undefined) throw new Error(`${SERVICES[service]} has no method ${method}`);
    const qualified = `${SERVICES[service].split('.').pop()}/${method}`;
    const attempt = () =>
      new Promise<Response>((resolve, reject) => {
        call.call(client, request, this.#metadata(), { deadline }, (error, response) => {
          if (error) reject(toError(error));
          else resolve(response as Response);
        });
      });
    return withRetries(qualified, deadline, attempt, this.#onRetry);
  }

  /** Opens a server stream, without a deadline: it lives as long as the caller uses it. */
  stream<Event>(service: ServiceName, method: string, request: object): grpc.ClientReadableStream<Event> {
    const client = this.#clients[service];
    const open = (client as unknown as Record<string, StreamMethod>)[method];
    if (open === undefined) throw new Error(`${SERVICES[service]} has no method ${method}`);
    return open.call(client, request, this.#metadata()) as grpc.ClientReadableStream<Event>;
  }

  /** Closes the channel; calls in flight fail with Cancelled or Unavailable. */
  close(): void {
    for (const client of Object.values(this.#clients)) client.close();
  }
}

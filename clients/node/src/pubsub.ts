// cachelock.pubsub.v1.PubSubService: messages to every live subscriber of a topic, at
// most once. What a subscriber may have missed is never silent: a discontinuity event.
import { status as Status, type ClientReadableStream } from '@grpc/grpc-js';
import { toBytes, type Value } from './convert.js';
import { Cancelled, DeadlineExceeded, toError } from './errors.js';
import type { CallOptions, Transport } from './transport.js';

/** A published message. */
export interface MessageEvent {
  type: 'message';
  /** The topic it was published to. */
  topic: string;
  /** The payload, as published. */
  payload: Buffer;
  /** The pattern that matched it; empty for a topic subscription. */
  pattern: string;
  /** This stream's count of messages so far, this one and missed ones included. */
  sequence: bigint;
}

/** Messages may be missing here. */
export interface DiscontinuityEvent {
  type: 'discontinuity';
  /** Why: the stream was read too slowly, or the link to Redis was lost and restored. */
  cause: 'slowReader' | 'redisReconnected' | 'unknown';
  /** How many messages were dropped, when known (slowReader); 0 when unknown. */
  missed: bigint;
}

export type SubscriptionEvent = MessageEvent | DiscontinuityEvent;

interface SubscribeResponse {
  event: 'subscribed' | 'message' | 'discontinuity';
  message?: { topic: string; payload: Buffer; pattern: string; sequence: string };
  discontinuity?: { cause: string; missed: string };
}

const CAUSES: Readonly<Record<string, DiscontinuityEvent['cause']>> = {
  CAUSE_SLOW_READER: 'slowReader',
  CAUSE_REDIS_RECONNECTED: 'redisReconnected',
};

/**
 * A live subscription: iterate it with `for await`. Leaving the loop (break, return,
 * throw), `close()` or the `signal` given to `subscribe` cancels the stream.
 */
export class Subscription implements AsyncIterable<SubscriptionEvent> {
  readonly #stream: ClientReadableStream<SubscribeResponse>;
  readonly #events: AsyncIterator<SubscribeResponse>;
  #closed = false;

  /** @internal Made by `PubSub.subscribe` once the stream said `subscribed`. */
  constructor(stream: ClientReadableStream<SubscribeResponse>, events: AsyncIterator<SubscribeResponse>) {
    this.#stream = stream;
    this.#events = events;
  }

  /** Ends the subscription; an iteration in progress ends quietly. */
  close(): void {
    this.#closed = true;
    this.#stream.cancel();
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<SubscriptionEvent, void, undefined> {
    try {
      for (;;) {
        const next = await this.#events.next();
        if (next.done) return;
        const { message, discontinuity } = next.value;
        if (message) {
          yield {
            type: 'message',
            topic: message.topic,
            payload: message.payload,
            pattern: message.pattern,
            sequence: BigInt(message.sequence),
          };
        } else if (discontinuity) {
          yield { type: 'discontinuity', cause: CAUSES[discontinuity.cause] ?? 'unknown', missed: BigInt(discontinuity.missed) };
        }
      }
    } catch (error) {
      // close() cancels the stream, which then fails with CANCELLED: that is the end asked for.
      if (!this.#closed) throw toError(error);
    } finally {
      this.close();
    }
  }
}

/** Pub/sub, as `client.pubsub`. */
export class PubSub {
  readonly #transport: Transport;

  /** @internal */
  constructor(transport: Transport) {
    this.#transport = transport;
  }

  /**
   * Sends a message to a topic's current subscribers; answers how many Redis subscriber
   * connections received it (each cachelock instance counts once). Never retried.
   */
  async publish(topic: string, payload: Value, options: CallOptions = {}): Promise<bigint> {
    const response = await this.#transport.unary<{ receivers: string }>(
      'pubsub',
      'Publish',
      { topic, payload: toBytes(payload) },
      options,
    );
    return BigInt(response.receivers);
  }

  /**
   * Subscribes to topics and glob patterns ("room:*"). Resolves once the subscription is
   * live: every message published from then on reaches it (or is counted in a
   * discontinuity).
   */
  async subscribe(
    options: CallOptions & { topics?: string[]; patterns?: string[]; signal?: AbortSignal },
  ): Promise<Subscription> {
    const { signal } = options;
    signal?.throwIfAborted();
    const stream = this.#transport.stream<SubscribeResponse>('pubsub', 'Subscribe', {
      topics: options.topics ?? [],
      patterns: options.patterns ?? [],
    });
    const events = stream[Symbol.asyncIterator]() as AsyncIterator<SubscribeResponse>;
    const withinMs = options.timeoutMs ?? this.#transport.timeoutMs;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new DeadlineExceeded({ code: Status.DEADLINE_EXCEEDED, message: `not subscribed within ${withinMs} ms` })),
        withinMs,
      );
    });
    try {
      const first = await Promise.race([events.next(), timeout]);
      if (first.done || first.value.event !== 'subscribed') {
        throw new Cancelled({ code: Status.CANCELLED, message: 'the subscription ended before it was live' });
      }
    } catch (error) {
      stream.on('error', () => undefined).cancel(); // its own CANCELLED needs a listener
      throw toError(error);
    } finally {
      clearTimeout(timer);
    }
    const subscription = new Subscription(stream, events);
    signal?.addEventListener('abort', () => subscription.close(), { once: true });
    return subscription;
  }
}

// cachelock.election.v1.ElectionService: a Leadership held over a Campaign stream (built
// like the Lease over Hold: it tells the leader the moment it is lost), Resign, Leader,
// and Observe, who leads and every change.
//
// An election is the lock of the same name: its term is that lock's fencing token, so
// `leader.fence` ({ lock: name, fencingToken: term }) fences the leader's writes.
import './dispose.js';
import type { ClientReadableStream } from '@grpc/grpc-js';
import { status as Status } from '@grpc/grpc-js';
import { inspect } from 'node:util';
import { date, duration, millis, type Duration, type Timestamp } from './convert.js';
import { CachelockError, errorForReason, toError } from './errors.js';
import { Lease } from './lock.js';
import type { CallOptions, Transport } from './transport.js';

export interface CampaignOptions {
  /** Who is asking, shown by Leader and Observe: a host name, a pod name. */
  candidate?: string;
  /** The leader's lease, renewed by the server while the leadership is held. Default 10000. */
  ttlMs?: number;
  /** How long before the lease could end the server says `lost`; a tenth of ttlMs by default. */
  safetyMarginMs?: number;
  /** Gives up waiting in line: the stream is closed and the campaign rejects with the signal's reason. */
  signal?: AbortSignal;
}

const DEFAULT_TTL_MS = 10_000;

interface CampaignEvent {
  event: 'elected' | 'renewed' | 'lost';
  elected?: { term: string; fencingToken: string; ttl: Duration | null; certainFor: Duration | null; resignToken: string };
  renewed?: { certainFor: Duration | null };
  lost?: { reason: string };
}

type LeaseStream = ConstructorParameters<typeof Lease>[2];

/**
 * Leading an election. The server renews the leadership while it is held, and ends it
 * when `resign()` is called (or `await using` ends, or the process dies): the term is
 * then fenced out. As a Lease: `signal` aborts on loss (its reason a LeaseLost), `lost`,
 * `lostReason`, `check()`, `certainForMs()`; and `term`, `fence`, `candidate`. The
 * `resignToken` is a secret: it shows in no string form of this object.
 */
export class Leadership extends Lease {
  /** The candidate text this campaign was made with. */
  readonly candidate: string;
  readonly #resignToken: string;

  /** @internal Made by `Elections.campaign` once the stream said `elected`. */
  constructor(name: string, candidate: string, elected: NonNullable<CampaignEvent['elected']>, stream: ClientReadableStream<CampaignEvent>) {
    super(name, { fencingToken: elected.term, ttl: elected.ttl, certainFor: elected.certainFor }, stream as unknown as LeaseStream, 'election');
    this.candidate = candidate;
    this.#resignToken = elected.resignToken;
  }

  /** The term: the election lock's fencing token, larger than every earlier term. */
  get term(): bigint {
    return this.fencingToken;
  }

  /** The secret that lets `client.elections.resign(name, token)` end this term from elsewhere. */
  get resignToken(): string {
    return this.#resignToken;
  }

  /** Gives the leadership up: closes the stream, and the server releases it and fences the term out. */
  async resign(): Promise<void> {
    await this.release();
  }

  override toJSON(): object {
    return { name: this.name, candidate: this.candidate, term: this.term.toString(), lost: this.lost, lostReason: this.lostReason };
  }

  override toString(): string {
    return `Leadership(${this.name}, ${this.candidate}, term ${this.term}${this.lost ? `, lost: ${this.lostReason}` : ''})`;
  }

  [inspect.custom](): string {
    return `Leadership { name: ${inspect(this.name)}, candidate: ${inspect(this.candidate)}, term: ${this.term}n, lostReason: ${inspect(this.lostReason)} }`;
  }
}

/** Who leads an election. */
export interface LeaderInfo {
  /** The leader's candidate text. */
  candidate: string;
  /** Its term. */
  term: bigint;
  /** When it was elected, by the service's clock; null when not known. */
  since: Date | null;
  /** Its lease left. */
  ttlMs: number | null;
}

/** An Observe event: a leader leads (the first event says who leads now)… */
export interface LeaderEvent extends LeaderInfo {
  type: 'leader';
}

/** …or nobody does; `lastTerm` is the last term known to have ended (0n: not known). */
export interface NoLeaderEvent {
  type: 'noLeader';
  lastTerm: bigint;
}

export type ElectionEvent = LeaderEvent | NoLeaderEvent;

interface LeadershipMessage {
  candidate: string;
  term: string;
  since: Timestamp | null;
  ttl: Duration | null;
}

interface ObserveResponse {
  event: 'leader' | 'noLeader';
  leader?: LeadershipMessage;
  noLeader?: { lastTerm: string };
}

function leaderInfo(message: LeadershipMessage): LeaderInfo {
  return { candidate: message.candidate, term: BigInt(message.term), since: date(message.since), ttlMs: millis(message.ttl) };
}

/**
 * Who leads an election and every change: iterate it with `for await`. Leaving the loop
 * (break, return, throw), `close()` or the `signal` given to `observe` ends the stream.
 */
export class Observation implements AsyncIterable<ElectionEvent> {
  /** The election's name. */
  readonly name: string;
  readonly #stream: ClientReadableStream<ObserveResponse>;
  readonly #events: AsyncIterator<ObserveResponse>;
  #closed = false;

  /** @internal Made by `Elections.observe`. */
  constructor(name: string, stream: ClientReadableStream<ObserveResponse>) {
    this.name = name;
    this.#stream = stream;
    this.#events = stream[Symbol.asyncIterator]() as AsyncIterator<ObserveResponse>;
  }

  /** Ends the observation; an iteration in progress ends quietly. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#stream.on('error', () => undefined).cancel(); // its own CANCELLED needs a listener
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<ElectionEvent, void, undefined> {
    try {
      for (;;) {
        const next = await this.#events.next();
        if (next.done) return;
        const { leader, noLeader } = next.value;
        if (leader) yield { type: 'leader', ...leaderInfo(leader) };
        else if (noLeader) yield { type: 'noLeader', lastTerm: BigInt(noLeader.lastTerm) };
      }
    } catch (error) {
      // close() cancels the stream, which then fails with CANCELLED: that is the end asked for.
      if (!this.#closed) throw toError(error);
    } finally {
      this.close();
    }
  }

  toString(): string {
    return `Observation(${this.name})`;
  }
}

/** Elections, as `client.elections`. Most code wants `client.campaign` or `client.withLeadership`. */
export class Elections {
  readonly #transport: Transport;

  /** @internal */
  constructor(transport: Transport) {
    this.#transport = transport;
  }

  /**
   * Waits in line for the leadership, for as long as it takes (abort `signal` to give
   * up), and resolves with the Leadership once elected; it is kept until `resign()`.
   */
  async campaign(name: string, options: CampaignOptions = {}): Promise<Leadership> {
    const { signal } = options;
    signal?.throwIfAborted();
    const candidate = options.candidate ?? '';
    const request = {
      name,
      candidate,
      ttl: duration(options.ttlMs ?? DEFAULT_TTL_MS, 'ttlMs'),
      safetyMargin: duration(options.safetyMarginMs, 'safetyMarginMs'),
    };
    // No deadline: a campaign waits in line as long as the caller lets it.
    const stream = this.#transport.stream<CampaignEvent>('election', 'Campaign', request);
    return new Promise<Leadership>((resolve, reject) => {
      const settle = (outcome: Leadership | Error): void => {
        signal?.removeEventListener('abort', onAbort);
        stream.off('data', onData).off('error', onError).off('end', onEnd);
        if (outcome instanceof Leadership) {
          resolve(outcome);
        } else {
          // The cancellation's own CANCELLED error needs a listener, or it would crash the
          // process. Cancelled on the next turn: a call that grpc-js is given up in the tick
          // it was opened (a signal aborted at once) keeps the channel open after close().
          stream.on('error', () => undefined);
          setImmediate(() => stream.cancel());
          reject(outcome);
        }
      };
      const onData = (event: CampaignEvent): void => {
        if (event.event === 'elected' && event.elected) {
          // The Leadership's own listeners take over in this same tick: no event falls in between.
          settle(new Leadership(name, candidate, event.elected, stream));
        } else if (event.event === 'lost') {
          // SHUTTING_DOWN while waiting in line.
          const reason = event.lost?.reason || 'STREAM_BROKEN';
          settle(
            errorForReason({
              code: Status.UNAVAILABLE,
              reason,
              message: `the campaign for ${JSON.stringify(name)} ended while waiting (${reason})`,
            }),
          );
        } else {
          settle(new Error(`unexpected ${event.event} before the election`));
        }
      };
      const onError = (error: Error): void => settle(toError(error));
      const onEnd = (): void =>
        settle(new CachelockError({ code: Status.UNAVAILABLE, message: `the Campaign stream of ${JSON.stringify(name)} ended before an answer` }));
      const onAbort = (): void => settle(signal?.reason instanceof Error ? signal.reason : new Error(String(signal?.reason)));
      stream.on('data', onData).on('error', onError).on('end', onEnd);
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  }

  /**
   * Ends the term of `resignToken` from anywhere, and fences it out. Succeeds again when
   * repeated; LeaseLost (another leads) or LockNotHeld (nobody does) when the term ended otherwise.
   */
  async resign(name: string, resignToken: string, options: CallOptions = {}): Promise<void> {
    await this.#transport.unary('election', 'Resign', { name, resignToken }, options);
  }

  /** Who leads now; null when nobody does. */
  async leader(name: string, options: CallOptions = {}): Promise<LeaderInfo | null> {
    const response = await this.#transport.unary<{ elected: boolean; leader: LeadershipMessage | null }>(
      'election',
      'Leader',
      { name },
      options,
    );
    return response.elected && response.leader ? leaderInfo(response.leader) : null;
  }

  /**
   * Who leads now, then every change, as an Observation to read with `for await`
   * (`{ type: 'leader', candidate, term, since, ttlMs }` or `{ type: 'noLeader', lastTerm }`).
   * A stream: never retried.
   */
  observe(name: string, options: { signal?: AbortSignal } = {}): Observation {
    const { signal } = options;
    signal?.throwIfAborted();
    const observation = new Observation(name, this.#transport.stream<ObserveResponse>('election', 'Observe', { name }));
    signal?.addEventListener('abort', () => observation.close(), { once: true });
    return observation;
  }
}

// cachelock.session.v1.SessionService: server-side sessions. A session id is a secret
// (whoever has it has the session): it shows in no string form of a Session.
import { date, duration, int64, millis, type Duration, type Timestamp } from './convert.js';
import { fenceMessage, fenceOf, type Fence, type Fenceable, type FenceMessage } from './fence.js';
import type { CallOptions, Transport } from './transport.js';

/** The device a session was created from. */
export interface ClientInfo {
  deviceLabel: string;
  ip: string;
  userAgent: string;
}

interface SessionMessage {
  id: string;
  userId: string;
  attributes: Record<string, string>;
  client: ClientInfo | null;
  createdAt: Timestamp | null;
  lastAccessedAt: Timestamp | null;
  expiresAt: Timestamp | null;
  absoluteExpiresAt: Timestamp | null;
  idleTimeout: Duration | null;
  version: string;
  handle: string;
}

/** One server-side session. */
export class Session {
  /** The user it belongs to. */
  readonly userId: string;
  /** A name for it that is not a secret: shown in listings, taken by `deleteByHandle`. */
  readonly handle: string;
  /** The application's data (empty in listings). */
  readonly attributes: Readonly<Record<string, string>>;
  /** The device it was created from. */
  readonly client: Readonly<ClientInfo>;
  readonly createdAt: Date | null;
  readonly lastAccessedAt: Date | null;
  /** When it expires unless touched. */
  readonly expiresAt: Date | null;
  /** When it expires however often it is touched. */
  readonly absoluteExpiresAt: Date | null;
  readonly idleTimeoutMs: number | null;
  /** Starts at 1 and grows by one with each update. */
  readonly version: bigint;
  readonly #id: string;

  /** @internal */
  constructor(message: SessionMessage) {
    this.#id = message.id;
    this.userId = message.userId;
    this.handle = message.handle;
    this.attributes = { ...message.attributes };
    this.client = { deviceLabel: '', ip: '', userAgent: '', ...message.client };
    this.createdAt = date(message.createdAt);
    this.lastAccessedAt = date(message.lastAccessedAt);
    this.expiresAt = date(message.expiresAt);
    this.absoluteExpiresAt = date(message.absoluteExpiresAt);
    this.idleTimeoutMs = millis(message.idleTimeout);
    this.version = BigInt(message.version);
  }

  /** The session id, the secret a cookie carries; empty in listings, which never carry ids. */
  get id(): string {
    return this.#id;
  }

  toJSON(): object {
    const { userId, handle, attributes, client, createdAt, lastAccessedAt, expiresAt, absoluteExpiresAt, idleTimeoutMs } = this;
    return {
      userId,
      handle,
      attributes,
      client,
      createdAt,
      lastAccessedAt,
      expiresAt,
      absoluteExpiresAt,
      idleTimeoutMs,
      version: this.version.toString(),
    };
  }

  toString(): string {
    return `Session(user ${this.userId}, handle ${this.handle})`;
  }
}

export interface CreateOptions extends CallOptions {
  /** Initial attributes. */
  attributes?: Record<string, string>;
  /** Expiry after this long without a touch; 30 minutes by default. */
  idleTimeoutMs?: number;
  /** Expiry this long after creation whatever happens; the larger of 24 hours and the idle timeout by default. */
  absoluteTimeoutMs?: number;
  /** A label for "your devices" pages, such as "Firefox on Linux". */
  deviceLabel?: string;
  /** The client's IP address as the backend saw it. */
  ip?: string;
  /** The client's User-Agent header. */
  userAgent?: string;
}

/**
 * Sessions, as `client.sessions`. An unknown or expired id is SessionNotFound.
 * `fenced(fence)` gives the same calls with update and delete fenced.
 */
export class Sessions {
  readonly #transport: Transport;
  /** The fence update and delete carry; undefined: unconditional writes. */
  readonly fence: Fence | undefined;
  readonly #fence: FenceMessage | undefined;

  /** @internal */
  constructor(transport: Transport, fence?: Fence) {
    this.#transport = transport;
    this.fence = fence;
    this.#fence = fenceMessage(fence);
  }

  /**
   * The same calls with `update` and `delete` fenced by `fence` (a Fence, a Lease or a
   * LockGrant): applied only while no grant of its lock is newer, else FencedOut and
   * nothing changed. A session lives in its user's slot: fence it with a lock named by
   * the user id (or with the user id as its `{…}` section).
   */
  fenced(fence: Fenceable): Sessions {
    return new Sessions(this.#transport, fenceOf(fence));
  }

  /** Starts a session for a user. Never retried: a repeat would start a second one. */
  async create(userId: string, options: CreateOptions = {}): Promise<Session> {
    const request = {
      userId,
      attributes: options.attributes,
      idleTimeout: duration(options.idleTimeoutMs, 'idleTimeoutMs'),
      absoluteTimeout: duration(options.absoluteTimeoutMs, 'absoluteTimeoutMs'),
      client: { deviceLabel: options.deviceLabel, ip: options.ip, userAgent: options.userAgent },
    };
    const response = await this.#transport.unary<{ session: SessionMessage }>('session', 'Create', request, options);
    return new Session(response.session);
  }

  /** Reads a session; with `touch`, also slides its idle expiry (a request by the user). */
  async get(id: string, options: CallOptions & { touch?: boolean } = {}): Promise<Session> {
    const response = await this.#transport.unary<{ session: SessionMessage }>(
      'session',
      'Get',
      { id, touch: options.touch },
      options,
    );
    return new Session(response.session);
  }

  /**
   * Sets and removes attributes; with `expectedVersion`, only if the session is still at
   * that version (else VersionConflict). Never retried.
   */
  async update(
    id: string,
    options: CallOptions & { set?: Record<string, string>; remove?: string[]; expectedVersion?: bigint | number },
  ): Promise<Session> {
    const request = {
      id,
      set: options.set,
      remove: options.remove,
      expectedVersion:
        options.expectedVersion === undefined ? undefined : int64(options.expectedVersion, 'expectedVersion', true),
      fence: this.#fence,
    };
    const response = await this.#transport.unary<{ session: SessionMessage }>('session', 'Update', request, options);
    return new Session(response.session);
  }

  /** Slides the idle expiry; answers when the session now expires. */
  async touch(id: string, options: CallOptions = {}): Promise<Date | null> {
    const response = await this.#transport.unary<{ expiresAt: Timestamp | null }>('session', 'Touch', { id }, options);
    return date(response.expiresAt);
  }

  /** Ends a session (log out). */
  async delete(id: string, options: CallOptions = {}): Promise<void> {
    await this.#transport.unary('session', 'Delete', { id, fence: this.#fence }, options);
  }

  /** Every live session of a user, newest first, by handle: without ids or attributes. */
  async list(userId: string, options: CallOptions = {}): Promise<Session[]> {
    const response = await this.#transport.unary<{ sessions: SessionMessage[] }>(
      'session',
      'ListUserSessions',
      { userId },
      options,
    );
    return response.sessions.map((session) => new Session(session));
  }

  /** Ends one session of a user, named by its handle ("log out that device"). */
  async deleteByHandle(userId: string, handle: string, options: CallOptions = {}): Promise<void> {
    await this.#transport.unary('session', 'DeleteUserSession', { userId, handle }, options);
  }

  /** Ends every session of a user, but `exceptId` if given; answers how many ended. */
  async deleteAll(userId: string, options: CallOptions & { exceptId?: string } = {}): Promise<number> {
    const response = await this.#transport.unary<{ deleted: number }>(
      'session',
      'DeleteUserSessions',
      { userId, exceptId: options.exceptId },
      options,
    );
    return response.deleted;
  }

  /** Moves a session to a new id, ending the old one at once (after login: against fixation). */
  async rotate(id: string, options: CallOptions = {}): Promise<Session> {
    const response = await this.#transport.unary<{ session: SessionMessage }>('session', 'Rotate', { id }, options);
    return new Session(response.session);
  }
}

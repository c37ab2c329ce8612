"""cachelock: a Python client for the cachelock service — cache, rate limits,
sessions, locks, leader election and pub/sub over Redis, sync here and asyncio in cachelock.aio.

    import cachelock

    with cachelock.Client("localhost:50051", token="...") as client:
        client.cache.set("greeting", "hello", ttl=60)
        with client.lock("{invoice:42}", ttl=10) as lease:
            write_invoice(fencing_token=lease.fencing_token)
            client.cache.fenced(lease).set("{invoice:42}:pdf", pdf)  # refused once the lease is over
        with client.campaign("{scheduler}", candidate="host-1", ttl=10) as leader:
            client.cache.fenced(leader).set("{scheduler}:plan", plan)  # refused once the term is over
"""

from ._cache import Cache, LeaseResult, Serializer
from ._client import Client
from ._election import ElectionEvent, Elections, Leader, Leadership, NoLeader, Observation
from ._errors import (
    Cancelled, CachelockError, ClientRateLimited, DeadlineExceeded, DeadlinePassed, EvictionPolicy, FencedOut,
    IntegerOverflow, Internal, InvalidField, LeaseLost, LockNotHeld, LocksPaused, MalformedRequest,
    MayHaveApplied, NotAcquired, NotAnInteger, Overloaded, PermissionDenied, PermitsMismatch,
    RedisOutOfMemory, RedisTimeout, RedisUnavailable, ResponseTooLarge, SessionNotFound,
    TooManySubscribers, TooManyWaiters, TooManyWatchers, Unauthenticated, Unavailable,
    VersionConflict, WriteBudgetExceeded, from_rpc_error,
)
from ._fence import Fence
from ._lock import NOT_RENEWED, STREAM_BROKEN, Extended, Grant, Lease, LockInfo, Locks
from ._pubsub import Discontinuity, Message, PubSub, Subscription
from ._ratelimit import Calendar, Decision, Decisions, Limit, RateLimit, Report, Reservation, Settlement
from ._retry import IDEMPOTENT, OnRetry
from ._sessions import Session, Sessions
from ._transport import TLS

__version__ = "1.0.0"

__all__ = [
    "NOT_RENEWED", "IDEMPOTENT", "STREAM_BROKEN", "TLS",
    "Cache", "CachelockError", "Calendar", "Cancelled", "Client", "ClientRateLimited", "DeadlineExceeded",
    "DeadlinePassed", "Decision", "Decisions", "Discontinuity", "ElectionEvent", "Elections", "EvictionPolicy", "Extended", "Fence",
    "FencedOut", "Grant",
    "IntegerOverflow", "Internal", "InvalidField", "Leader", "Leadership", "Lease", "LeaseLost", "LeaseResult",
    "Limit", "LockInfo", "LockNotHeld", "Locks", "LocksPaused", "MalformedRequest", "MayHaveApplied", "Message",
    "NoLeader", "NotAcquired", "NotAnInteger", "Observation", "OnRetry", "Overloaded", "PermissionDenied", "PermitsMismatch",
    "PubSub", "RateLimit", "Report", "Reservation", "Settlement", "RedisOutOfMemory", "RedisTimeout", "RedisUnavailable", "ResponseTooLarge",
    "Serializer", "Session", "SessionNotFound", "Sessions", "Subscription", "TooManySubscribers",
    "TooManyWaiters", "TooManyWatchers", "Unauthenticated", "Unavailable", "VersionConflict",
    "WriteBudgetExceeded", "from_rpc_error",
]

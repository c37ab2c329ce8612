"""The library's errors, and the one place that turns a failed gRPC call into one.

cachelock answers every error with a status code and `google.rpc.Status` details (the
`grpc-status-details-bin` trailer): an `ErrorInfo` whose `reason` names what happened,
a `BadRequest` naming the field, and a `RetryInfo` where waiting helps. Each reason of
docs/errors.md has its own class here; a reason this version does not know yet is a
`CachelockError` with that reason, never a crash.
"""

from __future__ import annotations

from typing import Dict, Mapping, Optional, Type

import grpc
from google.rpc import error_details_pb2, status_pb2

DOMAIN = "cachelock.dev"
_DETAILS_TRAILER = "grpc-status-details-bin"


class CachelockError(Exception):
    """A failed cachelock call.

    Attributes:
        code: the gRPC status code, or None for an error the library raised itself
            without a status (`NotAcquired`).
        reason: the ErrorInfo reason (`"LEASE_LOST"`), or "" when the server sent none.
        message: the server's message, for people.
        retry_after: seconds the server advised to wait before repeating the call
            (its RetryInfo), or None when it advised none: then waiting does not help.
        field: the request field a BadRequest named, for INVALID_ARGUMENT.
        metadata: the ErrorInfo metadata (such as `cause` for REDIS_UNAVAILABLE).
    """

    #: The reason this class stands for; "" for the classes that stand for a code.
    REASON: str = ""

    def __init__(
        self,
        message: str,
        *,
        code: Optional[grpc.StatusCode] = None,
        reason: Optional[str] = None,
        retry_after: Optional[float] = None,
        field: Optional[str] = None,
        metadata: Optional[Mapping[str, str]] = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = self.REASON if reason is None else reason
        self.message = message
        self.retry_after = retry_after
        self.field = field
        self.metadata: Dict[str, str] = dict(metadata or {})

    def __str__(self) -> str:
        label = self.reason or (self.code.name if self.code is not None else "ERROR")
        return f"{label}: {self.message}"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(code={self.code}, reason={self.reason!r}, "
            f"message={self.message!r}, retry_after={self.retry_after!r}, field={self.field!r})"
        )


# One class per reason of docs/errors.md. Written out (not generated in a loop) so that
# type checkers and readers see every name.
class InvalidField(CachelockError):
    """A field is wrong; `field` names it. Fix the request."""

    REASON = "INVALID_FIELD"


class MalformedRequest(CachelockError):
    """The body is not a protobuf message of the method's type."""

    REASON = "MALFORMED_REQUEST"


class Unauthenticated(CachelockError):
    """No credential, or one the auth file does not know."""

    REASON = "UNAUTHENTICATED"


class PermissionDenied(CachelockError):
    """The client may not call this method (or may only read)."""

    REASON = "PERMISSION_DENIED"


class SessionNotFound(CachelockError):
    """No such session: unknown, expired or ended. Log the user out."""

    REASON = "SESSION_NOT_FOUND"


class VersionConflict(CachelockError):
    """The session moved on from `expected_version`: read it again and retry."""

    REASON = "VERSION_CONFLICT"


class NotAnInteger(CachelockError):
    """Increment on a value that is not a 64-bit integer."""

    REASON = "NOT_AN_INTEGER"


class IntegerOverflow(CachelockError):
    """The increment would overflow a 64-bit integer."""

    REASON = "INTEGER_OVERFLOW"


class LeaseLost(CachelockError):
    """The lease is not yours any more: stop the protected work.

    Raised by Release/Extend when another token holds the lock, by a cache Set whose
    fill lease passed on, and by a held lock (`Client.lock`) once it was lost; then
    `metadata["cause"]` is the lease's `lost_reason`.
    """

    REASON = "LEASE_LOST"


class LockNotHeld(CachelockError):
    """Release/Extend: nobody holds the lock; your lease ran out."""

    REASON = "LOCK_NOT_HELD"


class FencedOut(CachelockError):
    """A fenced write was refused: the fence's lock was granted again after your grant, so
    your lease is over; nothing was changed. Stop the protected work."""

    REASON = "FENCED_OUT"


class RedisUnavailable(CachelockError):
    """Redis could not be reached or refused the command (`metadata["cause"]`); nothing was applied."""

    REASON = "REDIS_UNAVAILABLE"


class RedisTimeout(CachelockError):
    """Redis did not answer in time, and the call is safe to repeat."""

    REASON = "REDIS_TIMEOUT"


class LocksPaused(CachelockError):
    """Lock grants pause after the Redis node holding the lock lost its data; `retry_after` is the rest."""

    REASON = "LOCKS_PAUSED"


class EvictionPolicy(CachelockError):
    """Redis may evict keys, so no lease is granted or extended: the operator must fix Redis."""

    REASON = "EVICTION_POLICY"


class PermitsMismatch(CachelockError):
    """The name is held with other `permits` than asked for."""

    REASON = "PERMITS_MISMATCH"


class MayHaveApplied(CachelockError):
    """A change was in flight when Redis stopped answering: read before you repeat it."""

    REASON = "MAY_HAVE_APPLIED"


class DeadlinePassed(CachelockError):
    """The deadline had passed before any work began."""

    REASON = "DEADLINE_PASSED"


class RedisOutOfMemory(CachelockError):
    """Redis reached `maxmemory` and refused the write."""

    REASON = "REDIS_OUT_OF_MEMORY"


class Overloaded(CachelockError):
    """The instance is at `--max-in-flight`: retry after `retry_after`, ideally elsewhere."""

    REASON = "OVERLOADED"


class ClientRateLimited(CachelockError):
    """The client is over its `max_requests_per_second`; `retry_after` says when a request passes."""

    REASON = "CLIENT_RATE_LIMITED"


class WriteBudgetExceeded(CachelockError):
    """The client is over its `max_write_bytes_per_second`."""

    REASON = "WRITE_BUDGET_EXCEEDED"


class TooManyWaiters(CachelockError):
    """Too many Acquire or GetOrLease calls are waiting."""

    REASON = "TOO_MANY_WAITERS"


class TooManyWatchers(CachelockError):
    """Too many health Watch streams are open."""

    REASON = "TOO_MANY_WATCHERS"


class TooManySubscribers(CachelockError):
    """Too many Pub/Sub Subscribe streams are open."""

    REASON = "TOO_MANY_SUBSCRIBERS"


class ResponseTooLarge(CachelockError):
    """GetMany's answer would exceed `--max-response-bytes`: ask for fewer keys."""

    REASON = "RESPONSE_TOO_LARGE"


class Internal(CachelockError):
    """A failure inside the service; its log says more."""

    REASON = "INTERNAL"


# Failures that did not come from cachelock (no ErrorInfo): named by their code.
class Unavailable(CachelockError):
    """The service could not be reached (connection refused or lost)."""


class DeadlineExceeded(CachelockError):
    """The call's deadline passed (the gRPC layer's own, or the library's wait for a stream)."""


class Cancelled(CachelockError):
    """The call was cancelled."""


class NotAcquired(CachelockError):
    """A lock's wait ended without the lock; `holder_ttl` is the holder's lease left (seconds)."""

    def __init__(self, name: str, holder_ttl: Optional[float]) -> None:
        super().__init__(f"lock {name!r} is held by someone else", reason="")
        self.holder_ttl = holder_ttl


_BY_REASON: Dict[str, Type[CachelockError]] = {
    cls.REASON: cls
    for cls in (
        InvalidField, MalformedRequest, Unauthenticated, PermissionDenied, SessionNotFound,
        VersionConflict, NotAnInteger, IntegerOverflow, LeaseLost, LockNotHeld, FencedOut,
        RedisUnavailable, RedisTimeout, LocksPaused, EvictionPolicy, PermitsMismatch,
        MayHaveApplied, DeadlinePassed, RedisOutOfMemory, Overloaded, ClientRateLimited,
        WriteBudgetExceeded, TooManyWaiters, TooManyWatchers, TooManySubscribers,
        ResponseTooLarge, Internal,
    )
}

_BY_CODE: Dict[grpc.StatusCode, Type[CachelockError]] = {
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.CANCELLED: Cancelled,
    # The gRPC layer's own refusals, before cachelock could attach details.
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
}


def from_rpc_error(error: grpc.RpcError) -> CachelockError:
    """Maps a failed gRPC call (sync or asyncio) to the library's error.

    The one place where a status becomes an error: the ErrorInfo reason picks the
    class, a BadRequest gives `field`, a RetryInfo gives `retry_after`.
    """
    # Both grpc.Call (sync) and grpc.aio.AioRpcError have these, synchronously.
    code: grpc.StatusCode = error.code()  # type: ignore[attr-defined]
    message: str = error.details() or ""  # type: ignore[attr-defined]
    trailers = error.trailing_metadata() or ()  # type: ignore[attr-defined]
    reason = ""
    metadata: Dict[str, str] = {}
    field: Optional[str] = None
    retry_after: Optional[float] = None
    for key, value in trailers:
        if key != _DETAILS_TRAILER or not isinstance(value, bytes):
            continue
        status = status_pb2.Status.FromString(value)
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                if info.domain == DOMAIN:
                    reason = info.reason
                    metadata = dict(info.metadata)
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                if bad.field_violations:
                    field = bad.field_violations[0].field
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                detail.Unpack(retry)
                retry_after = retry.retry_delay.ToTimedelta().total_seconds()
    if field is None and "field" in metadata:
        field = metadata["field"]
    cls = _BY_REASON.get(reason) if reason else _BY_CODE.get(code)
    return (cls or CachelockError)(
        message,
        code=code,
        reason=reason,
        retry_after=retry_after,
        field=field,
        metadata=metadata,
    )

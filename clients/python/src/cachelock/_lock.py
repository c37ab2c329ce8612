"""LockService: leases with fencing tokens, and `lock`, a lease you cannot forget to keep.

`lock(name, ttl)` is built on the Hold stream: the server renews the lease while the
stream is open and releases it when the stream closes. The body learns of a loss the
moment it happens, whichever comes first of: the server's `lost` event, the stream
breaking, or the lease's `certain_for` running out with no `renewed` (a frozen instance
sends nothing, so the client keeps its own timer).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any, Callable, List, Optional, Type

import grpc

from ._convert import Seconds, duration, optional_duration, seconds_of, time_of, to_seconds
from ._errors import _BY_REASON, CachelockError, DeadlineExceeded, LeaseLost, NotAcquired, from_rpc_error
from ._fence import Fence
from ._transport import AsyncTransport, Transport
from .lock.v1 import lock_pb2 as pb

logger = logging.getLogger("cachelock")

_SERVICE = "/cachelock.lock.v1.LockService/"

#: Called with the lease's lost_reason once the lease is lost.
LostCallback = Callable[[str], None]

#: lost_reason when the lease's certain_for ran out with no `renewed`.
NOT_RENEWED = "NOT_RENEWED"
#: lost_reason when the stream ended without a `lost` event.
STREAM_BROKEN = "STREAM_BROKEN"


@dataclass(frozen=True)
class Grant:
    """A raw Acquire's answer. `token` proves ownership for release/extend: a secret,
    never shown. When not acquired, `ttl` is the current holder's lease left."""

    name: str
    acquired: bool
    fencing_token: int
    ttl: Optional[float]
    expires_at: Optional[datetime]
    token: str = field(default="", repr=False)

    @property
    def fence(self) -> Fence:
        """The fence for the writes this grant protects (`client.cache.fenced(grant.fence)`)."""
        return Fence(lock=self.name, fencing_token=self.fencing_token)


@dataclass(frozen=True)
class Extended:
    """An Extend's answer: the lease's new end."""

    fencing_token: int
    ttl: Optional[float]
    expires_at: Optional[datetime]


@dataclass(frozen=True)
class LockInfo:
    """A Describe's answer: who holds the lock (never the token)."""

    held: bool
    owner: str
    ttl: Optional[float]
    expires_at: Optional[datetime]
    fencing_token: int
    holders: int
    waiting: int
    permits: int


def _acquire_request(
    name: str, ttl: Seconds, wait: Optional[Seconds], owner: str, permits: int
) -> pb.AcquireRequest:
    # A fresh request_id per call (kept across its retries): a repeat returns the same grant.
    return pb.AcquireRequest(
        name=name, ttl=duration(ttl), wait_timeout=optional_duration(wait), owner=owner,
        request_id=str(uuid.uuid4()), permits=permits,
    )


def _grant(name: str, r: pb.AcquireResponse) -> Grant:
    return Grant(
        name=name, acquired=r.acquired, fencing_token=r.fencing_token, ttl=seconds_of(r, "ttl"),
        expires_at=time_of(r, "expires_at"), token=r.token,
    )


def _extended(r: pb.ExtendResponse) -> Extended:
    return Extended(fencing_token=r.fencing_token, ttl=seconds_of(r, "ttl"), expires_at=time_of(r, "expires_at"))


def _info(r: pb.DescribeResponse) -> LockInfo:
    return LockInfo(
        held=r.held, owner=r.owner, ttl=seconds_of(r, "ttl"), expires_at=time_of(r, "expires_at"),
        fencing_token=r.fencing_token, holders=r.holders, waiting=r.waiting, permits=r.permits,
    )


def _hold_request(
    name: str, ttl: Seconds, wait: Optional[Seconds], owner: Optional[str], permits: int,
    safety_margin: Optional[Seconds],
) -> pb.HoldRequest:
    return pb.HoldRequest(
        name=name, ttl=duration(ttl), wait_timeout=optional_duration(wait), owner=owner or "",
        permits=permits, safety_margin=optional_duration(safety_margin),
    )


def _renewed_for(response: Any) -> float:
    """The certain_for of a `renewed` event (Hold's or Campaign's: the same message)."""
    return seconds_of(response.renewed, "certain_for") or 0.0


def _lost_before_grant(stream: str, name: str, reason: str) -> CachelockError:
    """The error of a stream that said `lost` before the grant (SHUTTING_DOWN while waiting)."""
    cls = _BY_REASON.get(reason, CachelockError)
    return cls(f"{stream} of {name!r} ended while waiting: {reason}", code=grpc.StatusCode.UNAVAILABLE, reason=reason)


def _stream_reason(error: CachelockError) -> str:
    """The lost_reason of a stream that broke: cachelock's reason if it gave one."""
    return error.reason or STREAM_BROKEN


class _LeaseState:
    """What the sync and asyncio leases share: the grant, the loss and its callbacks.

    The stream is Hold's; an election's leadership (Campaign's stream, which sends the
    same `renewed` and `lost`) changes `_STREAM`, `_GRANTED` and `_granted`."""

    #: The stream's method, and the event that grants.
    _STREAM = "Hold"
    _GRANTED = "acquired"

    def __init__(self, name: str) -> None:
        self.name = name
        #: The grant's fencing token: pass it with every write the lock protects.
        self.fencing_token = 0
        #: Why the lease was lost: the server's Lost reason (LEASE_LOST, LOCK_NOT_HELD,
        #: REDIS_UNAVAILABLE, LOCKS_PAUSED, EVICTION_POLICY, SHUTTING_DOWN),
        #: NOT_RENEWED, or STREAM_BROKEN (or the reason cachelock gave a broken stream).
        self.lost_reason: Optional[str] = None
        self._certain_until = 0.0
        self._callbacks: List[LostCallback] = []
        self._closing = False

    def __repr__(self) -> str:
        state = f"lost ({self.lost_reason})" if self.lost_reason else "held"
        return f"<{type(self).__name__} {self.name!r} fencing_token={self.fencing_token} {state}>"

    @property
    def fence(self) -> Fence:
        """The fence for the writes this lease protects (`client.cache.fenced(lease.fence)`,
        `client.sessions.fenced(lease.fence)`): refused once the lock was granted again."""
        return Fence(lock=self.name, fencing_token=self.fencing_token)

    def _granted(self, response: Any) -> float:
        """Records the grant event; returns its certain_for."""
        self.fencing_token = response.acquired.fencing_token
        return seconds_of(response.acquired, "certain_for") or 0.0

    def certain_for(self) -> float:
        """Seconds the lease can still be counted on; 0 once lost."""
        if self.lost_reason is not None:
            return 0.0
        return max(0.0, self._certain_until - time.monotonic())

    def check(self) -> None:
        """Raises LeaseLost if the lease was lost: call it before each protected step."""
        if self.lost_reason is not None:
            raise self.lost_error()

    def lost_error(self) -> LeaseLost:
        """The LeaseLost that stands for this lease's loss."""
        return LeaseLost(
            f"the lease on lock {self.name!r} was lost: {self.lost_reason}",
            code=grpc.StatusCode.FAILED_PRECONDITION,
            metadata={"cause": self.lost_reason or ""},
        )

    def _run_callbacks(self, callbacks: List[LostCallback]) -> None:
        reason = self.lost_reason or ""
        for callback in callbacks:
            try:
                callback(reason)
            except Exception:  # one failing callback must not keep the others from running
                logger.exception("a lost callback of lock %r failed", self.name)


class Lease(_LeaseState):
    """A held lock, sync: the server keeps it while this lease is open.

    Use it as a context manager (leaving the block releases the lock), or call
    release(). The loss is told by `lost` (a threading.Event), `check()`, and the
    callbacks of `on_lost` (run on the lease's reader thread). A block that ends after
    a loss raises LeaseLost, so work done after it is never taken for protected.
    """

    def __init__(self, name: str, call: Any) -> None:
        super().__init__(name)
        #: Set once the lease is lost.
        self.lost = threading.Event()
        self._call = call
        self._mutex = threading.Lock()
        self._settled = threading.Event()
        self._failure: Optional[CachelockError] = None
        self._timer: Optional[threading.Timer] = None
        self._reader = threading.Thread(target=self._read, name=f"cachelock-lease-{name}", daemon=True)

    def _wait_granted(self, timeout: Optional[float], on_timeout: Optional[CachelockError] = None) -> None:
        """Starts reading the stream and returns once the lock is granted (waiting at
        most `timeout` seconds, None: for as long as it takes)."""
        self._reader.start()
        try:
            settled = self._settled.wait(timeout)
        except BaseException:  # interrupted (KeyboardInterrupt): never leave the stream waiting in line
            self._stop()
            raise
        if not settled:
            self._stop()
            raise on_timeout or DeadlineExceeded(
                f"no answer to {self._STREAM} of {self.name!r} in time", code=grpc.StatusCode.DEADLINE_EXCEEDED
            )
        if self._failure is not None:
            self._stop()
            raise self._failure

    def _read(self) -> None:
        try:
            for response in self._call:
                kind = response.WhichOneof("event")
                if kind == self._GRANTED:
                    self._arm(self._granted(response))
                    self._settled.set()
                elif kind == "renewed":
                    self._arm(_renewed_for(response))
                elif kind == "not_acquired":
                    self._failure = NotAcquired(self.name, seconds_of(response.not_acquired, "ttl"))
                    self._settled.set()
                    return
                elif kind == "lost":
                    if not self._settled.is_set():
                        self._failure = _lost_before_grant(self._STREAM, self.name, response.lost.reason)
                        self._settled.set()
                    else:
                        self._lose(response.lost.reason)
                    return
            self._ended(STREAM_BROKEN, CachelockError(f"the {self._STREAM} stream ended", code=grpc.StatusCode.UNAVAILABLE))
        except grpc.RpcError as rpc_error:
            if not self._closing:
                error = from_rpc_error(rpc_error)
                self._ended(_stream_reason(error), error)

    def _ended(self, reason: str, error: CachelockError) -> None:
        """The stream ended without `lost`: a failure before the grant, a loss after it."""
        if self._settled.is_set():
            self._lose(reason)
        else:
            self._failure = error
            self._settled.set()

    def _arm(self, certain_for: float) -> None:
        """Restarts the client-side timer: lost when certain_for passes with no renewal."""
        with self._mutex:
            if self._timer is not None:
                self._timer.cancel()
            self._certain_until = time.monotonic() + certain_for
            self._timer = threading.Timer(certain_for, self._lose, args=(NOT_RENEWED,))
            self._timer.daemon = True
            self._timer.start()

    def _lose(self, reason: str) -> None:
        with self._mutex:
            if self.lost_reason is not None or self._closing:
                return
            self.lost_reason = reason
            if self._timer is not None:
                self._timer.cancel()
            callbacks = list(self._callbacks)
            self.lost.set()
        # Close the stream: the server releases whatever may be left of the lease.
        self._call.cancel()
        self._run_callbacks(callbacks)

    def on_lost(self, callback: LostCallback) -> None:
        """Runs `callback(lost_reason)` when the lease is lost (at once if it already is)."""
        with self._mutex:
            if self.lost_reason is None:
                self._callbacks.append(callback)
                return
        self._run_callbacks([callback])

    def _stop(self) -> None:
        with self._mutex:
            self._closing = True
            if self._timer is not None:
                self._timer.cancel()
        self._call.cancel()
        if self._reader.is_alive() and threading.current_thread() is not self._reader:
            self._reader.join(timeout=5.0)

    def release(self) -> None:
        """Closes the stream: the server releases the lock. Safe to call twice."""
        self._stop()

    def __enter__(self) -> "Lease":
        return self

    def __exit__(
        self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        self._stop()
        if exc_type is None and self.lost_reason is not None:
            raise self.lost_error()


class AsyncLease(_LeaseState):
    """A held lock, asyncio. As Lease, with `lost` an asyncio.Event; and the task that
    entered the `async with` block is cancelled on a loss, which the block turns into
    LeaseLost. Callbacks run on the event loop."""

    def __init__(self, name: str, call: Any) -> None:
        super().__init__(name)
        #: Set once the lease is lost.
        self.lost = asyncio.Event()
        self._call = call
        self._timer: Optional[asyncio.TimerHandle] = None
        self._reader: Optional["asyncio.Task[None]"] = None
        self._guarded: Optional["asyncio.Task[Any]"] = None
        self._cancelled_guarded = False

    async def _wait_granted(self, timeout: Optional[float]) -> None:
        """Reads the stream until the lock is granted (None: for as long as it takes;
        cancelling the waiting task gives up), then keeps reading in a task."""
        try:
            failure = await asyncio.wait_for(self._read_until_granted(), timeout)
        except asyncio.TimeoutError:
            failure = DeadlineExceeded(
                f"no answer to {self._STREAM} of {self.name!r} in time", code=grpc.StatusCode.DEADLINE_EXCEEDED
            )
        except BaseException:
            self._call.cancel()
            raise
        if failure is not None:
            self._call.cancel()
            raise failure
        self._reader = asyncio.ensure_future(self._read())

    async def _read_until_granted(self) -> Optional[CachelockError]:
        try:
            while True:
                response = await self._call.read()
                if response is grpc.aio.EOF:
                    return CachelockError(f"the {self._STREAM} stream ended", code=grpc.StatusCode.UNAVAILABLE)
                kind = response.WhichOneof("event")
                if kind == self._GRANTED:
                    self._arm(self._granted(response))
                    return None
                if kind == "not_acquired":
                    return NotAcquired(self.name, seconds_of(response.not_acquired, "ttl"))
                if kind == "lost":  # SHUTTING_DOWN while waiting
                    return _lost_before_grant(self._STREAM, self.name, response.lost.reason)
        except grpc.RpcError as rpc_error:
            return from_rpc_error(rpc_error)

    async def _read(self) -> None:
        try:
            while True:
                response = await self._call.read()
                if response is grpc.aio.EOF:
                    self._lose(STREAM_BROKEN)
                    return
                kind = response.WhichOneof("event")
                if kind == "renewed":
                    self._arm(_renewed_for(response))
                elif kind == "lost":
                    self._lose(response.lost.reason)
                    return
        except grpc.RpcError as rpc_error:
            self._lose(_stream_reason(from_rpc_error(rpc_error)))
        except asyncio.CancelledError:
            # Our own close (the reader or the call cancelled); anything else is a loss.
            self._lose(STREAM_BROKEN)

    def _arm(self, certain_for: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._certain_until = time.monotonic() + certain_for
        self._timer = asyncio.get_running_loop().call_later(certain_for, self._lose, NOT_RENEWED)

    def _lose(self, reason: str) -> None:
        if self.lost_reason is not None or self._closing:
            return
        self.lost_reason = reason
        if self._timer is not None:
            self._timer.cancel()
        # The guarded task is cancelled before `lost` wakes anyone: a body awaiting
        # `asyncio.wait_for(lease.lost.wait(), ...)` would otherwise, on Python 3.11,
        # see the wait end and the cancellation swallowed.
        if self._guarded is not None and not self._guarded.done():
            self._cancelled_guarded = True
            self._guarded.cancel()
        self.lost.set()
        self._call.cancel()
        self._run_callbacks(list(self._callbacks))

    def on_lost(self, callback: LostCallback) -> None:
        """Runs `callback(lost_reason)` when the lease is lost (at once if it already is)."""
        if self.lost_reason is None:
            self._callbacks.append(callback)
        else:
            self._run_callbacks([callback])

    def _stop(self) -> None:
        """Closes the stream (the server releases the lock), without awaiting anything."""
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
        self._call.cancel()
        if self._reader is not None:
            self._reader.cancel()

    async def release(self) -> None:
        """Closes the stream: the server releases the lock. Safe to call twice."""
        self._stop()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)


class AsyncLockGuard:
    """`async with client.lock(name, ttl) as lease:` — holds the lock for the block."""

    def __init__(
        self, transport: AsyncTransport, request: Any, timeout: Optional[float], *,
        path: str = _SERVICE + "Hold", response: Any = pb.HoldResponse,
        make: Optional[Callable[[Any], "AsyncLease"]] = None,
    ) -> None:
        self._t = transport
        self._request = request
        self._path = path
        self._response = response
        self._make: Callable[[Any], AsyncLease] = make or (lambda call: AsyncLease(request.name, call))
        # How long the grant may take (None: as long as it takes).
        self._timeout = timeout
        self._lease: Optional[AsyncLease] = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._request.name!r}>"

    async def __aenter__(self) -> AsyncLease:
        call = self._t.stream(self._path, self._request, self._response)
        lease = self._make(call)
        await lease._wait_granted(self._timeout)
        lease._guarded = asyncio.current_task()
        self._lease = lease
        return lease

    async def __aexit__(
        self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> Optional[bool]:
        lease = self._lease
        assert lease is not None, "__aexit__ without __aenter__"
        lease._stop()
        if lease._cancelled_guarded:
            task = lease._guarded
            if exc_type is None or not issubclass(exc_type, asyncio.CancelledError):
                # The body swallowed our cancellation, or ended before it was delivered:
                # let a pending one land here, not in the caller's next await.
                try:
                    await asyncio.sleep(0)
                except asyncio.CancelledError:
                    pass
            if task is not None and sys.version_info >= (3, 11):
                task.uncancel()
                if task.cancelling() and exc_type is not None and issubclass(exc_type, asyncio.CancelledError):
                    return None  # cancelled from elsewhere too: that cancellation goes on
            await lease.release()
            raise lease.lost_error() from exc
        await lease.release()
        if exc_type is None and lease.lost_reason is not None:
            raise lease.lost_error()
        return None


class Locks:
    """Locks, sync: `lock` (a held lease, see Client.lock) and the raw calls."""

    def __init__(self, transport: Transport) -> None:
        self._t = transport

    def lock(
        self, name: str, ttl: Seconds, *, wait: Optional[Seconds] = None, owner: Optional[str] = None,
        permits: int = 1, safety_margin: Optional[Seconds] = None,
    ) -> Lease:
        """Takes the lock (waiting up to `wait` for a held one) and keeps it until the
        returned Lease is released or its `with` block ends. NotAcquired when the wait ends."""
        request = _hold_request(name, ttl, wait, owner, permits, safety_margin)
        lease = Lease(name, self._t.stream(_SERVICE + "Hold", request, pb.HoldResponse))
        lease._wait_granted(self._t.timeout + (to_seconds(wait) if wait is not None else 0.0))
        return lease

    def acquire(
        self, name: str, ttl: Seconds, *, wait: Optional[Seconds] = None, owner: str = "", permits: int = 1
    ) -> Grant:
        """Takes the lock if free (waiting up to `wait`); `Grant.acquired` says whether."""
        extra = to_seconds(wait) if wait is not None else 0.0
        request = _acquire_request(name, ttl, wait, owner, permits)
        return _grant(name, self._t.unary(_SERVICE + "Acquire", request, pb.AcquireResponse, extra=extra))

    def release(self, name: str, token: str) -> None:
        """Gives the lock up; LeaseLost or LockNotHeld when the token no longer holds it."""
        self._t.unary(_SERVICE + "Release", pb.ReleaseRequest(name=name, token=token), pb.ReleaseResponse)

    def extend(self, name: str, token: str, ttl: Seconds) -> Extended:
        """Gives a held lock a new time to live, counted from now."""
        request = pb.ExtendRequest(name=name, token=token, ttl=duration(ttl))
        return _extended(self._t.unary(_SERVICE + "Extend", request, pb.ExtendResponse))

    def describe(self, name: str) -> LockInfo:
        """Who holds the lock (never the token)."""
        return _info(self._t.unary(_SERVICE + "Describe", pb.DescribeRequest(name=name), pb.DescribeResponse))


class AsyncLocks:
    """Locks, asyncio: `lock` (an async context manager) and the raw calls, awaited."""

    def __init__(self, transport: AsyncTransport) -> None:
        self._t = transport

    def lock(
        self, name: str, ttl: Seconds, *, wait: Optional[Seconds] = None, owner: Optional[str] = None,
        permits: int = 1, safety_margin: Optional[Seconds] = None,
    ) -> AsyncLockGuard:
        """As Locks.lock, for `async with`."""
        request = _hold_request(name, ttl, wait, owner, permits, safety_margin)
        # The grant's deadline: the wait plus the usual time for an answer.
        return AsyncLockGuard(self._t, request, self._t.timeout + (to_seconds(wait) if wait is not None else 0.0))

    async def acquire(
        self, name: str, ttl: Seconds, *, wait: Optional[Seconds] = None, owner: str = "", permits: int = 1
    ) -> Grant:
        """As Locks.acquire."""
        extra = to_seconds(wait) if wait is not None else 0.0
        request = _acquire_request(name, ttl, wait, owner, permits)
        return _grant(name, await self._t.unary(_SERVICE + "Acquire", request, pb.AcquireResponse, extra=extra))

    async def release(self, name: str, token: str) -> None:
        """As Locks.release."""
        await self._t.unary(_SERVICE + "Release", pb.ReleaseRequest(name=name, token=token), pb.ReleaseResponse)

    async def extend(self, name: str, token: str, ttl: Seconds) -> Extended:
        """As Locks.extend."""
        request = pb.ExtendRequest(name=name, token=token, ttl=duration(ttl))
        return _extended(await self._t.unary(_SERVICE + "Extend", request, pb.ExtendResponse))

    async def describe(self, name: str) -> LockInfo:
        """As Locks.describe."""
        return _info(await self._t.unary(_SERVICE + "Describe", pb.DescribeRequest(name=name), pb.DescribeResponse))

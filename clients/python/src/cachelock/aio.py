"""The asyncio client: the surface of cachelock.Client, awaited, over grpc.aio.

    async with cachelock.aio.Client("localhost:50051", token=...) as client:
        await client.cache.set("greeting", "hello", ttl=60)
        async with client.lock("invoice:42", ttl=10) as lease:
            ...  # cancelled, and the block raises LeaseLost, if the lease is lost
"""

from __future__ import annotations

from types import TracebackType
from typing import Any, Awaitable, Callable, Optional, Sequence, Tuple, Type, Union

from ._cache import AsyncCache, Serializer
from ._convert import Seconds, to_seconds
from ._election import AsyncElections, AsyncLeadership, AsyncLeadershipGuard, AsyncObservation
from ._lock import AsyncLease, AsyncLockGuard, AsyncLocks
from ._pubsub import AsyncPubSub, AsyncSubscription
from ._ratelimit import AsyncRateLimit
from ._retry import OnRetry
from ._sessions import AsyncSessions
from ._transport import DEFAULT_TIMEOUT, TLS, AsyncTransport

__all__ = [
    "AsyncCache", "AsyncElections", "AsyncLeadership", "AsyncLeadershipGuard", "AsyncLease", "AsyncLockGuard",
    "AsyncLocks", "AsyncObservation", "AsyncPubSub", "AsyncRateLimit",
    "AsyncSessions", "AsyncSubscription", "Client",
]

AsyncFn = Callable[..., Awaitable[Any]]


class Client:
    """A cachelock client over one grpc.aio channel; arguments as cachelock.Client.

    Create it inside the event loop that uses it. Use it with `async with`, or await close().
    """

    def __init__(
        self, address: str, *, token: Optional[str] = None, tls: Union[bool, TLS] = False,
        timeout: Seconds = DEFAULT_TIMEOUT, on_retry: Optional[OnRetry] = None,
        options: Sequence[Tuple[str, Any]] = (),
    ) -> None:
        self.address = address
        self._tls = tls
        self._transport = AsyncTransport(
            address, token=token, tls=tls, timeout=to_seconds(timeout), on_retry=on_retry, options=options
        )
        self.cache = AsyncCache(self._transport)
        self.rate_limit = AsyncRateLimit(self._transport)
        self.sessions = AsyncSessions(self._transport)
        self.locks = AsyncLocks(self._transport)
        self.elections = AsyncElections(self._transport)
        self.pubsub = AsyncPubSub(self._transport)

    def __repr__(self) -> str:
        tls = "plaintext" if self._tls is False else "tls"
        return f"<cachelock.aio.Client {self.address} {tls} timeout={self._transport.timeout}s>"

    def lock(
        self, name: str, ttl: Seconds, *, wait: Optional[Seconds] = None, owner: Optional[str] = None,
        permits: int = 1, safety_margin: Optional[Seconds] = None,
    ) -> AsyncLockGuard:
        """Holds the lock `name` for an `async with` block (see cachelock.Client.lock)."""
        return self.locks.lock(name, ttl, wait=wait, owner=owner, permits=permits, safety_margin=safety_margin)

    def campaign(
        self, name: str, *, candidate: str = "", ttl: Seconds, safety_margin: Optional[Seconds] = None,
    ) -> AsyncLeadershipGuard:
        """Waits in line to lead the election `name` (cancel the task to give up), then
        leads for an `async with` block (see cachelock.Client.campaign)."""
        return self.elections.campaign(name, candidate=candidate, ttl=ttl, safety_margin=safety_margin)

    def cached(
        self, key_template: str, ttl: Seconds, *, lease_ttl: Optional[Seconds] = None,
        wait: Optional[Seconds] = None, stale_ttl: Optional[Seconds] = None, refresh_ahead: float = 0.0,
        serializer: Optional[Serializer] = None,
    ) -> Callable[[AsyncFn], AsyncFn]:
        """Caches an async function's result, filled once across the fleet."""
        extra = {} if serializer is None else {"serializer": serializer}
        return self.cache.cached(
            key_template, ttl, lease_ttl=lease_ttl, wait=wait, stale_ttl=stale_ttl, refresh_ahead=refresh_ahead, **extra
        )

    async def close(self) -> None:
        """Closes the channel; open streams end."""
        await self._transport.close()

    async def __aenter__(self) -> "Client":
        return self

    async def __aexit__(
        self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        await self.close()

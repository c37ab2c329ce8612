"""The sync client: one channel, and the services over it."""

from __future__ import annotations

from types import TracebackType
from typing import Any, Callable, Optional, Sequence, Tuple, Type, TypeVar, Union

from ._cache import Cache, Serializer
from ._convert import Seconds, to_seconds
from ._election import Elections, Leadership
from ._lock import Lease, Locks
from ._pubsub import PubSub
from ._ratelimit import RateLimit
from ._retry import OnRetry
from ._sessions import Sessions
from ._transport import DEFAULT_TIMEOUT, TLS, Transport

F = TypeVar("F", bound=Callable[..., Any])


class Client:
    """A cachelock client over one channel (sync; see cachelock.aio for asyncio).

    Args:
        address: "host:port" of the service.
        token: the bearer token of the auth file, sent on every call (never shown).
        tls: False (plaintext), True (TLS with the system's roots) or TLS(ca=, cert=, key=).
        timeout: the default deadline of every call (seconds or timedelta); a call that
            waits in the server gets that wait on top. Streams have none.
        on_retry: called as on_retry(method, error, delay) before each retry.
        options: extra gRPC channel options.

    Services: `cache`, `rate_limit`, `sessions`, `locks`, `elections`, `pubsub`;
    shortcuts `lock`, `campaign` and `cached`. Use it as a context manager, or call close().
    """

    def __init__(
        self, address: str, *, token: Optional[str] = None, tls: Union[bool, TLS] = False,
        timeout: Seconds = DEFAULT_TIMEOUT, on_retry: Optional[OnRetry] = None,
        options: Sequence[Tuple[str, Any]] = (),
    ) -> None:
        self.address = address
        self._tls = tls
        self._transport = Transport(
            address, token=token, tls=tls, timeout=to_seconds(timeout), on_retry=on_retry, options=options
        )
        self.cache = Cache(self._transport)
        self.rate_limit = RateLimit(self._transport)
        self.sessions = Sessions(self._transport)
        self.locks = Locks(self._transport)
        self.elections = Elections(self._transport)
        self.pubsub = PubSub(self._transport)

    def __repr__(self) -> str:
        tls = "plaintext" if self._tls is False else "tls"
        return f"<cachelock.Client {self.address} {tls} timeout={self._transport.timeout}s>"

    def lock(
        self, name: str, ttl: Seconds, *, wait: Optional[Seconds] = None, owner: Optional[str] = None,
        permits: int = 1, safety_margin: Optional[Seconds] = None,
    ) -> Lease:
        """Holds the lock `name` (see Locks.lock): `with client.lock("invoice:42", ttl=10) as lease:`."""
        return self.locks.lock(name, ttl, wait=wait, owner=owner, permits=permits, safety_margin=safety_margin)

    def campaign(
        self, name: str, *, candidate: str = "", ttl: Seconds, safety_margin: Optional[Seconds] = None,
        timeout: Optional[Seconds] = None,
    ) -> Leadership:
        """Waits in line to lead the election `name`, then leads (see Elections.campaign):
        `with client.campaign("{scheduler}", candidate="host-1", ttl=10) as leader:`."""
        return self.elections.campaign(name, candidate=candidate, ttl=ttl, safety_margin=safety_margin, timeout=timeout)

    def cached(
        self, key_template: str, ttl: Seconds, *, lease_ttl: Optional[Seconds] = None,
        wait: Optional[Seconds] = None, stale_ttl: Optional[Seconds] = None, refresh_ahead: float = 0.0,
        serializer: Optional[Serializer] = None,
    ) -> Callable[[F], F]:
        """Caches a function's result, filled once across the fleet (see Cache.cached)."""
        extra = {} if serializer is None else {"serializer": serializer}
        return self.cache.cached(
            key_template, ttl, lease_ttl=lease_ttl, wait=wait, stale_ttl=stale_ttl, refresh_ahead=refresh_ahead, **extra
        )

    def close(self) -> None:
        """Closes the channel; open streams end."""
        self._transport.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(
        self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        self.close()

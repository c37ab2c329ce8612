"""CacheService: byte values under string keys, and `cached`, a fill-once decorator."""

from __future__ import annotations

import functools
import inspect
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Dict, Iterable, Mapping, Optional, Protocol, TypeVar, Union

from ._convert import Seconds, enum_value, optional_duration, seconds_of, to_seconds
from ._errors import LeaseLost
from ._fence import Fence, Fenceable, fence_message, fence_of
from ._transport import AsyncTransport, Transport
from .cache.v1 import cache_pb2 as pb
from .lock.v1 import lock_pb2

logger = logging.getLogger("cachelock")

_SERVICE = "/cachelock.cache.v1.CacheService/"

#: A value to store: bytes as they are, str as UTF-8.
Value = Union[bytes, str]

F = TypeVar("F", bound=Callable[..., Any])


class Serializer(Protocol):
    """How `cached` turns results into stored bytes and back (the json module fits)."""

    def dumps(self, obj: Any) -> Union[str, bytes]: ...

    def loads(self, data: bytes) -> Any: ...


@dataclass(frozen=True)
class LeaseResult:
    """A GetOrLease answer.

    outcome: "hit", "stale", "lease" or "miss". value: the value (stale for "stale" and,
    when a stale copy is kept, "lease"), or None. lease_token: set when this caller must
    fill the key (Set with it); a secret, never shown.
    """

    outcome: str
    value: Optional[bytes]
    ttl: Optional[float]
    lease_ttl: Optional[float]
    lease_token: str = field(default="", repr=False)


def _bytes(value: Value) -> bytes:
    return value.encode() if isinstance(value, str) else value


def _set_request(
    key: str, value: Value, ttl: Optional[Seconds], condition: str,
    stale_ttl: Optional[Seconds], lease_token: str, fence: Optional[lock_pb2.Fence],
) -> pb.SetRequest:
    number = enum_value(pb.SetCondition, "SET_CONDITION_", condition)
    return pb.SetRequest(
        key=key, value=_bytes(value), ttl=optional_duration(ttl),
        # "always" is sent unset (the same meaning), as a lease fill requires.
        condition=pb.SET_CONDITION_UNSPECIFIED if number == pb.SET_CONDITION_ALWAYS else number,
        stale_ttl=optional_duration(stale_ttl), lease_token=lease_token, fence=fence,
    )


#: The fill lease when none is given, as the server's default.
DEFAULT_LEASE_TTL = 10.0


def _set_many_request(
    mapping: Mapping[str, Value], ttl: Optional[Seconds], fence: Optional[lock_pb2.Fence]
) -> pb.SetManyRequest:
    entries = [pb.SetEntry(key=k, value=_bytes(v), ttl=optional_duration(ttl)) for k, v in mapping.items()]
    return pb.SetManyRequest(entries=entries, fence=fence)


def _fill_wait(lease_ttl: Optional[Seconds], wait: Optional[Seconds]) -> Seconds:
    """How long to wait for another caller's fill: as given, else the lease's ttl."""
    if wait is not None:
        return wait
    return DEFAULT_LEASE_TTL if lease_ttl is None else lease_ttl


def _lease_request(
    key: str, lease_ttl: Optional[Seconds], wait: Seconds, refresh_ahead: float
) -> pb.GetOrLeaseRequest:
    return pb.GetOrLeaseRequest(
        key=key, lease_ttl=optional_duration(lease_ttl), wait=optional_duration(wait), refresh_ahead=refresh_ahead
    )


def _lease_result(response: pb.GetOrLeaseResponse) -> LeaseResult:
    outcome = pb.LeaseOutcome.Name(response.outcome)[len("LEASE_OUTCOME_"):].lower()
    return LeaseResult(
        outcome=outcome,
        value=response.value if response.found else None,
        ttl=seconds_of(response, "ttl"),
        lease_ttl=seconds_of(response, "lease_ttl"),
        lease_token=response.lease_token,
    )


class _Cached:
    """What the sync and asyncio `cached` share: the key template and the serializer."""

    def __init__(
        self, fn: Callable[..., Any], key_template: str, ttl: Seconds, lease_ttl: Optional[Seconds],
        wait: Optional[Seconds], stale_ttl: Optional[Seconds], refresh_ahead: float, serializer: Serializer,
    ) -> None:
        self.signature = inspect.signature(fn)
        self.template = key_template
        self.ttl = ttl
        self.lease_ttl = lease_ttl
        self.wait = wait
        self.stale_ttl = stale_ttl
        self.refresh_ahead = refresh_ahead
        self.serializer = serializer

    def key(self, args: Any, kwargs: Any) -> str:
        """The template formatted with the call's arguments by name, defaults included."""
        bound = self.signature.bind(*args, **kwargs)
        bound.apply_defaults()
        return self.template.format(**bound.arguments)

    def encode(self, result: Any) -> bytes:
        return _bytes(self.serializer.dumps(result))

    def decode(self, data: bytes) -> Any:
        return self.serializer.loads(data)


class Cache:
    """The cache, sync. Missing keys are never errors: reads answer None.

    `fenced(fence)` gives the same cache with every write fenced (see Cache.fenced).
    """

    def __init__(self, transport: Transport, fence: Optional[Fence] = None) -> None:
        self._t = transport
        #: The fence every write of this view carries, or None (unconditional writes).
        self.fence = fence
        self._fence = fence_message(fence)

    def __repr__(self) -> str:
        fence = "" if self.fence is None else f" fenced by {self.fence.lock!r}@{self.fence.fencing_token}"
        return f"<cachelock.Cache{fence}>"

    def fenced(self, fence: Fenceable) -> "Cache":
        """The same cache with every write (set, set_many, delete, take, increment, expire)
        fenced by `fence` (a Fence, a lease or a grant): applied only while no grant of its
        lock is newer, else FencedOut and nothing changed. Reads, and the fill of `cached`,
        are unchanged."""
        return Cache(self._t, fence_of(fence))

    def get(self, key: str) -> Optional[bytes]:
        """The value of `key`, or None."""
        response = self._t.unary(_SERVICE + "Get", pb.GetRequest(key=key), pb.GetResponse)
        return response.value if response.found else None

    def get_many(self, keys: Iterable[str]) -> Dict[str, Optional[bytes]]:
        """Each key's value (None when missing), in one round trip."""
        response = self._t.unary(_SERVICE + "GetMany", pb.GetManyRequest(keys=list(keys)), pb.GetManyResponse)
        return {e.key: (e.value if e.found else None) for e in response.entries}

    def set(
        self, key: str, value: Value, ttl: Optional[Seconds] = None, condition: str = "always",
        stale_ttl: Optional[Seconds] = None, *, lease_token: str = "",
    ) -> bool:
        """Stores `value`; False only when `condition` ("if_absent", "if_present") did not hold.

        `lease_token` fills a GetOrLease lease (LeaseLost if it is no longer this token's).
        """
        request = _set_request(key, value, ttl, condition, stale_ttl, lease_token, self._fence)
        return self._t.unary(_SERVICE + "Set", request, pb.SetResponse).stored

    def _fill(self, key: str, value: bytes, ttl: Seconds, stale_ttl: Optional[Seconds], lease_token: str) -> bool:
        """Stores a fill with its lease token: never fenced (the fill lease guards it)."""
        request = _set_request(key, value, ttl, "always", stale_ttl, lease_token, None)
        return self._t.unary(_SERVICE + "Set", request, pb.SetResponse).stored

    def set_many(self, mapping: Mapping[str, Value], ttl: Optional[Seconds] = None) -> int:
        """Stores every value at once (all or none); the number stored."""
        request = _set_many_request(mapping, ttl, self._fence)
        return self._t.unary(_SERVICE + "SetMany", request, pb.SetManyResponse).stored

    def delete(self, *keys: str) -> int:
        """Removes keys; how many existed."""
        request = pb.DeleteRequest(keys=keys, fence=self._fence)
        return self._t.unary(_SERVICE + "Delete", request, pb.DeleteResponse).deleted

    def take(self, key: str) -> Optional[bytes]:
        """Reads and deletes `key` atomically: exactly one caller gets a stored value."""
        response = self._t.unary(_SERVICE + "Take", pb.TakeRequest(key=key, fence=self._fence), pb.TakeResponse)
        return response.value if response.found else None

    def increment(self, key: str, delta: int = 1, ttl: Optional[Seconds] = None) -> int:
        """Adds `delta` to an integer counter (created at 0 with `ttl`); the new value."""
        request = pb.IncrementRequest(key=key, delta=delta, ttl=optional_duration(ttl), fence=self._fence)
        return self._t.unary(_SERVICE + "Increment", request, pb.IncrementResponse).value

    def expire(self, key: str, ttl: Seconds) -> bool:
        """Gives `key` a new time to live; False when it does not exist."""
        request = pb.ExpireRequest(key=key, ttl=optional_duration(ttl), fence=self._fence)
        return self._t.unary(_SERVICE + "Expire", request, pb.ExpireResponse).found

    def get_or_lease(
        self, key: str, *, lease_ttl: Optional[Seconds] = None, wait: Optional[Seconds] = None,
        refresh_ahead: float = 0.0,
    ) -> LeaseResult:
        """Reads `key`, or gets the lease to fill it while other callers wait (raw GetOrLease).

        `wait` (default: the lease's ttl, so that a filler that dies is replaced before the
        waiters give up) is how long to wait for another caller's fill; the call's deadline is the client's timeout on top of it.
        """
        wait = _fill_wait(lease_ttl, wait)
        request = _lease_request(key, lease_ttl, wait, refresh_ahead)
        response = self._t.unary(_SERVICE + "GetOrLease", request, pb.GetOrLeaseResponse, extra=to_seconds(wait))
        return _lease_result(response)

    def cached(
        self, key_template: str, ttl: Seconds, *, lease_ttl: Optional[Seconds] = None,
        wait: Optional[Seconds] = None, stale_ttl: Optional[Seconds] = None, refresh_ahead: float = 0.0,
        serializer: Serializer = json,  # type: ignore[assignment]
    ) -> Callable[[F], F]:
        """Decorates a function whose result is cached under `key_template` formatted with
        its arguments by name ("price:{sku}"): on a miss exactly one caller in the fleet
        runs it and stores the result, while the others wait for that value.
        """

        def decorate(fn: F) -> F:
            spec = _Cached(fn, key_template, ttl, lease_ttl, wait, stale_ttl, refresh_ahead, serializer)

            @functools.wraps(fn)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                key = spec.key(args, kwargs)
                found = self.get_or_lease(key, lease_ttl=spec.lease_ttl, wait=spec.wait, refresh_ahead=spec.refresh_ahead)
                if found.value is not None and not found.lease_token:
                    return spec.decode(found.value)  # hit or stale
                result = fn(*args, **kwargs)
                if found.lease_token:  # lease (or hit chosen to refresh early): fill it
                    try:
                        self._fill(key, spec.encode(result), spec.ttl, spec.stale_ttl, found.lease_token)
                    except LeaseLost:
                        # The lease passed on (it ran out): the result is still right to return.
                        logger.debug("fill lease of %r lost; result not stored", key)
                # A miss (the wait ended with no fill) stores nothing: another caller holds the lease.
                return result

            return wrapper  # type: ignore[return-value]

        return decorate


class AsyncCache:
    """The cache, asyncio: the methods of Cache, awaited."""

    def __init__(self, transport: AsyncTransport, fence: Optional[Fence] = None) -> None:
        self._t = transport
        #: The fence every write of this view carries, or None (unconditional writes).
        self.fence = fence
        self._fence = fence_message(fence)

    def __repr__(self) -> str:
        fence = "" if self.fence is None else f" fenced by {self.fence.lock!r}@{self.fence.fencing_token}"
        return f"<cachelock.aio.AsyncCache{fence}>"

    def fenced(self, fence: Fenceable) -> "AsyncCache":
        """As Cache.fenced."""
        return AsyncCache(self._t, fence_of(fence))

    async def get(self, key: str) -> Optional[bytes]:
        """The value of `key`, or None."""
        response = await self._t.unary(_SERVICE + "Get", pb.GetRequest(key=key), pb.GetResponse)
        return response.value if response.found else None

    async def get_many(self, keys: Iterable[str]) -> Dict[str, Optional[bytes]]:
        """Each key's value (None when missing), in one round trip."""
        response = await self._t.unary(_SERVICE + "GetMany", pb.GetManyRequest(keys=list(keys)), pb.GetManyResponse)
        return {e.key: (e.value if e.found else None) for e in response.entries}

    async def set(
        self, key: str, value: Value, ttl: Optional[Seconds] = None, condition: str = "always",
        stale_ttl: Optional[Seconds] = None, *, lease_token: str = "",
    ) -> bool:
        """Stores `value`; False only when `condition` did not hold."""
        request = _set_request(key, value, ttl, condition, stale_ttl, lease_token, self._fence)
        return (await self._t.unary(_SERVICE + "Set", request, pb.SetResponse)).stored

    async def _fill(self, key: str, value: bytes, ttl: Seconds, stale_ttl: Optional[Seconds], lease_token: str) -> bool:
        """As Cache._fill: never fenced."""
        request = _set_request(key, value, ttl, "always", stale_ttl, lease_token, None)
        return (await self._t.unary(_SERVICE + "Set", request, pb.SetResponse)).stored

    async def set_many(self, mapping: Mapping[str, Value], ttl: Optional[Seconds] = None) -> int:
        """Stores every value at once (all or none); the number stored."""
        request = _set_many_request(mapping, ttl, self._fence)
        return (await self._t.unary(_SERVICE + "SetMany", request, pb.SetManyResponse)).stored

    async def delete(self, *keys: str) -> int:
        """Removes keys; how many existed."""
        request = pb.DeleteRequest(keys=keys, fence=self._fence)
        return (await self._t.unary(_SERVICE + "Delete", request, pb.DeleteResponse)).deleted

    async def take(self, key: str) -> Optional[bytes]:
        """Reads and deletes `key` atomically."""
        response = await self._t.unary(_SERVICE + "Take", pb.TakeRequest(key=key, fence=self._fence), pb.TakeResponse)
        return response.value if response.found else None

    async def increment(self, key: str, delta: int = 1, ttl: Optional[Seconds] = None) -> int:
        """Adds `delta` to an integer counter; the new value."""
        request = pb.IncrementRequest(key=key, delta=delta, ttl=optional_duration(ttl), fence=self._fence)
        return (await self._t.unary(_SERVICE + "Increment", request, pb.IncrementResponse)).value

    async def expire(self, key: str, ttl: Seconds) -> bool:
        """Gives `key` a new time to live; False when it does not exist."""
        request = pb.ExpireRequest(key=key, ttl=optional_duration(ttl), fence=self._fence)
        return (await self._t.unary(_SERVICE + "Expire", request, pb.ExpireResponse)).found

    async def get_or_lease(
        self, key: str, *, lease_ttl: Optional[Seconds] = None, wait: Optional[Seconds] = None,
        refresh_ahead: float = 0.0,
    ) -> LeaseResult:
        """As Cache.get_or_lease."""
        wait = _fill_wait(lease_ttl, wait)
        request = _lease_request(key, lease_ttl, wait, refresh_ahead)
        response = await self._t.unary(_SERVICE + "GetOrLease", request, pb.GetOrLeaseResponse, extra=to_seconds(wait))
        return _lease_result(response)

    def cached(
        self, key_template: str, ttl: Seconds, *, lease_ttl: Optional[Seconds] = None,
        wait: Optional[Seconds] = None, stale_ttl: Optional[Seconds] = None, refresh_ahead: float = 0.0,
        serializer: Serializer = json,  # type: ignore[assignment]
    ) -> Callable[[Callable[..., Awaitable[Any]]], Callable[..., Awaitable[Any]]]:
        """As Cache.cached, for an async function."""

        def decorate(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
            spec = _Cached(fn, key_template, ttl, lease_ttl, wait, stale_ttl, refresh_ahead, serializer)

            @functools.wraps(fn)
            async def wrapper(*args: Any, **kwargs: Any) -> Any:
                key = spec.key(args, kwargs)
                found = await self.get_or_lease(
                    key, lease_ttl=spec.lease_ttl, wait=spec.wait, refresh_ahead=spec.refresh_ahead
                )
                if found.value is not None and not found.lease_token:
                    return spec.decode(found.value)
                result = await fn(*args, **kwargs)
                if found.lease_token:
                    try:
                        await self._fill(key, spec.encode(result), spec.ttl, spec.stale_ttl, found.lease_token)
                    except LeaseLost:
                        logger.debug("fill lease of %r lost; result not stored", key)
                return result

            return wrapper

        return decorate

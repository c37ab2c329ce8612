"""RateLimitService: limits shared by every instance of every backend."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

from ._convert import Seconds, duration, enum_value, seconds_of
from ._transport import AsyncTransport, Transport
from .ratelimit.v1 import ratelimit_pb2 as pb

_SERVICE = "/cachelock.ratelimit.v1.RateLimitService/"


@dataclass(frozen=True)
class Decision:
    """A rate limit's answer. Durations in seconds.

    retry_after: when denied, the wait until a request of this cost could pass; 0 when
    allowed; None when no wait ever lets it pass (the cost exceeds the limit).
    decided_by_outage_policy: Redis could not decide and the outage policy did.
    """

    allowed: bool
    limit: int
    remaining: int
    reset_after: Optional[float]
    retry_after: Optional[float]
    decided_by_outage_policy: bool = False


@dataclass(frozen=True)
class Limit:
    """One limit of a check_many: `limit` units per `period`, this request costing `cost`
    (None: 1; 0 reports without consuming), counted by `algorithm`."""

    key: str
    limit: int
    period: Seconds
    cost: Optional[int] = None
    algorithm: str = "token_bucket"


@dataclass(frozen=True)
class Decisions:
    """A check_many's answer: allowed only if every limit allows; each limit's part."""

    allowed: bool
    decisions: List[Decision]
    retry_after: Optional[float]
    decided_by_outage_policy: bool


def _algorithm(name: str) -> int:
    return enum_value(pb.Algorithm, "ALGORITHM_", name)


def _policy(name: Optional[str]) -> int:
    return pb.OUTAGE_POLICY_UNSPECIFIED if name is None else enum_value(pb.OutagePolicy, "OUTAGE_POLICY_", name)


def _check_request(
    key: str, limit: int, period: Seconds, cost: Optional[int], algorithm: str, on_unavailable: Optional[str]
) -> pb.CheckRequest:
    request = pb.CheckRequest(
        key=key, limit=limit, period=duration(period), algorithm=_algorithm(algorithm),
        on_unavailable=_policy(on_unavailable),
    )
    if cost is not None:  # `optional`: an explicit 0 means "report without consuming"
        request.cost = cost
    return request


def _decision(response: pb.CheckResponse) -> Decision:
    return Decision(
        allowed=response.allowed, limit=response.limit, remaining=response.remaining,
        reset_after=seconds_of(response, "reset_after"), retry_after=seconds_of(response, "retry_after"),
        decided_by_outage_policy=response.decided_by_outage_policy,
    )


def _many_request(limits: Sequence[Limit], on_unavailable: Optional[str]) -> pb.CheckManyRequest:
    request = pb.CheckManyRequest(on_unavailable=_policy(on_unavailable))
    for item in limits:
        entry = request.limits.add(
            key=item.key, limit=item.limit, period=duration(item.period), algorithm=_algorithm(item.algorithm)
        )
        if item.cost is not None:
            entry.cost = item.cost
    return request


def _decisions(response: pb.CheckManyResponse) -> Decisions:
    parts = [
        Decision(
            allowed=d.allowed, limit=d.limit, remaining=d.remaining, reset_after=seconds_of(d, "reset_after"),
            retry_after=seconds_of(d, "retry_after"), decided_by_outage_policy=response.decided_by_outage_policy,
        )
        for d in response.decisions
    ]
    return Decisions(
        allowed=response.allowed, decisions=parts, retry_after=seconds_of(response, "retry_after"),
        decided_by_outage_policy=response.decided_by_outage_policy,
    )


def _reset_request(key: str, limit: int, period: Seconds, algorithm: Optional[str]) -> pb.ResetRequest:
    # No algorithm: the state of all three algorithms of this limiter is cleared.
    number = pb.ALGORITHM_UNSPECIFIED if algorithm is None else _algorithm(algorithm)
    return pb.ResetRequest(key=key, limit=limit, period=duration(period), algorithm=number)


class RateLimit:
    """Rate limits, sync. A denial is not an error: `Decision.allowed` is False.

    algorithm: "token_bucket" (default), "fixed_window" or "sliding_window".
    on_unavailable: None (the server's policy), "fail_open" or "fail_closed".
    """

    def __init__(self, transport: Transport) -> None:
        self._t = transport

    def check(
        self, key: str, limit: int, period: Seconds, *, cost: Optional[int] = None,
        algorithm: str = "token_bucket", on_unavailable: Optional[str] = None,
    ) -> Decision:
        """Decides one limit and consumes `cost` if allowed. Never retried: it would count twice."""
        request = _check_request(key, limit, period, cost, algorithm, on_unavailable)
        return _decision(self._t.unary(_SERVICE + "Check", request, pb.CheckResponse))

    def check_many(self, limits: Sequence[Limit], *, on_unavailable: Optional[str] = None) -> Decisions:
        """Decides several limits together; nothing is consumed unless all allow."""
        request = _many_request(limits, on_unavailable)
        return _decisions(self._t.unary(_SERVICE + "CheckMany", request, pb.CheckManyResponse))

    def reset(self, key: str, limit: int, period: Seconds, *, algorithm: Optional[str] = None) -> bool:
        """Clears one limiter (key, limit, period, algorithm; None: every algorithm); whether state existed."""
        request = _reset_request(key, limit, period, algorithm)
        return self._t.unary(_SERVICE + "Reset", request, pb.ResetResponse).existed


class AsyncRateLimit:
    """Rate limits, asyncio: the methods of RateLimit, awaited."""

    def __init__(self, transport: AsyncTransport) -> None:
        self._t = transport

    async def check(
        self, key: str, limit: int, period: Seconds, *, cost: Optional[int] = None,
        algorithm: str = "token_bucket", on_unavailable: Optional[str] = None,
    ) -> Decision:
        """As RateLimit.check."""
        request = _check_request(key, limit, period, cost, algorithm, on_unavailable)
        return _decision(await self._t.unary(_SERVICE + "Check", request, pb.CheckResponse))

    async def check_many(self, limits: Sequence[Limit], *, on_unavailable: Optional[str] = None) -> Decisions:
        """As RateLimit.check_many."""
        request = _many_request(limits, on_unavailable)
        return _decisions(await self._t.unary(_SERVICE + "CheckMany", request, pb.CheckManyResponse))

    async def reset(self, key: str, limit: int, period: Seconds, *, algorithm: Optional[str] = None) -> bool:
        """As RateLimit.reset."""
        request = _reset_request(key, limit, period, algorithm)
        return (await self._t.unary(_SERVICE + "Reset", request, pb.ResetResponse)).existed

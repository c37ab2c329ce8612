"""RateLimitService: limits shared by every instance of every backend."""

from __future__ import annotations

from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import AsyncIterator, Iterator, List, Optional, Sequence

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


@dataclass(frozen=True)
class Reservation:
    """A reserve's answer: the estimate counted (allowed) or refused, and what settling needs.

    reservation_id is empty when refused. key, limit, period and algorithm are the limiter
    as reserved, so that commit and cancel name it exactly as the server requires.
    retry_after: when refused, the wait until the estimate would fit; None when it never can.
    """

    allowed: bool
    reservation_id: str
    limit: int
    remaining: int
    reset_after: Optional[float]
    retry_after: Optional[float]
    key: str
    period: Seconds
    algorithm: str


@dataclass(frozen=True)
class Settlement:
    """A commit's or cancel's answer. found is False when the reservation expired (and settled
    at its estimate) or never was; settled_before is True when it had been settled already
    (charged and refunded are then that settlement's, and nothing changed now)."""

    found: bool
    charged: int
    refunded: int
    remaining: int
    reset_after: Optional[float]
    settled_before: bool


@dataclass(frozen=True)
class Report:
    """A report's answer: remaining is 0 when in debt; retry_after the wait until a cost of 1
    fits again (0: it fits now)."""

    remaining: int
    reset_after: Optional[float]
    retry_after: Optional[float]


def _limit(key: str, limit: int, period: Seconds, cost: Optional[int], algorithm: str) -> pb.Limit:
    message = pb.Limit(key=key, limit=limit, period=duration(period), algorithm=_algorithm(algorithm))
    if cost is not None:
        message.cost = cost
    return message


def _reserve_request(
    key: str, limit: int, period: Seconds, cost: int, algorithm: str, reservation_ttl: Optional[Seconds]
) -> pb.ReserveRequest:
    request = pb.ReserveRequest(limit=_limit(key, limit, period, cost, algorithm))
    if reservation_ttl is not None:
        request.reservation_ttl.CopyFrom(duration(reservation_ttl))
    return request


def _reservation(
    response: pb.ReserveResponse, key: str, period: Seconds, algorithm: str
) -> Reservation:
    return Reservation(
        allowed=response.allowed, reservation_id=response.reservation_id, limit=response.limit,
        remaining=response.remaining, reset_after=seconds_of(response, "reset_after"),
        retry_after=seconds_of(response, "retry_after"), key=key, period=period, algorithm=algorithm,
    )


def _settled(reservation: Reservation) -> None:
    if not reservation.reservation_id:
        raise ValueError("a refused reservation (allowed=False) has nothing to settle")


def _commit_request(reservation: Reservation, cost: int, allow_debt: bool) -> pb.CommitRequest:
    _settled(reservation)
    r = reservation
    return pb.CommitRequest(
        limit=_limit(r.key, r.limit, r.period, cost, r.algorithm), reservation_id=r.reservation_id,
        allow_debt=allow_debt,
    )


def _cancel_request(reservation: Reservation) -> pb.CancelRequest:
    _settled(reservation)
    r = reservation
    return pb.CancelRequest(limit=_limit(r.key, r.limit, r.period, None, r.algorithm), reservation_id=r.reservation_id)


def _settlement(response: "pb.CommitResponse | pb.CancelResponse") -> Settlement:
    return Settlement(
        found=response.found, charged=response.charged, refunded=response.refunded, remaining=response.remaining,
        reset_after=seconds_of(response, "reset_after"), settled_before=response.settled_before,
    )


def _report(response: pb.ReportResponse) -> Report:
    return Report(
        remaining=response.remaining, reset_after=seconds_of(response, "reset_after"),
        retry_after=seconds_of(response, "retry_after"),
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

    def reserve(
        self, key: str, limit: int, period: Seconds, *, cost: int, algorithm: str = "token_bucket",
        reservation_ttl: Optional[Seconds] = None,
    ) -> Reservation:
        """Counts an estimated `cost` now, to settle with commit or cancel once the actual cost
        is known; unsettled, it settles at its estimate after `reservation_ttl` (None: 1 minute).
        A refusal is not an error: `Reservation.allowed` is False. Never retried: it would count twice."""
        request = _reserve_request(key, limit, period, cost, algorithm, reservation_ttl)
        return _reservation(self._t.unary(_SERVICE + "Reserve", request, pb.ReserveResponse), key, period, algorithm)

    def commit(self, reservation: Reservation, cost: int, *, allow_debt: bool = False) -> Settlement:
        """Settles a reservation at its actual `cost`: the rest of the estimate is refunded, an
        excess charged (beyond the limit only with allow_debt). Settling is once: a repeat
        answers the same with settled_before, so it is retried on RetryInfo."""
        request = _commit_request(reservation, cost, allow_debt)
        return _settlement(self._t.unary(_SERVICE + "Commit", request, pb.CommitResponse))

    def cancel(self, reservation: Reservation) -> Settlement:
        """Settles a reservation at no cost: its estimate is refunded. Once, as commit."""
        request = _cancel_request(reservation)
        return _settlement(self._t.unary(_SERVICE + "Cancel", request, pb.CancelResponse))

    def report(
        self, key: str, limit: int, period: Seconds, *, cost: int, algorithm: str = "token_bucket"
    ) -> Report:
        """Counts `cost` after the fact, without deciding: even past the limit (a debt the next
        check waits off). Never retried: it would count twice."""
        request = pb.ReportRequest(limit=_limit(key, limit, period, cost, algorithm))
        return _report(self._t.unary(_SERVICE + "Report", request, pb.ReportResponse))

    @contextmanager
    def reserved(
        self, key: str, limit: int, period: Seconds, *, cost: int, algorithm: str = "token_bucket",
        reservation_ttl: Optional[Seconds] = None,
    ) -> Iterator[Reservation]:
        """Reserves for a block, which commits the actual cost with commit(reservation, cost).
        On the way out (an exception too) the reservation is cancelled: a no-op answered
        settled_before when the block committed it. A refused reservation is yielded as is
        (check `allowed`) and nothing is settled."""
        reservation = self.reserve(key, limit, period, cost=cost, algorithm=algorithm, reservation_ttl=reservation_ttl)
        try:
            yield reservation
        finally:
            if reservation.allowed:
                self.cancel(reservation)


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

    async def reserve(
        self, key: str, limit: int, period: Seconds, *, cost: int, algorithm: str = "token_bucket",
        reservation_ttl: Optional[Seconds] = None,
    ) -> Reservation:
        """As RateLimit.reserve."""
        request = _reserve_request(key, limit, period, cost, algorithm, reservation_ttl)
        response = await self._t.unary(_SERVICE + "Reserve", request, pb.ReserveResponse)
        return _reservation(response, key, period, algorithm)

    async def commit(self, reservation: Reservation, cost: int, *, allow_debt: bool = False) -> Settlement:
        """As RateLimit.commit."""
        request = _commit_request(reservation, cost, allow_debt)
        return _settlement(await self._t.unary(_SERVICE + "Commit", request, pb.CommitResponse))

    async def cancel(self, reservation: Reservation) -> Settlement:
        """As RateLimit.cancel."""
        request = _cancel_request(reservation)
        return _settlement(await self._t.unary(_SERVICE + "Cancel", request, pb.CancelResponse))

    async def report(
        self, key: str, limit: int, period: Seconds, *, cost: int, algorithm: str = "token_bucket"
    ) -> Report:
        """As RateLimit.report."""
        request = pb.ReportRequest(limit=_limit(key, limit, period, cost, algorithm))
        return _report(await self._t.unary(_SERVICE + "Report", request, pb.ReportResponse))

    @asynccontextmanager
    async def reserved(
        self, key: str, limit: int, period: Seconds, *, cost: int, algorithm: str = "token_bucket",
        reservation_ttl: Optional[Seconds] = None,
    ) -> AsyncIterator[Reservation]:
        """As RateLimit.reserved."""
        reservation = await self.reserve(
            key, limit, period, cost=cost, algorithm=algorithm, reservation_ttl=reservation_ttl
        )
        try:
            yield reservation
        finally:
            if reservation.allowed:
                await self.cancel(reservation)

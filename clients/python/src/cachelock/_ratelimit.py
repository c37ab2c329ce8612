"""RateLimitService: limits shared by every instance of every backend."""

from __future__ import annotations

from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any, AsyncIterator, Dict, Iterator, List, Optional, Sequence

from ._convert import Seconds, duration, enum_value, seconds_of, to_seconds
from ._transport import AsyncTransport, Transport
from .ratelimit.v1 import ratelimit_pb2 as pb

_SERVICE = "/cachelock.ratelimit.v1.RateLimitService/"


@dataclass(frozen=True)
class Decision:
    """A rate limit's answer. Durations in seconds.

    retry_after: when denied, the wait until a request of this cost could pass; 0 when
    allowed; None when no wait ever lets it pass (the cost exceeds the limit).
    decided_by_outage_policy: Redis could not decide and the outage policy did.
    waited: how long the answer waited for the cost to fit (a check's `wait`); 0 when it did not.
    """

    allowed: bool
    limit: int
    remaining: int
    reset_after: Optional[float]
    retry_after: Optional[float]
    decided_by_outage_policy: bool = False
    waited: float = 0.0


@dataclass(frozen=True)
class Calendar:
    """A fixed window aligned to the calendar of an IANA time zone, given instead of a
    period: `Calendar("month", time_zone="Europe/Berlin")` resets on the 1st at midnight,
    Berlin time.

    unit: "second", "minute", "hour", "day", "week", "month" or "year" (checked before any
    call). multiplier: how many units one window holds (15 minutes; 3 months, quarters),
    within what the unit takes (docs/ratelimit.md). time_zone: an IANA name; empty is UTC.
    A calendar window counts as a fixed window: leave `algorithm` unset (or "fixed_window").
    """

    unit: str
    multiplier: int = 1
    time_zone: str = ""


@dataclass(frozen=True)
class Limit:
    """One limit of a check_many: `limit` units per `period` (or per window of `calendar`,
    given instead), this request costing `cost` (None: 1; 0 reports without consuming),
    counted by `algorithm` (None: the token bucket; a calendar window is a fixed window).
    leased: decided from a slice this server instance leases (as check's `leased`); in a
    check_many every limit is leased or none is."""

    key: str
    limit: int
    period: Optional[Seconds] = None
    cost: Optional[int] = None
    algorithm: Optional[str] = None
    calendar: Optional[Calendar] = None
    leased: bool = False


@dataclass(frozen=True)
class Decisions:
    """A check_many's answer: allowed only if every limit allows; each limit's part."""

    allowed: bool
    decisions: List[Decision]
    retry_after: Optional[float]
    decided_by_outage_policy: bool


def _algorithm(name: Optional[str]) -> int:
    # None: unset, which the server reads as the token bucket, or a calendar's fixed window.
    return pb.ALGORITHM_UNSPECIFIED if name is None else enum_value(pb.Algorithm, "ALGORITHM_", name)


def _window(period: Optional[Seconds], calendar: Optional[Calendar]) -> Dict[str, Any]:
    """The `period` or `calendar` field of a limit, exactly one of them: checked before any call."""
    if period is not None and calendar is not None:
        raise ValueError("give a period or a calendar, not both")
    if calendar is not None:
        if not isinstance(calendar, Calendar):
            raise TypeError(f"calendar must be a cachelock.Calendar, not {type(calendar).__name__}")
        unit = enum_value(pb.CalendarUnit, "CALENDAR_UNIT_", calendar.unit)
        return {
            "calendar": pb.CalendarWindow(unit=unit, multiplier=calendar.multiplier, time_zone=calendar.time_zone)
        }
    if period is None:
        raise ValueError("a limit needs a period or a calendar")
    return {"period": duration(period)}


def _wait(wait: Optional[Seconds]) -> float:
    """The seconds a call may wait in the server, added to its deadline."""
    return 0.0 if wait is None else max(to_seconds(wait), 0.0)


def _policy(name: Optional[str]) -> int:
    return pb.OUTAGE_POLICY_UNSPECIFIED if name is None else enum_value(pb.OutagePolicy, "OUTAGE_POLICY_", name)


def _check_request(
    key: str, limit: int, period: Optional[Seconds], calendar: Optional[Calendar], cost: Optional[int],
    algorithm: Optional[str], on_unavailable: Optional[str], wait: Optional[Seconds], leased: bool,
) -> pb.CheckRequest:
    request = pb.CheckRequest(
        key=key, limit=limit, algorithm=_algorithm(algorithm), on_unavailable=_policy(on_unavailable),
        leased=leased, **_window(period, calendar),
    )
    if cost is not None:  # `optional`: an explicit 0 means "report without consuming"
        request.cost = cost
    if wait is not None:
        request.wait.CopyFrom(duration(wait))
    return request


def _decision(response: pb.CheckResponse) -> Decision:
    return Decision(
        allowed=response.allowed, limit=response.limit, remaining=response.remaining,
        reset_after=seconds_of(response, "reset_after"), retry_after=seconds_of(response, "retry_after"),
        decided_by_outage_policy=response.decided_by_outage_policy,
        waited=seconds_of(response, "waited") or 0.0,
    )


def _many_request(limits: Sequence[Limit], on_unavailable: Optional[str]) -> pb.CheckManyRequest:
    request = pb.CheckManyRequest(on_unavailable=_policy(on_unavailable))
    for item in limits:
        message = _limit(item.key, item.limit, item.period, item.calendar, item.cost, item.algorithm)
        message.leased = item.leased
        request.limits.append(message)
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

    reservation_id is empty when refused. key, limit, period (or calendar) and algorithm are
    the limiter as reserved, so that commit and cancel name it exactly as the server requires.
    retry_after: when refused, the wait until the estimate would fit; None when it never can.
    """

    allowed: bool
    reservation_id: str
    limit: int
    remaining: int
    reset_after: Optional[float]
    retry_after: Optional[float]
    key: str
    period: Optional[Seconds]
    algorithm: Optional[str]
    calendar: Optional[Calendar] = None


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


def _limit(
    key: str, limit: int, period: Optional[Seconds], calendar: Optional[Calendar], cost: Optional[int],
    algorithm: Optional[str],
) -> pb.Limit:
    message = pb.Limit(key=key, limit=limit, algorithm=_algorithm(algorithm), **_window(period, calendar))
    if cost is not None:
        message.cost = cost
    return message


def _reserve_request(
    key: str, limit: int, period: Optional[Seconds], calendar: Optional[Calendar], cost: int,
    algorithm: Optional[str], reservation_ttl: Optional[Seconds],
) -> pb.ReserveRequest:
    request = pb.ReserveRequest(limit=_limit(key, limit, period, calendar, cost, algorithm))
    if reservation_ttl is not None:
        request.reservation_ttl.CopyFrom(duration(reservation_ttl))
    return request


def _reservation(
    response: pb.ReserveResponse, key: str, period: Optional[Seconds], calendar: Optional[Calendar],
    algorithm: Optional[str],
) -> Reservation:
    return Reservation(
        allowed=response.allowed, reservation_id=response.reservation_id, limit=response.limit,
        remaining=response.remaining, reset_after=seconds_of(response, "reset_after"),
        retry_after=seconds_of(response, "retry_after"), key=key, period=period, algorithm=algorithm,
        calendar=calendar,
    )


def _settled(reservation: Reservation) -> None:
    if not reservation.reservation_id:
        raise ValueError("a refused reservation (allowed=False) has nothing to settle")


def _commit_request(reservation: Reservation, cost: int, allow_debt: bool) -> pb.CommitRequest:
    _settled(reservation)
    r = reservation
    return pb.CommitRequest(
        limit=_limit(r.key, r.limit, r.period, r.calendar, cost, r.algorithm), reservation_id=r.reservation_id,
        allow_debt=allow_debt,
    )


def _cancel_request(reservation: Reservation) -> pb.CancelRequest:
    _settled(reservation)
    r = reservation
    return pb.CancelRequest(
        limit=_limit(r.key, r.limit, r.period, r.calendar, None, r.algorithm), reservation_id=r.reservation_id
    )


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


def _reset_request(
    key: str, limit: int, period: Optional[Seconds], calendar: Optional[Calendar], algorithm: Optional[str]
) -> pb.ResetRequest:
    # No algorithm: the state of all three algorithms of this limiter is cleared (a
    # calendar window's, which is a fixed window).
    return pb.ResetRequest(key=key, limit=limit, algorithm=_algorithm(algorithm), **_window(period, calendar))


class RateLimit:
    """Rate limits, sync. A denial is not an error: `Decision.allowed` is False.

    A limit is `limit` units per `period` (seconds or a timedelta), or per window of a
    `calendar` (a cachelock.Calendar) given instead: exactly one of them.
    algorithm: None (the token bucket; a calendar window is a fixed window), "token_bucket",
    "fixed_window" or "sliding_window".
    on_unavailable: None (the server's policy), "fail_open" or "fail_closed".
    """

    def __init__(self, transport: Transport) -> None:
        self._t = transport

    def check(
        self, key: str, limit: int, period: Optional[Seconds] = None, *, calendar: Optional[Calendar] = None,
        cost: Optional[int] = None, algorithm: Optional[str] = None, on_unavailable: Optional[str] = None,
        wait: Optional[Seconds] = None, leased: bool = False,
    ) -> Decision:
        """Decides one limit and consumes `cost` if allowed. With `wait`, the answer waits in
        the server until the cost fits (first come, first served across the fleet), or comes at
        once, refused, when it cannot fit within the wait; `Decision.waited` says how long it
        waited. The call's deadline is the client's timeout plus the wait. Never retried: it
        would count twice.

        With `leased`, the decision comes from a slice of the limit that the server instance
        leases from Redis: one Redis round trip per slice instead of per call, for hot keys,
        and still never more than the limit fleet-wide (docs/ratelimit.md). Token buckets and
        fixed (and calendar) windows only; not with `wait`."""
        request = _check_request(key, limit, period, calendar, cost, algorithm, on_unavailable, wait, leased)
        return _decision(self._t.unary(_SERVICE + "Check", request, pb.CheckResponse, extra=_wait(wait)))

    def check_many(self, limits: Sequence[Limit], *, on_unavailable: Optional[str] = None) -> Decisions:
        """Decides several limits together; nothing is consumed unless all allow."""
        request = _many_request(limits, on_unavailable)
        return _decisions(self._t.unary(_SERVICE + "CheckMany", request, pb.CheckManyResponse))

    def reset(
        self, key: str, limit: int, period: Optional[Seconds] = None, *, calendar: Optional[Calendar] = None,
        algorithm: Optional[str] = None,
    ) -> bool:
        """Clears one limiter (key, limit, period or calendar, algorithm; None: every
        algorithm); whether state existed."""
        request = _reset_request(key, limit, period, calendar, algorithm)
        return self._t.unary(_SERVICE + "Reset", request, pb.ResetResponse).existed

    def reserve(
        self, key: str, limit: int, period: Optional[Seconds] = None, *, cost: int,
        calendar: Optional[Calendar] = None, algorithm: Optional[str] = None,
        reservation_ttl: Optional[Seconds] = None,
    ) -> Reservation:
        """Counts an estimated `cost` now, to settle with commit or cancel once the actual cost
        is known; unsettled, it settles at its estimate after `reservation_ttl` (None: 1 minute).
        A refusal is not an error: `Reservation.allowed` is False. Never retried: it would count twice."""
        request = _reserve_request(key, limit, period, calendar, cost, algorithm, reservation_ttl)
        response = self._t.unary(_SERVICE + "Reserve", request, pb.ReserveResponse)
        return _reservation(response, key, period, calendar, algorithm)

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
        self, key: str, limit: int, period: Optional[Seconds] = None, *, cost: int,
        calendar: Optional[Calendar] = None, algorithm: Optional[str] = None,
    ) -> Report:
        """Counts `cost` after the fact, without deciding: even past the limit (a debt the next
        check waits off). Never retried: it would count twice."""
        request = pb.ReportRequest(limit=_limit(key, limit, period, calendar, cost, algorithm))
        return _report(self._t.unary(_SERVICE + "Report", request, pb.ReportResponse))

    @contextmanager
    def reserved(
        self, key: str, limit: int, period: Optional[Seconds] = None, *, cost: int,
        calendar: Optional[Calendar] = None, algorithm: Optional[str] = None,
        reservation_ttl: Optional[Seconds] = None,
    ) -> Iterator[Reservation]:
        """Reserves for a block, which commits the actual cost with commit(reservation, cost).
        On the way out (an exception too) the reservation is cancelled: a no-op answered
        settled_before when the block committed it. A refused reservation is yielded as is
        (check `allowed`) and nothing is settled."""
        reservation = self.reserve(
            key, limit, period, cost=cost, calendar=calendar, algorithm=algorithm, reservation_ttl=reservation_ttl
        )
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
        self, key: str, limit: int, period: Optional[Seconds] = None, *, calendar: Optional[Calendar] = None,
        cost: Optional[int] = None, algorithm: Optional[str] = None, on_unavailable: Optional[str] = None,
        wait: Optional[Seconds] = None, leased: bool = False,
    ) -> Decision:
        """As RateLimit.check."""
        request = _check_request(key, limit, period, calendar, cost, algorithm, on_unavailable, wait, leased)
        return _decision(await self._t.unary(_SERVICE + "Check", request, pb.CheckResponse, extra=_wait(wait)))

    async def check_many(self, limits: Sequence[Limit], *, on_unavailable: Optional[str] = None) -> Decisions:
        """As RateLimit.check_many."""
        request = _many_request(limits, on_unavailable)
        return _decisions(await self._t.unary(_SERVICE + "CheckMany", request, pb.CheckManyResponse))

    async def reset(
        self, key: str, limit: int, period: Optional[Seconds] = None, *, calendar: Optional[Calendar] = None,
        algorithm: Optional[str] = None,
    ) -> bool:
        """As RateLimit.reset."""
        request = _reset_request(key, limit, period, calendar, algorithm)
        return (await self._t.unary(_SERVICE + "Reset", request, pb.ResetResponse)).existed

    async def reserve(
        self, key: str, limit: int, period: Optional[Seconds] = None, *, cost: int,
        calendar: Optional[Calendar] = None, algorithm: Optional[str] = None,
        reservation_ttl: Optional[Seconds] = None,
    ) -> Reservation:
        """As RateLimit.reserve."""
        request = _reserve_request(key, limit, period, calendar, cost, algorithm, reservation_ttl)
        response = await self._t.unary(_SERVICE + "Reserve", request, pb.ReserveResponse)
        return _reservation(response, key, period, calendar, algorithm)

    async def commit(self, reservation: Reservation, cost: int, *, allow_debt: bool = False) -> Settlement:
        """As RateLimit.commit."""
        request = _commit_request(reservation, cost, allow_debt)
        return _settlement(await self._t.unary(_SERVICE + "Commit", request, pb.CommitResponse))

    async def cancel(self, reservation: Reservation) -> Settlement:
        """As RateLimit.cancel."""
        request = _cancel_request(reservation)
        return _settlement(await self._t.unary(_SERVICE + "Cancel", request, pb.CancelResponse))

    async def report(
        self, key: str, limit: int, period: Optional[Seconds] = None, *, cost: int,
        calendar: Optional[Calendar] = None, algorithm: Optional[str] = None,
    ) -> Report:
        """As RateLimit.report."""
        request = pb.ReportRequest(limit=_limit(key, limit, period, calendar, cost, algorithm))
        return _report(await self._t.unary(_SERVICE + "Report", request, pb.ReportResponse))

    @asynccontextmanager
    async def reserved(
        self, key: str, limit: int, period: Optional[Seconds] = None, *, cost: int,
        calendar: Optional[Calendar] = None, algorithm: Optional[str] = None,
        reservation_ttl: Optional[Seconds] = None,
    ) -> AsyncIterator[Reservation]:
        """As RateLimit.reserved."""
        reservation = await self.reserve(
            key, limit, period, cost=cost, calendar=calendar, algorithm=algorithm, reservation_ttl=reservation_ttl
        )
        try:
            yield reservation
        finally:
            if reservation.allowed:
                await self.cancel(reservation)

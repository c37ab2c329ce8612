"""ElectionService: one leader at a time, fenced, and who leads.

`campaign(name, candidate=, ttl=)` is built on the Campaign stream as `lock` is on Hold:
it waits in line (for as long as it takes) until elected, the server renews the
leadership while the stream is open, and closing the stream resigns (the server
releases the election's lock and fences the term out). The leader learns of a loss
the moment it happens, whichever comes first of: the server's `lost` event, the stream
breaking, or `certain_for` running out with no `renewed` (the client's own timer).

An election is the lock of the same name: its term is that lock's fencing token, so
`leader.fence` (`Fence(name, term)`) fences the leader's cache and session writes.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, Iterator, Optional, Type, Union

import grpc

from ._convert import Seconds, duration, optional_duration, seconds_of, time_of, to_seconds
from ._errors import LeaseLost, NotAcquired
from ._lock import AsyncLease, AsyncLockGuard, Lease
from ._pubsub import _ended
from ._transport import AsyncTransport, Transport
from .election.v1 import election_pb2 as pb

_SERVICE = "/cachelock.election.v1.ElectionService/"


@dataclass(frozen=True)
class Leader:
    """Who leads: the candidate's text, the term, when it was elected (by the service's
    clock; None when not known) and its lease left (seconds)."""

    candidate: str
    term: int
    since: Optional[datetime]
    ttl: Optional[float]


@dataclass(frozen=True)
class NoLeader:
    """Nobody leads; `last_term` is the last term known to have ended (0: not known)."""

    last_term: int


ElectionEvent = Union[Leader, NoLeader]


def _leader(message: pb.Leadership) -> Leader:
    return Leader(
        candidate=message.candidate, term=message.term, since=time_of(message, "since"), ttl=seconds_of(message, "ttl")
    )


def _campaign_request(name: str, candidate: str, ttl: Seconds, safety_margin: Optional[Seconds]) -> pb.CampaignRequest:
    return pb.CampaignRequest(
        name=name, candidate=candidate, ttl=duration(ttl), safety_margin=optional_duration(safety_margin)
    )


class _LeadershipState:
    """What the sync and asyncio leaderships add to their lease: the term, the
    candidate and the resign token (a secret: in no string form)."""

    _STREAM = "Campaign"
    _GRANTED = "elected"

    name: str
    fencing_token: int
    lost_reason: Optional[str]
    candidate: str
    _resign_token: str

    def _granted(self, response: Any) -> float:
        elected = response.elected
        self.fencing_token = elected.term
        self._resign_token = elected.resign_token
        return seconds_of(elected, "certain_for") or 0.0

    @property
    def term(self) -> int:
        """The term: the election lock's fencing token, strictly larger than every
        earlier term. Fence writes with it (`leader.fence`)."""
        return self.fencing_token

    @property
    def resign_token(self) -> str:
        """The secret that lets `elections.resign(name, token)` end this term from
        elsewhere. Never shown in any string form."""
        return self._resign_token

    def __repr__(self) -> str:
        state = f"lost ({self.lost_reason})" if self.lost_reason else "leading"
        return f"<{type(self).__name__} {self.name!r} candidate={self.candidate!r} term={self.term} {state}>"

    def lost_error(self) -> LeaseLost:
        """The LeaseLost that stands for this leadership's loss."""
        return LeaseLost(
            f"the leadership of election {self.name!r} (term {self.term}) was lost: {self.lost_reason}",
            code=grpc.StatusCode.FAILED_PRECONDITION,
            metadata={"cause": self.lost_reason or ""},
        )


class Leadership(_LeadershipState, Lease):
    """Leading an election, sync: the server keeps the leadership while this is open.

    Use it as a context manager (leaving the block resigns), or call resign(). As a
    Lease: `lost` (a threading.Event), `lost_reason`, `check()`, `on_lost(callback)`,
    `certain_for()`; and `term`, `fence`, `candidate`, `resign_token`. A block that
    ends after a loss raises LeaseLost.
    """

    def __init__(self, name: str, candidate: str, call: Any) -> None:
        Lease.__init__(self, name, call)
        self.candidate = candidate
        self._resign_token = ""

    def resign(self) -> None:
        """Closes the stream: the server releases the leadership and fences the term
        out. Safe to call twice."""
        self.release()

    def __enter__(self) -> "Leadership":
        return self


class AsyncLeadership(_LeadershipState, AsyncLease):
    """Leading an election, asyncio. As Leadership, with `lost` an asyncio.Event; the
    task that entered the `async with` block is cancelled on a loss, which the block
    turns into LeaseLost."""

    def __init__(self, name: str, candidate: str, call: Any) -> None:
        AsyncLease.__init__(self, name, call)
        self.candidate = candidate
        self._resign_token = ""

    async def resign(self) -> None:
        """Closes the stream: the server releases the leadership and fences the term
        out. Safe to call twice."""
        await self.release()


class AsyncLeadershipGuard(AsyncLockGuard):
    """`async with client.campaign(name, candidate=, ttl=) as leader:` — waits in line
    (cancel the task to give up), then leads for the block."""

    async def __aenter__(self) -> AsyncLeadership:  # type: ignore[override]
        leadership = await super().__aenter__()
        assert isinstance(leadership, AsyncLeadership)
        return leadership


class Observation:
    """Who leads an election, sync: iterate it for Leader and NoLeader events (the first
    says who leads now, then every change); close it (or leave its `with` block) to end it."""

    def __init__(self, name: str, call: Any) -> None:
        self.name = name
        self._call = call
        self._closed = False

    def __repr__(self) -> str:
        return f"<Observation {self.name!r} {'closed' if self._closed else 'open'}>"

    def __iter__(self) -> Iterator[ElectionEvent]:
        try:
            for response in self._call:
                event = _event(response)
                if event is not None:
                    yield event
        except grpc.RpcError as rpc_error:
            error = _ended(rpc_error, self._closed)
            if error is not None:
                raise error from None

    def close(self) -> None:
        """Ends the observation; iteration then stops."""
        self._closed = True
        self._call.cancel()

    def __enter__(self) -> "Observation":
        return self

    def __exit__(
        self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        self.close()


class AsyncObservation:
    """Who leads an election, asyncio: `async for` its events; close it (or leave its
    `async with` block) to end it."""

    def __init__(self, name: str, call: Any) -> None:
        self.name = name
        self._call = call
        self._closed = False

    def __repr__(self) -> str:
        return f"<AsyncObservation {self.name!r} {'closed' if self._closed else 'open'}>"

    def __aiter__(self) -> "AsyncObservation":
        return self

    async def __anext__(self) -> ElectionEvent:
        while True:
            try:
                response = await self._call.read()
            except grpc.RpcError as rpc_error:
                error = _ended(rpc_error, self._closed)
                if error is not None:
                    raise error from None
                raise StopAsyncIteration from None
            except asyncio.CancelledError:
                if self._closed:
                    raise StopAsyncIteration from None
                raise
            if response is grpc.aio.EOF:
                raise StopAsyncIteration
            event = _event(response)
            if event is not None:
                return event

    def close(self) -> None:
        """Ends the observation; iteration then stops."""
        self._closed = True
        self._call.cancel()

    async def __aenter__(self) -> "AsyncObservation":
        return self

    async def __aexit__(
        self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        self.close()


def _event(response: pb.ObserveResponse) -> Optional[ElectionEvent]:
    kind = response.WhichOneof("event")
    if kind == "leader":
        return _leader(response.leader)
    if kind == "no_leader":
        return NoLeader(last_term=response.no_leader.last_term)
    return None  # an event this version does not know


class Elections:
    """Elections, sync: `campaign` (see Client.campaign) and the raw calls."""

    def __init__(self, transport: Transport) -> None:
        self._t = transport

    def campaign(
        self, name: str, *, candidate: str = "", ttl: Seconds, safety_margin: Optional[Seconds] = None,
        timeout: Optional[Seconds] = None,
    ) -> Leadership:
        """Waits in line until elected (for as long as it takes; at most `timeout`
        seconds when given: then the stream is closed and NotAcquired raised), and leads
        until the returned Leadership is resigned or its `with` block ends."""
        request = _campaign_request(name, candidate, ttl, safety_margin)
        leadership = Leadership(name, candidate, self._t.stream(_SERVICE + "Campaign", request, pb.CampaignResponse))
        leadership._wait_granted(
            None if timeout is None else to_seconds(timeout), on_timeout=NotAcquired(name, None)
        )
        return leadership

    def resign(self, name: str, resign_token: str) -> None:
        """Ends the term of `resign_token` from anywhere, and fences it out. Succeeds
        again when repeated; LeaseLost (another leads) or LockNotHeld (nobody does) when
        the term ended otherwise."""
        request = pb.ResignRequest(name=name, resign_token=resign_token)
        self._t.unary(_SERVICE + "Resign", request, pb.ResignResponse)

    def leader(self, name: str) -> Optional[Leader]:
        """Who leads now; None when nobody does."""
        response = self._t.unary(_SERVICE + "Leader", pb.LeaderRequest(name=name), pb.LeaderResponse)
        return _leader(response.leader) if response.elected and response.HasField("leader") else None

    def observe(self, name: str) -> Observation:
        """Who leads now, then every change: an iterator of Leader and NoLeader events.
        A stream: never retried; close it to end it."""
        return Observation(name, self._t.stream(_SERVICE + "Observe", pb.ObserveRequest(name=name), pb.ObserveResponse))


class AsyncElections:
    """Elections, asyncio: `campaign` (an async context manager) and the raw calls, awaited."""

    def __init__(self, transport: AsyncTransport) -> None:
        self._t = transport

    def campaign(
        self, name: str, *, candidate: str = "", ttl: Seconds, safety_margin: Optional[Seconds] = None,
    ) -> AsyncLeadershipGuard:
        """As Elections.campaign, for `async with`: waits in line for as long as it
        takes; cancel the waiting task (asyncio.wait_for, a TaskGroup) to give up."""
        request = _campaign_request(name, candidate, ttl, safety_margin)
        return AsyncLeadershipGuard(
            self._t, request, None, path=_SERVICE + "Campaign", response=pb.CampaignResponse,
            make=lambda call: AsyncLeadership(name, candidate, call),
        )

    async def resign(self, name: str, resign_token: str) -> None:
        """As Elections.resign."""
        request = pb.ResignRequest(name=name, resign_token=resign_token)
        await self._t.unary(_SERVICE + "Resign", request, pb.ResignResponse)

    async def leader(self, name: str) -> Optional[Leader]:
        """As Elections.leader."""
        response = await self._t.unary(_SERVICE + "Leader", pb.LeaderRequest(name=name), pb.LeaderResponse)
        return _leader(response.leader) if response.elected and response.HasField("leader") else None

    def observe(self, name: str) -> AsyncObservation:
        """As Elections.observe: `async for event in client.elections.observe(name)`."""
        call = self._t.stream(_SERVICE + "Observe", pb.ObserveRequest(name=name), pb.ObserveResponse)
        return AsyncObservation(name, call)


__all__ = [
    "AsyncElections", "AsyncLeadership", "AsyncLeadershipGuard", "AsyncObservation", "ElectionEvent", "Elections", "Leader", "Leadership", "NoLeader", "Observation",
]

"""PubSubService: messages from publishers to every live subscriber of a topic."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Iterable, Iterator, Optional, Type, Union

import grpc

from ._convert import enum_name
from ._errors import CachelockError, DeadlineExceeded, from_rpc_error
from ._transport import AsyncTransport, Transport
from .pubsub.v1 import pubsub_pb2 as pb

_SERVICE = "/cachelock.pubsub.v1.PubSubService/"


@dataclass(frozen=True)
class Message:
    """A published message. `pattern` is the subscription's pattern that matched ("" for
    a topic); `sequence` counts this stream's messages, missed ones included."""

    topic: str
    payload: bytes
    pattern: str
    sequence: int


@dataclass(frozen=True)
class Discontinuity:
    """Messages may be missing here: `cause` is "slow_reader" (then `missed` counts the
    dropped ones) or "redis_reconnected" (`missed` 0: unknown)."""

    cause: str
    missed: int


Event = Union[Message, Discontinuity]


def _request(topics: Iterable[str], patterns: Iterable[str]) -> pb.SubscribeRequest:
    # A bare string is one topic, not its characters.
    topics = [topics] if isinstance(topics, str) else list(topics)
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    return pb.SubscribeRequest(topics=topics, patterns=patterns)


def _event(response: pb.SubscribeResponse) -> Optional[Event]:
    kind = response.WhichOneof("event")
    if kind == "message":
        m = response.message
        return Message(topic=m.topic, payload=m.payload, pattern=m.pattern, sequence=m.sequence)
    if kind == "discontinuity":
        d = response.discontinuity
        return Discontinuity(cause=enum_name(pb.Discontinuity.Cause, "CAUSE_", d.cause), missed=d.missed)
    return None  # `subscribed`, or an event this version does not know


def _ended(error: grpc.RpcError, closed: bool) -> Optional[CachelockError]:
    """The error to raise when the stream failed; None when it ended because we closed it."""
    if closed and error.code() == grpc.StatusCode.CANCELLED:  # type: ignore[attr-defined]
        return None
    return from_rpc_error(error)


class Subscription:
    """A live subscription, sync: iterate it for Message and Discontinuity events; close
    it (or leave its `with` block) to end it."""

    def __init__(self, call: Any) -> None:
        self._call = call
        self._closed = False

    def __repr__(self) -> str:
        return f"<Subscription {'closed' if self._closed else 'open'}>"

    def __iter__(self) -> Iterator[Event]:
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
        """Ends the subscription; iteration then stops."""
        self._closed = True
        self._call.cancel()

    def __enter__(self) -> "Subscription":
        return self

    def __exit__(
        self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        self.close()


class AsyncSubscription:
    """A live subscription, asyncio: `async for` its events; close it (or leave its
    `async with` block) to end it."""

    def __init__(self, call: Any) -> None:
        self._call = call
        self._closed = False

    def __repr__(self) -> str:
        return f"<AsyncSubscription {'closed' if self._closed else 'open'}>"

    def __aiter__(self) -> "AsyncSubscription":
        return self

    async def __anext__(self) -> Event:
        while True:
            try:
                response = await self._call.read()
            except grpc.RpcError as rpc_error:
                error = _ended(rpc_error, self._closed)
                if error is not None:
                    raise error from None
                raise StopAsyncIteration from None
            except asyncio.CancelledError:
                if self._closed:  # grpc.aio answers a cancelled call's read so
                    raise StopAsyncIteration from None
                raise
            if response is grpc.aio.EOF:
                raise StopAsyncIteration
            event = _event(response)
            if event is not None:
                return event

    def close(self) -> None:
        """Ends the subscription; iteration then stops."""
        self._closed = True
        self._call.cancel()

    async def __aenter__(self) -> "AsyncSubscription":
        return self

    async def __aexit__(
        self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        self.close()


class PubSub:
    """Pub/sub, sync. Delivery is at most once and not stored."""

    def __init__(self, transport: Transport) -> None:
        self._t = transport

    def publish(self, topic: str, payload: Union[bytes, str]) -> int:
        """Sends a message to the topic's current subscribers; how many Redis subscriber
        connections received it (0: nobody listened). Never retried."""
        data = payload.encode() if isinstance(payload, str) else payload
        request = pb.PublishRequest(topic=topic, payload=data)
        return self._t.unary(_SERVICE + "Publish", request, pb.PublishResponse).receivers

    def subscribe(self, topics: Iterable[str] = (), patterns: Iterable[str] = ()) -> Subscription:
        """Subscribes to topics and glob patterns ("room:*"). Returns once the
        subscription is live: every message published after that reaches it."""
        call = self._t.stream(_SERVICE + "Subscribe", _request(topics, patterns), pb.SubscribeResponse)
        # The first event is `subscribed`; a stream has no deadline, so the wait for it
        # is bounded here by the client's timeout.
        timed_out = threading.Event()

        def expire() -> None:
            timed_out.set()
            call.cancel()

        timer = threading.Timer(self._t.timeout, expire)
        timer.daemon = True
        timer.start()
        try:
            next(call)
        except grpc.RpcError as rpc_error:
            if timed_out.is_set():
                raise DeadlineExceeded("no answer to Subscribe in time", code=grpc.StatusCode.DEADLINE_EXCEEDED) from None
            raise from_rpc_error(rpc_error) from None
        finally:
            timer.cancel()
        return Subscription(call)


class AsyncPubSub:
    """Pub/sub, asyncio: the methods of PubSub, awaited."""

    def __init__(self, transport: AsyncTransport) -> None:
        self._t = transport

    async def publish(self, topic: str, payload: Union[bytes, str]) -> int:
        """As PubSub.publish."""
        data = payload.encode() if isinstance(payload, str) else payload
        request = pb.PublishRequest(topic=topic, payload=data)
        return (await self._t.unary(_SERVICE + "Publish", request, pb.PublishResponse)).receivers

    async def subscribe(self, topics: Iterable[str] = (), patterns: Iterable[str] = ()) -> AsyncSubscription:
        """As PubSub.subscribe."""
        call = self._t.stream(_SERVICE + "Subscribe", _request(topics, patterns), pb.SubscribeResponse)
        try:
            first = await asyncio.wait_for(call.read(), self._t.timeout)
        except asyncio.TimeoutError:
            call.cancel()
            raise DeadlineExceeded("no answer to Subscribe in time", code=grpc.StatusCode.DEADLINE_EXCEEDED) from None
        except grpc.RpcError as rpc_error:
            raise from_rpc_error(rpc_error) from None
        if first is grpc.aio.EOF:
            raise CachelockError("Subscribe ended before it was live", code=grpc.StatusCode.UNAVAILABLE)
        return AsyncSubscription(call)

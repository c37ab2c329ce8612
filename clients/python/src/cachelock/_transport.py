"""The channel, the credential, deadlines and retries: what every call goes through.

`Transport` (sync) and `AsyncTransport` (asyncio) make unary calls with a deadline and
the retry rule of `_retry`, and open streams without a deadline. The bearer token is
kept only in the call metadata, which no string form of any object shows.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple, Type, TypeVar, Union

import grpc
import grpc.aio
from google.protobuf.message import Message

from ._errors import from_rpc_error
from ._retry import OnRetry, notify, retry_delay

R = TypeVar("R", bound=Message)

#: PEM data, or the path of a file holding it.
Pem = Union[bytes, str, Path]

DEFAULT_TIMEOUT = 5.0


@dataclass(frozen=True)
class TLS:
    """TLS settings: a CA bundle (None: the system's roots), and for mTLS a client
    certificate and its key. Each is PEM bytes or the path of a PEM file."""

    ca: Optional[Pem] = None
    cert: Optional[Pem] = None
    # A secret: never shown.
    key: Optional[Pem] = field(default=None, repr=False)

    def credentials(self) -> grpc.ChannelCredentials:
        """The channel credentials these settings describe."""
        return grpc.ssl_channel_credentials(
            root_certificates=_pem(self.ca), private_key=_pem(self.key), certificate_chain=_pem(self.cert)
        )


def _pem(value: Optional[Pem]) -> Optional[bytes]:
    if value is None or isinstance(value, bytes):
        return value
    return Path(value).read_bytes()


def _credentials(tls: Union[bool, TLS]) -> Optional[grpc.ChannelCredentials]:
    if isinstance(tls, TLS):
        return tls.credentials()
    return grpc.ssl_channel_credentials() if tls else None


class _Base:
    """What the sync and asyncio transports share: settings and method handles."""

    def __init__(self, timeout: float, token: Optional[str], on_retry: Optional[OnRetry]) -> None:
        self.timeout = timeout
        self.on_retry = on_retry
        # The only place the token is kept.
        self._metadata: Tuple[Tuple[str, str], ...] = (
            (("authorization", f"Bearer {token}"),) if token else ()
        )
        self._methods: Dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"<{type(self).__name__}>"

    def _method(self, channel: Any, kind: str, path: str, request: Message, response: Type[Message]) -> Any:
        handle = self._methods.get(path)
        if handle is None:
            make = channel.unary_unary if kind == "unary" else channel.unary_stream
            handle = make(path, request_serializer=type(request).SerializeToString, response_deserializer=response.FromString)
            self._methods[path] = handle
        return handle

    def _deadline(self, timeout: Optional[float], extra: float) -> float:
        return time.monotonic() + (self.timeout if timeout is None else timeout) + extra


#: No service config from DNS: a TXT record's retry or hedging policy would repeat
#: calls the library never repeats (an Increment, a Check) behind its back.
_CHANNEL_OPTIONS: Tuple[Tuple[str, Any], ...] = (("grpc.service_config_disable_resolution", 1),)


class Transport(_Base):
    """Sync calls over one grpc.Channel."""

    def __init__(
        self, address: str, *, token: Optional[str], tls: Union[bool, TLS], timeout: float,
        on_retry: Optional[OnRetry], options: Sequence[Tuple[str, Any]] = (),
    ) -> None:
        super().__init__(timeout, token, on_retry)
        credentials = _credentials(tls)
        self.channel = (
            grpc.secure_channel(address, credentials, options=[*_CHANNEL_OPTIONS, *options])
            if credentials is not None
            else grpc.insecure_channel(address, options=[*_CHANNEL_OPTIONS, *options])
        )

    def unary(
        self, path: str, request: Message, response: Type[R], *, timeout: Optional[float] = None, extra: float = 0.0
    ) -> R:
        """Calls `path` with a deadline of `timeout` (the client's by default) plus
        `extra` (a wait in the server), repeating it as the retry rule allows."""
        handle = self._method(self.channel, "unary", path, request, response)
        deadline = self._deadline(timeout, extra)
        attempt = 0
        while True:
            attempt += 1
            try:
                result: R = handle(request, timeout=max(deadline - time.monotonic(), 0.0), metadata=self._metadata)
                return result
            except grpc.RpcError as rpc_error:
                error = from_rpc_error(rpc_error)
            delay = retry_delay(path, error, attempt, deadline - time.monotonic())
            if delay is None:
                raise error
            notify(self.on_retry, path, error, delay)
            time.sleep(delay)

    def stream(self, path: str, request: Message, response: Type[Message]) -> Any:
        """Opens a server stream (no deadline: it lives as long as it is used); the
        returned call is an iterator of responses and can be cancelled."""
        return self._method(self.channel, "stream", path, request, response)(request, metadata=self._metadata)

    def close(self) -> None:
        self.channel.close()


class AsyncTransport(_Base):
    """asyncio calls over one grpc.aio.Channel."""

    def __init__(
        self, address: str, *, token: Optional[str], tls: Union[bool, TLS], timeout: float,
        on_retry: Optional[OnRetry], options: Sequence[Tuple[str, Any]] = (),
    ) -> None:
        super().__init__(timeout, token, on_retry)
        credentials = _credentials(tls)
        self.channel = (
            grpc.aio.secure_channel(address, credentials, options=[*_CHANNEL_OPTIONS, *options])
            if credentials is not None
            else grpc.aio.insecure_channel(address, options=[*_CHANNEL_OPTIONS, *options])
        )

    async def unary(
        self, path: str, request: Message, response: Type[R], *, timeout: Optional[float] = None, extra: float = 0.0
    ) -> R:
        """As Transport.unary, awaiting."""
        handle = self._method(self.channel, "unary", path, request, response)
        deadline = self._deadline(timeout, extra)
        attempt = 0
        while True:
            attempt += 1
            try:
                result: R = await handle(
                    request, timeout=max(deadline - time.monotonic(), 0.0), metadata=self._metadata
                )
                return result
            except grpc.RpcError as rpc_error:
                error = from_rpc_error(rpc_error)
            delay = retry_delay(path, error, attempt, deadline - time.monotonic())
            if delay is None:
                raise error
            notify(self.on_retry, path, error, delay)
            await asyncio.sleep(delay)

    def stream(self, path: str, request: Message, response: Type[Message]) -> Any:
        """Opens a server stream (a grpc.aio call: `await call.read()`, `call.cancel()`)."""
        return self._method(self.channel, "stream", path, request, response)(request, metadata=self._metadata)

    async def close(self) -> None:
        await self.channel.close()

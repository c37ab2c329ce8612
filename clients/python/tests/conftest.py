"""Fixtures for tests against a running cachelock (started by clients/run)."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import uuid
from types import TracebackType
from typing import Iterator, List, Optional, Type

import pytest

import cachelock

ADDR = os.environ["CACHELOCK_ADDR"]
TOKEN = os.environ["CACHELOCK_TOKEN"]
METERED_TOKEN = os.environ["CACHELOCK_METERED_TOKEN"]
READER_TOKEN = os.environ["CACHELOCK_READER_TOKEN"]
REDIS_PORT = os.environ["CACHELOCK_REDIS_PORT"]


def unique(prefix: str) -> str:
    """A name no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex}"


def delete_lock(name: str) -> int:
    """Takes the lease of lock `name` away behind the service's back: deletes its key
    in Redis. Returns how many keys were deleted."""
    scan = subprocess.run(
        ["redis-cli", "-p", REDIS_PORT, "--scan", "--pattern", f"*:lock:*:{name}"],
        check=True, capture_output=True, text=True,
    )
    keys = scan.stdout.split()
    if keys:
        subprocess.run(["redis-cli", "-p", REDIS_PORT, "DEL", *keys], check=True, capture_output=True)
    return len(keys)


class HoldingProxy:
    """A TCP proxy in front of the service (at `addr`) that can stop passing on the
    server's bytes without closing anything: an instance frozen, or a network gone
    quiet. A context manager: leaving it closes the listener and every connection."""

    def __init__(self, upstream: str = ADDR) -> None:
        host, port = upstream.rsplit(":", 1)
        self._upstream = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.addr = "127.0.0.1:%d" % self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._holding = False
        self._closed = False
        self._sockets: List[socket.socket] = []
        self._threads: List[threading.Thread] = []
        self._start(self._accept)

    def hold_replies(self) -> None:
        """From now on, bytes from the server are kept back (never passed on, never dropped
        by closing): the client hears nothing more, while its own bytes still go through."""
        with self._lock:
            self._holding = True

    def _start(self, target, *args) -> None:  # type: ignore[no-untyped-def]
        thread = threading.Thread(target=target, args=args, name="holding-proxy", daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self._listener.accept()
            except OSError:  # the listener was closed
                return
            try:
                upstream = socket.create_connection(self._upstream)
            except OSError:
                downstream.close()
                continue
            with self._lock:
                if self._closed:
                    downstream.close()
                    upstream.close()
                    return
                self._sockets += [downstream, upstream]
                self._start(self._pump, downstream, upstream, False)
                self._start(self._pump, upstream, downstream, True)

    def _pump(self, source: socket.socket, target: socket.socket, replies: bool) -> None:
        held: List[bytes] = []
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    return
                with self._lock:
                    holding = replies and self._holding
                if holding:
                    held.append(data)
                else:
                    target.sendall(data)
        except OSError:  # a socket was closed
            return

    def close(self) -> None:
        with self._lock:
            self._closed = True
            sockets, self._sockets = self._sockets, []
        for sock in [self._listener, *sockets]:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> "HoldingProxy":
        return self

    def __exit__(
        self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        self.close()


@pytest.fixture
def client() -> Iterator[cachelock.Client]:
    with cachelock.Client(ADDR, token=TOKEN) as c:
        yield c

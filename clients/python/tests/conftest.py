"""Fixtures for tests against a running cachelock (started by clients/run)."""

from __future__ import annotations

import os
import subprocess
import uuid
from typing import Iterator

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


@pytest.fixture
def client() -> Iterator[cachelock.Client]:
    with cachelock.Client(ADDR, token=TOKEN) as c:
        yield c

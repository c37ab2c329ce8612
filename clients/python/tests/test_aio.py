"""The asyncio client against a running cachelock (each test runs its own event loop)."""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, List

import pytest
from conftest import ADDR, READER_TOKEN, TOKEN, HoldingProxy, delete_lock, unique

import cachelock
import cachelock.aio


def run(test: Callable[[cachelock.aio.Client], Awaitable[None]]) -> Callable[[], None]:
    """Runs an async test with a fresh client in its own event loop."""

    # Not functools.wraps: pytest would read the wrapped signature and pass fixtures.
    def wrapper() -> None:
        async def main() -> None:
            async with cachelock.aio.Client(ADDR, token=TOKEN) as client:
                await test(client)

        asyncio.run(main())

    return wrapper


@run
async def test_cache_round_trip(client: cachelock.aio.Client) -> None:
    key = unique("k")
    assert await client.cache.get(key) is None
    assert await client.cache.set(key, "v1", ttl=30)
    assert not await client.cache.set(key, "v2", condition="if_absent")
    assert await client.cache.get_many([key]) == {key: b"v1"}
    assert await client.cache.set_many({key: b"v3"}) == 1
    assert await client.cache.expire(key, 30)
    assert await client.cache.take(key) == b"v3"
    assert await client.cache.delete(key) == 0
    assert await client.cache.increment(unique("n"), 5) == 5


@run
async def test_rate_limit_and_sessions(client: cachelock.aio.Client) -> None:
    key = unique("rl")
    assert (await client.rate_limit.check(key, 1, 60, algorithm="fixed_window")).allowed
    assert not (await client.rate_limit.check(key, 1, 60, algorithm="fixed_window")).allowed
    assert await client.rate_limit.reset(key, 1, 60, algorithm="fixed_window")
    many = await client.rate_limit.check_many([cachelock.Limit(key, 3, 60)])
    assert many.allowed and many.decisions[0].remaining == 2
    with pytest.raises(cachelock.InvalidField) as invalid:
        await client.rate_limit.check(key, 0, 60)
    assert invalid.value.field == "limit"

    user = unique("user")
    session = await client.sessions.create(user, {"a": "1"})
    assert session.id not in repr(session)
    assert (await client.sessions.update(session.id, set={"b": "2"})).attributes == {"a": "1", "b": "2"}
    rotated = await client.sessions.rotate(session.id)
    assert [s.handle for s in await client.sessions.list(user)] == [rotated.handle]
    await client.sessions.delete(rotated.id)
    with pytest.raises(cachelock.SessionNotFound):
        await client.sessions.get(rotated.id)


@run
async def test_pubsub_round_trip(client: cachelock.aio.Client) -> None:
    topic = unique("topic")
    async with await client.pubsub.subscribe([topic]) as subscription:
        assert await client.pubsub.publish(topic, b"hello") >= 1
        event = await asyncio.wait_for(subscription.__anext__(), 10)
    assert event == cachelock.Message(topic=topic, payload=b"hello", pattern="", sequence=1)


@run
async def test_lock_lost_while_held(client: cachelock.aio.Client) -> None:
    name = unique("lock")
    body_cancelled = False
    told: List[str] = []
    with pytest.raises(cachelock.LeaseLost):
        async with client.lock(name, ttl=1.5) as lease:
            lease.on_lost(told.append)
            first = lease.fencing_token
            assert first > 0
            assert await asyncio.get_running_loop().run_in_executor(None, delete_lock, name) >= 1
            try:
                # The guarded body: the loss cancels it (bounded: at most 10 s).
                await asyncio.wait_for(lease.lost.wait(), 10)
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                body_cancelled = True
                raise
    assert body_cancelled, "the guarded body was not cancelled"
    assert lease.lost.is_set() and lease.lost_reason == "LOCK_NOT_HELD"
    assert told == ["LOCK_NOT_HELD"]
    with pytest.raises(cachelock.LeaseLost):
        lease.check()
    # The task that entered the block is not left cancelled.
    task = asyncio.current_task()
    assert task is not None and (not hasattr(task, "cancelling") or task.cancelling() == 0)
    async with client.lock(name, ttl=1.5, wait=5) as again:
        assert again.fencing_token > first
        await asyncio.sleep(0)
    assert again.lost_reason is None


@run
async def test_lock_lost_while_body_ignores_cancellation(client: cachelock.aio.Client) -> None:
    name = unique("lock")
    with pytest.raises(cachelock.LeaseLost):
        async with client.lock(name, ttl=1.5) as lease:
            await asyncio.get_running_loop().run_in_executor(None, delete_lock, name)
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                pass  # a body that swallows the cancellation still ends in LeaseLost
    assert lease.lost_reason == "LOCK_NOT_HELD"
    await asyncio.sleep(0)  # no cancellation is left pending for this task



def test_lock_lost_when_renewals_stop_arriving() -> None:
    # As test_sync's: the replies are held by a proxy, and the client's own timer tells.
    async def main() -> None:
        async with cachelock.aio.Client(proxy.addr, token=TOKEN) as client:
            with pytest.raises(cachelock.LeaseLost):
                async with client.lock(unique("lock"), ttl=1.5) as lease:
                    proxy.hold_replies()
                    # The guarded body: the loss cancels it (bounded: at most 10 s).
                    await asyncio.wait_for(lease.lost.wait(), 10)
                    await asyncio.sleep(10)
            assert lease.lost_reason == "NOT_RENEWED"
            with pytest.raises(cachelock.LeaseLost):
                lease.check()

    with HoldingProxy(ADDR) as proxy:
        asyncio.run(main())

@run
async def test_cached_fills_once(client: cachelock.aio.Client) -> None:
    sku = unique("sku")
    calls: List[str] = []

    @client.cached("price:{sku}", ttl=30, lease_ttl=5, wait=5)
    async def price(sku: str) -> Any:
        calls.append(sku)
        await asyncio.sleep(0.3)
        return [sku, 42]

    results = await asyncio.gather(*(price(sku) for _ in range(20)))
    assert len(calls) == 1
    assert results == [[sku, 42]] * 20
    assert await price(sku) == [sku, 42]
    assert len(calls) == 1, "a later call is a hit"


@run
async def test_fenced_writes(client: cachelock.aio.Client) -> None:
    name = "{%s}" % unique("order")
    total = f"{name}:total"
    old = await client.locks.acquire(name, 0.1)
    assert old.acquired
    new = await client.locks.acquire(name, 10, wait=30)  # granted once the old lease ran out
    assert new.acquired and new.fencing_token > old.fencing_token
    await client.cache.set(total, "100", ttl=60)

    stale = client.cache.fenced(old)
    with pytest.raises(cachelock.FencedOut):
        await stale.set(total, "1", ttl=60)
    with pytest.raises(cachelock.FencedOut):
        await stale.increment(total, 5)
    with pytest.raises(cachelock.FencedOut) as raised:
        await stale.delete(total)
    assert raised.value.reason == "FENCED_OUT"
    assert await client.cache.get(total) == b"100", "nothing changed"

    current = client.cache.fenced(new.fence)
    assert await current.set(total, "200", ttl=60)
    assert await current.increment(total, 5) == 205
    assert await client.cache.get(total) == b"205"
    assert await current.delete(total) == 1
    assert await client.cache.get(total) is None
    await client.locks.release(name, new.token)

    user = unique("u")
    session = await client.sessions.create(user, {"cart": "1"})
    old = await client.locks.acquire(user, 0.1)
    assert old.acquired
    async with client.lock(user, ttl=10, wait=30) as lease:
        assert lease.fencing_token > old.fencing_token
        with pytest.raises(cachelock.FencedOut):
            await client.sessions.fenced(old).update(session.id, set={"cart": "stale"})
        unchanged = await client.sessions.get(session.id)
        assert unchanged.attributes == {"cart": "1"} and unchanged.version == session.version
        updated = await client.sessions.fenced(lease.fence).update(session.id, set={"cart": "2"})
        assert updated.attributes == {"cart": "2"} and updated.version == session.version + 1


@run
async def test_errors_decoded(client: cachelock.aio.Client) -> None:
    text = unique("text")
    await client.cache.set(text, "abc")
    with pytest.raises(cachelock.NotAnInteger):
        await client.cache.increment(text)
    async with cachelock.aio.Client(ADDR, token=READER_TOKEN) as reader:
        with pytest.raises(cachelock.PermissionDenied):
            await reader.cache.set(text, "x")
    async with cachelock.aio.Client(ADDR) as anonymous:
        with pytest.raises(cachelock.Unauthenticated):
            await anonymous.cache.get(text)
    with pytest.raises(ValueError):
        await client.rate_limit.check(text, 1, 1, algorithm="nope")
    assert TOKEN not in repr(client)

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

    budget = unique("budget")
    first, second, third = [await client.rate_limit.reserve(budget, 100, 3600, cost=40) for _ in range(3)]
    assert first.allowed and second.allowed and not third.allowed
    assert (first.remaining, second.remaining, third.remaining) == (60, 20, 20)
    committed = await client.rate_limit.commit(first, 10)
    assert (committed.charged, committed.refunded, committed.remaining) == (10, 30, third.remaining + 30)
    assert (await client.rate_limit.commit(first, 10)).settled_before
    cancelled = await client.rate_limit.cancel(second)
    assert cancelled.refunded == 40 and cancelled.remaining == committed.remaining + 40
    async with client.rate_limit.reserved(budget, 100, 3600, cost=5) as held:
        assert held.remaining == cancelled.remaining - 5
    assert (await client.rate_limit.check(budget, 100, 3600, cost=0)).remaining == cancelled.remaining
    fresh = unique("budget")
    assert (await client.rate_limit.report(fresh, 100, 3600, cost=150)).remaining == 0
    assert not (await client.rate_limit.check(fresh, 100, 3600)).allowed

    week = cachelock.Calendar("week", time_zone="Asia/Tokyo")
    spent = await client.rate_limit.check(budget, 10, calendar=week, cost=4)
    assert spent.allowed and spent.remaining == 6
    assert spent.reset_after is not None and 0 < spent.reset_after <= 7 * 86400
    many = await client.rate_limit.check_many([cachelock.Limit(budget, 10, calendar=week)])
    assert many.allowed and many.decisions[0].remaining == 5
    assert await client.rate_limit.reset(budget, 10, calendar=week)
    async with client.rate_limit.reserved(budget, 10, calendar=week, cost=3) as held:
        assert held.allowed and held.remaining == 7 and held.calendar == week
    assert (await client.rate_limit.check(budget, 10, calendar=week, cost=0)).remaining == 10
    with pytest.raises(ValueError):
        await client.rate_limit.check(budget, 10, calendar=cachelock.Calendar("decade"))
    with pytest.raises(ValueError):
        await client.rate_limit.check(budget, 10, 60, calendar=week)

    turn = unique("wait")
    assert (await client.rate_limit.check(turn, 1, 0.3)).allowed
    waited = await client.rate_limit.check(turn, 1, 0.3, wait=5)
    assert waited.allowed and 0 < waited.waited <= 1

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

async def _next_leader(observation: cachelock.aio.AsyncObservation) -> Any:
    """The next Observe event naming a leader, past the moments with nobody leading."""
    while True:
        event = await asyncio.wait_for(observation.__anext__(), 10)
        if isinstance(event, cachelock.Leader):
            return event.candidate, event.term


@run
async def test_election_hands_over_and_fences_the_old_term(client: cachelock.aio.Client) -> None:
    name = "{%s}" % unique("sched")
    key = f"{name}:x"
    elected_b = asyncio.Event()
    release_b = asyncio.Event()
    b_terms: List[int] = []

    async def candidate_b() -> None:
        async with client.campaign(name, candidate="b", ttl=1.5) as b:
            b_terms.append(b.term)
            elected_b.set()
            await release_b.wait()

    async with client.elections.observe(name) as observation:
        first = await asyncio.wait_for(observation.__anext__(), 10)
        assert isinstance(first, cachelock.NoLeader), "nobody leads at first"
        async with client.campaign(name, candidate="a", ttl=1.5) as a:
            assert a.term > 0 and a.fence == cachelock.Fence(name, a.term)
            assert await _next_leader(observation) == ("a", a.term)
            b_task = asyncio.ensure_future(candidate_b())
            deadline = asyncio.get_running_loop().time() + 10
            while (await client.locks.describe(name)).waiting != 1:
                assert asyncio.get_running_loop().time() < deadline, "b in line"
                await asyncio.sleep(0.02)

            # A third candidate gives up waiting by cancelling.
            async def candidate_c() -> None:
                async with client.campaign(name, candidate="c", ttl=1.5):
                    pytest.fail("c was elected while a leads")

            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(candidate_c(), 0.2)
            leader = await client.elections.leader(name)
            assert leader is not None and (leader.candidate, leader.term) == ("a", a.term)
            assert not elected_b.is_set(), "b was elected while a leads"
        # a left its block: it resigned, and b leads.
        await asyncio.wait_for(elected_b.wait(), 10)
        assert b_terms[0] > a.term
        assert await _next_leader(observation) == ("b", b_terms[0])
        with pytest.raises(cachelock.FencedOut):
            await client.cache.fenced(cachelock.Fence(name, a.term)).set(key, "from a", ttl=60)
        assert await client.cache.fenced(cachelock.Fence(name, b_terms[0])).set(key, "from b", ttl=60)
        assert await client.cache.get(key) == b"from b"
        release_b.set()
        await asyncio.wait_for(b_task, 10)


@run
async def test_election_leader_told_when_its_lock_vanishes(client: cachelock.aio.Client) -> None:
    name = "{%s}" % unique("sched")
    body_cancelled = False
    async with client.elections.observe(name) as observation:
        assert isinstance(await asyncio.wait_for(observation.__anext__(), 10), cachelock.NoLeader)
        with pytest.raises(cachelock.LeaseLost):
            async with client.campaign(name, candidate="a", ttl=1.5) as leader:
                assert await _next_leader(observation) == ("a", leader.term)
                assert await asyncio.get_running_loop().run_in_executor(None, delete_lock, name) >= 1
                try:
                    # The guarded body: the loss cancels it (bounded: at most 10 s).
                    await asyncio.wait_for(leader.lost.wait(), 10)
                    await asyncio.sleep(10)
                except asyncio.CancelledError:
                    body_cancelled = True
                    raise
        assert body_cancelled, "the guarded body was not cancelled"
        assert leader.lost_reason == "LOCK_NOT_HELD"
        event = await asyncio.wait_for(observation.__anext__(), 10)
        assert isinstance(event, cachelock.NoLeader), event
    assert await client.elections.leader(name) is None


@run
async def test_election_resign_token_is_never_shown(client: cachelock.aio.Client) -> None:
    name = "{%s}" % unique("sched")
    async with client.campaign(name, candidate="a", ttl=5) as leader:
        token = leader.resign_token
        assert token
        for text in (repr(leader), str(leader), f"{leader}"):
            assert token not in text and "term=" in text
    # Leaving the block closes the stream; the server releases when it sees that.
    for _ in range(200):
        if await client.elections.leader(name) is None:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the leadership was not released after the block")


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

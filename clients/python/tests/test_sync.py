"""The sync client against a running cachelock."""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any, List, Tuple

import pytest
from conftest import ADDR, METERED_TOKEN, READER_TOKEN, TOKEN, HoldingProxy, delete_lock, unique

import cachelock
from cachelock import Client


# --- round trips -------------------------------------------------------------------


def test_cache_round_trip(client: Client) -> None:
    key = unique("k")
    assert client.cache.get(key) is None
    assert client.cache.set(key, "v1", ttl=30)
    assert client.cache.get(key) == b"v1"
    assert not client.cache.set(key, b"v2", condition="if_absent")
    assert client.cache.set(key, b"v2", condition="if_present")
    other = unique("k")
    assert client.cache.set_many({other: b"o", key: b"v3"}, ttl=30) == 2
    missing = unique("missing")
    assert client.cache.get_many([key, other, missing]) == {key: b"v3", other: b"o", missing: None}
    assert client.cache.expire(key, 60)
    assert not client.cache.expire(unique("missing"), 60)
    assert client.cache.take(key) == b"v3"
    assert client.cache.take(key) is None
    assert client.cache.delete(key, other) == 1
    counter = unique("n")
    assert client.cache.increment(counter) == 1
    assert client.cache.increment(counter, 41, ttl=30) == 42
    assert client.cache.increment(counter, -2) == 40


def test_rate_limit_round_trip(client: Client) -> None:
    key = unique("rl")
    first = client.rate_limit.check(key, 2, 60)
    assert first.allowed and first.limit == 2 and first.remaining == 1
    assert client.rate_limit.check(key, 2, 60).allowed
    denied = client.rate_limit.check(key, 2, 60)
    assert not denied.allowed and denied.retry_after is not None and denied.retry_after > 0
    assert client.rate_limit.reset(key, 2, 60)
    assert client.rate_limit.check(key, 2, 60, cost=0).remaining == 2
    both = client.rate_limit.check_many(
        [cachelock.Limit(key, 2, 60), cachelock.Limit(key, 5, 1, algorithm="sliding_window")],
        on_unavailable="fail_closed",
    )
    assert both.allowed and [d.remaining for d in both.decisions] == [1, 4]


def _fresh_window(client: Client, calendar: cachelock.Calendar) -> None:
    """Returns once the current window of `calendar` has at least 0.5 s left, so that the
    checks that follow fall in one window. A unit spent on a key of its own tells when the
    window ends: every key's windows share the calendar's boundaries."""
    left = client.rate_limit.check(unique("probe"), 1, calendar=calendar).reset_after
    assert left is not None and left > 0
    if left < 0.5:
        time.sleep(left + 0.05)


def test_calendar_window(client: Client) -> None:
    key = unique("cal")
    every_2s = cachelock.Calendar("second", 2)
    _fresh_window(client, every_2s)
    assert client.rate_limit.check(key, 2, calendar=every_2s).allowed
    second = client.rate_limit.check(key, 2, calendar=every_2s)
    assert second.allowed and second.remaining == 0
    denied = client.rate_limit.check(key, 2, calendar=every_2s)
    assert not denied.allowed and denied.reset_after is not None and 0 < denied.reset_after <= 2
    assert denied.retry_after is not None and 0 < denied.retry_after <= 2
    assert denied.waited == 0
    time.sleep(denied.reset_after + 0.05)
    fresh = client.rate_limit.check(key, 2, calendar=every_2s)
    assert fresh.allowed and fresh.remaining == 1

    # A month of Berlin: resets on the 1st at midnight, Berlin time.
    month = cachelock.Calendar("month", time_zone="Europe/Berlin")
    used = client.rate_limit.check(key, 100, calendar=month, cost=40)
    assert used.allowed and used.remaining == 60
    assert used.reset_after is not None and 0 < used.reset_after <= 31 * 86400
    assert client.rate_limit.reset(key, 100, calendar=month)
    assert client.rate_limit.check(key, 100, calendar=month, cost=0).remaining == 100

    # Wherever a period goes: check_many, and a budget settled on the window it was counted in.
    both = client.rate_limit.check_many(
        [cachelock.Limit(key, 100, calendar=month), cachelock.Limit(key, 5, 60, algorithm="fixed_window")]
    )
    assert both.allowed and [d.remaining for d in both.decisions] == [99, 4]
    day = cachelock.Calendar("day", time_zone="America/New_York")
    reservation = client.rate_limit.reserve(key, 1000, calendar=day, cost=300)
    assert reservation.allowed and reservation.calendar == day and reservation.period is None
    settled = client.rate_limit.commit(reservation, 100)
    assert (settled.charged, settled.refunded, settled.remaining) == (100, 200, 900)
    assert client.rate_limit.report(key, 1000, calendar=day, cost=50).remaining == 850

    with pytest.raises(cachelock.InvalidField) as invalid:
        client.rate_limit.check(key, 1, calendar=cachelock.Calendar("day", time_zone="Mars/Olympus_Mons"))
    assert invalid.value.field == "calendar.time_zone"


def test_check_waits_for_a_permit(client: Client) -> None:
    key = unique("wait")
    # One every 300 ms: the second caller waits its turn in the server instead of polling.
    assert client.rate_limit.check(key, 1, 0.3).allowed
    assert not client.rate_limit.check(key, 1, 0.3).allowed
    started = time.monotonic()
    waited = client.rate_limit.check(key, 1, 0.3, wait=5)
    assert waited.allowed and 0 < waited.waited <= 1
    assert time.monotonic() - started >= waited.waited - 0.05

    # A wait shorter than the turn is answered at once, refused.
    slow = unique("wait")
    assert client.rate_limit.check(slow, 1, 60).allowed
    started = time.monotonic()
    refused = client.rate_limit.check(slow, 1, 60, wait=timedelta(milliseconds=200))
    assert not refused.allowed and refused.retry_after is not None and refused.retry_after > 50
    assert time.monotonic() - started < 1

    # The call's deadline is the client's timeout plus the wait: a wait longer than the
    # timeout is answered, not cut off.
    with Client(ADDR, token=TOKEN, timeout=0.5) as hasty:
        turn = unique("wait")
        assert hasty.rate_limit.check(turn, 1, 1.2).allowed
        late = hasty.rate_limit.check(turn, 1, 1.2, wait=3)
        assert late.allowed and late.waited > 0.5


def test_leased_check(client: Client) -> None:
    key = unique("leased")
    # Decided from slices this instance leases: still never more than the limit.
    decisions = [client.rate_limit.check(key, 5, 3600, algorithm="fixed_window", leased=True) for _ in range(8)]
    assert sum(d.allowed for d in decisions) == 5

    # Leased is for token buckets and fixed windows only: the server names the field.
    with pytest.raises(cachelock.InvalidField) as invalid:
        client.rate_limit.check(unique("leased"), 5, 3600, algorithm="sliding_window", leased=True)
    assert invalid.value.field == "leased"


def test_token_budget_reserve_commit_cancel_report(client: Client) -> None:
    key = unique("budget")
    first, second, third = (client.rate_limit.reserve(key, 100, 3600, cost=40) for _ in range(3))
    assert first.allowed and second.allowed and first.reservation_id and second.reservation_id
    assert (first.limit, first.remaining, second.remaining) == (100, 60, 20)
    assert not third.allowed and third.reservation_id == "" and third.remaining == 20
    assert third.retry_after is not None and third.retry_after > 0
    committed = client.rate_limit.commit(first, 10)
    assert (committed.found, committed.charged, committed.refunded) == (True, 10, 30)
    assert committed.remaining == third.remaining + 30 and not committed.settled_before
    again = client.rate_limit.commit(first, 10)
    assert again.settled_before and (again.charged, again.refunded) == (10, 30)
    assert again.remaining == committed.remaining
    cancelled = client.rate_limit.cancel(second)
    assert (cancelled.found, cancelled.charged, cancelled.refunded) == (True, 0, 40)
    assert cancelled.remaining == committed.remaining + 40 and not cancelled.settled_before
    with pytest.raises(ValueError):
        client.rate_limit.cancel(third)
    with client.rate_limit.reserved(key, 100, 3600, cost=25, reservation_ttl=30) as held:
        assert held.allowed and held.remaining == cancelled.remaining - 25
    assert client.rate_limit.check(key, 100, 3600, cost=0).remaining == cancelled.remaining

    fresh = unique("budget")
    reported = client.rate_limit.report(fresh, 100, 3600, cost=150)
    assert reported.remaining == 0 and reported.retry_after is not None and reported.retry_after > 0
    assert not client.rate_limit.check(fresh, 100, 3600).allowed


def test_sessions_round_trip(client: Client) -> None:
    user = unique("user")
    session = client.sessions.create(user, {"role": "reader"}, idle_timeout=600, device_label="phone")
    assert session.user_id == user and session.attributes == {"role": "reader"} and session.version == 1
    assert session.idle_timeout == 600 and session.device_label == "phone"
    assert client.sessions.get(session.id, touch=True).handle == session.handle
    updated = client.sessions.update(session.id, set={"plan": "pro"}, remove=["role"], expected_version=1)
    assert updated.attributes == {"plan": "pro"} and updated.version == 2
    with pytest.raises(cachelock.VersionConflict):
        client.sessions.update(session.id, set={"x": "y"}, expected_version=1)
    assert client.sessions.touch(session.id) is not None
    rotated = client.sessions.rotate(session.id)
    assert rotated.id != session.id and rotated.handle == session.handle
    with pytest.raises(cachelock.SessionNotFound):
        client.sessions.get(session.id)
    second = client.sessions.create(user, device_label="laptop")
    listed = client.sessions.list(user)
    assert {s.handle for s in listed} == {rotated.handle, second.handle}
    assert all(s.id == "" for s in listed)
    client.sessions.delete_by_handle(user, second.handle)
    third = client.sessions.create(user)
    assert client.sessions.delete_all(user, except_id=third.id) == 1
    client.sessions.delete(third.id)
    assert client.sessions.list(user) == []


def _receive(subscription: cachelock.Subscription, count: int) -> List[Any]:
    """The first `count` events, or fewer if none came for 10 s (then the test fails)."""
    watchdog = threading.Timer(10, subscription.close)
    watchdog.start()
    events: List[Any] = []
    try:
        for event in subscription:
            events.append(event)
            if len(events) == count:
                break
    finally:
        watchdog.cancel()
    return events


def test_pubsub_round_trip(client: Client) -> None:
    room = unique("room")
    with client.pubsub.subscribe(topics=[f"{room}:a"], patterns=[f"{room}:*"]) as subscription:
        assert client.pubsub.publish(f"{room}:a", b"one") >= 1
        assert client.pubsub.publish(f"{room}:b", "two") >= 1
        events = _receive(subscription, 3)
    by_pattern = sorted((e.pattern, e.topic, e.payload) for e in events)
    assert by_pattern == [
        ("", f"{room}:a", b"one"),
        (f"{room}:*", f"{room}:a", b"one"),
        (f"{room}:*", f"{room}:b", b"two"),
    ]
    assert sorted(e.sequence for e in events) == [1, 2, 3]
    assert client.pubsub.publish(unique("nobody"), b"x") == 0


# --- a lock lost while held ----------------------------------------------------------


def test_lock_lost_while_held(client: Client) -> None:
    name = unique("lock")
    told: List[str] = []
    with pytest.raises(cachelock.LeaseLost) as raised:
        with client.lock(name, ttl=1.5) as lease:
            lease.on_lost(told.append)
            first = lease.fencing_token
            assert first > 0 and lease.certain_for() > 0
            assert delete_lock(name) >= 1
            assert lease.lost.wait(10), "the loss was never told"
            assert lease.lost_reason == "LOCK_NOT_HELD"
            with pytest.raises(cachelock.LeaseLost):
                lease.check()
            assert lease.certain_for() == 0
    assert raised.value.metadata["cause"] == "LOCK_NOT_HELD"
    assert told == ["LOCK_NOT_HELD"]
    with client.lock(name, ttl=1.5, wait=5) as again:
        assert again.fencing_token > first
        again.check()


def test_lock_not_acquired(client: Client) -> None:
    name = unique("lock")
    with client.lock(name, ttl=5):
        started = time.monotonic()
        with pytest.raises(cachelock.NotAcquired) as raised:
            client.lock(name, ttl=5, wait=0.2)
        assert raised.value.holder_ttl is not None and raised.value.holder_ttl > 0
        assert time.monotonic() - started < 3
    # Leaving the block closed the stream; the server releases the lock on its own.
    assert client.locks.acquire(name, 5, wait=3).acquired



def test_lock_lost_when_renewals_stop_arriving() -> None:
    # The client reaches the service through a link that can hold its replies: an
    # instance frozen, or a network gone quiet, sends nothing more, not even an end.
    with HoldingProxy(ADDR) as proxy, Client(proxy.addr, token=TOKEN) as client:
        with pytest.raises(cachelock.LeaseLost) as raised:
            with client.lock(unique("lock"), ttl=1.5) as lease:
                assert lease.certain_for() > 0
                proxy.hold_replies()
                assert lease.lost.wait(10), "the silence was never noticed"
                assert lease.lost_reason == "NOT_RENEWED"
                with pytest.raises(cachelock.LeaseLost):
                    lease.check()
                assert lease.certain_for() == 0
        assert raised.value.metadata["cause"] == "NOT_RENEWED"

# --- leader election ---------------------------------------------------------------


class Watcher:
    """Reads an election's Observe stream on a thread, so that each wait for an event is
    bounded (at most 10 s) instead of blocking forever."""

    def __init__(self, client: Client, name: str) -> None:
        self.observation = client.elections.observe(name)
        self._events: "queue.Queue[Any]" = queue.Queue()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for event in self.observation:
                self._events.put(event)
        except cachelock.CachelockError as error:
            self._events.put(error)

    def next(self) -> Any:
        event = self._events.get(timeout=10)
        if isinstance(event, Exception):
            raise event
        return event

    def next_leader(self) -> Tuple[str, int]:
        """The next event naming a leader, past the moments with nobody leading."""
        while True:
            event = self.next()
            if isinstance(event, cachelock.Leader):
                return event.candidate, event.term

    def close(self) -> None:
        self.observation.close()
        self._thread.join(timeout=5)


def _in_line(client: Client, name: str, waiting: int) -> None:
    deadline = time.monotonic() + 10
    while client.locks.describe(name).waiting != waiting:
        assert time.monotonic() < deadline, f"{waiting} candidates in line"
        time.sleep(0.02)


def test_election_hands_over_and_fences_the_old_term(client: Client) -> None:
    name = "{%s}" % unique("sched")
    key = f"{name}:x"
    watcher = Watcher(client, name)
    pool = ThreadPoolExecutor(1)
    try:
        assert isinstance(watcher.next(), cachelock.NoLeader), "nobody leads at first"
        with client.campaign(name, candidate="a", ttl=1.5) as a:
            assert a.term > 0 and a.name == name and a.candidate == "a"
            assert a.fence == cachelock.Fence(name, a.term)
            assert a.certain_for() > 0
            a.check()
            assert watcher.next_leader() == ("a", a.term)
            b_campaign = pool.submit(client.campaign, name, candidate="b", ttl=1.5)
            _in_line(client, name, 1)
            # A third candidate gives up waiting: the stream is closed, NotAcquired raised.
            with pytest.raises(cachelock.NotAcquired):
                client.campaign(name, candidate="c", ttl=1.5, timeout=0.2)
            leader = client.elections.leader(name)
            assert leader is not None and (leader.candidate, leader.term) == ("a", a.term)
            assert leader.since is not None and leader.ttl is not None and leader.ttl > 0
            assert not b_campaign.done(), "b was elected while a leads"
        # a left its block: it resigned, and b, next in line, leads.
        b = b_campaign.result(timeout=10)
        with b:
            assert b.term > a.term
            assert watcher.next_leader() == ("b", b.term)
            with pytest.raises(cachelock.FencedOut):
                client.cache.fenced(cachelock.Fence(name, a.term)).set(key, "from a", ttl=60)
            assert client.cache.fenced(b).set(key, "from b", ttl=60)
            assert client.cache.get(key) == b"from b"
    finally:
        pool.shutdown(wait=False)
        watcher.close()


def test_election_leader_told_when_its_lock_vanishes(client: Client) -> None:
    name = "{%s}" % unique("sched")
    watcher = Watcher(client, name)
    told: List[str] = []
    try:
        assert isinstance(watcher.next(), cachelock.NoLeader)
        with pytest.raises(cachelock.LeaseLost) as raised:
            with client.campaign(name, candidate="a", ttl=1.5) as leader:
                leader.on_lost(told.append)
                assert watcher.next_leader() == ("a", leader.term)
                assert delete_lock(name) >= 1
                assert leader.lost.wait(10), "the loss was never told"
                assert leader.lost_reason == "LOCK_NOT_HELD"
                with pytest.raises(cachelock.LeaseLost):
                    leader.check()
                assert leader.certain_for() == 0
        assert raised.value.metadata["cause"] == "LOCK_NOT_HELD"
        assert told == ["LOCK_NOT_HELD"]
        assert isinstance(watcher.next(), cachelock.NoLeader), "Observe shows nobody leading"
        assert client.elections.leader(name) is None
    finally:
        watcher.close()


def test_election_resign_token_resigns_from_elsewhere_and_is_never_shown(client: Client) -> None:
    name = "{%s}" % unique("sched")
    with pytest.raises(cachelock.LeaseLost):
        with client.campaign(name, candidate="a", ttl=1.5) as leader:
            token = leader.resign_token
            assert token
            for text in (repr(leader), str(leader), f"{leader}", "%s" % leader):
                assert token not in text and "term=" in text
            client.elections.resign(name, token)
            client.elections.resign(name, token)  # accepted again: its answer may have been lost
            assert leader.lost.wait(10), "the resignation was never told"
    assert client.elections.leader(name) is None
    with pytest.raises(cachelock.FencedOut):
        client.cache.fenced(leader).set(f"{name}:x", "late", ttl=60)


# --- fenced writes -----------------------------------------------------------------


def _old_and_new_grants(client: Client, name: str) -> Tuple[cachelock.Grant, cachelock.Grant]:
    """The OLD grant (a 100 ms lease, left to run out) and the NEW one, granted by the
    server once the old lease ran out: no sleep, the server's wait orders them."""
    old = client.locks.acquire(name, 0.1)
    assert old.acquired
    new = client.locks.acquire(name, 10, wait=30)
    assert new.acquired and new.fencing_token > old.fencing_token
    return old, new


def test_fenced_cache_writes(client: Client) -> None:
    name = "{%s}" % unique("order")
    total, other = f"{name}:total", f"{name}:other"
    old, new = _old_and_new_grants(client, name)
    assert old.fence == cachelock.Fence(name, old.fencing_token)
    client.cache.set(total, "100", ttl=60)

    stale = client.cache.fenced(old)
    for write in (
        lambda: stale.set(total, "1", ttl=60),
        lambda: stale.increment(total, 5),
        lambda: stale.delete(total),
        lambda: stale.set_many({total: "2", other: "3"}, ttl=60),
        lambda: stale.take(total),
        lambda: stale.expire(total, 1),
    ):
        with pytest.raises(cachelock.FencedOut) as raised:
            write()
        assert raised.value.reason == "FENCED_OUT"
        assert raised.value.code is not None and raised.value.code.name == "FAILED_PRECONDITION"
    assert stale.get(total) == b"100", "reads are not fenced"
    assert client.cache.get_many([total, other]) == {total: b"100", other: None}, "nothing changed"
    ttl_kept = client.cache.get_or_lease(total)
    assert ttl_kept.ttl is not None and ttl_kept.ttl > 30, "the fenced-out expire changed nothing"

    current = client.cache.fenced(new.fence)
    assert current.set(total, "200", ttl=60)
    assert current.increment(total, 5) == 205
    assert client.cache.get(total) == b"205"
    assert current.delete(total) == 1
    assert client.cache.get(total) is None

    # The fill of `cached` is never fenced: a stale view still fills.
    @stale.cached(name.replace("{", "{{").replace("}", "}}") + ":price:{sku}", ttl=60)
    def price(sku: str) -> int:
        return 42

    assert price("a") == 42
    assert client.cache.get(f"{name}:price:a") == b"42"
    client.locks.release(name, new.token)


def test_fenced_session_update(client: Client) -> None:
    user = unique("u")
    session = client.sessions.create(user, {"cart": "1"})
    old = client.locks.acquire(user, 0.1)
    assert old.acquired
    with client.lock(user, ttl=10, wait=30) as lease:  # granted once the old lease ran out
        assert lease.fencing_token > old.fencing_token
        assert lease.fence == cachelock.Fence(user, lease.fencing_token)
        with pytest.raises(cachelock.FencedOut):
            client.sessions.fenced(old.fence).update(session.id, set={"cart": "stale"})
        unchanged = client.sessions.get(session.id)
        assert unchanged.attributes == {"cart": "1"} and unchanged.version == session.version
        updated = client.sessions.fenced(lease).update(session.id, set={"cart": "2"})
        assert updated.attributes == {"cart": "2"} and updated.version == session.version + 1
        assert client.sessions.get(session.id).attributes == {"cart": "2"}


# --- the stampede ------------------------------------------------------------------


def test_cached_fills_once(client: Client) -> None:
    sku = unique("sku")
    calls: List[str] = []

    @client.cached("price:{sku}", ttl=30, lease_ttl=5, wait=5)
    def price(sku: str, currency: str = "EUR") -> dict:
        calls.append(sku)
        time.sleep(0.3)
        return {"sku": sku, "price": 42, "currency": currency}

    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(lambda _: price(sku), range(20)))
    assert len(calls) == 1
    assert results == [{"sku": sku, "price": 42, "currency": "EUR"}] * 20
    assert price(sku=sku) == results[0]
    assert len(calls) == 1, "a later call is a hit"
    assert client.cache.get(f"price:{sku}") is not None


# --- retries -----------------------------------------------------------------------


def test_retries_only_idempotent_calls() -> None:
    retries: List[Tuple[str, str, float]] = []
    counter = unique("metered")
    with Client(ADDR, token=TOKEN) as app, Client(
        ADDR, token=METERED_TOKEN, on_retry=lambda method, error, delay: retries.append((method, error.reason, delay))
    ) as metered:
        applied = 0
        refused = None
        for _ in range(20):  # 3 a second: the budget runs out within a few calls
            started = time.monotonic()
            try:
                metered.cache.increment(counter)
                applied += 1
            except cachelock.ClientRateLimited as error:
                refused, elapsed = error, time.monotonic() - started
                break
        assert refused is not None, "the budget never ran out"
        assert elapsed < 0.5, "Increment was not raised at once"
        assert refused.retry_after is not None and refused.retry_after > 0
        assert refused.code is not None and refused.code.name == "RESOURCE_EXHAUSTED"
        assert retries == [], "Increment must never be retried"
        assert app.cache.get(counter) == str(applied).encode(), "no extra increment"
        # A Get under the same exhausted budget waits and succeeds.
        assert metered.cache.get(counter) == str(applied).encode()
    assert retries, "the Get was never retried"
    assert all(reason == "CLIENT_RATE_LIMITED" for _, reason, _ in retries)
    assert all(method == "/cachelock.cache.v1.CacheService/Get" for method, _, _ in retries)


def test_retry_policy() -> None:
    from cachelock._retry import retry_delay

    get = "/cachelock.cache.v1.CacheService/Get"
    advised = cachelock.Overloaded("busy", retry_after=0.2)
    for attempt in range(1, 5):
        delay = retry_delay(get, advised, attempt, remaining=60)
        base = min(0.2 * 2 ** (attempt - 1), 5.0)
        assert delay is not None and base <= delay <= base * 1.5
    assert retry_delay(get, advised, 5, remaining=60) is None, "at most 5 attempts"
    assert retry_delay(get, advised, 1, remaining=0.2) is None, "never past the deadline"
    assert retry_delay("/cachelock.cache.v1.CacheService/Increment", advised, 1, remaining=60) is None
    assert retry_delay(get, cachelock.Overloaded("busy"), 1, remaining=60) is None, "no RetryInfo, no retry"
    slow = cachelock.LocksPaused("paused", retry_after=8.0)
    delay = retry_delay("/cachelock.lock.v1.LockService/Acquire", slow, 1, remaining=60)
    assert delay is not None and delay >= 8.0, "never sooner than the server asked"


# --- errors ------------------------------------------------------------------------


def test_errors_decoded(client: Client) -> None:
    with pytest.raises(cachelock.InvalidField) as invalid:
        client.rate_limit.check(unique("rl"), 0, 1)
    assert invalid.value.field == "limit" and invalid.value.reason == "INVALID_FIELD"
    assert invalid.value.code is not None and invalid.value.code.name == "INVALID_ARGUMENT"

    session = client.sessions.create(unique("user"))
    client.sessions.delete(session.id)
    with pytest.raises(cachelock.SessionNotFound):
        client.sessions.get(session.id)

    text = unique("text")
    client.cache.set(text, "not a number")
    with pytest.raises(cachelock.NotAnInteger):
        client.cache.increment(text)

    with Client(ADDR) as anonymous, pytest.raises(cachelock.Unauthenticated):
        anonymous.cache.get(text)

    with Client(ADDR, token=READER_TOKEN) as reader:
        assert reader.cache.get(text) == b"not a number"
        with pytest.raises(cachelock.PermissionDenied):
            reader.cache.set(text, "x")


def test_raw_lock_errors(client: Client) -> None:
    name = unique("lock")
    grant = client.locks.acquire(name, 10, owner="test")
    assert grant.acquired and grant.fencing_token > 0
    assert client.locks.extend(name, grant.token, 10).fencing_token == grant.fencing_token
    assert client.locks.describe(name).owner == "test"
    assert delete_lock(name) >= 1
    with pytest.raises(cachelock.LockNotHeld):
        client.locks.release(name, grant.token)
    newer = client.locks.acquire(name, 10)
    assert newer.acquired and newer.fencing_token > grant.fencing_token
    with pytest.raises(cachelock.LeaseLost):
        client.locks.release(name, grant.token)
    assert not client.locks.acquire(name, 10).acquired
    client.locks.release(name, newer.token)


def test_unknown_enum_names_fail_before_the_call() -> None:
    # Nothing listens on port 1: a call would fail with Unavailable, not ValueError.
    with Client("127.0.0.1:1", timeout=1) as nowhere:
        with pytest.raises(ValueError, match="leaky_bucket"):
            nowhere.rate_limit.check("k", 1, 1, algorithm="leaky_bucket")
        with pytest.raises(ValueError):
            nowhere.rate_limit.check("k", 1, 1, on_unavailable="fail_sideways")
        with pytest.raises(ValueError, match="fortnight"):
            nowhere.rate_limit.check("k", 1, calendar=cachelock.Calendar("fortnight"))
        with pytest.raises(ValueError, match="fortnight"):
            nowhere.rate_limit.check_many([cachelock.Limit("k", 1, calendar=cachelock.Calendar("fortnight"))])
        with pytest.raises(ValueError, match="fortnight"):
            nowhere.rate_limit.reset("k", 1, calendar=cachelock.Calendar("fortnight"))
        with pytest.raises(ValueError, match="unspecified"):
            nowhere.rate_limit.reserve("k", 1, calendar=cachelock.Calendar("unspecified"), cost=1)
        with pytest.raises(ValueError, match="not both"):
            nowhere.rate_limit.check("k", 1, 60, calendar=cachelock.Calendar("month"))
        with pytest.raises(ValueError, match="not both"):
            nowhere.rate_limit.report("k", 1, 60, calendar=cachelock.Calendar("day"), cost=1)
        with pytest.raises(ValueError, match="period or a calendar"):
            nowhere.rate_limit.check("k", 1)
        with pytest.raises(ValueError):
            nowhere.cache.set("k", "v", condition="sometimes")
        with pytest.raises(cachelock.Unavailable):
            nowhere.cache.get("k")


# --- no secret in any string form -----------------------------------------------------


def test_no_secret_in_string_forms(client: Client) -> None:
    assert TOKEN not in repr(client) and TOKEN not in str(client)
    assert TOKEN not in repr(client._transport)
    session = client.sessions.create(unique("user"))
    assert session.id and session.id not in repr(session) and session.id not in str(session)
    assert session.handle in repr(session)
    grant = client.locks.acquire(unique("lock"), 5)
    assert grant.token and grant.token not in repr(grant) and grant.token not in str(grant)
    client.locks.release(grant.name, grant.token)
    tls = cachelock.TLS(ca=b"ca", cert=b"cert", key=b"secret-key")
    assert b"secret-key".decode() not in repr(tls)

"""A backend's day with cachelock, from Python: a login guarded by a rate limit that
starts a session, a cached lookup, and a job under a lock with its fencing token;
and what each kind of failure looks like to the caller.

Run with a cachelock listening on CACHELOCK_ADDR (default localhost:50051), after
generating the client code (see ../../docs/clients.md):

    python -m grpc_tools.protoc -I ../../proto --python_out=gen --pyi_out=gen \
        --grpc_python_out=gen $(cd ../../proto && ls cachelock/*/v1/*.proto)
    PYTHONPATH=gen python scenario.py
"""

import os
import time
import uuid

import grpc
from google.protobuf.duration_pb2 import Duration
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cachelock.cache.v1 import cache_pb2, cache_pb2_grpc
from cachelock.lock.v1 import lock_pb2, lock_pb2_grpc
from cachelock.ratelimit.v1 import ratelimit_pb2, ratelimit_pb2_grpc
from cachelock.session.v1 import session_pb2, session_pb2_grpc
from cachelock_errors import details


def seconds(value: float) -> Duration:
    duration = Duration()
    duration.FromMilliseconds(int(value * 1000))
    return duration


def expect_error(call, code: grpc.StatusCode, reason: str):
    """Runs `call`, which must fail with `code` and ErrorInfo `reason`; returns the details."""
    try:
        call()
    except grpc.RpcError as error:
        found = details(error)
        assert found.code == code, (found, code)
        assert found.reason == reason, (found, reason)
        print(f"  {code.name} {reason}: {found.message}")
        return found
    raise AssertionError(f"expected {code.name} {reason}, the call succeeded")


def login(channel, user: str, device: str):
    """5 attempts per user per 15 minutes, then a session, rotated at once."""
    limits = ratelimit_pb2_grpc.RateLimitServiceStub(channel)
    sessions = session_pb2_grpc.SessionServiceStub(channel)
    decision = limits.Check(
        ratelimit_pb2.CheckRequest(key=f"login:{user}", limit=5, period=seconds(15 * 60)),
        timeout=2,
    )
    if not decision.allowed:
        raise PermissionError(f"too many attempts; retry in {decision.retry_after.ToTimedelta()}")
    # (check the password here)
    created = sessions.Create(
        session_pb2.CreateRequest(
            user_id=user,
            attributes={"role": "reader"},
            idle_timeout=seconds(30 * 60),
            absolute_timeout=seconds(12 * 3600),
            client=session_pb2.ClientMetadata(device_label=device),
        ),
        timeout=2,
    ).session
    # A new id after login: an id planted before it (session fixation) is worthless.
    return sessions.Rotate(session_pb2.RotateRequest(id=created.id), timeout=2).session, decision


def cached_profile(channel, user: str, loads: list) -> bytes:
    """Read-through cache: the loader runs only on a miss."""
    cache = cache_pb2_grpc.CacheServiceStub(channel)
    key = f"profile:{user}"
    hit = cache.Get(cache_pb2.GetRequest(key=key), timeout=2)
    if hit.found:
        return hit.value
    loads.append(user)
    value = f'{{"user": "{user}", "plan": "pro"}}'.encode()  # bytes, as stored
    cache.Set(cache_pb2.SetRequest(key=key, value=value, ttl=seconds(60)), timeout=2)
    return value


def main() -> None:
    address = os.environ.get("CACHELOCK_ADDR", "localhost:50051")
    run = uuid.uuid4().hex[:8]  # keeps runs against one Redis apart
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        serving = health.Check(health_pb2.HealthCheckRequest(), timeout=2)
        assert serving.status == health_pb2.HealthCheckResponse.SERVING, serving

        print("login")
        user = f"alice-{run}"
        session, decision = login(channel, user, "Firefox on Linux")
        assert decision.allowed and decision.remaining == 4, decision
        sessions = session_pb2_grpc.SessionServiceStub(channel)
        read = sessions.Get(session_pb2.GetRequest(id=session.id, touch=True), timeout=2).session
        assert read.user_id == user and read.attributes["role"] == "reader", read
        print(f"  session for {read.user_id}, version {read.version}")

        print("cached lookup")
        loads: list = []
        first = cached_profile(channel, user, loads)
        second = cached_profile(channel, user, loads)
        assert first == second and loads == [user], (first, second, loads)
        print(f"  loaded once, then served from the cache: {second.decode()}")

        print("a job under a lock")
        locks = lock_pb2_grpc.LockServiceStub(channel)
        name = f"nightly-report-{run}"
        grant = locks.Acquire(
            lock_pb2.AcquireRequest(name=name, ttl=seconds(10), wait_timeout=seconds(2), owner="worker-1"),
            timeout=5,
        )
        assert grant.acquired, grant
        # Python ints are exact: fencing tokens (uint64) compare correctly.
        highest_seen_by_storage = 0
        assert grant.fencing_token > highest_seen_by_storage
        renewed = locks.Extend(lock_pb2.ExtendRequest(name=name, token=grant.token, ttl=seconds(10)), timeout=2)
        assert renewed.fencing_token == grant.fencing_token
        locks.Release(lock_pb2.ReleaseRequest(name=name, token=grant.token), timeout=2)
        print(f"  done under fencing token {grant.fencing_token}")

        print("errors a client branches on")
        cache = cache_pb2_grpc.CacheServiceStub(channel)
        bad = expect_error(
            lambda: cache.Set(cache_pb2.SetRequest(key="k", value=b"v", ttl=seconds(0)), timeout=2),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_FIELD",
        )
        assert list(bad.violations) == ["ttl"], bad.violations

        # A lease that ran out: LOCK_NOT_HELD while the lock is free, LEASE_LOST once
        # someone else holds it.
        short = locks.Acquire(lock_pb2.AcquireRequest(name=f"{name}-short", ttl=seconds(0.1)), timeout=2)
        time.sleep(0.3)
        expect_error(
            lambda: locks.Extend(
                lock_pb2.ExtendRequest(name=f"{name}-short", token=short.token, ttl=seconds(10)), timeout=2
            ),
            grpc.StatusCode.FAILED_PRECONDITION,
            "LOCK_NOT_HELD",
        )
        successor = locks.Acquire(lock_pb2.AcquireRequest(name=f"{name}-short", ttl=seconds(10)), timeout=2)
        assert successor.fencing_token > short.fencing_token
        expect_error(
            lambda: locks.Release(lock_pb2.ReleaseRequest(name=f"{name}-short", token=short.token), timeout=2),
            grpc.StatusCode.FAILED_PRECONDITION,
            "LEASE_LOST",
        )

        # Two writers of one session: the second one's expected version is stale.
        sessions.Update(
            session_pb2.UpdateRequest(id=session.id, set={"cart": "1"}, expected_version=read.version), timeout=2
        )
        expect_error(
            lambda: sessions.Update(
                session_pb2.UpdateRequest(id=session.id, set={"cart": "2"}, expected_version=read.version),
                timeout=2,
            ),
            grpc.StatusCode.ABORTED,
            "VERSION_CONFLICT",
        )

        cache.Set(cache_pb2.SetRequest(key=f"name-{run}", value=b"alice", ttl=seconds(60)), timeout=2)
        expect_error(
            lambda: cache.Increment(cache_pb2.IncrementRequest(key=f"name-{run}", delta=1), timeout=2),
            grpc.StatusCode.FAILED_PRECONDITION,
            "NOT_AN_INTEGER",
        )

        sessions.Delete(session_pb2.DeleteRequest(id=session.id), timeout=2)
        expect_error(
            lambda: sessions.Get(session_pb2.GetRequest(id=session.id), timeout=2),
            grpc.StatusCode.NOT_FOUND,
            "SESSION_NOT_FOUND",
        )
    print("python scenario: ok")


if __name__ == "__main__":
    main()

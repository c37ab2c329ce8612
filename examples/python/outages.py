"""What a caller sees when Redis is in trouble, and the advice that comes with it.

This one breaks the Redis behind the service on purpose, so it needs a Redis of its
own: examples/run starts one and passes its port in CACHELOCK_EXAMPLE_REDIS_PORT.
"""

import os
import subprocess

import grpc
from google.protobuf.duration_pb2 import Duration

from cachelock.cache.v1 import cache_pb2, cache_pb2_grpc
from scenario import expect_error


def redis(*args: str) -> None:
    port = os.environ["CACHELOCK_EXAMPLE_REDIS_PORT"]
    subprocess.run(["redis-cli", "-p", port, *args], check=True, capture_output=True)


def main() -> None:
    address = os.environ.get("CACHELOCK_ADDR", "localhost:50051")
    ttl = Duration(seconds=60)
    with grpc.insecure_channel(address) as channel:
        cache = cache_pb2_grpc.CacheServiceStub(channel)
        cache.Set(cache_pb2.SetRequest(key="visits", value=b"1", ttl=ttl), timeout=2)

        print("Redis full (maxmemory reached, no eviction)")
        redis("CONFIG", "SET", "maxmemory", "1")
        try:
            full = expect_error(
                lambda: cache.Set(cache_pb2.SetRequest(key="more", value=b"x", ttl=ttl), timeout=2),
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "REDIS_OUT_OF_MEMORY",
            )
            assert full.retry_after is not None and full.retry_after.total_seconds() > 0, full
        finally:
            redis("CONFIG", "SET", "maxmemory", "0")

        print("Redis refuses writes (a replica now)")
        redis("REPLICAOF", "127.0.0.1", "1")
        try:
            refused = expect_error(
                lambda: cache.Set(cache_pb2.SetRequest(key="more", value=b"x", ttl=ttl), timeout=2),
                grpc.StatusCode.UNAVAILABLE,
                "REDIS_UNAVAILABLE",
            )
            assert refused.metadata["cause"] == "readonly", refused
            assert refused.retry_after is not None, refused
        finally:
            redis("REPLICAOF", "NO", "ONE")

        print("Redis stops answering writes while one is in flight")
        redis("CLIENT", "PAUSE", "5000", "WRITE")
        try:
            expect_error(
                lambda: cache.Increment(cache_pb2.IncrementRequest(key="visits", delta=1), timeout=3),
                grpc.StatusCode.DEADLINE_EXCEEDED,
                "MAY_HAVE_APPLIED",
            )
        finally:
            redis("CLIENT", "UNPAUSE")
        # Not retried blindly: read the counter to learn whether it applied.
        value = cache.Get(cache_pb2.GetRequest(key="visits"), timeout=2)
        assert value.found and value.value in (b"1", b"2"), value
    print("python outages: ok")


if __name__ == "__main__":
    main()

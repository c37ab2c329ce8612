"""Fences: the condition of a fenced write (docs/locks.md, "Fenced writes").

A cache or session write that carries a fence — a lock's name and a grant's fencing
token — is applied only while no grant of that lock is newer than the token, checked
in the write's own atomic step; otherwise it raises FencedOut and nothing changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Union

from .lock.v1 import lock_pb2


@dataclass(frozen=True)
class Fence:
    """The fence of a grant: the lock's name and the grant's fencing token.

    Take it from a held lease (`lease.fence`) or a raw grant (`grant.fence`), and give
    it to `client.cache.fenced(...)` or `client.sessions.fenced(...)`.
    """

    lock: str
    fencing_token: int


#: What `fenced()` accepts: a Fence, or anything with a `fence` (a Lease, an AsyncLease, a Grant).
Fenceable = Union[Fence, Any]


def fence_of(value: Fenceable) -> Fence:
    """The Fence of `value`: a Fence as it is, or the `fence` of a lease or grant."""
    if isinstance(value, Fence):
        return value
    fence = getattr(value, "fence", None)
    if isinstance(fence, Fence):
        return fence
    raise TypeError(f"expected a cachelock.Fence, a lease or a grant, not {type(value).__name__}")


def fence_message(fence: Optional[Fence]) -> Optional[lock_pb2.Fence]:
    """The protocol's Fence, or None (the field left unset: an unconditional write)."""
    if fence is None:
        return None
    return lock_pb2.Fence(lock=fence.lock, fencing_token=fence.fencing_token)

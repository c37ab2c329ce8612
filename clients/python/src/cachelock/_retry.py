"""When a failed call is repeated, and after how long: the one place for it.

clients/README.md: a call is repeated only when the server sent `RetryInfo` (it does so
only when nothing was applied, or the call is safe to repeat) and the call is
idempotent (the table below). The delay is the server's, doubled on each further
attempt, up to 5 s, and jittered upwards by up to half, never sooner than the server
asked; at most 5 attempts, and never past the call's deadline: then the last error is
raised.
"""

from __future__ import annotations

import logging
import random
from typing import Callable, FrozenSet, Optional

from ._errors import CachelockError

logger = logging.getLogger("cachelock")

#: Called before each retry with the method ("/cachelock.cache.v1.CacheService/Get"),
#: the error that will be retried and the delay (seconds) before the next attempt.
OnRetry = Callable[[str, CachelockError, float], None]

MAX_ATTEMPTS = 5
MAX_DELAY = 5.0


def _methods(service: str, *names: str) -> FrozenSet[str]:
    return frozenset(f"/{service}/{name}" for name in names)


#: The methods repeated on RetryInfo. Everything else (GetOrLease, Take, Increment,
#: Check, CheckMany, Reserve, Report, Create, Update, Rotate, Publish and the streams:
#: Hold, Subscribe, Campaign, Observe) is raised at once:
#: a repeat could apply twice, and the caller decides.
IDEMPOTENT: FrozenSet[str] = (
    _methods("cachelock.cache.v1.CacheService", "Get", "GetMany", "Set", "SetMany", "Delete", "Expire")
    # Commit and Cancel settle once: a repeat answers the same settlement (settled_before).
    | _methods("cachelock.ratelimit.v1.RateLimitService", "Reset", "Commit", "Cancel")
    | _methods(
        "cachelock.session.v1.SessionService",
        "Get", "Touch", "Delete", "ListUserSessions", "DeleteUserSession", "DeleteUserSessions",
    )
    # Acquire is always sent with a fresh request_id, so a repeat returns the same grant.
    | _methods("cachelock.lock.v1.LockService", "Acquire", "Release", "Extend", "Describe")
    # Resign repeated is accepted again and touches no later term; Leader is a read.
    | _methods("cachelock.election.v1.ElectionService", "Resign", "Leader")
)


def retry_delay(method: str, error: CachelockError, attempt: int, remaining: float) -> Optional[float]:
    """The seconds to wait before repeating `method` after its `attempt`-th try failed.

    None when the error must be raised instead: the method is not idempotent, the
    server advised no retry, the attempts are used up, or the wait would pass the
    call's deadline (`remaining` seconds away).
    """
    if method not in IDEMPOTENT or error.retry_after is None or attempt >= MAX_ATTEMPTS:
        return None
    advised = error.retry_after
    base = max(min(advised * 2 ** (attempt - 1), MAX_DELAY), advised)
    # Upwards only: never sooner than the server asked; spreads out callers that
    # were refused together.
    delay = base * (1.0 + random.random() / 2)
    if delay >= remaining:
        return None
    return delay


def notify(on_retry: Optional[OnRetry], method: str, error: CachelockError, delay: float) -> None:
    """Logs a retry at DEBUG on the "cachelock" logger and tells the client's on_retry."""
    logger.debug("retrying %s in %.3f s after %s", method, delay, error)
    if on_retry is not None:
        on_retry(method, error, delay)

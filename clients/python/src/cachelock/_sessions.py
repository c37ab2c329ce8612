"""SessionService: server-side sessions, listed per user and ended one by one or all at once."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Dict, Iterable, List, Mapping, Optional

from ._convert import Seconds, optional_duration, seconds_of, time_of
from ._fence import Fence, Fenceable, fence_message, fence_of
from ._transport import AsyncTransport, Transport
from .lock.v1 import lock_pb2
from .session.v1 import session_pb2 as pb

_SERVICE = "/cachelock.session.v1.SessionService/"


@dataclass(frozen=True)
class Session:
    """One session. `id` is a secret (whoever has it has the session): it is never shown
    in the session's string forms, and is "" in listings; `handle` names the session
    without being a secret. Times are aware UTC datetimes; idle_timeout in seconds."""

    id: str = field(repr=False)
    handle: str
    user_id: str
    attributes: Dict[str, str]
    version: int
    device_label: str
    ip: str
    user_agent: str
    created_at: Optional[datetime]
    last_accessed_at: Optional[datetime]
    expires_at: Optional[datetime]
    absolute_expires_at: Optional[datetime]
    idle_timeout: Optional[float]


def _session(message: pb.Session) -> Session:
    return Session(
        id=message.id, handle=message.handle, user_id=message.user_id, attributes=dict(message.attributes),
        version=message.version, device_label=message.client.device_label, ip=message.client.ip,
        user_agent=message.client.user_agent, created_at=time_of(message, "created_at"),
        last_accessed_at=time_of(message, "last_accessed_at"), expires_at=time_of(message, "expires_at"),
        absolute_expires_at=time_of(message, "absolute_expires_at"), idle_timeout=seconds_of(message, "idle_timeout"),
    )


def _create_request(
    user_id: str, attributes: Optional[Mapping[str, str]], idle_timeout: Optional[Seconds],
    absolute_timeout: Optional[Seconds], device_label: str, ip: str, user_agent: str,
) -> pb.CreateRequest:
    return pb.CreateRequest(
        user_id=user_id, attributes=dict(attributes or {}), idle_timeout=optional_duration(idle_timeout),
        absolute_timeout=optional_duration(absolute_timeout),
        client=pb.ClientMetadata(device_label=device_label, ip=ip, user_agent=user_agent),
    )


def _update_request(
    id: str, set: Optional[Mapping[str, str]], remove: Optional[Iterable[str]], expected_version: Optional[int],
    fence: Optional[lock_pb2.Fence],
) -> pb.UpdateRequest:
    request = pb.UpdateRequest(id=id, set=dict(set or {}), remove=list(remove or ()), fence=fence)
    if expected_version is not None:  # `optional`: unset means "whatever the version"
        request.expected_version = expected_version
    return request


class Sessions:
    """Sessions, sync. An unknown, expired or ended id raises SessionNotFound.

    `fenced(fence)` gives the same calls with update and delete fenced (see Sessions.fenced).
    """

    def __init__(self, transport: Transport, fence: Optional[Fence] = None) -> None:
        self._t = transport
        #: The fence update and delete carry, or None (unconditional writes).
        self.fence = fence
        self._fence = fence_message(fence)

    def __repr__(self) -> str:
        fence = "" if self.fence is None else f" fenced by {self.fence.lock!r}@{self.fence.fencing_token}"
        return f"<cachelock.Sessions{fence}>"

    def fenced(self, fence: Fenceable) -> "Sessions":
        """The same calls with `update` and `delete` fenced by `fence` (a Fence, a lease or a
        grant): applied only while no grant of its lock is newer, else FencedOut and nothing
        changed. A session lives in its user's slot: fence it with a lock named by the user id
        (or with the user id as its `{...}` section)."""
        return Sessions(self._t, fence_of(fence))

    def create(
        self, user_id: str, attributes: Optional[Mapping[str, str]] = None, *,
        idle_timeout: Optional[Seconds] = None, absolute_timeout: Optional[Seconds] = None,
        device_label: str = "", ip: str = "", user_agent: str = "",
    ) -> Session:
        """Starts a session (idle timeout: 30 minutes unless given)."""
        request = _create_request(user_id, attributes, idle_timeout, absolute_timeout, device_label, ip, user_agent)
        return _session(self._t.unary(_SERVICE + "Create", request, pb.CreateResponse).session)

    def get(self, id: str, *, touch: bool = False) -> Session:
        """Reads a session; with `touch`, also slides its idle expiry."""
        return _session(self._t.unary(_SERVICE + "Get", pb.GetRequest(id=id, touch=touch), pb.GetResponse).session)

    def update(
        self, id: str, set: Optional[Mapping[str, str]] = None, remove: Optional[Iterable[str]] = None, *,
        expected_version: Optional[int] = None,
    ) -> Session:
        """Sets and removes attributes; with `expected_version`, only at that version (else VersionConflict)."""
        request = _update_request(id, set, remove, expected_version, self._fence)
        return _session(self._t.unary(_SERVICE + "Update", request, pb.UpdateResponse).session)

    def touch(self, id: str) -> Optional[datetime]:
        """Slides the idle expiry; the new expiry."""
        return time_of(self._t.unary(_SERVICE + "Touch", pb.TouchRequest(id=id), pb.TouchResponse), "expires_at")

    def delete(self, id: str) -> None:
        """Ends a session (log out)."""
        self._t.unary(_SERVICE + "Delete", pb.DeleteRequest(id=id, fence=self._fence), pb.DeleteResponse)

    def list(self, user_id: str) -> List[Session]:
        """Every live session of the user, newest first, by handle (ids are "")."""
        request = pb.ListUserSessionsRequest(user_id=user_id)
        return [_session(s) for s in self._t.unary(_SERVICE + "ListUserSessions", request, pb.ListUserSessionsResponse).sessions]

    def delete_by_handle(self, user_id: str, handle: str) -> None:
        """Ends one session of a user named by its handle ("log out that device")."""
        request = pb.DeleteUserSessionRequest(user_id=user_id, handle=handle)
        self._t.unary(_SERVICE + "DeleteUserSession", request, pb.DeleteUserSessionResponse)

    def delete_all(self, user_id: str, *, except_id: Optional[str] = None) -> int:
        """Ends every session of a user but `except_id`; how many were ended."""
        request = pb.DeleteUserSessionsRequest(user_id=user_id, except_id=except_id or "")
        return self._t.unary(_SERVICE + "DeleteUserSessions", request, pb.DeleteUserSessionsResponse).deleted

    def rotate(self, id: str) -> Session:
        """Moves the session to a new id; the old one stops working at once."""
        return _session(self._t.unary(_SERVICE + "Rotate", pb.RotateRequest(id=id), pb.RotateResponse).session)


class AsyncSessions:
    """Sessions, asyncio: the methods of Sessions, awaited."""

    def __init__(self, transport: AsyncTransport, fence: Optional[Fence] = None) -> None:
        self._t = transport
        #: The fence update and delete carry, or None (unconditional writes).
        self.fence = fence
        self._fence = fence_message(fence)

    def __repr__(self) -> str:
        fence = "" if self.fence is None else f" fenced by {self.fence.lock!r}@{self.fence.fencing_token}"
        return f"<cachelock.aio.AsyncSessions{fence}>"

    def fenced(self, fence: Fenceable) -> "AsyncSessions":
        """As Sessions.fenced."""
        return AsyncSessions(self._t, fence_of(fence))

    async def create(
        self, user_id: str, attributes: Optional[Mapping[str, str]] = None, *,
        idle_timeout: Optional[Seconds] = None, absolute_timeout: Optional[Seconds] = None,
        device_label: str = "", ip: str = "", user_agent: str = "",
    ) -> Session:
        """As Sessions.create."""
        request = _create_request(user_id, attributes, idle_timeout, absolute_timeout, device_label, ip, user_agent)
        return _session((await self._t.unary(_SERVICE + "Create", request, pb.CreateResponse)).session)

    async def get(self, id: str, *, touch: bool = False) -> Session:
        """As Sessions.get."""
        return _session((await self._t.unary(_SERVICE + "Get", pb.GetRequest(id=id, touch=touch), pb.GetResponse)).session)

    async def update(
        self, id: str, set: Optional[Mapping[str, str]] = None, remove: Optional[Iterable[str]] = None, *,
        expected_version: Optional[int] = None,
    ) -> Session:
        """As Sessions.update."""
        request = _update_request(id, set, remove, expected_version, self._fence)
        return _session((await self._t.unary(_SERVICE + "Update", request, pb.UpdateResponse)).session)

    async def touch(self, id: str) -> Optional[datetime]:
        """As Sessions.touch."""
        return time_of(await self._t.unary(_SERVICE + "Touch", pb.TouchRequest(id=id), pb.TouchResponse), "expires_at")

    async def delete(self, id: str) -> None:
        """As Sessions.delete."""
        await self._t.unary(_SERVICE + "Delete", pb.DeleteRequest(id=id, fence=self._fence), pb.DeleteResponse)

    async def list(self, user_id: str) -> List[Session]:
        """As Sessions.list."""
        request = pb.ListUserSessionsRequest(user_id=user_id)
        response = await self._t.unary(_SERVICE + "ListUserSessions", request, pb.ListUserSessionsResponse)
        return [_session(s) for s in response.sessions]

    async def delete_by_handle(self, user_id: str, handle: str) -> None:
        """As Sessions.delete_by_handle."""
        request = pb.DeleteUserSessionRequest(user_id=user_id, handle=handle)
        await self._t.unary(_SERVICE + "DeleteUserSession", request, pb.DeleteUserSessionResponse)

    async def delete_all(self, user_id: str, *, except_id: Optional[str] = None) -> int:
        """As Sessions.delete_all."""
        request = pb.DeleteUserSessionsRequest(user_id=user_id, except_id=except_id or "")
        return (await self._t.unary(_SERVICE + "DeleteUserSessions", request, pb.DeleteUserSessionsResponse)).deleted

    async def rotate(self, id: str) -> Session:
        """As Sessions.rotate."""
        return _session((await self._t.unary(_SERVICE + "Rotate", pb.RotateRequest(id=id), pb.RotateResponse)).session)

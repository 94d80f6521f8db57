"""How a Bridge reaches a room: the connector contract every room backend implements.

A connector never blocks its caller on the network: `join` returns a handle at once and reports
what happens in the room through the `on_event` callback, from whatever thread it runs on. The
Bridge turns those callbacks into messages to itself.

A failure says whether it is permanent (bad credentials, a malformed URL, no permission: trying
again cannot help) or transient. A room-service lookup has three answers, never two: someone
holds the identity, nobody does, or the service could not say; "could not say" is never
"nobody".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import msgspec

from events.catalog import DisconnectReason


class Deadlines(msgspec.Struct, frozen=True, kw_only=True):
    """How long a session waits for a connector before the silence counts as a failure."""

    join_ms: int = 15_000
    join_check_ms: int = 2_000
    """How often a join still in flight looks whether it was overtaken: in the log the fleet
    shares, for another server's bridge that joined since it began, or else in the room
    service, for whether the room holds it. The SDK says nothing of a join overtaken in
    flight until its own 15 s timeout; an ordinary join takes well under this."""
    lookup_ms: int = 5_000


class RoomServerError(Exception):
    """The room server some settings name cannot be used: it is unreachable, its URL is
    malformed, or it refuses the credentials. The message is one redacted line."""


class JoinRequest(msgspec.Struct, frozen=True, kw_only=True):
    room: str
    identity: str
    server: str
    epoch: int
    generation: int
    phone_identity: str


class RoomJoined(msgspec.Struct, frozen=True, kw_only=True):
    participant_sid: str
    participant_count: int
    phone_present: bool
    phone_muted: bool = False


class RoomJoinFailed(msgspec.Struct, frozen=True, kw_only=True):
    error: str
    permanent: bool = False


class RoomDisconnected(msgspec.Struct, frozen=True, kw_only=True):
    reason: DisconnectReason


class RoomData(msgspec.Struct, frozen=True, kw_only=True):
    """A data packet from the phone: a 1-byte rolling sequence number, then PCM16LE."""

    payload: bytes


class PhonePresence(msgspec.Struct, frozen=True, kw_only=True):
    present: bool


class PhoneMuted(msgspec.Struct, frozen=True, kw_only=True):
    """The phone says its microphone is muted (or no longer is): a phone that sends nothing
    while muted is not a stall. The phone says so with the participant attribute
    `MUTED_ATTRIBUTE` set to "true"."""

    muted: bool


MUTED_ATTRIBUTE = "rejoin.muted"


class RoomReconnecting(msgspec.Struct, frozen=True, kw_only=True):
    """The SDK lost its connection and is resuming it (`True`), or resumed it (`False`)."""

    reconnecting: bool


class RoomTokenRefreshed(msgspec.Struct, frozen=True, kw_only=True):
    """The server handed the SDK a fresh token, which a resume uses: without one, a resume
    after the join token's expiry fails. `expires_ms` is its expiry (wall-clock), if it says."""

    expires_ms: int | None


RoomEvent = (
    RoomJoined
    | RoomJoinFailed
    | RoomDisconnected
    | RoomData
    | PhonePresence
    | PhoneMuted
    | RoomReconnecting
    | RoomTokenRefreshed
)


class IdentityHolder(msgspec.Struct, frozen=True, kw_only=True):
    """The participant holding an identity, with the `{server, epoch}` of its metadata."""

    server: str | None
    epoch: int | None


class Nobody(msgspec.Struct, frozen=True, kw_only=True):
    """Nobody holds the identity in the room."""


class LookupFailed(msgspec.Struct, frozen=True, kw_only=True):
    """The room service could not say who holds the identity."""

    error: str
    permanent: bool = False


LookupAnswer = IdentityHolder | Nobody | LookupFailed


class RoomHandle(Protocol):
    def leave(self) -> None:
        """Leave the room and release every resource of this join; safe to call twice."""
        ...


class RoomConnector(Protocol):
    def join(self, request: JoinRequest, on_event: Callable[[RoomEvent], object]) -> RoomHandle: ...

    def lookup_holder(
        self, room: str, identity: str, reply: Callable[[LookupAnswer], object]
    ) -> None:
        """Ask the room service who holds `identity` in `room`; `reply` gets the answer once,
        unless the call hangs (the session holds a deadline of its own)."""
        ...

"""The fleet stream: where servers that share one log record each glasses connection.

Each user has one stream, `fleet/{user}`, that every server appends a `ConnectionRecorded`
to when the user's glasses connect to it, before it acts on the connection. A server whose
bridge is kicked reads the stream to learn whether its connection is still the newest one
anywhere in the fleet: the answer the room service gives, without asking it. Only the store
contract is used (`append` with an expected version, `read_stream`), so every store serves.

The same log answers one more question the room service would: whether another server's bridge
joined the room since a given time (`joined_since`). With the pinned SDK a join overtaken in
flight by a newer join of its identity says nothing until its own 15 s timeout, so a server
whose join is slow looks here for the join that took the identity.
"""

from __future__ import annotations

from typing import NamedTuple

from events.catalog import BridgeJoined, ConnectionRecorded
from events.envelope import Pending, escaped, stream_name
from events.log import EventStore, LogError, WrongExpectedVersion

APPEND_ATTEMPTS = 8
"""Appends that may lose the race for the stream's next version to other servers before the
record gives up (the caller's turn fails, and its supervisor tries it again)."""


def fleet_stream(user: str) -> str:
    """The user's fleet stream; one `/`, where a session's stream has two, so no session's
    stream can take its name."""
    return f"fleet/{escaped(user)}"


def record_connection(store: EventStore, record: Pending) -> None:
    """Append `record` (a `ConnectionRecorded`) to its user's fleet stream, at whatever version
    the stream has reached: other servers append to it too."""
    stream = fleet_stream(record.user)
    for _ in range(APPEND_ATTEMPTS):
        try:
            store.append(stream, store.stream_version(stream), [record])
        except WrongExpectedVersion:
            continue
        return
    msg = f"stream {stream}: {APPEND_ATTEMPTS} appends in a row lost the race to other servers"
    raise LogError(msg)


class Newest(NamedTuple):
    """The highest epoch the fleet stream records, and every server it was recorded by."""

    epoch: int
    servers: frozenset[str]


def newest_connection(store: EventStore, user: str) -> Newest | None:
    """The user's newest glasses connection as the fleet stream tells it; `None` if it records
    none."""
    newest: Newest | None = None
    for envelope in store.read_stream(fleet_stream(user)):
        event = envelope.event
        if not isinstance(event, ConnectionRecorded):
            continue
        if newest is None or event.epoch > newest.epoch:
            newest = Newest(event.epoch, frozenset({envelope.server}))
        elif event.epoch == newest.epoch:
            newest = Newest(event.epoch, newest.servers | {envelope.server})
    return newest


class Join(NamedTuple):
    """A bridge's join as another server's log records it: the server, and when (wall ms)."""

    server: str
    time_ms: int


def joined_since(store: EventStore, user: str, since_ms: int, *, besides: str) -> list[Join]:
    """The joins of `user`'s bridges, on the servers the fleet stream names other than
    `besides`, recorded at or after `since_ms`, in time order. Each server's latest session of
    the user is read: a bridge joins only for the session in progress."""
    servers = {envelope.server for envelope in store.read_stream(fleet_stream(user))}
    joins = []
    for server in sorted(servers - {besides}):
        incarnation = store.last_incarnation(server, user)
        if incarnation == 0:
            continue
        joins += [
            Join(server, envelope.time_ms)
            for envelope in store.read_stream(stream_name(server, user, incarnation))
            if isinstance(envelope.event, BridgeJoined) and envelope.time_ms >= since_ms
        ]
    return sorted(joins, key=lambda join: join.time_ms)

"""The envelope around each stored event, and the names of session streams."""

from __future__ import annotations

import msgspec

from events.catalog import SCHEMA_VERSION, AnyEvent


class Pending(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """An event on its way into the log: everything but the positions the log assigns."""

    event_id: str
    time_ms: int
    server: str
    user: str
    event: AnyEvent

    def at(self, *, position: int, stream: str, version: int) -> Envelope:
        """This event as stored at `position`, as `version` of `stream`."""
        return Envelope(
            position=position,
            stream=stream,
            version=version,
            event_id=self.event_id,
            time_ms=self.time_ms,
            server=self.server,
            user=self.user,
            event=self.event,
        )


class Envelope(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A stored event with its global position and its version within its stream."""

    position: int
    stream: str
    version: int
    event_id: str
    time_ms: int
    server: str
    user: str
    event: AnyEvent
    schema: int = SCHEMA_VERSION


Columns = tuple[int, str, int, str, int, str, str, int]
"""An envelope's fields as a store's columns hold them, beside its record."""


def columns(envelope: Envelope) -> Columns:
    """`envelope`'s position, stream, version, event id, time, server, user and schema: the
    columns of a store's row, in their order, before its record and CRC."""
    e = envelope
    return (e.position, e.stream, e.version, e.event_id, e.time_ms, e.server, e.user, e.schema)


def stream_name(server: str, user: str, incarnation: int) -> str:
    """The stream of one session incarnation, e.g. `prod/alice@x.io/3`.

    `%` and `/` in a name are escaped, so that no two (server, user, incarnation) share a stream:
    server `a` with user `b/c` is `a/b%2Fc/1`, server `a/b` with user `c` is `a%2Fb/c/1`. Names
    without those characters read as they are; streams of older logs are kept as they were
    written, since a stream is only ever compared, never parsed back into its names.
    """
    return f"{escaped(server)}/{escaped(user)}/{incarnation}"


def escaped(name: str) -> str:
    """`name` with `%` and `/` escaped, as it appears in a stream's name."""
    return name.replace("%", "%25").replace("/", "%2F")

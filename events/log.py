"""The event log's contract, shared by every store, and its errors.

`append(stream, expected_version, events)` is atomic for the batch, rejects a wrong expected
version, is idempotent on event id (the same batch appended twice is stored once), and assigns
gap-free global positions starting at 1. A stream's versions start at 1; an empty stream is at 0.
Appends from many threads at once each keep this contract, and each refusal is raised to its
own caller only. `append_group(batches)` appends several batches as `append` would, one after
another, each keeping that contract, and reports each batch's envelopes or refusal to that batch
alone: a store that can (SQLite, PostgreSQL) commits them together, so that they share one
fsync.

Every store also keeps an index of sessions, updated by the same atomic append: which streams
a `SessionOpened` opened and no `SessionDisposed` has closed yet, and each user's latest
incarnation. A runtime starts from it, reading the streams of open sessions only, whatever the
length of the history behind them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple, Protocol, TypeAlias

from events.catalog import SCHEMA_VERSION, HealthState, SessionDisposed, SessionOpened
from events.codec import UndecodableEvent, decode_envelope
from events.envelope import Envelope, Pending, stream_name
from events.projection import replay_stream


class LogError(Exception):
    """Base of the log's errors; its message is one line a person can act on."""


class WrongExpectedVersion(LogError):
    def __init__(self, stream: str, expected: int, actual: int) -> None:
        super().__init__(f"stream {stream}: expected version {expected}, found {actual}")
        self.stream = stream
        self.expected = expected
        self.actual = actual


class DuplicateEventId(LogError):
    """An event id already stored, in a batch that is not the stored one."""


class CorruptLog(LogError):
    """A record that cannot be read; every record before `position` is intact."""

    def __init__(self, source: str, position: int, reason: str) -> None:
        super().__init__(f"{source}: record at position {position} is corrupt: {reason}")
        self.source = source
        self.position = position
        self.reason = reason


def checked_envelope(
    source: str,
    position: int,
    schema: int,
    record: bytes,
    decode: Callable[[int, bytes], Envelope] = decode_envelope,
) -> Envelope:
    """The envelope of the record stored at `position` of `source` with `schema` beside it,
    its checksum already checked, decoded by `decode` (a JSON record by default); `CorruptLog`
    at that position for a record that does not decode, says it is elsewhere, or holds another
    schema than the one stored beside it."""
    try:
        envelope = decode(schema, record)
    except UndecodableEvent as error:
        raise CorruptLog(source, position, str(error)) from error
    if envelope.position != position:
        raise CorruptLog(source, position, f"it says it is at {envelope.position}")
    if schema == SCHEMA_VERSION and envelope.schema != schema:
        msg = f"its schema column says {schema}, the record {envelope.schema}"
        raise CorruptLog(source, position, msg)
    return envelope


class UnreadableLog(LogError):
    """A file that is not an event log at all."""


class Batch(NamedTuple):
    """One append's arguments, for `append_group`."""

    stream: str
    expected_version: int
    events: Sequence[Pending]


Outcome: TypeAlias = list[Envelope] | Exception
"""What became of one batch of a group: its envelopes as stored, or the error `append` would
have raised for it."""


class EventStore(Protocol):
    """Where events live. `read_all` yields in global order and raises `CorruptLog` at the
    first bad record, after yielding every good one before it."""

    def append(
        self, stream: str, expected_version: int, events: Sequence[Pending]
    ) -> list[Envelope]: ...

    def append_group(self, batches: Sequence[Batch]) -> list[Outcome]:
        """Append each batch in order as `append` would; each one's outcome, in that order."""
        ...

    def read_all(self, from_position: int = 1) -> Iterator[Envelope]: ...

    def read_stream(self, stream: str) -> list[Envelope]: ...

    def read_user(self, user: str) -> Iterator[Envelope]:
        """Every event of `user`'s sessions, on every server, and of its fleet stream, in
        global order, found through the index of sessions: what a replay of one user reads
        instead of the whole log. Raises `CorruptLog` at its first bad record."""
        ...

    def stream_version(self, stream: str) -> int: ...

    def open_streams(self, server: str) -> list[str]:
        """The streams of `server`'s open sessions, oldest incarnation first."""
        ...

    def last_incarnation(self, server: str, user: str) -> int:
        """The latest incarnation of `user`'s session on `server`; 0 if it never had one."""
        ...

    def session_users(self, server: str | None = None) -> list[str]:
        """Every user who ever had a session on `server` (on any server: `None`), each once,
        in no given order."""
        ...

    def close(self) -> None: ...


def read_valid_prefix(
    store: EventStore, user: str | None = None
) -> tuple[list[Envelope], CorruptLog | None]:
    """Every readable envelope up to the first corrupt record, and that record's error: of the
    whole log, or of `user`'s events only (`read_user`)."""
    envelopes: list[Envelope] = []
    try:
        envelopes.extend(store.read_all() if user is None else store.read_user(user))
    except CorruptLog as error:
        return envelopes, error
    return envelopes, None


class SessionChange(NamedTuple):
    """What one event does to the index of sessions."""

    server: str
    user: str
    incarnation: int | None
    """Set when the event opens the session; `None` when it closes it."""


def session_change(stored: Pending | Envelope) -> SessionChange | None:
    """How an event changes the index of sessions, if it does."""
    match stored.event:
        case SessionOpened(incarnation=incarnation):
            return SessionChange(stored.server, stored.user, incarnation)
        case SessionDisposed():
            return SessionChange(stored.server, stored.user, None)
    return None


def has_open_session(store: EventStore, server: str, user: str) -> bool:
    """Whether `user` has an open (active or grace) session on `server`, by the store's index."""
    latest = store.last_incarnation(server, user)
    return latest > 0 and stream_name(server, user, latest) in store.open_streams(server)


def told_health(store: EventStore, server: str, user: str) -> HealthState | None:
    """The health `server` last told of `user`, as its log says: `None` when no session is
    open or the glasses are away."""
    latest = store.last_incarnation(server, user)
    stream = stream_name(server, user, latest)
    if latest == 0 or stream not in store.open_streams(server):
        return None
    view = replay_stream(store.read_stream(stream))
    return view.health.state if view is not None and view.health is not None else None


def check_batch(stream: str, events: Sequence[Pending]) -> None:
    """Reject a batch no store should accept, whatever it holds."""
    if not events:
        msg = f"stream {stream}: an append needs at least one event"
        raise LogError(msg)
    ids = [pending.event_id for pending in events]
    if len(set(ids)) != len(ids):
        msg = f"stream {stream}: one batch repeats an event id"
        raise DuplicateEventId(msg)

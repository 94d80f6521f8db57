"""The event log on PostgreSQL, for a fleet whose servers share one log.

Every append transaction first takes `LOCK TABLE rejoin_events IN EXCLUSIVE MODE`, as the
`eventsourcing` library's PostgreSQL recorder does: writers, in any thread or process, commit
one at a time, and each assigns its positions after the last committed one (max + 1). So
positions are gap-free and in commit order, and a reader tailing the log never sees a gap that
a slower transaction fills later. Readers take no lock but the one every SELECT takes, so they
never wait for a writer.

Each row holds the whole envelope as `events.codec` encodes it, with a CRC-32 of the record
seeded with its schema: a damaged record is reported as `CorruptLog` at its position, every
record before it readable. The other columns exist for the constraints and lookups.

The store creates its tables and migrates them, under an advisory lock so that servers starting
together do it once; `rejoin_meta` holds the format and its version, and a database written by
a newer version is refused rather than misread. `rejoin_sessions` is the index of open sessions,
written in the same transaction as the events.

A group of batches (`append_group`, as the journal hands them over) is one transaction: the
checks of all its batches in one query, its rows in one COPY, one commit.
"""

from __future__ import annotations

import contextlib
import itertools
import operator
import zlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import psycopg
import psycopg.sql
from psycopg_pool import ConnectionPool

from events.catalog import SCHEMA_VERSION
from events.codec import UndecodableEvent, decode_current_lines, encode_envelope
from events.envelope import Envelope, Pending, columns
from events.fleet import fleet_stream
from events.locations import shown_location
from events.log import (
    Batch,
    CorruptLog,
    DuplicateEventId,
    LogError,
    Outcome,
    UnreadableLog,
    WrongExpectedVersion,
    check_batch,
    checked_envelope,
    session_change,
)

__all__ = ["FORMAT", "VERSION", "PostgresStore"]

FORMAT = "rejoin-event-log/postgresql"
VERSION = 1
"""The version of the tables this code writes; `_MIGRATIONS[n]` brings version n to n + 1."""

_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        # "C" collation: streams sort by code point, as the other stores sort them.
        """CREATE TABLE rejoin_events (
            position bigint PRIMARY KEY,
            stream text COLLATE "C" NOT NULL,
            version bigint NOT NULL,
            event_id text COLLATE "C" NOT NULL UNIQUE,
            time_ms bigint NOT NULL,
            server text COLLATE "C" NOT NULL,
            "user" text COLLATE "C" NOT NULL,
            schema integer NOT NULL,
            record bytea NOT NULL,
            crc bigint NOT NULL,
            UNIQUE (stream, version)
        )""",
        """CREATE TABLE rejoin_sessions (
            stream text COLLATE "C" PRIMARY KEY,
            server text COLLATE "C" NOT NULL,
            "user" text COLLATE "C" NOT NULL,
            incarnation bigint NOT NULL,
            open boolean NOT NULL
        )""",
        "CREATE INDEX rejoin_sessions_open ON rejoin_sessions (server, open, incarnation)",
        'CREATE INDEX rejoin_sessions_user ON rejoin_sessions (server, "user", incarnation)',
    ),
)
assert len(_MIGRATIONS) == VERSION, "one migration to each version"

_SCHEMA_LOCK = 0x72656A6F696E
"""The advisory lock held while the tables are created or migrated ("rejoin" in ASCII)."""
_READ = "position, schema, record, crc"
_CHUNK = 4096
"""Records one query of `read_all` fetches."""
_INT64 = range(-(2**63), 2**63)
MAX_GROUP = 64
"""Batches one transaction takes at most, as in the SQLite store."""
_POSITION: Callable[[Envelope], int] = operator.attrgetter("position")
_SCHEMA_OF: Callable[[Envelope], int] = operator.attrgetter("schema")

Stored = tuple[int, int, bytes, int]


def _crc(schema: int, record: bytes) -> int:
    return zlib.crc32(record, schema)


def _one_line(error: BaseException) -> str:
    """libpq's messages span lines; a log's errors are one."""
    return " ".join(str(error).split())


class PostgresStore:
    """The log in a PostgreSQL database, named by a `postgresql://` URL (libpq's variables and
    `.pgpass` supply whatever it leaves out, the password included). Thread-safe: a pool of at
    most `max_connections` connections; processes share the log through the database.

    A writer creates the tables, or migrates older ones; a reader (`read_only=True`) writes
    nothing, creates nothing, and refuses a database that holds no rejoin log.
    """

    def __init__(
        self,
        url: str,
        *,
        read_only: bool = False,
        max_group: int = MAX_GROUP,
        max_connections: int = 8,
        connect_timeout_s: int = 10,
    ) -> None:
        if max_group < 1:
            msg = f"max_group is {max_group}; a group holds at least one append"
            raise ValueError(msg)
        self.url = shown_location(url)
        """The log's URL without its password: how messages name it."""
        self.read_only = read_only
        self.max_group = max_group
        self.commits = 0
        """Append transactions committed."""
        try:
            with psycopg.connect(url, autocommit=True, connect_timeout=connect_timeout_s) as db:
                if read_only:
                    self._check_format(db)
                else:
                    self._migrate(db)
        except psycopg.Error as error:
            msg = f"{self.url}: cannot open the log: {_one_line(error)}"
            raise LogError(msg) from None
        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=max_connections,
            kwargs={"autocommit": True, "connect_timeout": connect_timeout_s},
            configure=self._configure,
            name="rejoin-log",
            open=True,
        )

    def _configure(self, db: psycopg.Connection[Any]) -> None:
        if self.read_only:
            db.execute("SET default_transaction_read_only = on")

    def _check_format(self, db: psycopg.Connection[Any]) -> int:
        """The version of the database's log; `UnreadableLog` if it holds none, or one this
        code cannot read."""
        exists = db.execute("SELECT to_regclass('rejoin_meta') IS NOT NULL").fetchone()
        if exists is None or not exists[0]:
            msg = f"{self.url}: not a rejoin event log (it has no rejoin_meta table)"
            raise UnreadableLog(msg)
        meta = dict(db.execute("SELECT key, value FROM rejoin_meta").fetchall())
        if meta.get("format") != FORMAT:
            msg = f"{self.url}: not a rejoin event log (its format is {meta.get('format')!r})"
            raise UnreadableLog(msg)
        try:
            version = int(meta.get("version", ""))
        except ValueError:
            msg = f"{self.url}: the log's version {meta.get('version')!r} is not a number"
            raise UnreadableLog(msg) from None
        if version > VERSION:
            msg = f"{self.url}: log version {version}, this version of rejoin reads 1 to {VERSION}"
            raise UnreadableLog(msg)
        if self.read_only and version < VERSION:
            msg = f"{self.url}: log version {version}; open it with a writer once to migrate it"
            raise UnreadableLog(msg)
        return version

    def _migrate(self, db: psycopg.Connection[Any]) -> None:
        """Create the tables, or bring older ones to `VERSION`, in one transaction."""
        with db.transaction():
            db.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            exists = db.execute("SELECT to_regclass('rejoin_meta') IS NOT NULL").fetchone()
            if exists is not None and exists[0]:
                found = self._check_format(db)
            else:
                db.execute("CREATE TABLE rejoin_meta (key text PRIMARY KEY, value text NOT NULL)")
                db.execute("INSERT INTO rejoin_meta VALUES ('format', %s)", (FORMAT,))
                db.execute("INSERT INTO rejoin_meta VALUES ('version', '0')")
                found = 0
            for migration in _MIGRATIONS[found:]:
                for statement in migration:
                    db.execute(statement.encode())
            db.execute("UPDATE rejoin_meta SET value = %s WHERE key = 'version'", (str(VERSION),))

    def append(
        self, stream: str, expected_version: int, events: Sequence[Pending]
    ) -> list[Envelope]:
        (outcome,) = self.append_group([Batch(stream, expected_version, events)])
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def append_group(self, batches: Sequence[Batch]) -> list[Outcome]:
        """Each batch as `append` would, in transactions of at most `max_group` batches."""
        outcomes: list[Outcome | None] = [None] * len(batches)
        valid: list[int] = []
        for index, batch in enumerate(batches):
            try:
                if self.read_only:
                    msg = f"{self.url}: opened read-only"
                    raise LogError(msg)
                check_batch(batch.stream, batch.events)
                _check_storable(batch)
            except LogError as error:
                outcomes[index] = error
            else:
                valid.append(index)
        for start in range(0, len(valid), self.max_group):
            chosen = valid[start : start + self.max_group]
            try:
                results = self._write_group([batches[index] for index in chosen])
            except psycopg.Error as error:
                appends = "1 append" if len(chosen) == 1 else f"{len(chosen)} appends"
                for index in chosen:
                    msg = (
                        f"{self.url}: stream {batches[index].stream}: not appended: the "
                        f"transaction of its group ({appends}) failed ({_one_line(error)})"
                    )
                    outcomes[index] = LogError(msg)
            else:
                for index, result in zip(chosen, results, strict=True):
                    outcomes[index] = result
        assert all(outcome is not None for outcome in outcomes), "every batch has an outcome"
        return [outcome for outcome in outcomes if outcome is not None]

    def _write_group(self, group: list[Batch]) -> list[Outcome]:
        with self._pool.connection() as db, db.transaction():
            db.execute("LOCK TABLE rejoin_events IN EXCLUSIVE MODE")
            known = _Known.read(db, group)
            outcomes: list[Outcome] = []
            rows: list[tuple[object, ...]] = []
            for batch in group:
                try:
                    outcomes.append(self._place(db, batch, known, rows))
                except LogError as error:
                    outcomes.append(error)
            if rows:
                with db.cursor().copy(
                    "COPY rejoin_events (position, stream, version, event_id, time_ms, server,"
                    ' "user", schema, record, crc) FROM STDIN'
                ) as copy:
                    for row in rows:
                        copy.write_row(row)
            known.write_index(db)
        self.commits += 1
        return outcomes

    def _place(
        self,
        db: psycopg.Connection[Any],
        batch: Batch,
        known: _Known,
        rows: list[tuple[object, ...]],
    ) -> list[Envelope]:
        """The envelopes of one batch of the group: the stored ones if it is stored already,
        or new ones, whose rows join `rows` and whose effects join `known`."""
        stream, expected_version, events = batch
        ids = [pending.event_id for pending in events]
        if any(event_id in known.stored or event_id in known.placed for event_id in ids):
            return self._stored_batch(db, stream, ids, known)
        version = known.versions.get(stream, 0)
        if version != expected_version:
            raise WrongExpectedVersion(stream, expected_version, version)
        envelopes = [
            pending.at(
                position=known.last + offset + 1, stream=stream, version=version + offset + 1
            )
            for offset, pending in enumerate(events)
        ]
        for envelope in envelopes:
            record = encode_envelope(envelope)
            rows.append(
                (
                    *columns(envelope),
                    record,
                    _crc(envelope.schema, record),
                )
            )
            known.placed[envelope.event_id] = envelope
            known.index(stream, envelope)
        known.versions[stream] = version + len(events)
        known.last += len(events)
        return envelopes

    def _stored_batch(
        self, db: psycopg.Connection[Any], stream: str, ids: list[str], known: _Known
    ) -> list[Envelope]:
        found = {event_id: known.placed[event_id] for event_id in ids if event_id in known.placed}
        missing = [event_id for event_id in ids if event_id not in found]
        if missing:
            rows: list[Stored] = db.execute(
                f"SELECT {_READ} FROM rejoin_events WHERE event_id = ANY(%s) ORDER BY position",
                (missing,),
            ).fetchall()
            for row in rows:
                envelope = self._decode(row)
                found[envelope.event_id] = envelope
        stored = sorted(found.values(), key=_POSITION)
        if [e.event_id for e in stored] != ids or any(e.stream != stream for e in stored):
            msg = f"stream {stream}: event id {ids[0]} is stored with other events"
            raise DuplicateEventId(msg)
        return stored

    @contextlib.contextmanager
    def _reading(self) -> Iterator[psycopg.Connection[Any]]:
        """A connection of the pool, for one read: its failure is a `LogError`."""
        try:
            with self._pool.connection() as db:
                yield db
        except psycopg.Error as error:
            msg = f"{self.url}: cannot read the log: {_one_line(error)}"
            raise LogError(msg) from None

    def read_all(self, from_position: int = 1) -> Iterator[Envelope]:
        return itertools.chain.from_iterable(self._chunks(max(from_position, 1)))

    def _chunks(self, start: int) -> Iterator[list[Envelope]]:
        while True:
            with self._reading() as db:
                rows: list[Stored] = db.execute(
                    f"SELECT {_READ} FROM rejoin_events WHERE position >= %s"
                    f" ORDER BY position LIMIT {_CHUNK}",
                    (start,),
                    binary=True,
                ).fetchall()
            if not rows:
                return
            envelopes = self._whole_chunk(start, rows)
            if envelopes is None:
                envelopes = []
                for expected, row in enumerate(rows, start):
                    if row[0] != expected:
                        yield envelopes
                        raise CorruptLog(self.url, expected, "the record is missing")
                    try:
                        envelopes.append(self._decode(row))
                    except CorruptLog:
                        yield envelopes
                        raise
            yield envelopes
            start += len(rows)

    @staticmethod
    def _whole_chunk(start: int, rows: list[Stored]) -> list[Envelope] | None:
        """The chunk's envelopes, decoded at once, if every check of every record holds;
        `None` if one fails, for a read record by record to name it."""
        if rows[-1][0] != start + len(rows) - 1:
            return None
        if any(
            schema != SCHEMA_VERSION or _crc(schema, record) != crc
            for _, schema, record, crc in rows
        ):
            return None
        try:
            envelopes = decode_current_lines(b"\n".join(row[2] for row in rows))
        except UndecodableEvent:
            return None
        if list(map(_POSITION, envelopes)) != list(range(start, start + len(rows))):
            return None
        if list(map(_SCHEMA_OF, envelopes)).count(SCHEMA_VERSION) != len(rows):
            return None
        return envelopes

    def read_stream(self, stream: str) -> list[Envelope]:
        with self._reading() as db:
            rows: list[Stored] = db.execute(
                f"SELECT {_READ} FROM rejoin_events WHERE stream = %s ORDER BY version",
                (stream,),
                binary=True,
            ).fetchall()
        return [self._decode(row) for row in rows]

    def read_user(self, user: str) -> Iterator[Envelope]:
        with self._reading() as db:
            rows: list[Stored] = db.execute(
                f"SELECT {_READ} FROM rejoin_events WHERE stream IN"
                ' (SELECT stream FROM rejoin_sessions WHERE "user" = %s UNION ALL SELECT %s)'
                " ORDER BY position",
                (user, fleet_stream(user)),
                binary=True,
            ).fetchall()
        # A record is the user's by what it says, not by the columns beside it.
        return (
            envelope for envelope in (self._decode(row) for row in rows) if envelope.user == user
        )

    def stream_version(self, stream: str) -> int:
        with self._reading() as db:
            found = db.execute(
                "SELECT COALESCE(MAX(version), 0) FROM rejoin_events WHERE stream = %s", (stream,)
            ).fetchone()
        return int(found[0]) if found is not None else 0

    def open_streams(self, server: str) -> list[str]:
        with self._reading() as db:
            rows = db.execute(
                "SELECT stream FROM rejoin_sessions WHERE server = %s AND open"
                " ORDER BY incarnation, stream",
                (server,),
            ).fetchall()
        return [str(stream) for (stream,) in rows]

    def last_incarnation(self, server: str, user: str) -> int:
        with self._reading() as db:
            found = db.execute(
                "SELECT COALESCE(MAX(incarnation), 0) FROM rejoin_sessions"
                ' WHERE server = %s AND "user" = %s',
                (server, user),
            ).fetchone()
        return int(found[0]) if found is not None else 0

    def session_users(self, server: str | None = None) -> list[str]:
        with self._reading() as db:
            rows = db.execute(
                'SELECT DISTINCT "user" FROM rejoin_sessions'
                + ("" if server is None else " WHERE server = %s"),
                () if server is None else (server,),
            ).fetchall()
        return [str(user) for (user,) in rows]

    def close(self) -> None:
        self._pool.close()

    def _decode(self, row: Stored) -> Envelope:
        """The envelope of one record, checked on its own."""
        position, schema, record, crc = row
        if _crc(schema, record) != crc:
            raise CorruptLog(self.url, position, "checksum mismatch")
        return checked_envelope(self.url, position, schema, record)


def _check_storable(batch: Batch) -> None:
    """Refuse, before its group's transaction, a batch PostgreSQL would refuse in it: a refusal
    there would fail the whole group."""
    for pending in batch.events:
        texts = (batch.stream, pending.event_id, pending.server, pending.user)
        if any("\x00" in text for text in texts):
            msg = f"stream {batch.stream}: a name or id holds a NUL character, which the log cannot"
            raise LogError(msg)
        if (
            pending.time_ms not in _INT64
            or batch.expected_version + len(batch.events) not in _INT64
        ):
            msg = f"stream {batch.stream}: a number in the batch does not fit the log"
            raise LogError(msg)


class _Known:
    """The log as a group's transaction has it so far: each of its streams' version, which of
    its event ids were stored before it, what it placed, the last position, and the changes to
    the index of sessions."""

    __slots__ = ("closed", "last", "opened", "placed", "stored", "versions")

    def __init__(self, versions: dict[str, int], stored: set[str], last: int) -> None:
        self.versions = versions
        self.stored = stored
        self.last = last
        self.placed: dict[str, Envelope] = {}
        self.opened: dict[str, tuple[str, str, int, bool]] = {}
        """Streams the group opens: their server, user, incarnation and whether still open."""
        self.closed: set[str] = set()
        """Streams opened before the group that it closes."""

    @classmethod
    def read(cls, db: psycopg.Connection[Any], group: list[Batch]) -> _Known:
        """Read in one query, under the table's lock: what the group's checks need."""
        streams = list({batch.stream for batch in group})
        ids = [pending.event_id for batch in group for pending in batch.events]
        rows = db.execute(
            "SELECT 0, stream, MAX(version) FROM rejoin_events WHERE stream = ANY(%s)"
            " GROUP BY stream"
            " UNION ALL SELECT 1, event_id, 0 FROM rejoin_events WHERE event_id = ANY(%s)"
            " UNION ALL SELECT 2, '', COALESCE(MAX(position), 0) FROM rejoin_events",
            (streams, ids),
        ).fetchall()
        versions: dict[str, int] = {}
        stored: set[str] = set()
        last = 0
        for kind, name, number in rows:
            if kind == 0:
                versions[name] = number
            elif kind == 1:
                stored.add(name)
            else:
                last = number
        return cls(versions, stored, last)

    def index(self, stream: str, envelope: Envelope) -> None:
        change = session_change(envelope)
        if change is None:
            return
        if change.incarnation is not None:
            self.opened[stream] = (change.server, change.user, change.incarnation, True)
        elif stream in self.opened:
            self.opened[stream] = (*self.opened[stream][:3], False)
        else:
            self.closed.add(stream)

    def write_index(self, db: psycopg.Connection[Any]) -> None:
        with db.cursor() as cursor:
            if self.opened:
                cursor.executemany(
                    'INSERT INTO rejoin_sessions (stream, server, "user", incarnation, open)'
                    " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (stream) DO UPDATE SET"
                    ' server = excluded.server, "user" = excluded."user",'
                    " incarnation = excluded.incarnation, open = excluded.open",
                    [(stream, *opened) for stream, opened in self.opened.items()],
                )
            if self.closed:
                cursor.execute(
                    "UPDATE rejoin_sessions SET open = false WHERE stream = ANY(%s)",
                    (list(self.closed),),
                )

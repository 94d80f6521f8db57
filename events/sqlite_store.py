"""The embedded event store: one SQLite file in WAL mode.

Positions are assigned inside the append's write transaction (max + 1), so they are gap-free and
insert order is commit order. Each row holds the whole envelope as one JSON record with a CRC, so
a flipped byte is found on read and reported with its position while every record before it
stays readable; the other columns exist for the uniqueness constraints and lookups. Reading
fetches only the record (fetching ten columns per row cost more than decoding).
"""

from __future__ import annotations

import sqlite3
import threading
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

from events.codec import UndecodableEvent, decode_envelope, encode_envelope
from events.envelope import Envelope, Pending
from events.log import (
    CorruptLog,
    DuplicateEventId,
    UnreadableLog,
    WrongExpectedVersion,
    check_batch,
)

FORMAT = "rejoin-event-log/2"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    position INTEGER PRIMARY KEY,
    stream TEXT NOT NULL,
    version INTEGER NOT NULL,
    event_id TEXT NOT NULL UNIQUE,
    time_ms INTEGER NOT NULL,
    server TEXT NOT NULL,
    user TEXT NOT NULL,
    schema INTEGER NOT NULL,
    record BLOB NOT NULL,
    crc INTEGER NOT NULL,
    UNIQUE (stream, version)
);
"""

_COLUMNS = "position, stream, version, event_id, time_ms, server, user, schema, record, crc"
_READ = "position, schema, record, crc"

Row = tuple[int, str, int, str, int, str, str, int, bytes, int]
Stored = tuple[int, int, bytes, int]


def _crc(schema: int, record: bytes) -> int:
    """CRC-32 of a record, seeded with its schema so a changed schema column is caught too."""
    return zlib.crc32(record, schema)


class SQLiteStore:
    """The log in one SQLite file. Thread-safe: one connection behind a lock."""

    def __init__(
        self, path: str | Path, *, synchronous: Literal["FULL", "NORMAL"] = "FULL"
    ) -> None:
        self.path = str(path)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={synchronous}")
            self._db.executescript(_SCHEMA)
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('format', ?)", (FORMAT,))
            (found,) = self._db.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
        except sqlite3.DatabaseError as error:
            msg = f"{self.path}: not a rejoin event log ({error})"
            raise UnreadableLog(msg) from error
        if found != FORMAT:
            msg = f"{self.path}: log format {found!r}, this version reads {FORMAT!r}"
            raise UnreadableLog(msg)

    def append(
        self, stream: str, expected_version: int, events: Sequence[Pending]
    ) -> list[Envelope]:
        check_batch(stream, events)
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                stored = self._stored_batch(stream, events)
                if stored is not None:
                    db.execute("COMMIT")
                    return stored
                (version,) = db.execute(
                    "SELECT COALESCE(MAX(version), 0) FROM events WHERE stream = ?", (stream,)
                ).fetchone()
                if version != expected_version:
                    raise WrongExpectedVersion(stream, expected_version, version)
                (last,) = db.execute("SELECT COALESCE(MAX(position), 0) FROM events").fetchone()
                envelopes = [
                    pending.at(
                        position=last + offset + 1, stream=stream, version=version + offset + 1
                    )
                    for offset, pending in enumerate(events)
                ]
                db.executemany(
                    f"INSERT INTO events ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [_row(envelope) for envelope in envelopes],
                )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return envelopes

    def _stored_batch(self, stream: str, events: Sequence[Pending]) -> list[Envelope] | None:
        ids = [pending.event_id for pending in events]
        marks = ", ".join("?" * len(ids))
        rows: list[tuple[str, str, int, int, bytes, int]] = self._db.execute(
            f"SELECT event_id, stream, {_READ} FROM events WHERE event_id IN ({marks})"
            " ORDER BY position",
            ids,
        ).fetchall()
        if not rows:
            return None
        if [row[0] for row in rows] != ids or any(row[1] != stream for row in rows):
            msg = f"stream {stream}: event id {ids[0]} is stored with other events"
            raise DuplicateEventId(msg)
        return [self._decode(row[2:]) for row in rows]

    def read_all(self, from_position: int = 1) -> Iterator[Envelope]:
        expected = max(from_position, 1)
        while True:
            with self._lock:
                try:
                    rows: list[Stored] = self._db.execute(
                        f"SELECT {_READ} FROM events WHERE position >= ?"
                        " ORDER BY position LIMIT 4096",
                        (expected,),
                    ).fetchall()
                except sqlite3.DatabaseError as error:
                    raise CorruptLog(self.path, expected, str(error)) from error
            if not rows:
                return
            for row in rows:
                if row[0] != expected:
                    raise CorruptLog(self.path, expected, "the record is missing")
                yield self._decode(row)
                expected += 1

    def read_stream(self, stream: str) -> list[Envelope]:
        with self._lock:
            rows: list[Stored] = self._db.execute(
                f"SELECT {_READ} FROM events WHERE stream = ? ORDER BY version", (stream,)
            ).fetchall()
        return [self._decode(row) for row in rows]

    def stream_version(self, stream: str) -> int:
        with self._lock:
            (version,) = self._db.execute(
                "SELECT COALESCE(MAX(version), 0) FROM events WHERE stream = ?", (stream,)
            ).fetchone()
        return int(version)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _decode(self, row: Stored) -> Envelope:
        position, schema, record, crc = row
        if _crc(schema, record) != crc:
            raise CorruptLog(self.path, position, "checksum mismatch")
        try:
            envelope = decode_envelope(schema, record)
        except UndecodableEvent as error:
            raise CorruptLog(self.path, position, str(error)) from error
        if envelope.position != position:
            raise CorruptLog(self.path, position, f"it says it is at {envelope.position}")
        return envelope


def _row(envelope: Envelope) -> Row:
    e = envelope
    record = encode_envelope(e)
    return (
        e.position,
        e.stream,
        e.version,
        e.event_id,
        e.time_ms,
        e.server,
        e.user,
        e.schema,
        record,
        _crc(e.schema, record),
    )

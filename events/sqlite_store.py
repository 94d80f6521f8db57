"""The embedded event store: one SQLite file in WAL mode.

Positions are assigned inside the append's write transaction (max + 1), so they are gap-free and
insert order is commit order. Each row holds the whole envelope as one JSON record with a CRC, so
a flipped byte is found on read and reported with its position while every record before it
stays readable; the other columns exist for the uniqueness constraints and lookups. Reading
fetches only the record (fetching ten columns per row cost more than decoding).

Appends commit in groups, many callers' batches in one transaction with one fsync, each
batch keeping the contract of a lone append (`events.sqlite_group_commit`).

The `sessions` table is the index of open sessions (format 3). Format 4 chains the CRCs: each
record's CRC continues the one stored at the position before it, so a run of records is checked
by one CRC over all of them, and replay reads, checks and decodes a chunk of the log in one
query, one CRC and one decode rather than record by record (`events.sqlite_reader`). Format 5
stores each record in msgpack instead of JSON (`events.codec`), which costs less to read. A
writer that opens an older log upgrades it (format 2 builds the index once from the events) and
chains and packs the records it appends from then on; the records before keep the encoding and
the CRCs they were written with. A reader reads every format.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

from events.codec import (
    decode_envelope,
)
from events.envelope import Envelope, Pending
from events.fleet import fleet_stream
from events.log import (
    Batch,
    LogError,
    Outcome,
    UnreadableLog,
    check_batch,
)
from events.sqlite_group_commit import (
    INDEXED,
    INSERT_CHANGES,
    MAX_GROUP,
    GroupCommit,
    insert_rows,
    session_row,
)
from events.sqlite_reader import BEFORE, READ, RecordReader

FORMAT = "rejoin-event-log/5"
READABLE = frozenset({"rejoin-event-log/2", "rejoin-event-log/3", "rejoin-event-log/4", FORMAT})
"""Formats a reader reads; a writer upgrades a log of an older one to 5 when it opens it."""
_NOWHERE = 2**63
"""Where the chained CRCs begin in a log of format 2 or 3, and the msgpack records in one of
format 2 to 4: nowhere."""
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS events (
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
    )""",
)

_SESSIONS = (
    """CREATE TABLE IF NOT EXISTS sessions (
        stream TEXT PRIMARY KEY,
        server TEXT NOT NULL,
        user TEXT NOT NULL,
        incarnation INTEGER NOT NULL,
        open INTEGER NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS sessions_open ON sessions (server, open, incarnation)",
    "CREATE INDEX IF NOT EXISTS sessions_user ON sessions (server, user, incarnation)",
)
"""Statements one by one: `executescript` would commit the transaction they belong to."""

_USERINDEXED = f"""SELECT {READ}, {BEFORE} FROM events WHERE stream IN
    (SELECT stream FROM sessions WHERE user = ? UNION ALL SELECT ?) ORDER BY position"""
"""A user's events: its sessions' streams by the index of sessions, and its fleet stream, each
found by the index of streams; the log is not scanned."""
_USER_SCANNED = f"SELECT {READ}, {BEFORE} FROM events WHERE user = ? ORDER BY position"
"""A user's events in a log of format 2, which has no index of sessions: a scan of the log."""
_BUSY_S = 5.0
"""How long a writer waits for another connection's lock: SQLite's own wait (`sqlite3.connect`),
and the tries at WAL mode, which SQLite refuses without waiting."""


class SQLiteStore:
    """The log in one SQLite file. Thread-safe: one connection behind a lock; concurrent
    appends commit in groups of at most `max_group` batches (1 commits each on its own).

    A writer creates the file (and its folder must exist) or opens an existing rejoin log; it
    refuses any other file before writing a byte to it. A reader (`read_only=True`) never writes
    to the file, creates no table, and refuses a file that is not a rejoin log.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: Literal["FULL", "NORMAL"] = "FULL",
        read_only: bool = False,
        max_group: int = MAX_GROUP,
    ) -> None:
        if max_group < 1:
            msg = f"max_group is {max_group}; a group holds at least one append"
            raise ValueError(msg)
        self.path = str(path)
        self.read_only = read_only
        self.max_group = max_group
        self._lock = threading.Lock()
        """Held while the connection is in use: by a read, or by the leader writing a group."""
        self._db = self._open_reader() if read_only else self._open_writer(synchronous)
        self._reader = RecordReader(
            self.path,
            self._db,
            self._lock,
            chained_from=self._read_position(self._db, "chained_from", 4),
            packed_from=self._read_position(self._db, "packed_from", 5),
        )
        self._writer = GroupCommit(self.path, self._db, self._lock, self._reader, max_group)
        self._reads, self._reads_lock = self._db, self._lock
        if not read_only:
            # A writer's point reads (a new session's incarnation, a restarted session's
            # stream) go through a second connection: in WAL mode it reads the last commit at
            # once, where the writer's would wait for the group being written, one fsync.
            self._reads = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._reads_lock = threading.Lock()

    def _open_writer(self, synchronous: str) -> sqlite3.Connection:
        folder = Path(self.path).parent
        if not folder.is_dir():
            msg = f"{self.path}: cannot create the log: there is no folder {folder}"
            raise LogError(msg)
        try:
            db = sqlite3.connect(
                self.path, timeout=_BUSY_S, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as error:
            msg = f"{self.path}: cannot open the log: {error}"
            raise LogError(msg) from error
        try:
            # One writer at a time creates or upgrades the log, and the next one sees all of it:
            # two servers starting on a new file at once each found it empty and created it.
            db.execute("BEGIN IMMEDIATE")
            for statement in INDEXED:
                db.execute(statement)
            tables = {
                name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
            found = self._check_format(db) if tables else None
            if found is None:
                for statement in (*_SCHEMA, *_SESSIONS):
                    db.execute(statement)
                db.execute("INSERT INTO meta VALUES ('format', ?)", (FORMAT,))
                db.execute("INSERT INTO meta VALUES ('chained_from', 1)")
                db.execute("INSERT INTO meta VALUES ('packed_from', 1)")
            elif found != FORMAT:
                self._upgrade(db, found)
            db.execute("COMMIT")
            # Only once it is known to be a rejoin log: a file of another kind is left as it was.
            _write_ahead(db)
            db.execute(f"PRAGMA synchronous={synchronous}")
        except sqlite3.Error as error:
            db.close()
            msg = f"{self.path}: not a rejoin event log ({error})"
            raise UnreadableLog(msg) from error
        except BaseException:
            db.close()  # which takes back a creation or an upgrade left half done
            raise
        return db

    def _open_reader(self) -> sqlite3.Connection:
        file = Path(self.path)
        if not file.is_file():
            msg = f"{self.path}: no such log file"
            raise LogError(msg)
        if file.stat().st_size == 0:
            msg = f"{self.path}: an empty file, not a rejoin event log"
            raise UnreadableLog(msg)
        wal = Path(f"{self.path}-wal")
        # Without a write-ahead log nothing is waiting to be checkpointed and no writer has the
        # file open (a writer keeps its -wal while it runs): read it as immutable, which writes
        # nothing, not even the -wal and -shm files a read-only open would create beside it.
        pending = wal.exists() and wal.stat().st_size > 0
        mode = "mode=ro" if pending else "immutable=1"
        uri = f"file:{urllib.parse.quote(str(file.resolve()))}?{mode}"
        try:
            db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA cell_size_check=ON")
            self._check_format(db)
        except sqlite3.OperationalError as error:
            if pending and "unable to open" in str(error):
                msg = (
                    f"{self.path}: its write-ahead log {wal.name} holds records not yet in the "
                    "file, and its folder cannot be written; copy both files to a writable "
                    "folder to read them"
                )
            else:
                msg = f"{self.path}: not a readable rejoin event log ({error})"
            raise UnreadableLog(msg) from error
        except sqlite3.Error as error:
            msg = f"{self.path}: not a readable rejoin event log ({error})"
            raise UnreadableLog(msg) from error
        return db

    def _check_format(self, db: sqlite3.Connection) -> str:
        try:
            found = db.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
        except sqlite3.OperationalError as error:
            if "no such table" not in str(error):
                raise
            found = None
        except UnicodeDecodeError as error:
            # A damaged page can leave bytes that are not UTF-8 in what the query reads or reports.
            msg = f"{self.path}: not a readable rejoin event log (its format record: {error})"
            raise UnreadableLog(msg) from error
        if found is None:
            msg = f"{self.path}: not a rejoin event log (it has no rejoin format record)"
            raise UnreadableLog(msg)
        if found[0] not in READABLE:
            msg = f"{self.path}: log format {found[0]!r}, this version reads {sorted(READABLE)}"
            raise UnreadableLog(msg)
        return str(found[0])

    def _upgrade(self, db: sqlite3.Connection, found: str) -> None:
        """Format 2, 3 or 4 to 5, in the opening writer's transaction: from 2, build the index
        of sessions from the events; from 2 or 3, chain the CRCs of the records appended from
        now on; then pack those records in msgpack. Records already written keep their JSON
        and their CRCs: recomputing them would hide any damage they have."""
        if found == "rejoin-event-log/2":
            for statement in _SESSIONS:
                db.execute(statement)
            rows = db.execute(
                "SELECT stream, schema, record FROM events ORDER BY position"
            ).fetchall()
            changes = [session_row(row[0], decode_envelope(row[1], row[2])) for row in rows]
            insert_rows(db, INSERT_CHANGES, [change for change in changes if change is not None])
        chained = found == "rejoin-event-log/4"
        for key in ("packed_from",) if chained else ("chained_from", "packed_from"):
            db.execute(
                "INSERT INTO meta SELECT ?, COALESCE(MAX(position), 0) + 1 FROM events", (key,)
            )
        db.execute("UPDATE meta SET value = ? WHERE key = 'format'", (FORMAT,))

    def _read_position(self, db: sqlite3.Connection, key: str, since: int) -> int:
        """The first position from which the records are as `key` says (`chained_from`,
        `packed_from`): 1 for a log created in format `since` or a later one, the first
        appended after the upgrade for an older one, none for a log still older than `since`."""
        try:
            found = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            if found is None:
                number = int(self._check_format(db).rsplit("/", 1)[1])
                if number >= since:
                    msg = f"{self.path}: a format {number} log that does not say its {key}"
                    raise UnreadableLog(msg)
                return _NOWHERE
            return int(found[0])
        except (sqlite3.Error, ValueError, TypeError) as error:
            msg = f"{self.path}: not a readable rejoin event log ({error})"
            raise UnreadableLog(msg) from error

    def append(
        self, stream: str, expected_version: int, events: Sequence[Pending]
    ) -> list[Envelope]:
        if self.read_only:
            msg = f"{self.path}: opened read-only"
            raise LogError(msg)
        check_batch(stream, events)
        return self._writer.append(stream, expected_version, events)

    def append_group(self, batches: Sequence[Batch]) -> list[Outcome]:
        """Write the batches in as few transactions as `max_group` allows, each batch in a
        savepoint of its own as a group of callers' is; each batch's envelopes or error."""
        if self.read_only:
            msg = f"{self.path}: opened read-only"
            return [LogError(msg) for _ in batches]
        return self._writer.append_group(batches)

    @property
    def commits(self) -> int:
        """Transactions committed, each with one fsync under `synchronous=FULL`."""
        return self._writer.commits

    @property
    def grouped(self) -> int:
        """Batches those transactions took, refused ones too: `grouped / commits` is the mean
        size of a group."""
        return self._writer.grouped

    @property
    def queued(self) -> int:
        """Appends waiting for a group to take them."""
        return self._writer.queued

    def read_all(self, from_position: int = 1) -> Iterator[Envelope]:
        return self._reader.read_all(from_position)

    def read_stream(self, stream: str) -> list[Envelope]:
        with self._reads_lock:
            rows: list[tuple[int, int, bytes, int, int | None]] = self._reads.execute(
                f"SELECT {READ}, {BEFORE} FROM events WHERE stream = ? ORDER BY version",
                (stream,),
            ).fetchall()
        return [self._reader.decode(row[:4], row[4]) for row in rows]

    def read_user(self, user: str) -> Iterator[Envelope]:
        with self._reads_lock:
            indexed = self._indexed(self._reads)
            query, arguments = (
                (_USERINDEXED, (user, fleet_stream(user))) if indexed else (_USER_SCANNED, (user,))
            )
            rows: list[tuple[int, int, bytes, int, int | None]] = self._reads.execute(
                query, arguments
            ).fetchall()
        # A record is the user's by what it says, not by the columns beside it.
        return (
            envelope
            for envelope in (self._reader.decode(row[:4], row[4]) for row in rows)
            if envelope.user == user
        )

    @staticmethod
    def _indexed(db: sqlite3.Connection) -> bool:
        """Whether the log has its index of sessions: every format since 3 has."""
        found = db.execute("SELECT 1 FROM sqlite_master WHERE name = 'sessions'").fetchone()
        return found is not None

    def stream_version(self, stream: str) -> int:
        with self._reads_lock:
            (version,) = self._reads.execute(
                "SELECT COALESCE(MAX(version), 0) FROM events WHERE stream = ?", (stream,)
            ).fetchone()
        return int(version)

    def open_streams(self, server: str) -> list[str]:
        with self._reads_lock:
            rows = self._reads.execute(
                "SELECT stream FROM sessions WHERE server = ? AND open = 1"
                " ORDER BY incarnation, stream",
                (server,),
            ).fetchall()
        return [stream for (stream,) in rows]

    def last_incarnation(self, server: str, user: str) -> int:
        with self._reads_lock:
            (incarnation,) = self._reads.execute(
                "SELECT COALESCE(MAX(incarnation), 0) FROM sessions WHERE server = ? AND user = ?",
                (server, user),
            ).fetchone()
        return int(incarnation)

    def session_users(self, server: str | None = None) -> list[str]:
        where, arguments = ("", ()) if server is None else (" WHERE server = ?", (server,))
        with self._reads_lock:
            # A log of format 2 has no index of sessions: its events name its users.
            table = "sessions" if self._indexed(self._reads) else "events"
            rows = self._reads.execute(
                f"SELECT DISTINCT user FROM {table}{where}", arguments
            ).fetchall()
        return [user for (user,) in rows]

    def close(self) -> None:
        with self._reads_lock:
            self._reads.close()
        with self._lock:
            self._db.close()


def _write_ahead(db: sqlite3.Connection) -> None:
    """Put the log in WAL mode. The switch needs the file to itself, and SQLite refuses it at
    once, without waiting, while another connection is opening the same new log: it is tried
    again for as long as a connection waits for a lock (`_BUSY_S`)."""
    deadline = time.monotonic() + _BUSY_S
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)
        else:
            return

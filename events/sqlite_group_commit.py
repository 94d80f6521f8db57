"""Group commit: the appends of many callers written in one SQLite transaction, one fsync.

Callers that arrive while a transaction is being written queue their batches, and the first of
them then writes all of those in one transaction: with one INSERT for all of them when every
batch is to be written as it stands, else each batch in a savepoint of its own. Each batch keeps
the contract of a lone append (atomic, its expected version checked, idempotent, durable before
`append` returns, its error raised to its own caller), while many sessions appending at once
share the fsync that bounds a lone writer (about 0.3 ms here). `append_group` hands over many
batches at once, from one caller (the pool executor's journal), and writes them the same way,
in groups of at most `max_group`. Rows go in through a view whose trigger also keeps the index
of sessions (`INDEXED`), in the same statement.
"""

from __future__ import annotations

import contextlib
import functools
import sqlite3
import threading
from collections.abc import Sequence
from typing import NamedTuple

import msgspec

from events.codec import RECORD_SEPARATOR, encode_record
from events.envelope import Envelope, Pending, columns
from events.log import (
    Batch,
    DuplicateEventId,
    LogError,
    Outcome,
    SessionChange,
    WrongExpectedVersion,
    check_batch,
    session_change,
)
from events.sqlite_reader import BEFORE, READ, RecordReader, chained_crc

__all__ = ["INDEXED", "INSERT_CHANGES", "MAX_GROUP", "GroupCommit", "insert_rows", "session_row"]

_COLUMNS = "position, stream, version, event_id, time_ms, server, user, schema, record, crc"
_KNOWN = """SELECT
    (SELECT json_group_object(stream, version) FROM (SELECT stream, MAX(version) AS version
        FROM events WHERE stream IN (SELECT value FROM json_each(?1)) GROUP BY stream)),
    (SELECT json_group_array(event_id) FROM events
        WHERE event_id IN (SELECT value FROM json_each(?2))),
    (SELECT json_array(position, crc) FROM events ORDER BY position DESC LIMIT 1)"""
"""What a group is checked against, in one row: the latest version of each of its streams
(a JSON array of names in), which of its event ids are stored (likewise), and the last
position with its CRC. One text for any group, so SQLite prepares it once."""
_JSON = msgspec.json.Encoder()
_VERSIONS = msgspec.json.Decoder(dict[str, int])
_IDS = msgspec.json.Decoder(list[str])
_LAST = msgspec.json.Decoder(tuple[int, int])
_PARAMETERS = 32_766 if sqlite3.sqlite_version_info >= (3, 32) else 999
"""Parameters one statement binds at most (SQLite's limit, which was 999 before 3.32)."""
_REMEMBERED = 65_536
"""Streams a writer remembers the versions of at most (about 10 MB): more, and it starts over
from the log, which costs a query per group until it has seen them again."""
_SESSION_RULES = """
        INSERT OR REPLACE INTO sessions (stream, server, user, incarnation, open)
            SELECT NEW.stream, NEW.server, NEW.user, NEW.opens, 1 WHERE NEW.opens IS NOT NULL;
        UPDATE sessions SET open = 0 WHERE NEW.closes IS NOT NULL AND stream = NEW.stream;"""
"""How a row with `stream`, `server`, `user`, `opens` and `closes` changes the index of
sessions: the body of both triggers below, written once."""
INDEXED = (
    """CREATE TEMP VIEW IF NOT EXISTS session_changes (stream, server, user, opens, closes) AS
        SELECT NULL, NULL, NULL, NULL, NULL WHERE 0""",
    f"""CREATE TEMP TRIGGER IF NOT EXISTS session_changes_insert
    INSTEAD OF INSERT ON session_changes BEGIN {_SESSION_RULES}
    END""",
    f"""CREATE TEMP VIEW IF NOT EXISTS indexed_events ({_COLUMNS}, opens, closes) AS
        SELECT {_COLUMNS}, NULL, NULL FROM events WHERE 0""",
    f"""CREATE TEMP TRIGGER IF NOT EXISTS indexed_events_insert
    INSTEAD OF INSERT ON indexed_events BEGIN
        INSERT INTO events ({_COLUMNS}) VALUES (NEW.position, NEW.stream, NEW.version,
            NEW.event_id, NEW.time_ms, NEW.server, NEW.user, NEW.schema, NEW.record, NEW.crc);
        {_SESSION_RULES}
    END""",
)
"""What a writer appends through, on its own connection only (nothing of it is in the file): a
row of `events` with the session it opens (`opens`, the incarnation) or closes (`closes`, 1),
which the triggers index in the same statement. An INSERT of a group's rows is then one step
of SQLite for the events and the index both, one wait for the GIL instead of two, and a row
that fails takes back its whole statement, index included. An upgrade from format 2 builds the
index through `session_changes`, by the same rules."""
_INSERT_EVENTS = f"INSERT INTO indexed_events ({_COLUMNS}, opens, closes)"
INSERT_CHANGES = "INSERT INTO session_changes (stream, server, user, opens, closes)"
MAX_GROUP = 256
"""Batches one transaction takes at most: bounds the work, and so the wait, of a group. With
64, a journal fed 5,000 batches a second by 2,500 connects hit the bound: its commits (an
fsync, a few statements that each wait for the GIL back) could not go faster."""

Row = tuple[int, str, int, str, int, str, str, int, bytes, int, int | None, int | None]


class GroupCommit:
    """Writes the appends of a SQLite log's callers in groups, through `db` (its writer's
    connection), holding `lock` while it writes; `reader` decodes a batch found stored."""

    def __init__(
        self,
        path: str,
        db: sqlite3.Connection,
        lock: threading.Lock,
        reader: RecordReader,
        max_group: int,
    ) -> None:
        self.path = path
        self.max_group = max_group
        self.commits = 0
        """Transactions committed, each with one fsync under `synchronous=FULL`."""
        self.grouped = 0
        """Batches those transactions took, refused ones too."""
        self._db = db
        self._lock = lock
        self._reader = reader
        self._queue_lock = threading.Lock()
        self._queue: list[_Append] = []
        """Appends waiting for a group, oldest first."""
        self._leading = False
        """Set while a caller leads: writes a group, or has been woken to write the next."""
        self._written: _Known | None = None
        """The log as this writer's last commit left it, or `None` when it cannot say (see
        `_checks`): the versions of the streams it wrote (an ended session's forgotten) and
        the last position with its CRC. Its stored ids are always empty."""

    def append(
        self, stream: str, expected_version: int, events: Sequence[Pending]
    ) -> list[Envelope]:
        """Append one checked batch as part of a group; its envelopes, or its error raised."""
        mine = _Append(stream, expected_version, events)
        try:
            with self._queue_lock:
                self._queue.append(mine)
                if self._leading:
                    mine.wake = threading.Lock()
                    mine.wake.acquire()
                else:
                    mine.leads = True
                    self._leading = True
            if mine.wake is not None:
                # Released by the leader whose group wrote this batch, or that hands over leading.
                mine.wake.acquire()
        except BaseException:
            self._abandon(mine)
            raise
        if mine.leads:
            self._lead()
        if mine.error is not None:
            raise mine.error
        assert mine.result is not None, "a group gives every batch a result or an error"
        return mine.result

    def append_group(self, batches: Sequence[Batch]) -> list[Outcome]:
        """Write the batches in as few transactions as `max_group` allows, each batch in a
        savepoint of its own as a group of callers' is; each batch's envelopes or error."""
        mine = [_Append(*batch) for batch in batches]
        valid = []
        for each in mine:
            try:
                check_batch(each.stream, each.events)
            except LogError as error:
                each.error = error
            else:
                valid.append(each)
        for start in range(0, len(valid), self.max_group):
            # `_write_group` holds the connection's lock: callers of `append` that lead a group
            # meanwhile write theirs before or after, never inside, one of these transactions.
            self._write_group(valid[start : start + self.max_group])
        outcomes: list[Outcome] = []
        for each in mine:
            if each.error is not None:
                outcomes.append(each.error)
            else:
                assert each.result is not None, "a group gives every batch a result or an error"
                outcomes.append(each.result)
        return outcomes

    @property
    def queued(self) -> int:
        """Appends waiting for a group to take them."""
        with self._queue_lock:
            return len(self._queue)

    def _lead(self) -> None:
        """Write the oldest queued batches as one group (this caller's is the first), then wake
        the next leader and the group's other callers."""
        with self._queue_lock:
            group = self._queue[: self.max_group]
            del self._queue[: self.max_group]
        try:
            self._write_group(group)
        finally:
            for each in group:
                if each.result is None and each.error is None:
                    msg = (
                        f"stream {each.stream}: not appended: "
                        "the caller writing its group was interrupted"
                    )
                    each.error = LogError(msg)
            with self._queue_lock:
                successor = self._hand_over()
            # The next group first: its commit overlaps the wake-ups of this one's callers.
            if successor is not None:
                successor.release()
            for each in group[1:]:
                assert each.wake is not None, "only the first of a group led it"
                each.wake.release()

    def _hand_over(self) -> threading.Lock | None:
        """Make the oldest queued caller the next leader, or end leading if none is queued;
        the lock to release to wake that caller. Called with the queue's lock held."""
        if not self._queue:
            self._leading = False
            return None
        successor = self._queue[0]
        successor.leads = True
        return successor.wake

    def _abandon(self, mine: _Append) -> None:
        """Take back the batch of a caller interrupted while it waited, if no group has taken
        it yet, and pass leading on if it was just handed to it, so that no one waits forever."""
        with self._queue_lock:
            if mine in self._queue:
                self._queue.remove(mine)
            successor = self._hand_over() if mine.leads else None
        if successor is not None:
            successor.release()

    def _write_group(self, group: list[_Append]) -> None:
        """Write `group` in one transaction, each batch in a savepoint of its own so that a
        refused batch is rolled back alone; one commit (one fsync) makes the rest durable."""
        db = self._db
        with self._lock:
            if self._write_in_one_step(group):
                return
            try:
                db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as error:
                # Nothing is written: each caller gets the error a lone append got.
                for each in group:
                    each.error = error
                return
            try:
                known, read = self._checks(group)
                left = known if read and len(group) == 1 else self._write_at_once(group, known)
                if left is known and not read:
                    # A batch does not check out against what this writer remembers: the log
                    # says what each batch's outcome is.
                    left = self._known(group)
                if left is not None:
                    for each in group:
                        self._write_batch(each, left, alone=len(group) == 1)
                db.execute("COMMIT")
            except BaseException as error:
                self._written = None
                self._fail_group(group, error)
                if not isinstance(error, Exception):
                    raise
                return
            self._remember(left if left is not None else known, group)
            self.commits += 1
            self.grouped += len(group)

    def _write_in_one_step(self, group: list[_Append]) -> bool:
        """Write `group` with one INSERT and no BEGIN, so that SQLite's own transaction writes
        and commits it in one step, when memory of the last commit says every batch is to be
        written as it stands and its rows fit one statement: the GIL is given up once for the
        group instead of three times (BEGIN, INSERT, COMMIT), each a wait to take it back.
        False if not, with nothing written: the group is then written in a transaction. A
        constraint that memory did not see (another writer's row) or a full disk refuses the
        statement before its commit; any other error fails the group, as a failed COMMIT
        would, since its commit may have begun."""
        known = self._remembered(group)
        if known is None:
            return False
        try:
            stamped = _stamp_at_once(group, known)
            if stamped is None or len(stamped.rows) > _PARAMETERS // len(stamped.rows[0]):
                return False
            insert_rows(self._db, _INSERT_EVENTS, stamped.rows)
        except sqlite3.Error as error:
            self._written = None
            full = error.sqlite_errorcode == sqlite3.SQLITE_FULL
            if isinstance(error, sqlite3.IntegrityError) or full:
                return False
            self._fail_group(group, error)
            return True
        except Exception:
            return False  # a number that does not fit, say: the transaction gives each its error
        _settle_at_once(group, known, stamped)
        self._remember(known, group)
        self.commits += 1
        self.grouped += len(group)
        return True

    def _checks(self, group: list[_Append]) -> tuple[_Known, bool]:
        """What `group` is checked against, and whether it was read from the log now.

        From memory when every batch's expected version is the one this writer last wrote to
        its stream, or 0 for a stream it never wrote: the query is then one statement (one
        wait for the GIL) a group less. The log's constraints guard what memory cannot see:
        another writer's rows hold the position, the `(stream, version)` or the event id the
        group would take, SQLite refuses the INSERT, and `_write_at_once` reads the log and
        gives each batch its outcome as if nothing had been remembered."""
        known = self._remembered(group)
        if known is not None and all(
            known.versions[each.stream] == each.expected_version for each in group
        ):
            return known, False
        return self._known(group), True

    def _remembered(self, group: list[_Append]) -> _Known | None:
        """The log as this writer's last commit left it, for `group`'s streams (0 for a stream
        it never wrote); `None` when it remembers nothing."""
        written = self._written
        if written is None:
            return None
        versions = {each.stream: written.versions.get(each.stream, 0) for each in group}
        return _Known(versions, set(), written.last, written.crc)

    def _remember(self, known: _Known, group: list[_Append]) -> None:
        """Keep `known`, the log as this commit left it, for the next group's checks."""
        written = self._written
        if written is None or len(written.versions) > _REMEMBERED:
            written = self._written = _Known({}, set(), known.last, known.crc)
        written.versions.update(known.versions)
        written.last, written.crc = known.last, known.crc
        for each in group:
            changes = (session_change(pending) for pending in each.events)
            if each.result is not None and any(c and c.incarnation is None for c in changes):
                written.versions.pop(each.stream, None)  # the session ended

    def _known(self, group: list[_Append]) -> _Known:
        """What the group's batches are checked against, read with one query for the whole
        group: each step of a statement gives up the GIL, and a thread that wants it back
        waits for the others' switch interval (up to 5 ms) when they are busy, so a query per
        batch, or a row per stream, made the journal's thread wait more than it worked."""
        streams = _json_text(list({each.stream for each in group}))
        ids = _json_text([pending.event_id for each in group for pending in each.events])
        versions, stored, last = self._db.execute(_KNOWN, (streams, ids)).fetchone()
        position, crc = _LAST.decode(last) if last is not None else (0, 0)
        return _Known(_VERSIONS.decode(versions), set(_IDS.decode(stored)), position, crc)

    def _write_batch(self, each: _Append, known: _Known, *, alone: bool) -> None:
        """Write one batch in the open transaction, or roll back its savepoint and keep its
        error; raise when the whole transaction is to be rolled back."""
        db = self._db
        if not alone:
            db.execute("SAVEPOINT batch")
        try:
            each.result = self._insert(each.stream, each.expected_version, each.events, known)
        except Exception as error:
            each.error = error
            if isinstance(error, OverflowError):
                msg = f"stream {each.stream}: a number in the batch does not fit the log ({error})"
                each.error = _caused_by(LogError(msg), error)
            if alone or not db.in_transaction:
                # Rolling the transaction back rolls back this batch only when it is alone in it
                # (which spares a lone writer the savepoint's two statements); after an I/O error
                # or a full disk SQLite has rolled the whole transaction back already.
                raise
            db.execute("ROLLBACK TO batch")
        if not alone:
            db.execute("RELEASE batch")

    def _fail_group(self, group: list[_Append], error: BaseException) -> None:
        """Roll the group's transaction back, and fail every batch that had no error yet."""
        if self._db.in_transaction:
            # A rollback that fails too leaves SQLite to drop the uncommitted frames: in WAL
            # mode no reader ever sees a transaction without its commit record.
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
        for each in group:
            if each.error is None:
                each.result = None
                appends = "1 append" if len(group) == 1 else f"{len(group)} appends"
                msg = (
                    f"{self.path}: stream {each.stream}: not appended: the transaction of its "
                    f"group ({appends}) failed and wrote nothing ({error})"
                )
                each.error = _caused_by(LogError(msg), error)

    def _insert(
        self, stream: str, expected_version: int, events: Sequence[Pending], known: _Known
    ) -> list[Envelope]:
        """Write one batch in the open transaction; its envelopes as stored. `known` is kept
        up to date with what the batch wrote, for the group's next batches."""
        db = self._db
        ids = [pending.event_id for pending in events]
        if not known.stored.isdisjoint(ids):
            stored = self._stored_batch(stream, events)
            assert stored is not None, "a stored event id has its row"
            return stored
        version = known.versions.get(stream, 0)
        if version != expected_version:
            raise WrongExpectedVersion(stream, expected_version, version)
        envelopes, rows, crc = _stamped(stream, version, events, known.last, known.crc)
        insert_rows(db, _INSERT_EVENTS, rows)
        known.versions[stream] = version + len(events)
        known.last += len(events)
        known.crc = crc
        known.stored.update(ids)
        return envelopes

    def _write_at_once(self, group: list[_Append], known: _Known) -> _Known | None:
        """Write every batch of `group` with a few statements for all of them, when each is
        to be written as it stands (its expected version current, none of its ids stored):
        each statement gives up the GIL, and the journal's thread then waits its turn to take
        it back, so three or four statements a batch made the writer the runtime's limit.
        `None` if it wrote them (and `known` is then the log as they left it); if not, nothing
        is written, and the caller writes the batches one by one, each in a savepoint of its
        own, to give each its outcome, against the log as returned: `known` itself, or read
        again after a statement failed."""
        db = self._db
        try:
            stamped = _stamp_at_once(group, known)
            if stamped is None:
                return known
            insert_rows(db, _INSERT_EVENTS, stamped.rows)
        except Exception:
            # Whatever went wrong, the batches one by one give each its own outcome. The
            # transaction held only this group's writes: it begins again rather than keep a
            # savepoint, two statements fewer for every group that goes in at once. Another
            # process may write in between, so the checks are read again.
            if not db.in_transaction:
                raise  # SQLite rolled the whole transaction back (an I/O error, a full disk)
            db.execute("ROLLBACK")
            db.execute("BEGIN IMMEDIATE")
            return self._known(group)
        _settle_at_once(group, known, stamped)
        return None

    def _stored_batch(self, stream: str, events: Sequence[Pending]) -> list[Envelope] | None:
        ids = [pending.event_id for pending in events]
        marks = ", ".join("?" * len(ids))
        rows: list[tuple[str, str, int, int, bytes, int, int | None]] = self._db.execute(
            f"SELECT event_id, stream, {READ}, {BEFORE} FROM events"
            f" WHERE event_id IN ({marks}) ORDER BY position",
            ids,
        ).fetchall()
        if not rows:
            return None
        if [row[0] for row in rows] != ids or any(row[1] != stream for row in rows):
            msg = f"stream {stream}: event id {ids[0]} is stored with other events"
            raise DuplicateEventId(msg)
        return [self._reader.decode(row[2:6], row[6]) for row in rows]


class _AtOnce(NamedTuple):
    """A group's rows stamped to go in at once, and what they leave behind."""

    rows: list[Row]
    results: list[list[Envelope]]
    versions: dict[str, int]
    last: int
    crc: int


def _stamp_at_once(group: list[_Append], known: _Known) -> _AtOnce | None:
    """Every batch of `group` stamped against `known`, when each is to be written as it stands
    (its expected version current, none of its ids stored); `None` when one is not."""
    versions: dict[str, int] = {}
    ids: set[str] = set()
    for each in group:
        version = versions.get(each.stream, known.versions.get(each.stream, 0))
        batch_ids = [pending.event_id for pending in each.events]
        if version != each.expected_version or not ids.isdisjoint(batch_ids):
            return None
        versions[each.stream] = version + len(each.events)
        ids.update(batch_ids)
    if not known.stored.isdisjoint(ids):
        return None
    last, crc = known.last, known.crc
    results: list[list[Envelope]] = []
    rows: list[Row] = []
    for each in group:
        envelopes, batch_rows, crc = _stamped(
            each.stream, each.expected_version, each.events, last, crc
        )
        last += len(envelopes)
        results.append(envelopes)
        rows.extend(batch_rows)
    return _AtOnce(rows, results, versions, last, crc)


def _settle_at_once(group: list[_Append], known: _Known, written: _AtOnce) -> None:
    """Give each batch of `group` its envelopes, and `known` the log as they left it."""
    for each, envelopes in zip(group, written.results, strict=True):
        each.result = envelopes
    known.versions.update(written.versions)
    known.last, known.crc = written.last, written.crc


class _Known:
    """The log as a group's transaction has it so far: each of the group's streams' version,
    which of its event ids are stored, and the last position with its record's CRC, which the
    next record's chains to."""

    __slots__ = ("crc", "last", "stored", "versions")

    def __init__(self, versions: dict[str, int], stored: set[str], last: int, crc: int) -> None:
        self.versions = versions
        self.stored = stored
        self.last = last
        self.crc = crc


def _stamped(
    stream: str, version: int, events: Sequence[Pending], last: int, crc: int
) -> tuple[list[Envelope], list[Row], int]:
    """A batch's envelopes at the positions after `last` and the versions after `version`,
    their rows with CRCs chained from `crc`, and the last row's CRC."""
    envelopes = [
        pending.at(position=last + offset + 1, stream=stream, version=version + offset + 1)
        for offset, pending in enumerate(events)
    ]
    rows = []
    for envelope in envelopes:
        rows.append(_row(envelope, crc))
        crc = rows[-1][9]
    return envelopes, rows, crc


def insert_rows(db: sqlite3.Connection, head: str, rows: Sequence[tuple[object, ...]]) -> None:
    """`head VALUES (...), (...), ...` for `rows`, all of one width, in as few statements as
    SQLite's bound on parameters allows: each statement is one step of SQLite, so the GIL is
    given up once for many rows, where `executemany` gives it up for each."""
    if not rows:
        return
    width = len(rows[0])
    per = _PARAMETERS // width
    for start in range(0, len(rows), per):
        chunk = rows[start : start + per]
        db.execute(_values(head, width, len(chunk)), [value for row in chunk for value in row])


def _json_text(names: list[str]) -> str:
    # Bound as text: SQLite from 3.45 reads a BLOB given to its JSON functions as JSONB.
    return _JSON.encode(names).decode()


@functools.cache
def _values(head: str, width: int, count: int) -> str:
    """The text of an INSERT of `count` rows of `width` values, built once per size."""
    row = "(" + ", ".join(["?"] * width) + ")"
    return f"{head} VALUES " + ", ".join([row] * count)


class _Append:
    """One caller's batch on its way into a group, and what became of it."""

    __slots__ = ("error", "events", "expected_version", "leads", "result", "stream", "wake")

    def __init__(self, stream: str, expected_version: int, events: Sequence[Pending]) -> None:
        self.stream = stream
        self.expected_version = expected_version
        self.events = events
        self.result: list[Envelope] | None = None
        self.error: Exception | None = None
        self.leads = False
        """Set when this caller is to write the next group."""
        self.wake: threading.Lock | None = None
        """Held while the caller waits, for a group already being written: released to wake it."""


def _caused_by(error: LogError, cause: BaseException) -> LogError:
    error.__cause__ = cause
    return error


def _row(envelope: Envelope, before: int) -> Row:
    """The row of `envelope`, its CRC chained to `before`, the CRC of the row before it, and
    the session it opens or closes (see `INDEXED`)."""
    record = encode_record(envelope)
    return (
        *columns(envelope),
        record,
        chained_crc(record, before, RECORD_SEPARATOR),
        *_opens_closes(session_change(envelope)),
    )


def _opens_closes(change: SessionChange | None) -> tuple[int | None, int | None]:
    """The `opens` and `closes` values of a row of `indexed_events` or `session_changes`."""
    if change is None:
        return None, None
    return (change.incarnation, None) if change.incarnation is not None else (None, 1)


def session_row(
    stream: str, envelope: Envelope
) -> tuple[str, str, str, int | None, int | None] | None:
    """The row of `session_changes` for `envelope` of `stream`, if it opens or closes a
    session."""
    change = session_change(envelope)
    if change is None:
        return None
    return (stream, change.server, change.user, *_opens_closes(change))

"""How a SQLite log's records are read back: each checked against its CRC and decoded.

A record's CRC is chained (format 4 on): it continues the CRC stored at the position before, so
a run of records is checked by one CRC over all of them. The whole log is read in chunks, each
one query, one CRC and one decode; past its first few chunks a thread fetches and checks the
next ones while the caller decodes (SQLite's step and zlib's CRC leave the GIL free). A chunk
that is not whole is read again record by record, up to the bad one, which is named exactly.
Records of formats 2 and 3 each carry a CRC of their own, seeded with their schema.
"""

from __future__ import annotations

import contextlib
import itertools
import operator
import queue
import sqlite3
import threading
import zlib
from collections.abc import Callable, Generator, Iterator
from typing import NamedTuple

from events.catalog import SCHEMA_VERSION
from events.codec import (
    RECORD_SEPARATOR,
    UndecodableEvent,
    decode_current_lines,
    decode_current_records,
    decode_envelope,
    decode_record,
)
from events.envelope import Envelope
from events.log import CorruptLog, checked_envelope

__all__ = ["BEFORE", "READ", "RecordReader", "Stored", "chained_crc"]

READ = "position, schema, record, crc"
"""The columns a record is read back from."""
BEFORE = "(SELECT crc FROM events AS before WHERE before.position = events.position - 1)"
"""The CRC stored at the position before a record: the one a chained record's continues,
read beside each record of a read that does not go in order of position."""
Stored = tuple[int, int, bytes, int]
"""A record as read: position, schema, record, CRC."""
_LINE = b"\n"
"""What joins the JSON records of a run, and ends each in its chained CRC (format 4)."""
_BATCH = 4096
"""Records fetched per query when reading the log record by record."""
_CHUNK_RECORDS = 256
"""Records in a chunk: the envelopes of 4,096 at once outgrew the CPU's cache, and the fold
that took them next ran at half speed."""
_CHUNKS_BEFORE_AHEAD = 4
"""Whole chunks a read fetches itself before a thread fetches the rest ahead of it: a short
read (a tail, a test's log) starts no thread."""
_AHEAD_RECORDS = 512
"""Records in a chunk the read-ahead thread fetches: each costs two hand-overs of the GIL
between the threads. Of 512, 1,024 and 2,048, 512 was the fastest and the steadiest."""
_AHEAD_CHUNKS = 2
"""Chunks fetched ahead at most, waiting for the reader."""
_CHUNK = """SELECT count(*), sum(schema != ?), CAST(group_concat(record, ?) AS BLOB),
    (SELECT crc FROM events WHERE position = ?)
FROM events WHERE position BETWEEN ? AND ?"""
"""A chunk of the log as one row: how many records it has of the positions asked, how many of
another schema than the current one, the records joined by a separator in one BLOB, which SQLite
joins in C (fetched as rows, they cost more than checking and decoding them), and the CRC at
the last position asked. A range of positions walks the table once; a bare column beside an
aggregate, or a subquery that sorts, cost SQLite a tenth more per record."""
_AFTER = "SELECT 1 FROM events WHERE position > ? LIMIT 1"
_POSITION: Callable[[Envelope], int] = operator.attrgetter("position")
_SCHEMA_OF: Callable[[Envelope], int] = operator.attrgetter("schema")


def _crc(schema: int, record: bytes) -> int:
    """CRC-32 of a record of format 2 or 3, seeded with its schema so that a changed schema
    column is caught too."""
    return zlib.crc32(record, schema)


def chained_crc(record: bytes, before: int, separator: bytes) -> int:
    """CRC-32 of a chained record: of the record and the separator of its encoding (a newline
    after JSON, format 4; `RECORD_SEPARATOR` after msgpack, format 5), continuing `before`, the
    CRC stored at the position before it (0 at position 1). So this of a run of records joined
    by their separator, with the CRC before the run, is the CRC stored with its last record;
    the separators, which SQLite puts between the records, make it cover where each ends.

    Its schema column is not covered: each record holds its schema too, and a reader checks
    that the two agree."""
    return zlib.crc32(separator, zlib.crc32(record, before))


class RecordReader:
    """Reads one SQLite log's records back through `db`, which `lock` guards: the whole log in
    chunks (`read_all`), or a row another query fetched (`decode`). `chained_from` and
    `packed_from` are the first positions whose CRC is chained (format 4) and whose record is
    msgpack (format 5)."""

    def __init__(
        self,
        path: str,
        db: sqlite3.Connection,
        lock: threading.Lock,
        *,
        chained_from: int,
        packed_from: int,
    ) -> None:
        self.path = path
        self._db = db
        self._lock = lock
        self._chained_from = chained_from
        self._packed_from = packed_from

    def read_all(self, from_position: int = 1) -> Iterator[Envelope]:
        # The lists of envelopes are chained in C: a generator that yielded each envelope cost
        # more per event than the checks of its whole chunk.
        return itertools.chain.from_iterable(self._chunks(max(from_position, 1)))

    def _chunks(self, start: int) -> Iterator[list[Envelope]]:
        """The log from `start` on, in lists: a chunk whole where every check of it holds, or
        else its records one by one up to the first bad one, which is named exactly."""
        before = self._crc_before(start)
        while True:
            if start >= self._chained_from:
                with contextlib.closing(self._fetches(start, before)) as fetches:
                    for fetch in fetches:
                        if fetch is None:
                            break
                        if fetch.size == 0:
                            return
                        envelopes = self._decoded(fetch)
                        if envelopes is None:
                            break
                        yield envelopes
                        start, before = start + fetch.size, fetch.crc
            begun = start
            for envelope, crc in self._records(start, before):
                yield [envelope]
                start, before = start + 1, crc
            if start == begun:
                return

    def _fetches(self, start: int, before: int | None) -> Generator[_Fetch | None]:
        """The chunks of the log from `start` on, each fetched and its CRC checked, up to one
        that is not whole (`None`) or the end (a chunk of no records). After a few whole ones
        a thread fetches ahead while the caller decodes: SQLite's query and zlib's CRC leave
        the GIL free, so a long read takes both cores."""
        whole = 0
        while True:
            if whole < _CHUNKS_BEFORE_AHEAD:
                fetch = self._fetch(start, before, _CHUNK_RECORDS)
                yield fetch
                if fetch is None or fetch.size == 0:
                    return
                whole = whole + 1 if fetch.size == _CHUNK_RECORDS else 0
                start, before = start + fetch.size, fetch.crc
                continue
            ahead = _ReadAhead(self._fetch, start, before)
            try:
                for fetch in ahead:
                    yield fetch
                    if fetch is None or fetch.size == 0:
                        return
                    start, before = start + fetch.size, fetch.crc
            finally:
                ahead.stop()
            whole = 0  # the thread stopped near the end: the rest is read here

    def _fetch(self, start: int, before: int | None, size: int) -> _Fetch | None:
        """The next `size` records of the log at most, from `start` on, in one query with their
        CRC checked at once; `None` if they are not whole (a record missing or damaged, or
        of another schema). A chunk of JSON records ends where the msgpack ones begin. The
        read-ahead thread calls it too."""
        packed = start >= self._packed_from
        separator = RECORD_SEPARATOR if packed else _LINE
        size = size if packed else min(size, self._packed_from - start)
        last = start + size - 1
        with self._lock:
            try:
                count, others, records, crc = self._db.execute(
                    _CHUNK, (SCHEMA_VERSION, separator, last, start, last)
                ).fetchone()
                # No record in the range is the end of the log, unless one comes after it: a
                # gap as long as a chunk, which the records read one by one will name.
                after_a_gap = count == 0 and self._db.execute(_AFTER, (last,)).fetchone()
            except sqlite3.DatabaseError:
                return None
        if count == 0:
            return None if after_a_gap else _Fetch(start, 0, b"", 0, packed=packed)
        if before is None or others:
            return None
        if count != size:
            # The end of the log (or a gap, which the positions show): the chunk ends at its
            # last record, whose CRC the query did not fetch.
            try:
                crc = self._crc_before(start + count)
            except CorruptLog:
                return None
        if chained_crc(records, before, separator) != crc:
            return None
        return _Fetch(start, count, records, crc, packed=packed)

    @staticmethod
    def _decoded(fetch: _Fetch) -> list[Envelope] | None:
        """The envelopes of a fetched chunk; `None` if they do not decode as a current chunk
        of its positions."""
        try:
            if fetch.packed:
                envelopes = decode_current_records(fetch.records, fetch.size)
            else:
                envelopes = decode_current_lines(fetch.records)
        except UndecodableEvent:
            return None
        # Each envelope's own position and schema, checked in C: a record is whole, but the
        # CRC does not cover its schema column, and a writer could have erred.
        positions = list(map(_POSITION, envelopes))
        schemas = list(map(_SCHEMA_OF, envelopes))
        expected = list(range(fetch.start, fetch.start + fetch.size))
        if positions != expected or schemas.count(SCHEMA_VERSION) != fetch.size:
            return None
        return envelopes

    def _records(self, start: int, before: int | None) -> Iterator[tuple[Envelope, int]]:
        """The next `_BATCH` records at most from `start` on, checked one by one, with their
        CRCs, up to the first bad one, which raises `CorruptLog`; `before` is the CRC stored at
        the position before `start` (`None`: there is no record there)."""
        with self._lock:
            try:
                rows: list[Stored] | None = self._db.execute(
                    f"SELECT {READ} FROM events WHERE position >= ?"
                    f" ORDER BY position LIMIT {_BATCH}",
                    (start,),
                ).fetchall()
            except sqlite3.DatabaseError:
                rows = None
        if rows is None:
            # A damaged page fails the whole batch: read it again record by record.
            for position in range(start, start + _BATCH):
                row = self._read_one(position)
                if row is None:
                    return
                yield self.decode(row, before), row[3]
                before = row[3]
            return
        expected = start
        for row in rows:
            if row[0] != expected:
                raise CorruptLog(self.path, expected, "the record is missing")
            yield self.decode(row, before), row[3]
            before, expected = row[3], expected + 1

    def _crc_before(self, position: int) -> int | None:
        """The CRC a chained record at `position` continues: the one stored before it, 0 at
        position 1; `None` if there is no record before it (past the end of the log, or a
        gap, which the record at `position`, if there is one, then reports)."""
        if position == 1 or position < self._chained_from:
            return 0
        with self._lock:
            try:
                row = self._db.execute(
                    "SELECT crc FROM events WHERE position = ?", (position - 1,)
                ).fetchone()
            except sqlite3.DatabaseError as error:
                raise CorruptLog(self.path, position - 1, str(error)) from error
        return None if row is None else int(row[0])

    def _read_one(self, position: int) -> Stored | None:
        """The record at `position`; `None` past the end of the log."""
        with self._lock:
            try:
                row: Stored | None = self._db.execute(
                    f"SELECT {READ} FROM events WHERE position = ?", (position,)
                ).fetchone()
                if row is not None:
                    return row
                later = self._db.execute(_AFTER, (position,)).fetchone()
            except sqlite3.DatabaseError as error:
                raise CorruptLog(self.path, position, str(error)) from error
        if later is None:
            return None
        raise CorruptLog(self.path, position, "the record is missing")

    def decode(self, row: Stored, before: int | None) -> Envelope:
        """The envelope of one record, checked on its own; `before` is the CRC stored at the
        position before it (`None`: there is no record there)."""
        position, schema, record, crc = row
        packed = position >= self._packed_from
        if position < self._chained_from:
            good = _crc(schema, record) == crc
        elif before is None and position > 1:
            raise CorruptLog(self.path, position - 1, "the record is missing")
        else:
            good = chained_crc(record, before or 0, RECORD_SEPARATOR if packed else _LINE) == crc
        if not good:
            raise CorruptLog(self.path, position, "checksum mismatch")
        decode = decode_record if packed else decode_envelope
        return checked_envelope(self.path, position, schema, record, decode)


class _Fetch(NamedTuple):
    """A chunk of the log as fetched: its records joined, their CRC checked, not decoded."""

    start: int
    size: int
    """How many records it has; none at the end of the log."""
    records: bytes
    crc: int
    """The CRC stored with its last record, which the next chunk's chains to."""
    packed: bool
    """Its records are msgpack (format 5), not JSON."""


_Fetcher = Callable[[int, int | None, int], _Fetch | None]
"""`SQLiteStore._fetch`: the chunk of `size` records from `start` on, chained to `before`."""


class _ReadAhead:
    """A thread that fetches a log's chunks of `_AHEAD_RECORDS` from `start` on while their
    reader decodes the ones before, up to the end or to a chunk that is not whole (`None`);
    `_AHEAD_CHUNKS` of them wait at most. Iterate it once, then `stop` it."""

    def __init__(self, fetch: _Fetcher, start: int, before: int | None) -> None:
        self._fetch = fetch
        self._fetched: queue.Queue[_Fetch | BaseException | None] = queue.Queue(_AHEAD_CHUNKS)
        self._stopped = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(start, before), name="rejoin-read-ahead", daemon=True
        )
        self._thread.start()

    def __iter__(self) -> Iterator[_Fetch | None]:
        while True:
            fetch = self._fetched.get()
            if isinstance(fetch, BaseException):
                raise fetch
            yield fetch
            if fetch is None or fetch.size < _AHEAD_RECORDS:
                return

    def stop(self) -> None:
        """Stop the thread and wait for it: after the flag, it puts one chunk at most, and the
        queue, emptied, has room for it."""
        self._stopped.set()
        with contextlib.suppress(queue.Empty):
            while True:
                self._fetched.get_nowait()
        self._thread.join()

    def _run(self, start: int, before: int | None) -> None:
        try:
            while True:
                fetch = self._fetch(start, before, _AHEAD_RECORDS)
                self._fetched.put(fetch)
                if self._stopped.is_set() or fetch is None or fetch.size < _AHEAD_RECORDS:
                    return
                start, before = start + fetch.size, fetch.crc
        except BaseException as error:  # the reader raises it
            self._fetched.put(error)

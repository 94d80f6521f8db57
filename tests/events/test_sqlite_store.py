"""What only the SQLite store promises: a file that is not a log refused untouched, a damaged page
that loses no record before it, readers that write nothing, older formats, and group commit.
What every durable store promises is in `test_stores.py`."""

import contextlib
import shutil
import signal
import sqlite3
import threading
import time
import zlib
from pathlib import Path

import pytest

from events import sqlite_group_commit
from events.catalog import GlassesConnected, SessionDisposed, SessionOpened
from events.codec import RECORD_SEPARATOR, decode_record, encode_envelope
from events.envelope import Envelope, Pending
from events.log import (
    Batch,
    CorruptLog,
    DuplicateEventId,
    LogError,
    UnreadableLog,
    WrongExpectedVersion,
    read_valid_prefix,
)
from events.sqlite_store import FORMAT, SQLiteStore
from tests.events.reference_reader import readable_records


def connected(event_id: str, epoch: int, user: str = "a") -> Pending:
    return Pending(
        event_id=event_id,
        time_ms=epoch,
        server="prod",
        user=user,
        event=GlassesConnected(epoch=epoch),
    )


def fill(path: Path, count: int) -> None:
    store = SQLiteStore(path)
    for version in range(count):
        store.append("prod/a/1", version, [connected(f"e{version}", version)])
    store.close()


def tamper(path: Path, sql: str) -> None:
    db = sqlite3.connect(path)
    db.execute(sql)
    db.commit()
    db.close()


def rewrite_record(path: Path, position: int, old: bytes, new: bytes) -> None:
    """Replace `old` in the record at `position` by `new`, leaving its CRC as it was."""
    db = sqlite3.connect(path)
    (record,) = db.execute("SELECT record FROM events WHERE position = ?", (position,)).fetchone()
    assert old in record
    db.execute(
        "UPDATE events SET record = ? WHERE position = ?", (record.replace(old, new), position)
    )
    db.commit()
    db.close()


def test_an_undecodable_record_names_its_position(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    fill(path, 2)
    tamper(path, "UPDATE events SET schema = 99 WHERE position = 1")
    store = SQLiteStore(path)
    with pytest.raises(CorruptLog, match="position 1 is corrupt"):
        list(store.read_all())


def test_a_file_that_is_not_a_log_is_refused_with_its_name(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_bytes(b"these are not the events you are looking for" * 100)
    with pytest.raises(UnreadableLog, match=r"notes\.db: not a rejoin event log"):
        SQLiteStore(path)
    assert path.read_bytes() == b"these are not the events you are looking for" * 100


def big_log(path: Path, count: int) -> None:
    store = SQLiteStore(path, synchronous="NORMAL")
    for start in range(0, count, 100):
        batch = [connected(f"e{n}", n, f"u{start}") for n in range(start, start + 100)]
        store.append(f"prod/u{start}/1", 0, batch)
    store.close()


def zero_page_holding(path: Path, marker: bytes, page_size: int = 4096) -> None:
    data = bytearray(path.read_bytes())
    page = data.index(marker) // page_size
    data[page * page_size : (page + 1) * page_size] = bytes(page_size)
    path.write_bytes(bytes(data))


def test_a_damaged_page_loses_no_record_before_it_and_names_the_first_bad_one(
    tmp_path: Path,
) -> None:
    path = tmp_path / "log.db"
    big_log(path, 6_000)
    zero_page_holding(path, b"event_id\xa5e5000")
    readable = readable_records(path)
    assert 4_096 < readable < 5_001, "the page is in the second batch of records, after 4,096"
    envelopes, error = read_valid_prefix(SQLiteStore(path, read_only=True))
    assert len(envelopes) == readable
    assert error is not None
    assert error.position == readable + 1


def test_a_reader_writes_nothing_not_even_beside_the_file(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    fill(path, 3)
    before = path.read_bytes()
    store = SQLiteStore(path, read_only=True)
    assert [e.event_id for e in store.read_all()] == ["e0", "e1", "e2"]
    with pytest.raises(LogError, match="opened read-only"):
        store.append("prod/a/1", 3, [])
    store.close()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.db"]


def test_a_reader_reads_a_log_whose_writer_is_still_open(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    writer = SQLiteStore(path)
    writer.append("prod/a/1", 0, [connected("e", 1)])
    reader = SQLiteStore(path, read_only=True)
    assert [e.event_id for e in reader.read_all()] == ["e"], "the record is still in the -wal"
    reader.close()
    writer.close()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", r"an empty file, not a rejoin event log"),
        (b"these are not the events" * 100, r"not a readable rejoin event log"),
    ],
)
def test_a_reader_refuses_what_is_not_a_log_and_leaves_it_as_it_was(
    tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "notes.db"
    path.write_bytes(content)
    with pytest.raises(UnreadableLog, match=message):
        SQLiteStore(path, read_only=True)
    assert path.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.db"]


def another_programs_database(path: Path) -> bytes:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE contacts (name TEXT)")
    db.execute("INSERT INTO contacts VALUES ('ada')")
    db.commit()
    db.close()
    return path.read_bytes()


@pytest.mark.parametrize("read_only", [True, False], ids=["reader", "writer"])
def test_another_programs_database_is_refused_untouched(tmp_path: Path, read_only: bool) -> None:
    path = tmp_path / "contacts.db"
    before = another_programs_database(path)
    with pytest.raises(UnreadableLog, match=r"contacts\.db: not a rejoin event log"):
        SQLiteStore(path, read_only=read_only)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["contacts.db"]


def opened_together(path: Path, count: int) -> list[Exception]:
    """What `count` writers opening `path` at the same instant failed with."""
    together = threading.Barrier(count)
    failed: list[Exception] = []

    def open_the_log() -> None:
        together.wait(timeout=10)
        try:
            SQLiteStore(path).close()
        except Exception as error:
            failed.append(error)

    openers = [threading.Thread(target=open_the_log) for _ in range(count)]
    for opener in openers:
        opener.start()
    joined(openers)
    return failed


def test_writers_opening_one_new_log_at_once_all_open_it(tmp_path: Path) -> None:
    """Servers started at once on a file that does not exist yet (a fleet's first start, a
    restart beside the process it replaces): one creates the log, the others find it whole.
    Each used to find the file empty, create it too, and fail on the other's rows."""
    for attempt in range(10):
        path = tmp_path / str(attempt) / "log.db"
        path.parent.mkdir()
        assert opened_together(path, 6) == []
        assert meta(path) == {"format": FORMAT, "chained_from": "1", "packed_from": "1"}


def test_a_writer_names_a_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(LogError, match=r"cannot create the log: there is no folder .*nowhere"):
        SQLiteStore(tmp_path / "nowhere" / "log.db")


def test_a_log_copied_with_its_write_ahead_log_reads_in_full(tmp_path: Path) -> None:
    """A log copied while its writer ran (or after it was killed): its newest records are
    still in the -wal beside it."""
    log = tmp_path / "live.db"
    writer = SQLiteStore(log)
    writer.append("prod/a/1", 0, [connected("e", 1)])
    copy = tmp_path / "copy" / "live.db"
    copy.parent.mkdir()
    for suffix in ("", "-wal"):
        shutil.copy(f"{log}{suffix}", f"{copy}{suffix}")
    writer.close()
    store = SQLiteStore(copy, read_only=True)
    assert [e.event_id for e in store.read_all()] == ["e"]
    store.close()


def as_older_format(path: Path, version: int) -> None:
    """Make the log at `path` one that a writer of format `version` (2, 3 or 4) wrote: each
    record in JSON; its CRC chained over the record and a newline (4), or on its own, seeded
    with its schema (2 and 3); format 2 had no index of sessions."""
    db = sqlite3.connect(path)
    rows = db.execute("SELECT position, schema, record FROM events ORDER BY position").fetchall()
    before = 0
    for position, schema, record in rows:
        line = encode_envelope(decode_record(schema, record))
        crc = zlib.crc32(line + b"\n", before) if version == 4 else zlib.crc32(line, schema)
        db.execute(
            "UPDATE events SET record = ?, crc = ? WHERE position = ?", (line, crc, position)
        )
        before = crc
    db.execute("DELETE FROM meta WHERE key = 'packed_from'")
    if version < 4:
        db.execute("DELETE FROM meta WHERE key = 'chained_from'")
    db.execute("UPDATE meta SET value = ? WHERE key = 'format'", (f"rejoin-event-log/{version}",))
    if version == 2:
        db.execute("DROP TABLE sessions")
    db.commit()
    db.close()


@pytest.mark.parametrize("key", ["chained_from", "packed_from"])
def test_a_log_that_does_not_say_where_its_records_change_is_refused(
    tmp_path: Path, key: str
) -> None:
    path = tmp_path / "log.db"
    fill(path, 1)
    tamper(path, f"DELETE FROM meta WHERE key = '{key}'")
    with pytest.raises(UnreadableLog, match=f"a format 5 log that does not say its {key}"):
        SQLiteStore(path, read_only=True)


def test_a_format_record_that_is_not_text_is_refused_by_name(tmp_path: Path) -> None:
    """A damaged page can leave bytes that do not decode where the format's name was."""
    path = tmp_path / "log.db"
    fill(path, 1)
    tamper(path, "UPDATE meta SET value = CAST(X'C528' AS TEXT) WHERE key = 'format'")
    for read_only in (True, False):
        with pytest.raises(UnreadableLog, match=r"log\.db: not a (readable )?rejoin event log"):
            SQLiteStore(path, read_only=read_only)


def meta(path: Path) -> dict[str, str]:
    db = sqlite3.connect(path)
    found = dict(db.execute("SELECT key, value FROM meta").fetchall())
    db.close()
    return found


@pytest.mark.parametrize(("version", "chained_from"), [(2, "4"), (4, "1")])
def test_an_older_log_is_read_untouched_and_upgraded_by_a_writer(
    tmp_path: Path, version: int, chained_from: str
) -> None:
    path = tmp_path / "log.db"
    store = SQLiteStore(path)
    opened = SessionOpened(cause="c", why="first", incarnation=1, epoch=1)
    store.append(
        "prod/a/1", 0, [Pending(event_id="o", time_ms=0, server="prod", user="a", event=opened)]
    )
    ended = SessionDisposed(cause="c", why="grace is over")
    store.append(
        "prod/b/1",
        0,
        [
            Pending(event_id="b", time_ms=0, server="prod", user="b", event=opened),
            Pending(event_id="b-end", time_ms=0, server="prod", user="b", event=ended),
        ],
    )
    store.close()
    as_older_format(path, version)
    before = path.read_bytes()
    reader = SQLiteStore(path, read_only=True)
    assert [e.event_id for e in reader.read_all()] == ["o", "b", "b-end"]
    assert [e.event_id for e in reader.read_user("b")] == ["b", "b-end"], "format 2 has no index"
    assert sorted(reader.session_users()) == ["a", "b"]
    reader.close()
    assert path.read_bytes() == before, "a reader does not upgrade"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.db"]
    writer = SQLiteStore(path)
    assert writer.open_streams("prod") == ["prod/a/1"], "b's session ended"
    assert writer.last_incarnation("prod", "a") == 1
    assert writer.last_incarnation("prod", "b") == 1
    writer.close()
    assert meta(path) == {
        "format": "rejoin-event-log/5",
        "chained_from": chained_from,
        "packed_from": "4",
    }


@pytest.mark.parametrize(("version", "chained_from"), [(3, "4"), (4, "1")])
def test_an_upgraded_log_checks_its_old_records_as_written_and_its_new_ones_packed(
    tmp_path: Path, version: int, chained_from: str
) -> None:
    path = tmp_path / "log.db"
    fill(path, 3)
    as_older_format(path, version)
    writer = SQLiteStore(path)
    writer.append("prod/a/1", 3, [connected("e3", 3), connected("e4", 4)])
    writer.close()
    assert meta(path) == {
        "format": "rejoin-event-log/5",
        "chained_from": chained_from,
        "packed_from": "4",
    }
    db = sqlite3.connect(path)
    firsts = [record[:1] for (record,) in db.execute("SELECT record FROM events ORDER BY position")]
    db.close()
    assert firsts == [b"{"] * 3 + [b"\x89"] * 2, "JSON as written, then msgpack maps"
    assert [e.event_id for e in SQLiteStore(path).read_all()] == ["e0", "e1", "e2", "e3", "e4"]
    assert readable_records(path) == 5
    for position in (2, 5):
        damaged = tmp_path / f"damaged-{position}.db"
        shutil.copy(path, damaged)
        rewrite_record(damaged, position, b"epoch", b"epocH")
        envelopes, error = read_valid_prefix(SQLiteStore(damaged, read_only=True))
        assert [e.position for e in envelopes] == list(range(1, position))
        assert error is not None
        assert (error.position, error.reason) == (position, "checksum mismatch")


def test_an_upgraded_log_is_read_a_chunk_at_a_time_on_each_side_of_its_upgrade(
    tmp_path: Path,
) -> None:
    """A chunk of JSON records ends where the msgpack ones begin: each is read in one query,
    none record by record."""
    path = tmp_path / "log.db"
    fill(path, 300)
    as_older_format(path, 4)
    writer = SQLiteStore(path)
    writer.append("prod/a/1", 300, [connected(f"e{n}", n) for n in range(300, 600)])
    writer.close()
    store = SQLiteStore(path, read_only=True)
    statements: list[str] = []
    store._db.set_trace_callback(statements.append)
    assert [e.event_id for e in store.read_all()] == [f"e{n}" for n in range(600)]
    starts = [int(s.split("BETWEEN ")[1].split()[0]) for s in statements if "group_concat" in s]
    assert starts == [1, 257, 301, 557, 601], "JSON 1-256, 257-300; msgpack 301-556, 557-600"
    others = [s for s in statements if "group_concat" not in s]
    assert others == [
        "SELECT crc FROM events WHERE position = 600",  # the last chunk's CRC
        "SELECT 1 FROM events WHERE position > 856 LIMIT 1",  # nothing after the empty one
    ]


def test_a_record_boundary_moved_between_two_records_is_caught(tmp_path: Path) -> None:
    """The last byte of one record moved to the front of the next leaves the records' bytes,
    joined, as they were: the separator SQLite puts between them is what a chunk's CRC sees
    move."""
    path = tmp_path / "log.db"
    fill(path, 5)
    db = sqlite3.connect(path)
    (second,), (third,) = db.execute(
        "SELECT record FROM events WHERE position IN (2, 3) ORDER BY position"
    ).fetchall()
    db.execute("UPDATE events SET record = ? WHERE position = 2", (second[:-1],))
    db.execute("UPDATE events SET record = ? WHERE position = 3", (second[-1:] + third,))
    db.commit()
    db.close()
    envelopes, error = read_valid_prefix(SQLiteStore(path, read_only=True))
    assert [e.position for e in envelopes] == [1]
    assert error is not None
    assert (error.position, error.reason) == (2, "checksum mismatch")


def test_a_changed_crc_is_reported_by_each_read_that_relies_on_it(tmp_path: Path) -> None:
    """A chunk is checked against the CRC of its last record: a changed CRC of a record in the
    middle of a chunk, whose record is whole, changes nothing a replay yields. Once a chunk
    fails, its records are checked one by one, and the changed CRC is named."""
    path = tmp_path / "log.db"
    fill(path, 5)
    tamper(path, "UPDATE events SET crc = crc + 1 WHERE position = 3")
    assert [e.event_id for e in SQLiteStore(path).read_all()] == ["e0", "e1", "e2", "e3", "e4"]
    with pytest.raises(CorruptLog, match="position 3 is corrupt: checksum mismatch"):
        SQLiteStore(path).read_stream("prod/a/1")
    tamper(path, "UPDATE events SET crc = crc + 1 WHERE position = 5")
    envelopes, error = read_valid_prefix(SQLiteStore(path))
    assert [e.event_id for e in envelopes] == ["e0", "e1"]
    assert error is not None
    assert (error.position, error.reason) == (3, "checksum mismatch")


def test_a_read_from_the_middle_checks_its_first_record_against_the_one_before(
    tmp_path: Path,
) -> None:
    path = tmp_path / "log.db"
    big_log(path, 6_000)
    store = SQLiteStore(path)
    assert [e.position for e in store.read_all(4_000)] == list(range(4_000, 6_001))
    assert list(store.read_all(6_002)) == [], "past the end of the log: nothing to read"
    tamper(path, "UPDATE events SET crc = crc + 1 WHERE position = 4999")
    with pytest.raises(CorruptLog, match="position 5000 is corrupt: checksum mismatch"):
        list(SQLiteStore(path).read_all(5_000))


def test_a_schema_column_that_disagrees_with_its_record_names_the_record(
    tmp_path: Path,
) -> None:
    """The chained CRC covers the record, not its schema column: the two are compared."""
    path = tmp_path / "log.db"
    fill(path, 3)
    db = sqlite3.connect(path)
    before = 0
    for position, stored in db.execute("SELECT position, record FROM events").fetchall():
        record = stored.replace(b"schema\x01", b"schema\x02") if position == 2 else stored
        before = zlib.crc32(record + RECORD_SEPARATOR, before)
        db.execute(
            "UPDATE events SET record = ?, crc = ? WHERE position = ?", (record, before, position)
        )
    db.commit()
    db.close()
    envelopes, error = read_valid_prefix(SQLiteStore(path))
    assert [e.position for e in envelopes] == [1]
    assert error is not None
    assert (error.position, error.reason) == (2, "its schema column says 1, the record 2")


class Held:
    """Holds the store's first transaction at its BEGIN (or its INSERT, for a group written
    from memory in one step), through a trace callback on the store's own connection, until
    `release()`: appends made meanwhile queue for the next group.
    Records every statement the connection runs."""

    def __init__(self, store: SQLiteStore) -> None:
        self.statements: list[str] = []
        self.holding = threading.Event()
        self._released = threading.Event()
        store._db.set_trace_callback(self._trace)

    def _trace(self, statement: str) -> None:
        self.statements.append(statement)
        if statement.startswith(("BEGIN", "INSERT")) and not self.holding.is_set():
            self.holding.set()
            self._released.wait(timeout=60)

    def release(self) -> None:
        self._released.set()


Outcome = list[Envelope] | BaseException


def appending(
    store: SQLiteStore, stream: str, expected: int, batch: list[Pending]
) -> tuple[threading.Thread, list[Outcome]]:
    """A thread that appends `batch`, started; the list its outcome goes into."""
    outcome: list[Outcome] = []

    def append() -> None:
        try:
            outcome.append(store.append(stream, expected, batch))
        except BaseException as error:
            outcome.append(error)

    thread = threading.Thread(target=append)
    thread.start()
    return thread, outcome


def queued_behind_a_held_leader(
    store: SQLiteStore, appends: list[tuple[str, int, list[Pending]]]
) -> tuple[Held, list[threading.Thread], list[list[Outcome]]]:
    """A first append held at its BEGIN, then `appends` from threads of their own, all queued
    behind it; the lead's outcome comes first."""
    held = Held(store)
    lead = appending(store, "prod/lead/1", 0, [connected("lead", 1)])
    assert held.holding.wait(timeout=60)
    started = [lead, *(appending(store, *append) for append in appends)]
    deadline = time.monotonic() + 60
    while store.queued < len(appends):
        assert time.monotonic() < deadline, "the appends never queued"
        time.sleep(0.001)
    return held, [thread for thread, _ in started], [outcome for _, outcome in started]


def joined(threads: list[threading.Thread]) -> None:
    for thread in threads:
        thread.join(timeout=60)
        assert not thread.is_alive()


def opening(stream: str, event_id: str) -> Pending:
    user = stream.split("/")[1]
    opened = SessionOpened(cause="c", why="first", incarnation=1, epoch=1)
    return Pending(event_id=event_id, time_ms=0, server="prod", user=user, event=opened)


def test_appends_that_arrive_during_a_commit_share_the_next_one(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "log.db")
    twice = [connected("d1", 1), connected("d2", 2)]
    held, threads, outcomes = queued_behind_a_held_leader(
        store,
        [
            ("prod/a/1", 0, [connected("a1", 1), connected("a2", 2)]),
            ("prod/b/1", 0, [opening("prod/b/1", "b")]),
            ("prod/c/1", 5, [connected("c1", 1)]),
            ("prod/d/1", 0, twice),
            ("prod/d/1", 0, twice),
            ("prod/e/1", 0, [connected("lead", 1)]),
            ("prod/f/1", 0, [opening("prod/f/1", "f"), connected("f2", 2**63)]),
            ("prod/h/1", 0, [opening("prod/h/1", "h")]),
        ],
    )
    held.release()
    joined(threads)
    assert store.commits == 2, "the held leader's own, then one for the eight queued behind it"
    assert store.grouped == 9
    assert held.statements.count("COMMIT") == 2
    assert held.statements.count("ROLLBACK TO batch") == 3, "only the refused batches'"
    lead, a, b, c, d, d_again, e, f, h = (outcome[0] for outcome in outcomes)
    assert isinstance(c, WrongExpectedVersion)
    assert str(c) == "stream prod/c/1: expected version 5, found 0"
    assert isinstance(e, DuplicateEventId)
    assert str(e) == "stream prod/e/1: event id lead is stored with other events"
    assert isinstance(f, LogError)
    assert str(f).startswith("stream prod/f/1: a number in the batch does not fit the log")
    assert d == d_again, "the second copy of the batch is the stored one"
    stored = list(store.read_all())
    assert [e.position for e in stored] == list(range(1, 8))
    assert sorted(e.event_id for e in stored) == ["a1", "a2", "b", "d1", "d2", "h", "lead"]
    for outcome in (lead, a, b, d, h):
        assert isinstance(outcome, list)
        assert outcome == store.read_stream(outcome[0].stream)
    assert store.open_streams("prod") == ["prod/b/1", "prod/h/1"], "f's opening rolled back"
    store.close()


def test_reads_of_committed_state_do_not_wait_for_the_group_being_written(
    tmp_path: Path,
) -> None:
    store = SQLiteStore(tmp_path / "log.db")
    store.append("prod/b/1", 0, [opening("prod/b/1", "b")])
    held = Held(store)
    lead, outcome = appending(store, "prod/lead/1", 0, [connected("lead", 1)])
    assert held.holding.wait(timeout=60)
    try:
        # A supervisor opening a session, a session restarting: the last commit, at once.
        assert store.last_incarnation("prod", "b") == 1
        assert [e.event_id for e in store.read_stream("prod/b/1")] == ["b"]
        assert store.stream_version("prod/lead/1") == 0, "not yet committed"
        assert store.open_streams("prod") == ["prod/b/1"]
    finally:
        held.release()
    joined([lead])
    assert isinstance(outcome[0], list)
    assert store.stream_version("prod/lead/1") == 1
    store.close()


def test_a_batch_refused_after_its_first_row_writes_nothing(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "log.db")
    with pytest.raises(LogError, match="a number in the batch does not fit the log"):
        store.append("prod/f/1", 0, [opening("prod/f/1", "f"), connected("f2", 2**63)])
    assert list(store.read_all()) == []
    assert store.open_streams("prod") == []
    assert [e.position for e in store.append("prod/f/1", 0, [connected("f", 1)])] == [1]
    store.close()


def test_max_group_bounds_the_batches_of_one_commit(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "log.db", max_group=2)
    held, threads, _ = queued_behind_a_held_leader(
        store, [(f"prod/u{n}/1", 0, [connected(f"u{n}", 1)]) for n in range(5)]
    )
    held.release()
    joined(threads)
    assert store.commits == 4, "the lead's, then 2, 2 and 1 of the five queued"
    assert [e.position for e in store.read_all()] == list(range(1, 7))
    store.close()
    with pytest.raises(ValueError, match="at least one append"):
        SQLiteStore(tmp_path / "other.db", max_group=0)


def test_a_group_handed_over_at_once_commits_in_groups_of_max_group(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "log.db", max_group=4)
    outcomes = store.append_group(
        [Batch(f"prod/u{n}/1", 0, [connected(f"u{n}", 1, f"u{n}")]) for n in range(10)]
    )
    assert all(isinstance(outcome, list) for outcome in outcomes)
    assert (store.commits, store.grouped) == (3, 10), "4, 4 and 2 batches, one fsync each"
    assert [e.position for e in store.read_all()] == list(range(1, 11))
    store.close()


def steps(traced: list[str]) -> list[str]:
    """The statements a connection stepped through: SQLite traces each statement a trigger runs
    with the text of the statement that fired it."""
    return [text for n, text in enumerate(traced) if n == 0 or traced[n - 1] != text]


def test_a_group_is_checked_with_one_query_and_written_with_one_insert(tmp_path: Path) -> None:
    """Each statement gives up the GIL, once per row it steps through, and the writer may wait
    up to a switch interval to get it back: a group's statements and their rows do not grow
    with its batches, their checks, their events or the sessions they open and close. A writer
    just opened reads the checks from the log; after its first commit, from memory, and the
    group is one INSERT that SQLite commits itself."""
    with contextlib.closing(SQLiteStore(tmp_path / "log.db")) as first:
        first.append("prod/u0/1", 0, [connected("first", 1, "u0")])
    store = SQLiteStore(tmp_path / "log.db")
    statements: list[str] = []
    store._db.set_trace_callback(statements.append)
    outcomes = store.append_group(
        [
            Batch(
                f"prod/u{n}/1",
                int(n == 0),
                [
                    opening(f"prod/u{n}/1", f"u{n}-0") if n else connected("u0-0", 1, "u0"),
                    *(connected(f"u{n}-{e}", 1, f"u{n}") for e in (1, 2)),
                ],
            )
            for n in range(10)
        ]
    )
    store._db.set_trace_callback(None)
    assert all(isinstance(outcome, list) for outcome in outcomes)
    begin, checks, insert, commit = steps(statements)
    assert (begin, commit) == ("BEGIN IMMEDIATE", "COMMIT")
    assert checks.startswith("SELECT")
    assert insert.startswith("INSERT INTO indexed_events"), "the sessions indexed by its trigger"
    statements.clear()
    store._db.set_trace_callback(statements.append)
    outcomes = store.append_group(
        [
            Batch(f"prod/u{n}/1", 3 + int(n == 0), [connected(f"u{n}-3", 1, f"u{n}")])
            for n in range(10)
        ]
    )
    store._db.set_trace_callback(None)
    assert all(isinstance(outcome, list) for outcome in outcomes)
    assert [text.split(" (")[0] for text in steps(statements)] == [
        "INSERT INTO indexed_events",
    ], "checked from memory, written and committed in one step"
    assert [e.version for e in store.read_stream("prod/u0/1")] == [1, 2, 3, 4, 5]
    assert [e.position for e in store.read_all()] == list(range(1, 42))
    assert store.open_streams("prod") == [f"prod/u{n}/1" for n in range(1, 10)]
    store.close()


def test_a_writer_remembers_the_versions_of_open_sessions_only(tmp_path: Path) -> None:
    """What a writer remembers to check groups without a query follows the sessions of the
    moment, not the length of the log: an ended session's stream is forgotten."""
    store = SQLiteStore(tmp_path / "log.db")
    disposed = SessionDisposed(cause="c", why="grace is over")
    for n in range(3):
        store.append(f"prod/u{n}/1", 0, [opening(f"prod/u{n}/1", f"u{n}")])
    ended = Pending(event_id="end", time_ms=0, server="prod", user="u1", event=disposed)
    store.append("prod/u1/1", 1, [ended])
    assert store._writer._written is not None
    assert sorted(store._writer._written.versions) == ["prod/u0/1", "prod/u2/1"]
    with pytest.raises(WrongExpectedVersion):
        store.append("prod/u1/1", 0, [connected("late", 1, "u1")])
    store.close()


def test_a_group_written_at_once_indexes_each_session_it_opens_under_its_own_stream(
    tmp_path: Path,
) -> None:
    store = SQLiteStore(tmp_path / "log.db")
    outcomes = store.append_group(
        [Batch(f"prod/u{n}/1", 0, [opening(f"prod/u{n}/1", f"u{n}-0")]) for n in range(3)]
    )
    assert all(isinstance(outcome, list) for outcome in outcomes)
    assert store.open_streams("prod") == ["prod/u0/1", "prod/u1/1", "prod/u2/1"]
    assert [store.last_incarnation("prod", f"u{n}") for n in range(3)] == [1, 1, 1]
    store.close()


def test_a_group_too_big_for_one_statement_is_written_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full group (256 batches) binds more parameters than one statement takes where SQLite
    is older than 3.32 (999): its rows go in 83 a statement (twelve values each), and the
    group is written whole, its sessions indexed."""
    monkeypatch.setattr(sqlite_group_commit, "_PARAMETERS", 999)
    store = SQLiteStore(tmp_path / "log.db")
    streams = [f"prod/u{n:03}/1" for n in range(256)]
    statements: list[str] = []
    store._db.set_trace_callback(statements.append)
    outcomes = store.append_group(
        [Batch(stream, 0, [opening(stream, f"{stream}-0")]) for stream in streams]
    )
    store._db.set_trace_callback(None)
    assert all(isinstance(outcome, list) for outcome in outcomes)
    sizes = {s.count("), (") + 1 for s in statements if s.startswith("INSERT INTO indexed_events")}
    assert sizes == {83, 256 - 3 * 83}
    assert store.open_streams("prod") == streams
    assert [e.position for e in store.read_all()] == list(range(1, 257))
    store.close()


def test_a_batch_sqlite_refuses_in_a_group_written_at_once_is_refused_alone(
    tmp_path: Path,
) -> None:
    store = SQLiteStore(tmp_path / "log.db")
    statements: list[str] = []
    store._db.set_trace_callback(statements.append)
    ok_a, too_big, ok_b = store.append_group(
        [
            Batch("prod/a/1", 0, [opening("prod/a/1", "a")]),
            Batch("prod/f/1", 0, [opening("prod/f/1", "f"), connected("f2", 2**63)]),
            Batch("prod/b/1", 0, [connected("b1", 1)]),
        ]
    )
    store._db.set_trace_callback(None)
    assert statements.count("BEGIN IMMEDIATE") == 2, "the group's transaction began again"
    assert "ROLLBACK" in statements
    assert isinstance(too_big, LogError)
    assert str(too_big).startswith("stream prod/f/1: a number in the batch does not fit the log")
    assert isinstance(ok_a, list)
    assert isinstance(ok_b, list)
    assert [e.event_id for e in store.read_all()] == [ok_a[0].event_id, "b1"]
    assert store.open_streams("prod") == ["prod/a/1"], "f's opening rolled back"
    store.close()


def test_a_failed_commit_fails_every_batch_of_a_group_handed_over(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "log.db")
    store._db.set_authorizer(deny_commit)
    outcomes = store.append_group(
        [Batch(f"prod/u{n}/1", 0, [connected(f"u{n}", 1, f"u{n}")]) for n in range(3)]
    )
    assert all(isinstance(outcome, LogError) for outcome in outcomes)
    store._db.set_authorizer(None)
    assert list(store.read_all()) == []
    store.close()


def deny_insert(action: int, *_: str | None) -> int:
    """An authorizer under which no row can be inserted: SQLite refuses the statement."""
    return sqlite3.SQLITE_DENY if action == sqlite3.SQLITE_INSERT else sqlite3.SQLITE_OK


def test_a_group_refused_in_its_one_step_fails_whole_and_the_writer_reads_the_log_again(
    tmp_path: Path,
) -> None:
    """Written from memory in one step, a group whose statement SQLite refuses for a reason
    other than a constraint or a full disk is failed whole, as a failed commit is; what the
    writer remembered is dropped, so its next group is checked against the log."""
    store = SQLiteStore(tmp_path / "log.db")
    store.append("prod/a/1", 0, [connected("a1", 1)])
    store._db.set_authorizer(deny_insert)
    outcomes = store.append_group(
        [Batch(f"prod/u{n}/1", 0, [connected(f"u{n}", 1, f"u{n}")]) for n in range(3)]
    )
    store._db.set_authorizer(None)
    assert [str(outcome) for outcome in outcomes] == [
        f"{store.path}: stream prod/u{n}/1: not appended: the transaction of its group "
        "(3 appends) failed and wrote nothing (not authorized)"
        for n in range(3)
    ]
    assert store.commits == 1
    statements: list[str] = []
    store._db.set_trace_callback(statements.append)
    stored = store.append("prod/a/1", 1, [connected("a2", 1)])
    store._db.set_trace_callback(None)
    assert [(e.position, e.version) for e in stored] == [(2, 2)]
    assert statements[0] == "BEGIN IMMEDIATE", "checked against the log, in a transaction"
    store.close()


def test_a_reader_refuses_a_group(tmp_path: Path) -> None:
    fill(tmp_path / "log.db", 1)
    reader = SQLiteStore(tmp_path / "log.db", read_only=True)
    (refused,) = reader.append_group([Batch("prod/a/1", 1, [connected("e9", 9)])])
    assert isinstance(refused, LogError)
    assert "read-only" in str(refused)
    reader.close()


def deny_commit(action: int, arg1: str | None, *_: str | None) -> int:
    """An authorizer under which a transaction can begin and write but never commit."""
    if action == sqlite3.SQLITE_TRANSACTION and arg1 == "COMMIT":
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


def test_a_failed_commit_fails_its_whole_group_and_writes_nothing(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "log.db")
    store._db.set_authorizer(deny_commit)
    held, threads, outcomes = queued_behind_a_held_leader(
        store,
        [
            ("prod/a/1", 0, [connected("a1", 1)]),
            ("prod/b/1", 0, [opening("prod/b/1", "b")]),
            ("prod/c/1", 3, [connected("c1", 1)]),
            ("prod/a/1", 0, [connected("a1", 1)]),
        ],
    )
    held.release()
    joined(threads)
    lead, a, b, c, a_again = (outcome[0] for outcome in outcomes)
    assert isinstance(c, WrongExpectedVersion), "a refused batch keeps its own error"
    for outcome, stream in ((a, "prod/a/1"), (b, "prod/b/1"), (a_again, "prod/a/1")):
        assert type(outcome) is LogError
        assert str(outcome) == (
            f"{store.path}: stream {stream}: not appended: the transaction of its group "
            "(4 appends) failed and wrote nothing (not authorized)"
        )
    assert type(lead) is LogError
    assert "its group (1 append) failed" in str(lead)
    assert store.commits == 0
    assert list(store.read_all()) == []
    assert store.open_streams("prod") == []
    store._db.set_authorizer(None)
    stored = store.append("prod/a/1", 0, [connected("a1", 1)])
    assert [(e.position, e.version) for e in stored] == [(1, 1)]
    store.close()


def test_a_full_disk_in_the_middle_of_a_group_refuses_the_batch_that_hit_it_alone(
    tmp_path: Path,
) -> None:
    """SQLite takes back the statement that found the disk full: the group is written again
    batch by batch, the batch that hit it gets the error a lone append got, and the others,
    which fit, go in with their sessions indexed."""
    store = SQLiteStore(tmp_path / "log.db")
    (pages,) = store._db.execute("PRAGMA page_count").fetchone()
    store._db.execute(f"PRAGMA max_page_count = {pages + 2}")
    big = SessionOpened(cause="c", why="x" * 100_000, incarnation=1, epoch=1)
    held, threads, outcomes = queued_behind_a_held_leader(
        store,
        [
            ("prod/a/1", 0, [connected("a1", 1)]),
            (
                "prod/big/1",
                0,
                [Pending(event_id="big", time_ms=0, server="prod", user="big", event=big)],
            ),
            ("prod/b/1", 0, [opening("prod/b/1", "b")]),
        ],
    )
    held.release()
    joined(threads)
    lead, a, too_big, b = (outcome[0] for outcome in outcomes)
    assert isinstance(lead, list), "the lead's group of one fit in the file"
    assert isinstance(too_big, sqlite3.OperationalError)
    assert str(too_big) == "database or disk is full"
    assert isinstance(a, list)
    assert isinstance(b, list)
    assert [e.event_id for e in store.read_all()] == ["lead", "a1", "b"]
    assert store.open_streams("prod") == ["prod/b/1"]
    store._db.execute("PRAGMA max_page_count = 1000000")
    assert [e.position for e in store.append("prod/big/1", 0, [connected("big2", 1)])] == [4]
    store.close()


def test_a_caller_interrupted_while_it_waits_takes_its_batch_back(tmp_path: Path) -> None:
    """Ctrl-C in the main thread while its append waits for a group: the batch is not
    written, and the appends behind and after it do not wait forever."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("only the main thread receives SIGINT")
    store = SQLiteStore(tmp_path / "log.db")
    held = Held(store)
    lead = appending(store, "prod/lead/1", 0, [connected("lead", 1)])
    assert held.holding.wait(timeout=60)

    interrupted = threading.Event()

    def once(signum: int, frame: object) -> None:
        if not interrupted.is_set():
            interrupted.set()
            raise KeyboardInterrupt

    def interrupt_the_main_thread_while_it_waits() -> None:
        while store.queued < 1:
            time.sleep(0.001)
        # Again until it is heard: a signal that lands after the main thread's last check for
        # one and before it blocks on its lock is not seen until the next one (CPython's race).
        for _ in range(6_000):
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)
            if interrupted.wait(timeout=0.01):
                return

    previous = signal.signal(signal.SIGINT, once)
    interrupter = threading.Thread(target=interrupt_the_main_thread_while_it_waits, daemon=True)
    try:
        interrupter.start()
        with pytest.raises(KeyboardInterrupt):
            store.append("prod/main/1", 0, [connected("main", 1)])
    finally:
        interrupter.join(timeout=60)
        time.sleep(0.05)  # a signal sent meanwhile is handled here, by `once`, which ignores it
        signal.signal(signal.SIGINT, previous)
    assert store.queued == 0
    behind = appending(store, "prod/behind/1", 0, [connected("behind", 1)])
    held.release()
    joined([lead[0], behind[0]])
    store.append("prod/after/1", 0, [connected("after", 1)])
    assert [e.event_id for e in store.read_all()] == ["lead", "behind", "after"]
    store.close()


def read_ahead_threads() -> int:
    return sum(thread.name == "rejoin-read-ahead" for thread in threading.enumerate())


def test_a_long_read_is_fetched_ahead_by_one_thread_that_ends_with_it(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    big_log(path, 6_000)
    reading = SQLiteStore(path, read_only=True).read_all()
    first = [next(reading).position for _ in range(2_000)]
    assert read_ahead_threads() == 1
    assert first + [e.position for e in reading] == list(range(1, 6_001))
    assert read_ahead_threads() == 0


def test_a_short_read_starts_no_thread(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    big_log(path, 1_000)
    reading = SQLiteStore(path, read_only=True).read_all()
    next(reading)
    assert read_ahead_threads() == 0
    assert len(list(reading)) == 999


def test_a_read_given_up_midway_stops_its_thread(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    big_log(path, 6_000)
    reading = SQLiteStore(path, read_only=True).read_all()
    for _ in range(2_000):
        next(reading)
    assert read_ahead_threads() == 1
    del reading
    assert read_ahead_threads() == 0


def test_records_appended_during_a_long_read_are_read_too(tmp_path: Path) -> None:
    """The thread that fetched ahead stops at the end it found; the read goes on to the records
    appended since."""
    path = tmp_path / "log.db"
    big_log(path, 3_000)
    store = SQLiteStore(path, synchronous="NORMAL")
    reading = store.read_all()
    first = [next(reading).position for _ in range(2_900)]
    store.append("prod/late/1", 0, [connected(f"late{n}", n, "late") for n in range(100)])
    assert first + [e.position for e in reading] == list(range(1, 3_101))
    assert read_ahead_threads() == 0


@pytest.mark.parametrize("position", [1_500, 1_536, 5_999])
def test_a_damaged_record_where_the_read_ahead_fetches_is_named_exactly(
    tmp_path: Path, position: int
) -> None:
    """Inside a chunk the thread fetched, at its last record, and in the last, short chunk: the
    read stops the thread, reads on record by record, and names the damaged one."""
    path = tmp_path / "log.db"
    big_log(path, 6_000)
    rewrite_record(path, position, b"epoch", b"epocH")
    envelopes, error = read_valid_prefix(SQLiteStore(path, read_only=True))
    assert [e.position for e in envelopes] == list(range(1, position))
    assert error is not None
    assert (error.position, error.reason) == (position, "checksum mismatch")
    assert read_ahead_threads() == 0


@pytest.mark.parametrize("first", [1_000, 3_000])
def test_a_gap_longer_than_a_chunk_is_named_not_taken_for_the_end(
    tmp_path: Path, first: int
) -> None:
    """Read here, then by the read-ahead thread: 600 records deleted from the middle leave no
    record in a whole chunk's positions, and the records after them are still there."""
    path = tmp_path / "log.db"
    big_log(path, 6_000)
    tamper(path, f"DELETE FROM events WHERE position BETWEEN {first} AND {first + 599}")
    envelopes, error = read_valid_prefix(SQLiteStore(path, read_only=True))
    assert [e.position for e in envelopes] == list(range(1, first))
    assert error is not None
    assert (error.position, error.reason) == (first, "the record is missing")

"""What only the SQLite store promises: durability across reopening, and a corrupt log that
reports its first bad record while everything before it stays readable."""

import shutil
import sqlite3
from pathlib import Path

import pytest

from events.catalog import GlassesConnected, SessionOpened
from events.envelope import Pending
from events.log import CorruptLog, LogError, UnreadableLog, read_valid_prefix
from events.sqlite_store import SQLiteStore
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


def test_events_survive_reopening(tmp_path: Path) -> None:
    fill(tmp_path / "log.db", 3)
    assert [e.event_id for e in SQLiteStore(tmp_path / "log.db").read_all()] == ["e0", "e1", "e2"]


def test_a_flipped_byte_is_reported_at_its_position_after_the_valid_prefix(
    tmp_path: Path,
) -> None:
    path = tmp_path / "log.db"
    fill(path, 5)
    tamper(
        path,
        "UPDATE events SET record = CAST(REPLACE(record, 'epoch\":3', 'epoch\":4') AS BLOB)"
        " WHERE position = 4",
    )
    envelopes, error = read_valid_prefix(SQLiteStore(path))
    assert [e.position for e in envelopes] == [1, 2, 3]
    assert isinstance(error, CorruptLog)
    assert str(error) == f"{path}: record at position 4 is corrupt: checksum mismatch"


def test_a_missing_record_is_reported_as_a_gap(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    fill(path, 5)
    tamper(path, "DELETE FROM events WHERE position = 2")
    envelopes, error = read_valid_prefix(SQLiteStore(path))
    assert [e.position for e in envelopes] == [1]
    assert error is not None
    assert error.position == 2
    assert "missing" in error.reason


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
    zero_page_holding(path, b'"event_id":"e5000"')
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


def test_a_format_2_log_is_read_as_it_is_and_upgraded_by_a_writer(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    store = SQLiteStore(path)
    opened = SessionOpened(cause="c", why="first", incarnation=1, epoch=1)
    store.append(
        "prod/a/1", 0, [Pending(event_id="o", time_ms=0, server="prod", user="a", event=opened)]
    )
    store.close()
    tamper(path, "DROP TABLE sessions")
    tamper(path, "UPDATE meta SET value = 'rejoin-event-log/2' WHERE key = 'format'")
    before = path.read_bytes()
    reader = SQLiteStore(path, read_only=True)
    assert [e.event_id for e in reader.read_all()] == ["o"]
    reader.close()
    assert path.read_bytes() == before, "a reader does not upgrade"
    writer = SQLiteStore(path)
    assert writer.open_streams("prod") == ["prod/a/1"]
    assert writer.last_incarnation("prod", "a") == 1
    writer.close()
    db = sqlite3.connect(path)
    assert db.execute("SELECT value FROM meta").fetchone() == ("rejoin-event-log/3",)
    db.close()

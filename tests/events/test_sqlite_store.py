"""What only the SQLite store promises: durability across reopening, and a corrupt log that
reports its first bad record while everything before it stays readable."""

import sqlite3
from pathlib import Path

import pytest

from events.catalog import GlassesConnected
from events.envelope import Pending
from events.log import CorruptLog, UnreadableLog, read_valid_prefix
from events.sqlite_store import SQLiteStore


def fill(path: Path, count: int) -> None:
    store = SQLiteStore(path)
    for version in range(count):
        store.append(
            "prod/a/1",
            version,
            [
                Pending(
                    event_id=f"e{version}",
                    time_ms=version,
                    server="prod",
                    user="a",
                    event=GlassesConnected(epoch=version),
                )
            ],
        )
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

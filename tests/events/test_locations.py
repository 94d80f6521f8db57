"""A log is opened from where it lives, a file's path or a database's URL, in one place, and
named without a URL's password."""

from pathlib import Path

import pytest

from events.locations import is_postgres_url, open_log, shown_location
from events.postgres_store import PostgresStore
from events.sqlite_store import SQLiteStore


def test_a_url_is_shown_with_everything_but_the_password() -> None:
    assert shown_location("postgresql://u:p@db.example:5433/log?sslmode=require&password=q") == (
        "postgresql://u@db.example:5433/log?sslmode=require"
    )
    assert shown_location("postgres://db/log") == "postgres://db/log"
    assert shown_location(Path("logs/prod.db")) == "logs/prod.db"


def test_only_a_postgresql_url_names_a_database() -> None:
    assert is_postgres_url("postgresql://db/log")
    assert is_postgres_url("POSTGRES://db/log")
    assert not is_postgres_url("postgresql.db")
    assert not is_postgres_url(Path("postgresql:/db/log")), "a path, however it is spelled"
    assert not is_postgres_url("mysql://db/log")


@pytest.mark.parametrize("read_only", [False, True], ids=["writer", "reader"])
def test_a_path_opens_a_sqlite_log_and_a_url_a_postgresql_one(
    tmp_path: Path, postgres_url: str, read_only: bool
) -> None:
    for location in (tmp_path / "log.db", postgres_url):
        open_log(location).close()
        store = open_log(str(location), read_only=read_only)
        assert isinstance(store, SQLiteStore if location != postgres_url else PostgresStore)
        assert store.read_only is read_only
        store.close()

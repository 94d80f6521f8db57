"""Where a log lives: a SQLite file's path, or a PostgreSQL database's `postgresql://` URL.
Every command and the server open their log here, whichever it is."""

from __future__ import annotations

import re
import urllib.parse
from pathlib import Path

from events.log import EventStore, LogError
from events.sqlite_store import SQLiteStore

__all__ = ["is_postgres_url", "open_log", "shown_location"]


def is_postgres_url(location: str | Path) -> bool:
    """Whether `location` names a PostgreSQL database rather than a file."""
    return isinstance(location, str) and re.match(r"(?i)postgres(ql)?://", location) is not None


def shown_location(location: str | Path) -> str:
    """How messages name the log at `location`: a URL without its password."""
    if not is_postgres_url(location):
        return str(location)
    parts = urllib.parse.urlsplit(str(location))
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        netloc = f"{userinfo.split(':', 1)[0]}@{host}"
    query = urllib.parse.urlencode(
        [
            (key, value)
            for key, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
            if key != "password"
        ],
        safe="/",  # a socket's folder reads as it was written
    )
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query=query))


def open_log(location: str | Path, *, read_only: bool = False) -> EventStore:
    """The log at `location`, as a writer (which creates it) or a reader (which writes
    nothing); a `LogError` naming it when it cannot be opened."""
    if not is_postgres_url(location):
        return SQLiteStore(location, read_only=read_only)
    try:
        from events.postgres_store import PostgresStore  # noqa: PLC0415
    except ModuleNotFoundError as error:
        msg = (
            f"{shown_location(location)}: a PostgreSQL log needs {error.name}: "
            "pip install 'rejoin[postgres]'"
        )
        raise LogError(msg) from None
    return PostgresStore(str(location), read_only=read_only)

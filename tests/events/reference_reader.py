"""The plainest reader of a SQLite log there is, as the yardstick for the store's own: it opens
the file immutable (it writes nothing), checks that it is a rejoin log, and reads record after
record by position until one cannot be read. It checks each record's CRC as its format
defines it: on its own, seeded with the schema (formats 2 and 3, and the records of an upgraded
log written before its upgrade), or over the record and a newline (format 4) or msgpack's nil
(format 5), continuing the CRC stored before it; and decodes it as JSON (formats 2 to 4) or
msgpack (format 5)."""

import contextlib
import itertools
import sqlite3
import urllib.parse
import zlib
from pathlib import Path

from events.codec import RECORD_SEPARATOR, UndecodableEvent, decode_envelope, decode_record
from events.sqlite_store import READABLE


def readable_records(path: Path) -> int:
    """How many records, from position 1 on, can be read before the first bad one."""
    uri = f"file:{urllib.parse.quote(str(path.resolve()))}?immutable=1"
    count = 0
    try:
        db = sqlite3.connect(uri, uri=True)
    except sqlite3.Error:
        return 0
    with contextlib.closing(db), contextlib.suppress(sqlite3.Error, UndecodableEvent):
        found = db.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
        if found is None or found[0] not in READABLE:
            return 0
        chained = db.execute("SELECT value FROM meta WHERE key = 'chained_from'").fetchone()
        chained_from = int(chained[0]) if chained else None
        packed = db.execute("SELECT value FROM meta WHERE key = 'packed_from'").fetchone()
        packed_from = int(packed[0]) if packed else None
        before = 0
        for position in itertools.count(1):
            row = db.execute(
                "SELECT schema, record, crc FROM events WHERE position = ?", (position,)
            ).fetchone()
            if row is None:
                break
            is_packed = packed_from is not None and position >= packed_from
            if is_packed:
                crc = zlib.crc32(row[1] + RECORD_SEPARATOR, before)
            elif chained_from is not None and position >= chained_from:
                crc = zlib.crc32(row[1] + b"\n", before)
            else:
                crc = zlib.crc32(row[1], row[0])
            if crc != row[2]:
                break
            before = row[2]
            decode = decode_record if is_packed else decode_envelope
            if decode(row[0], row[1]).position != position:
                break
            count = position
    return count

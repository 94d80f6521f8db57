"""What only the PostgreSQL store promises: tables it creates and migrates with a version check,
readers that write nothing, a URL's password never in a message, and positions in commit order
while several processes append at once."""

import bisect
import contextlib
import multiprocessing
import queue
import threading
import time
from typing import Any

import psycopg
import pytest

from events.catalog import GlassesConnected
from events.envelope import Pending
from events.log import Batch, LogError, UnreadableLog
from events.postgres_store import VERSION, PostgresStore


def connected(event_id: str, user: str = "a") -> Pending:
    return Pending(
        event_id=event_id, time_ms=1, server="prod", user=user, event=GlassesConnected(epoch=1)
    )


def query(url: str, statement: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as db:
        found = db.execute(statement.encode())
        return found.fetchall() if found.description else []


def tables(url: str) -> list[str]:
    return [
        name
        for (name,) in query(
            url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename"
        )
    ]


def test_a_writer_creates_the_tables_and_records_their_version(postgres_url: str) -> None:
    PostgresStore(postgres_url).close()
    assert tables(postgres_url) == ["rejoin_events", "rejoin_meta", "rejoin_sessions"]
    assert dict(query(postgres_url, "SELECT key, value FROM rejoin_meta")) == {
        "format": "rejoin-event-log/postgresql",
        "version": str(VERSION),
    }


def test_a_writer_migrates_a_log_of_an_older_version(postgres_url: str) -> None:
    query(postgres_url, "CREATE TABLE rejoin_meta (key text PRIMARY KEY, value text NOT NULL)")
    query(
        postgres_url,
        "INSERT INTO rejoin_meta VALUES"
        " ('format', 'rejoin-event-log/postgresql'), ('version', '0')",
    )
    with pytest.raises(UnreadableLog, match="log version 0; open it with a writer once"):
        PostgresStore(postgres_url, read_only=True)
    store = PostgresStore(postgres_url)
    store.append("prod/a/1", 0, [connected("a1")])
    store.close()
    assert query(postgres_url, "SELECT value FROM rejoin_meta WHERE key = 'version'") == [
        (str(VERSION),)
    ]


@pytest.mark.parametrize("read_only", [True, False], ids=["reader", "writer"])
def test_a_log_of_a_newer_version_is_refused_untouched(postgres_url: str, read_only: bool) -> None:
    store = PostgresStore(postgres_url)
    store.append("prod/a/1", 0, [connected("a1")])
    store.close()
    query(postgres_url, f"UPDATE rejoin_meta SET value = '{VERSION + 1}' WHERE key = 'version'")
    with pytest.raises(UnreadableLog, match=f"log version {VERSION + 1}, this version of rejoin"):
        PostgresStore(postgres_url, read_only=read_only)
    assert query(postgres_url, "SELECT event_id FROM rejoin_events") == [("a1",)]


def test_another_programs_meta_table_is_not_read_as_a_log(postgres_url: str) -> None:
    query(postgres_url, "CREATE TABLE rejoin_meta (key text PRIMARY KEY, value text NOT NULL)")
    with pytest.raises(UnreadableLog, match=r"not a rejoin event log \(its format is None"):
        PostgresStore(postgres_url)
    assert tables(postgres_url) == ["rejoin_meta"]


def test_a_reader_creates_nothing_and_writes_nothing(postgres_url: str) -> None:
    with pytest.raises(UnreadableLog, match=r"not a rejoin event log \(it has no rejoin_meta"):
        PostgresStore(postgres_url, read_only=True)
    assert tables(postgres_url) == []
    PostgresStore(postgres_url).close()
    reader = PostgresStore(postgres_url, read_only=True)
    with pytest.raises(LogError, match="opened read-only"):
        reader.append("prod/a/1", 0, [connected("a1")])
    reader.close()
    assert query(postgres_url, "SELECT count(*) FROM rejoin_events") == [(0,)]


def test_servers_starting_together_create_the_tables_once(postgres_url: str) -> None:
    failures: list[BaseException] = []
    start = threading.Barrier(4)

    def open_it() -> None:
        start.wait()
        try:
            PostgresStore(postgres_url).close()
        except BaseException as error:
            failures.append(error)

    threads = [threading.Thread(target=open_it) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


def test_a_log_that_cannot_be_reached_is_named_in_one_line_without_its_password(
    tmp_path: Any,
) -> None:
    url = f"postgresql://rejoin:hunter2@/rejoin?host={tmp_path}&password=hunter3"
    with pytest.raises(LogError) as refused:
        PostgresStore(url, connect_timeout_s=2)
    message = str(refused.value)
    assert message.startswith(f"postgresql://rejoin@/rejoin?host={tmp_path}: cannot open the log")
    assert "hunter" not in message
    assert "\n" not in message


def test_a_batch_the_database_cannot_hold_is_refused_alone_in_its_group(
    postgres_url: str,
) -> None:
    store = PostgresStore(postgres_url)
    nul, _ = store.append_group(
        [Batch("prod/a\x00/1", 0, [connected("x")]), Batch("prod/b/1", 0, [connected("b1")])]
    )
    assert isinstance(nul, LogError)
    assert "NUL" in str(nul)
    assert [e.event_id for e in store.read_all()] == ["b1"]
    store.close()


Appended = tuple[float, float, int, int]
"""One append as its writer saw it: monotonic start and return, first and last position."""


def write_for(url: str, writer: int, seconds: float, results: Any) -> None:
    """Append for `seconds` to streams of this writer's own, alone or in groups of three;
    put every append's times and positions on `results`."""
    store = PostgresStore(url)
    appended: list[Appended] = []
    versions = [0, 0, 0]
    number = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        batches = []
        for lane in range(1 if number % 2 else 3):
            size = 1 + number % 3
            events = [
                connected(f"w{writer}-{number}-{lane}-{n}", f"u{writer}") for n in range(size)
            ]
            batches.append(Batch(f"prod/w{writer}-{lane}/1", versions[lane], events))
            versions[lane] += size
        began = time.monotonic()
        outcomes = store.append_group(batches)
        returned = time.monotonic()
        for outcome in outcomes:
            assert isinstance(outcome, list), outcome
            appended.append((began, returned, outcome[0].position, outcome[-1].position))
        number += 1
    store.close()
    results.put(appended)


def test_three_writer_processes_leave_positions_gap_free_and_in_commit_order(
    postgres_url: str,
) -> None:
    """Three processes append for 10 s while a reader tails the log: the reader never meets a
    gap (one that a slower transaction would fill later), and an append that returned before
    another began holds lower positions."""
    PostgresStore(postgres_url).close()
    spawn = multiprocessing.get_context("spawn")
    results = spawn.Queue()
    writers = [
        spawn.Process(target=write_for, args=(postgres_url, writer, 10.0, results))
        for writer in range(3)
    ]
    for process in writers:
        process.start()
    reader = PostgresStore(postgres_url, read_only=True)
    seen: list[int] = []
    reads = 0
    appended: list[Appended] = []
    finished = 0
    deadline = time.monotonic() + 120
    while finished < len(writers):
        assert time.monotonic() < deadline, "the writers never finished"
        assert all(process.exitcode in (None, 0) for process in writers), "a writer failed"
        # `read_all` raises CorruptLog if the first record it finds is past a missing one.
        seen.extend(e.position for e in reader.read_all(len(seen) + 1))
        reads += 1
        with contextlib.suppress(queue.Empty):
            appended.extend(results.get_nowait())
            finished += 1
    for process in writers:
        process.join(timeout=60)
        assert process.exitcode == 0
    seen.extend(e.position for e in reader.read_all(len(seen) + 1))
    reader.close()
    total = sum(last - first + 1 for _, _, first, last in appended)
    assert seen == list(range(1, total + 1))
    assert reads > 10, "the reader read while the writers wrote"
    by_return = sorted(appended, key=lambda each: each[1])
    returns = [returned for _, returned, _, _ in by_return]
    highest: list[int] = []
    for _, _, _, last in by_return:
        highest.append(max(last, highest[-1] if highest else 0))
    for began, _, first, _ in appended:
        done_before = bisect.bisect_left(returns, began)
        if done_before:
            assert highest[done_before - 1] < first

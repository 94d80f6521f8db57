"""The log's contract, held by every store: atomic batches, expected versions, idempotent event
ids, gap-free global positions; and by every durable store: events that outlive the store's
process, and a damaged record reported at its position after every record before it."""

import contextlib
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from events.catalog import (
    AnyEvent,
    ConnectionRecorded,
    GlassesConnected,
    GlassesDisconnected,
    SessionDisposed,
    SessionOpened,
)
from events.envelope import Envelope, Pending
from events.fleet import record_connection
from events.log import (
    Batch,
    CorruptLog,
    DuplicateEventId,
    EventStore,
    LogError,
    WrongExpectedVersion,
    read_valid_prefix,
)
from events.memory_store import MemoryStore
from events.observed_store import ObservedStore
from events.postgres_store import PostgresStore
from events.sqlite_store import SQLiteStore
from simulations.faulty_store import FaultyStore


@pytest.fixture(params=["memory", "sqlite", "postgres", "faulty", "observed"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[EventStore]:
    made: EventStore
    if request.param == "memory":
        made = MemoryStore()
    elif request.param == "sqlite":
        made = SQLiteStore(tmp_path / "log.db")
    elif request.param == "postgres":
        made = PostgresStore(request.getfixturevalue("postgres_url"))
    elif request.param == "faulty":
        made = FaultyStore(SQLiteStore(tmp_path / "log.db"), lambda: 0)  # no fault on
    else:
        made = ObservedStore(SQLiteStore(tmp_path / "log.db"), [lambda _batch, _s: None])
    yield made
    made.close()


def pending(event_id: str, epoch: int = 1) -> Pending:
    return Pending(
        event_id=event_id,
        time_ms=epoch,
        server="prod",
        user="ada@example.com",
        event=GlassesConnected(epoch=epoch),
    )


def test_a_batch_gets_consecutive_versions_and_global_positions(store: EventStore) -> None:
    first = store.append("prod/a/1", 0, [pending("a1"), pending("a2")])
    second = store.append("prod/b/1", 0, [pending("b1")])
    third = store.append("prod/a/1", 2, [pending("a3")])
    assert [(e.position, e.version) for e in first + second + third] == [
        (1, 1),
        (2, 2),
        (3, 1),
        (4, 3),
    ]
    assert [e.event_id for e in store.read_all()] == ["a1", "a2", "b1", "a3"]
    assert [e.event_id for e in store.read_all(from_position=3)] == ["b1", "a3"]
    assert [e.event_id for e in store.read_stream("prod/a/1")] == ["a1", "a2", "a3"]
    assert store.stream_version("prod/a/1") == 3
    assert store.stream_version("prod/none/1") == 0


def test_a_wrong_expected_version_is_rejected_and_writes_nothing(store: EventStore) -> None:
    store.append("prod/a/1", 0, [pending("a1")])
    with pytest.raises(WrongExpectedVersion, match="expected version 0, found 1"):
        store.append("prod/a/1", 0, [pending("a2"), pending("a3")])
    assert [e.event_id for e in store.read_all()] == ["a1"]


def test_appending_the_same_batch_twice_stores_it_once(store: EventStore) -> None:
    batch = [pending("a1"), pending("a2")]
    first = store.append("prod/a/1", 0, batch)
    again = store.append("prod/a/1", 0, batch)
    assert again == first
    assert len(list(store.read_all())) == 2


def test_a_stored_event_id_in_another_batch_is_refused_whole(store: EventStore) -> None:
    store.append("prod/a/1", 0, [pending("a1")])
    with pytest.raises(DuplicateEventId):
        store.append("prod/b/1", 0, [pending("a1")])
    with pytest.raises(DuplicateEventId):
        store.append("prod/a/1", 1, [pending("new"), pending("a1")])
    assert [e.event_id for e in store.read_all()] == ["a1"]


def test_empty_batches_and_repeated_ids_within_a_batch_are_refused(store: EventStore) -> None:
    with pytest.raises(LogError, match="at least one event"):
        store.append("prod/a/1", 0, [])
    with pytest.raises(DuplicateEventId):
        store.append("prod/a/1", 0, [pending("x"), pending("x")])


def test_concurrent_writers_get_gap_free_unique_positions(store: EventStore) -> None:
    def writer(name: str) -> None:
        for version in range(50):
            store.append(f"prod/{name}/1", version, [pending(f"{name}-{version}")])

    threads = [threading.Thread(target=writer, args=(f"u{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [e.position for e in store.read_all()] == list(range(1, 201))


def test_events_round_trip_with_their_types(store: EventStore) -> None:
    events: list[AnyEvent] = [
        GlassesConnected(epoch=5),
        SessionOpened(cause="c", why="first", incarnation=1, epoch=5),
        GlassesDisconnected(),
    ]
    store.append(
        "prod/a/1",
        0,
        [
            Pending(event_id=f"e{i}", time_ms=i, server="prod", user="a", event=event)
            for i, event in enumerate(events)
        ],
    )
    assert [e.event for e in store.read_all()] == events


def opened(stream: str, user: str, incarnation: int, event_id: str) -> Pending:
    return Pending(
        event_id=event_id,
        time_ms=0,
        server=stream.split("/", maxsplit=1)[0],
        user=user,
        event=SessionOpened(cause="c", why="first", incarnation=incarnation, epoch=1),
    )


def disposed(stream: str, user: str, event_id: str) -> Pending:
    return Pending(
        event_id=event_id,
        time_ms=0,
        server=stream.split("/", maxsplit=1)[0],
        user=user,
        event=SessionDisposed(cause="c", why="grace expired"),
    )


def test_the_index_of_sessions_follows_openings_and_disposals(store: EventStore) -> None:
    store.append("prod/a/1", 0, [opened("prod/a/1", "a", 1, "a1")])
    store.append("prod/b/1", 0, [opened("prod/b/1", "b", 1, "b1")])
    store.append("debug/a/1", 0, [opened("debug/a/1", "a", 1, "da1")])
    store.append("prod/a/1", 1, [disposed("prod/a/1", "a", "a1-end")])
    store.append("prod/a/2", 0, [opened("prod/a/2", "a", 2, "a2")])
    assert store.open_streams("prod") == ["prod/b/1", "prod/a/2"]
    assert store.open_streams("debug") == ["debug/a/1"]
    assert store.open_streams("dev") == []
    assert store.last_incarnation("prod", "a") == 2
    assert store.last_incarnation("debug", "a") == 1
    assert store.last_incarnation("prod", "nobody") == 0
    assert sorted(store.session_users("prod")) == ["a", "b"]
    assert store.session_users("debug") == ["a"]
    assert store.session_users("dev") == []


def test_a_users_read_holds_its_sessions_on_every_server_and_its_fleet_stream(
    store: EventStore,
) -> None:
    """What `rejoin replay --user` reads: that user's events alone, in the log's order, found
    through the index of sessions and the fleet stream's name."""
    store.append("prod/a/1", 0, [opened("prod/a/1", "a", 1, "a1")])
    store.append("prod/b/1", 0, [opened("prod/b/1", "b", 1, "b1")])
    recorded = ConnectionRecorded(cause="a1", why="glasses here", epoch=1)
    record_connection(
        store, Pending(event_id="fa", time_ms=0, server="prod", user="a", event=recorded)
    )
    store.append("debug/a/1", 0, [opened("debug/a/1", "a", 1, "da1")])
    store.append("prod/a/1", 1, [disposed("prod/a/1", "a", "a1-end")])
    store.append("prod/b/1", 1, [disposed("prod/b/1", "b", "b1-end")])
    assert [(e.position, e.event_id) for e in store.read_user("a")] == [
        (1, "a1"),
        (3, "fa"),
        (4, "da1"),
        (5, "a1-end"),
    ]
    assert [e.event_id for e in store.read_user("b")] == ["b1", "b1-end"]
    assert list(store.read_user("nobody")) == []
    assert sorted(store.session_users()) == ["a", "b"]


def test_a_refused_append_leaves_the_index_as_it_was(store: EventStore) -> None:
    store.append("prod/a/1", 0, [opened("prod/a/1", "a", 1, "a1")])
    with pytest.raises(WrongExpectedVersion):
        store.append("prod/a/1", 0, [disposed("prod/a/1", "a", "a1-end")])
    assert store.open_streams("prod") == ["prod/a/1"]


def test_concurrent_appends_keep_each_batchs_contract(store: EventStore) -> None:
    """Sixteen threads in twins: both of a twin append the same batches to the same stream,
    so copies of one batch arrive together; between batches each thread also appends with a
    stale expected version and reuses an event id stored on another stream. Every good batch is
    stored once, and every refusal reaches its own caller only."""
    store.append("prod/shared/1", 0, [pending("shared")])
    rounds = 25
    results: dict[int, list[list[str]]] = {}
    refusals: dict[int, list[LogError]] = {}
    unexpected: list[BaseException] = []
    start = threading.Barrier(16)

    def writer(thread: int) -> None:
        twin = thread // 2
        stream = f"prod/u{twin}/1"
        mine = results.setdefault(thread, [])
        refused = refusals.setdefault(thread, [])
        start.wait()
        try:
            version = 0
            for number in range(rounds):
                batch = [pending(f"u{twin}-{number}-{n}") for n in range(1 + number % 3)]
                stored = store.append(stream, version, batch)
                mine.append([f"{e.stream}@{e.version}#{e.position}:{e.event_id}" for e in stored])
                version += len(batch)
                if number % 4 == thread % 4:
                    with pytest.raises(WrongExpectedVersion) as wrong:
                        store.append(stream, version - 1, [pending(f"u{thread}-wrong-{number}")])
                    refused.append(wrong.value)
                if number % 5 == thread % 5:
                    with pytest.raises(DuplicateEventId) as reused:
                        store.append(stream, version, [pending("shared")])
                    refused.append(reused.value)
        except BaseException as error:
            unexpected.append(error)

    threads = [threading.Thread(target=writer, args=(thread,)) for thread in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert unexpected == []
    stored = list(store.read_all())
    assert [e.position for e in stored] == list(range(1, len(stored) + 1))
    good = {
        f"u{twin}-{number}-{n}"
        for twin in range(8)
        for number in range(rounds)
        for n in range(1 + number % 3)
    }
    assert sorted(e.event_id for e in stored) == sorted(good | {"shared"})
    for twin in range(8):
        assert results[2 * twin] == results[2 * twin + 1], "both copies get the stored batch"
        in_stream = store.read_stream(f"prod/u{twin}/1")
        assert [e.version for e in in_stream] == list(range(1, len(in_stream) + 1))
        assert [f"{e.stream}@{e.version}#{e.position}:{e.event_id}" for e in in_stream] == [
            line for batch in results[2 * twin] for line in batch
        ]
    for twin_thread in range(16):
        wrongs = [e for e in refusals[twin_thread] if isinstance(e, WrongExpectedVersion)]
        assert [e.stream for e in wrongs] == [f"prod/u{twin_thread // 2}/1"] * sum(
            number % 4 == twin_thread % 4 for number in range(rounds)
        )
        assert len(refusals[twin_thread]) - len(wrongs) == sum(
            number % 5 == twin_thread % 5 for number in range(rounds)
        ), "the rest are the reused ids, each refused as a DuplicateEventId"


def ids(outcome: list[Envelope] | Exception) -> list[str]:
    assert isinstance(outcome, list), f"refused: {outcome!r}"
    return [e.event_id for e in outcome]


def test_a_group_appends_each_batch_as_append_would(store: EventStore) -> None:
    store.append("prod/a/1", 0, [pending("a1")])
    outcomes = store.append_group(
        [
            Batch("prod/a/1", 1, [pending("a2"), pending("a3")]),
            Batch("prod/b/1", 0, [pending("b1")]),
            Batch("prod/a/1", 3, [pending("a4")]),
        ]
    )
    assert [ids(outcome) for outcome in outcomes] == [["a2", "a3"], ["b1"], ["a4"]]
    assert [(e.position, e.version) for e in store.read_stream("prod/a/1")] == [
        (1, 1),
        (2, 2),
        (3, 3),
        (5, 4),
    ]
    assert [e.event_id for e in store.read_all()] == ["a1", "a2", "a3", "b1", "a4"]


def test_a_refused_batch_of_a_group_is_reported_to_it_alone(store: EventStore) -> None:
    store.append("prod/a/1", 0, [opened("prod/a/1", "a", 1, "a1")])
    outcomes = store.append_group(
        [
            Batch("prod/a/1", 0, [disposed("prod/a/1", "a", "a-stale")]),
            Batch("prod/b/1", 0, [opened("prod/b/1", "b", 1, "b1")]),
            Batch("prod/c/1", 0, []),
            Batch("prod/d/1", 0, [pending("a1")]),
            Batch("prod/e/1", 0, [pending("e1"), pending("e1")]),
            Batch("prod/a/1", 1, [pending("a2")]),
        ]
    )
    wrong, opened_b, empty, reused, repeated, later = outcomes
    assert isinstance(wrong, WrongExpectedVersion)
    assert isinstance(empty, LogError)
    assert isinstance(reused, DuplicateEventId)
    assert isinstance(repeated, DuplicateEventId)
    assert (ids(opened_b), ids(later)) == (["b1"], ["a2"])
    assert [e.event_id for e in store.read_all()] == ["a1", "b1", "a2"]
    assert store.open_streams("prod") == ["prod/a/1", "prod/b/1"], "the index as appends left it"


def test_a_batch_a_group_repeats_is_stored_once(store: EventStore) -> None:
    batch = [pending("a1"), pending("a2")]
    first = store.append("prod/a/1", 0, batch)
    again, twice = store.append_group([Batch("prod/a/1", 0, batch), Batch("prod/a/1", 0, batch)])
    assert again == first
    assert twice == first
    assert len(list(store.read_all())) == 2


def test_a_failing_disk_refuses_every_batch_of_a_group_and_writes_nothing() -> None:
    now = 0
    log = FaultyStore(MemoryStore(), lambda: now)
    log.fail_for(1_000)
    outcomes = log.append_group([Batch("prod/a/1", 0, [pending("a1")]), Batch("prod/b/1", 0, [])])
    assert all(isinstance(outcome, LogError) for outcome in outcomes)
    assert (log.refused, list(log.read_all())) == (2, [])
    now = 1_000
    (stored,) = log.append_group([Batch("prod/a/1", 0, [pending("a1")])])
    assert ids(stored) == ["a1"]


class Durable:
    """A durable store under test: a way to open it again, to change its rows behind its
    back, and how its records spell an epoch. Statements name the events' table `{events}` and
    mark parameters with `?`."""

    def __init__(
        self,
        open_store: Callable[[], EventStore],
        sql: Callable[[str, tuple[Any, ...]], list[tuple[Any, ...]]],
        epoch: Callable[[int], bytes],
    ) -> None:
        self.open = open_store
        self.sql = sql
        self.epoch = epoch

    def fill(self, count: int) -> None:
        store = self.open()
        for version in range(count):
            store.append("prod/a/1", version, [pending(f"e{version}", version)])
        store.close()

    def replace_in_record(self, position: int, old: bytes, new: bytes) -> None:
        ((record,),) = self.sql("SELECT record FROM {events} WHERE position = ?", (position,))
        assert old in record
        self.sql(
            "UPDATE {events} SET record = ? WHERE position = ?",
            (bytes(record).replace(old, new), position),
        )


@pytest.fixture(params=["sqlite", "postgres"])
def durable(request: pytest.FixtureRequest, tmp_path: Path) -> Durable:
    if request.param == "sqlite":
        path = tmp_path / "log.db"

        def sqlite_sql(statement: str, parameters: tuple[Any, ...]) -> list[tuple[Any, ...]]:
            db = sqlite3.connect(path)
            rows = db.execute(statement.format(events="events"), parameters).fetchall()
            db.commit()
            db.close()
            return rows

        # msgpack: the key, then a small int in one byte.
        return Durable(lambda: SQLiteStore(path), sqlite_sql, lambda n: b"epoch" + bytes([n]))
    url = request.getfixturevalue("postgres_url")

    def postgres_sql(statement: str, parameters: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        with psycopg.connect(url, autocommit=True) as db:
            found = db.execute(
                statement.format(events="rejoin_events").replace("?", "%s").encode(), parameters
            )
            return found.fetchall() if found.description else []

    return Durable(lambda: PostgresStore(url), postgres_sql, lambda n: b'epoch":%d' % n)


def test_events_survive_reopening(durable: Durable) -> None:
    durable.fill(3)
    with contextlib.closing(durable.open()) as store:
        assert [e.event_id for e in store.read_all()] == ["e0", "e1", "e2"]


def test_a_flipped_byte_is_reported_at_its_position_after_the_valid_prefix(
    durable: Durable,
) -> None:
    durable.fill(5)
    durable.replace_in_record(4, durable.epoch(3), durable.epoch(4))
    with contextlib.closing(durable.open()) as store:
        envelopes, error = read_valid_prefix(store)
        assert [e.position for e in envelopes] == [1, 2, 3]
        assert isinstance(error, CorruptLog)
        assert (error.position, error.reason) == (4, "checksum mismatch")
        with pytest.raises(CorruptLog, match="position 4 is corrupt: checksum mismatch"):
            store.read_stream("prod/a/1")


def test_a_users_read_stops_at_its_first_bad_record_and_not_at_another_users(
    durable: Durable,
) -> None:
    with contextlib.closing(durable.open()) as store:
        for number in range(3):
            for user in ("a", "b"):
                stream = f"prod/{user}/{number + 1}"
                store.append(stream, 0, [opened(stream, user, number + 1, f"{user}{number}")])
    durable.replace_in_record(4, b"b1", b"b9")  # b's second session, in a's read's range
    durable.replace_in_record(5, b"a2", b"a7")
    with contextlib.closing(durable.open()) as store:
        envelopes, error = read_valid_prefix(store, "a")
    assert [e.event_id for e in envelopes] == ["a0", "a1"]
    assert error is not None
    assert (error.position, error.reason) == (5, "checksum mismatch")


def test_a_missing_record_is_reported_as_a_gap(durable: Durable) -> None:
    durable.fill(5)
    durable.sql("DELETE FROM {events} WHERE position = ?", (2,))
    with contextlib.closing(durable.open()) as store:
        envelopes, error = read_valid_prefix(store)
    assert [e.position for e in envelopes] == [1]
    assert error is not None
    assert (error.position, error.reason) == (2, "the record is missing")


def test_a_writer_stays_right_after_another_appended_to_the_same_log(durable: Durable) -> None:
    """Two writers on one log (a fleet's, or a restart beside the process it replaces): what
    one remembers of the log is stale once the other appends, and every outcome is still the
    log's: a stale version refused, a stored id recognised, no position taken twice."""
    one, other = durable.open(), durable.open()
    try:
        one.append("prod/a/1", 0, [pending("a1")])
        one.append("prod/b/1", 0, [pending("b1")])
        theirs = other.append("prod/a/1", 1, [pending("a2")])
        with pytest.raises(WrongExpectedVersion, match="expected version 1, found 2"):
            one.append("prod/a/1", 1, [pending("a2-mine")])
        assert one.append("prod/a/1", 1, [pending("a2")]) == theirs, "their batch, stored once"
        with pytest.raises(DuplicateEventId):
            one.append("prod/c/1", 0, [pending("a2")])
        other.append("prod/c/1", 0, [pending("c1")])
        b2, c2 = one.append_group(
            [Batch("prod/b/1", 1, [pending("b2")]), Batch("prod/c/1", 0, [pending("c1-mine")])]
        )
        assert isinstance(c2, WrongExpectedVersion)
        assert isinstance(b2, list)
        assert [(e.position, e.version) for e in b2] == [(5, 2)], "after the other's rows"
        assert [e.position for e in one.append("prod/b/1", 2, [pending("b3")])] == [6]
        other.append("prod/b/1", 3, [pending("b4")])
        twice = [Batch("prod/b/1", 3, [pending(f"b4-{n}")]) for n in range(2)]
        assert all(isinstance(o, WrongExpectedVersion) for o in one.append_group(twice))
    finally:
        one.close()
        other.close()
    with contextlib.closing(durable.open()) as store:
        stored = list(store.read_all())  # every record's CRC chained to the one before it
    assert [e.event_id for e in stored] == ["a1", "b1", "a2", "c1", "b2", "b3", "b4"]

"""The runtime facade, on both executors: it starts from the open sessions alone, whatever the
history behind them, and keeps an ended session's view only for the retention period."""

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from events.catalog import AnyEvent, GlassesConnected, SessionOpened
from events.envelope import Envelope, Pending
from events.sqlite_store import SQLiteStore
from simulations.world import World
from tests.actors.harness import EXECUTORS, ExecutorKind, Harness

USER = "isaiah@mentra.glass"


class CountingStore(SQLiteStore):
    """The SQLite store, counting what a runtime reads from it."""

    whole_reads = 0
    stream_reads = 0
    incarnation_reads = 0

    def read_all(self, from_position: int = 1) -> Iterator[Envelope]:
        CountingStore.whole_reads += 1
        return super().read_all(from_position)

    def read_stream(self, stream: str) -> list[Envelope]:
        CountingStore.stream_reads += 1
        return super().read_stream(stream)

    def last_incarnation(self, server: str, user: str) -> int:
        CountingStore.incarnation_reads += 1
        return super().last_incarnation(server, user)


def twenty_ended_sessions_and_one_open(log: Path) -> None:
    world = World(servers=["prod"], seed=1, grace_ms=1_000, store_for=lambda _: SQLiteStore(log))
    for number in range(20):
        world.connect(f"u{number}", "prod")
        world.run_for(500)
        world.disconnect(f"u{number}")
    world.connect(USER, "prod")
    world.run_for(5_000)
    world.stop()


@pytest.mark.parametrize("kind", EXECUTORS)
def test_start_up_reads_the_open_sessions_and_nothing_of_the_ended_ones(
    kind: ExecutorKind, tmp_path: Path
) -> None:
    log = tmp_path / "log.db"
    twenty_ended_sessions_and_one_open(log)
    CountingStore.whole_reads = CountingStore.stream_reads = 0
    harness = Harness(kind, store=lambda: CountingStore(log))
    runtime = harness.runtimes["prod"]
    assert harness.eventually(lambda: getattr(runtime.session(USER), "state", None) == "GRACE")
    assert (CountingStore.whole_reads, CountingStore.stream_reads) == (0, 1)
    assert list(runtime.views()) == [f"prod/{USER}/1"]
    harness.stop()


@pytest.mark.parametrize("kind", EXECUTORS)
def test_only_a_user_the_log_knows_costs_a_read_of_the_latest_incarnation(
    kind: ExecutorKind, tmp_path: Path
) -> None:
    log = tmp_path / "log.db"
    twenty_ended_sessions_and_one_open(log)
    CountingStore.incarnation_reads = 0
    harness = Harness(kind, store=lambda: CountingStore(log))
    runtime = harness.runtimes["prod"]
    runtime.glasses_connected("stranger").wait(timeout_s=5)
    assert CountingStore.incarnation_reads == 0
    runtime.glasses_connected("u7").wait(timeout_s=5)
    assert CountingStore.incarnation_reads == 1
    assert {"prod/stranger/1", "prod/u7/2"} <= set(runtime.views())
    harness.stop()


@pytest.mark.parametrize("kind", EXECUTORS)
def test_an_ended_session_the_index_calls_open_is_not_recovered(
    kind: ExecutorKind, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A damaged or forged index says every session is open: start-up recovers only the one
    whose stream says so, and an ended user's connect opens a new incarnation (the ended one,
    recovered, handed every input back to the supervisor, which handed it back: a livelock)."""
    log = tmp_path / "log.db"
    twenty_ended_sessions_and_one_open(log)
    with contextlib.closing(sqlite3.connect(log)) as db:
        db.execute("UPDATE sessions SET open = 1")
        db.commit()
    harness = Harness(kind, store=lambda: SQLiteStore(log))
    runtime = harness.runtimes["prod"]
    assert harness.eventually(lambda: getattr(runtime.session(USER), "state", None) == "GRACE")
    assert list(runtime.views()) == [f"prod/{USER}/1"]
    assert "prod: the index calls prod/u7/1 open, but its stream has no open session" in (
        caplog.text
    ), "the operator is told"
    runtime.glasses_connected("u7").wait(timeout_s=5)
    assert harness.eventually(lambda: getattr(runtime.session("u7"), "stream", "") == "prod/u7/2")
    harness.stop()


@pytest.mark.parametrize("kind", EXECUTORS)
def test_of_two_open_sessions_of_one_user_only_the_latest_is_recovered(
    kind: ExecutorKind, tmp_path: Path
) -> None:
    """A damaged or forged log says two sessions of a user are open, which no runtime writes:
    only the latest incarnation is recovered. (Both were, and the older, which the supervisor
    no longer knew, ended at its grace's end and took the newer down with it.)"""
    log = tmp_path / "log.db"
    with contextlib.closing(SQLiteStore(log)) as store:
        for incarnation in (1, 2):
            events: list[AnyEvent] = [
                GlassesConnected(epoch=incarnation),
                SessionOpened(cause="c", why="forged", incarnation=incarnation, epoch=incarnation),
            ]
            store.append(
                f"prod/{USER}/{incarnation}",
                0,
                [
                    Pending(
                        event_id=f"{incarnation}-{n}", time_ms=0, server="prod", user=USER, event=e
                    )
                    for n, e in enumerate(events)
                ],
            )
    harness = Harness(kind, store=lambda: SQLiteStore(log), grace_ms=1_000)
    runtime = harness.runtimes["prod"]
    assert harness.eventually(lambda: getattr(runtime.session(USER), "state", None) == "GRACE")
    assert list(runtime.views()) == [f"prod/{USER}/2"]
    runtime.glasses_connected(USER, epoch=3).wait(timeout_s=5)
    harness.run_for(3_000)
    assert getattr(runtime.session(USER), "state", None) == "ACTIVE", "its session lives on"
    harness.stop()


@pytest.mark.parametrize("kind", EXECUTORS)
def test_an_ended_session_leaves_memory_after_the_retention_period(kind: ExecutorKind) -> None:
    harness = Harness(kind, grace_ms=200, retention_ms=500)
    runtime = harness.runtimes["prod"]
    runtime.glasses_connected(USER).wait(timeout_s=5)
    runtime.glasses_disconnected(USER).wait(timeout_s=5)
    stream = f"prod/{USER}/1"
    assert harness.eventually(
        lambda: getattr(runtime.views().get(stream), "state", "") == "DISPOSED"
    )
    assert harness.eventually(lambda: runtime.views() == {}, within_ms=2_000), "forgotten"
    runtime.glasses_connected(USER).wait(timeout_s=5)
    assert list(runtime.views()) == [f"prod/{USER}/2"], "the log still numbers incarnations"
    harness.stop()

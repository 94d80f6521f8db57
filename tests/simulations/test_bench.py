"""`rejoin bench` runs: every figure it reports is computed, at sizes small enough for a test.
No timing is asserted; a bench that no longer runs against the runtime is what this catches."""

import contextlib
from pathlib import Path
from typing import Literal

import pytest

from actors.pool_executor import PoolExecutor
from events.catalog import Input
from events.locations import open_log
from events.memory_store import MemoryStore
from simulations import bench, scale


def test_the_reconnect_decision_is_measured_on_a_real_session() -> None:
    p50, p99 = bench.reconnect_decision_cpu_us(samples=20)
    assert 0 < p50 <= p99


def test_an_audio_chunk_is_measured_through_a_real_bridge() -> None:
    assert bench.chunk_cpu_us(chunks=200, repeats=1) > 0


def test_start_up_is_measured_on_a_log_of_real_session_lives(tmp_path: Path) -> None:
    figures = bench.startup_with_ended_sessions(tmp_path, sessions=20, repeats=1)
    assert figures["events"] == 20 * sum(len(turn) for turn in bench.one_sessions_life()) + sum(
        len(turn) for turn in bench.one_sessions_life()[:3]
    )
    assert figures["startup_s"] > 0
    assert figures["settled_s"] > 0


def test_appends_are_measured_with_the_turns_the_runtime_appends() -> None:
    turns = [turn for run in bench.seed_turns() for turn in run]
    assert all(isinstance(turn.events[0].event, Input) for turn in turns), "one input a turn"
    store = MemoryStore()
    figures = bench.concurrent_appends(store, threads=4, inputs=4 * len(turns))
    assert figures.events_per_input == pytest.approx(
        sum(len(turn.events) for turn in turns) / len(turns)
    )
    stored = list(store.read_all())
    assert len(stored) == 4 * sum(len(turn.events) for turn in turns), "each thread one copy"
    assert 0 < figures.p50_ms <= figures.p99_ms
    assert figures.inputs_per_s > 0


def test_sqlite_appends_are_measured_durable_and_from_several_threads() -> None:
    runs: list[tuple[Literal["FULL", "NORMAL"], int]] = [("FULL", 1), ("FULL", 16), ("NORMAL", 1)]
    for synchronous, threads in runs:
        figures = bench.sqlite_appends(synchronous, threads=threads, inputs=32, repeats=1)
        assert 0 < figures.p50_ms <= figures.p99_ms
        assert figures.inputs_per_s > 0


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_appends_from_writer_processes_and_replay_are_measured_on_either_log(
    store: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    def new_log(name: str) -> str:
        if store == "postgres":
            return str(request.getfixturevalue("postgres").new_database())
        return str(tmp_path / f"{name}.db")

    for writers, group in ((1, 1), (3, 4)):
        log = new_log(f"appends-{writers}")
        figures = bench.process_appends(log, writers=writers, group=group, inputs=24)
        assert 0 < figures.p50_ms <= figures.p99_ms
        with contextlib.closing(open_log(log, read_only=True)) as written:
            owners = {e.stream.split("~")[1].split(".")[0] for e in written.read_all()}
        assert owners == {f"w{writer}" for writer in range(writers)}, "every writer appended"
    assert bench.replay_events_per_s(200, 1, log=new_log("replay")) > 0


def test_the_scale_run_simulates_idle_users_whose_sessions_all_settle() -> None:
    run = scale.simulated(30)
    assert run.events == 30 * 6, "connected, opened, started, joined, two health changes"
    assert run.actors == 30 * 2 + 3 * 2, "a session and a bridge each, and each server's two"
    assert run.us_per_user_second > 0


def test_durable_connects_are_acknowledged_through_the_pool(tmp_path: Path) -> None:
    executor = PoolExecutor()
    try:
        connects = scale.durable_connects(executor, tmp_path, 50, None)
    finally:
        executor.shutdown()
    assert connects.users == 50
    assert connects.cpu_us_per_input > 0
    assert 0 < connects.p50_ms <= connects.p99_ms
    assert connects.commits >= 1

"""The runtime facade: it starts from the open sessions alone, whatever the history behind them,
and keeps an ended session's view only for the retention period."""

from collections.abc import Iterator
from pathlib import Path

from actors.deterministic_executor import DeterministicExecutor
from actors.runtime import Runtime
from events.envelope import Envelope
from events.sqlite_store import SQLiteStore
from simulations.sim_livekit import SfuConfig, SimLiveKit
from simulations.world import World

USER = "isaiah@mentra.glass"


class CountingStore(SQLiteStore):
    """The SQLite store, counting what a runtime reads from it."""

    whole_reads = 0
    stream_reads = 0

    def read_all(self, from_position: int = 1) -> Iterator[Envelope]:
        CountingStore.whole_reads += 1
        return super().read_all(from_position)

    def read_stream(self, stream: str) -> list[Envelope]:
        CountingStore.stream_reads += 1
        return super().read_stream(stream)


def test_start_up_reads_the_open_sessions_and_nothing_of_the_ended_ones(tmp_path: Path) -> None:
    log = tmp_path / "log.db"
    world = World(servers=["prod"], seed=1, grace_ms=1_000, store_for=lambda _: SQLiteStore(log))
    for number in range(20):
        world.connect(f"u{number}", "prod")
        world.run_for(500)
        world.disconnect(f"u{number}")
    world.connect(USER, "prod")
    world.run_for(5_000)
    world.stop()
    executor = DeterministicExecutor(2)
    store = CountingStore(log)
    runtime = Runtime(
        server="prod",
        executor=executor,
        store=store,
        connector=SimLiveKit(executor, executor.random, SfuConfig()).connector("prod"),
    )
    executor.run_until_idle()
    assert (CountingStore.whole_reads, CountingStore.stream_reads) == (0, 1)
    assert list(runtime.views()) == [f"prod/{USER}/1"]
    recovered = runtime.status(USER)
    assert recovered is not None
    assert recovered.state == "GRACE", "the process restarted: its glasses connection is gone"
    runtime.stop()
    store.close()


def test_an_ended_session_leaves_memory_after_the_retention_period() -> None:
    world = World(servers=["prod"], seed=2, grace_ms=1_000)
    runtime = Runtime(
        server="prod",
        executor=world.executor.start_process(),
        store=world.logs["prod"],
        connector=world.sfu.connector("prod"),
        grace_ms=1_000,
        retention_ms=10_000,
    )
    world.runtimes["prod"].stop()
    world.runtimes["prod"] = runtime
    world.connect(USER, "prod")
    world.run_until(2_000)
    world.disconnect(USER)
    world.run_until(5_000)
    assert runtime.views()[f"prod/{USER}/1"].state == "DISPOSED"
    world.run_until(16_000)
    assert runtime.views() == {}, "forgotten after 10 s"
    world.connect(USER, "prod")
    world.run_until(18_000)
    assert list(runtime.views()) == [f"prod/{USER}/2"], "the log still numbers incarnations"
    world.stop()

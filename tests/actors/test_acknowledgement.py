"""A host hears when each glasses input is durable, never before, and sees the backlog of those
that are not yet: on both executors, through a log that fails for a while, in a storm, and
when the runtime stops first."""

import random
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pykka
import pytest

from actors.acknowledgement import Acknowledgement, RuntimeStopped
from actors.bridge import AudioWatch
from actors.pool_executor import PoolExecutor
from actors.runtime import Runtime
from events.catalog import GlassesConnected, GlassesDisconnected
from events.forwarding_store import ForwardingStore
from events.log import Batch, EventStore, Outcome
from events.memory_store import MemoryStore
from events.sqlite_store import SQLiteStore
from simulations.faulty_store import FaultyStore
from simulations.sim_livekit import SfuConfig, SimLiveKit
from simulations.world import World
from tests.actors.harness import EXECUTORS, ExecutorKind, Harness

USER = "isaiah@mentra.glass"


def test_an_input_is_acknowledged_once_durable_with_its_position() -> None:
    world = World(servers=["prod"], seed=1)
    runtime = world.runtimes["prod"]
    acks = [runtime.glasses_connected(f"u{n}") for n in range(3)]
    assert not any(ack.done() for ack in acks), "nothing is durable before the sessions' turns"
    assert runtime.backlog() == 3
    positions = [ack.wait(timeout_s=1) for ack in acks]
    assert runtime.backlog() == 0
    stored = {e.position: e.event for e in world.stores["prod"].read_all()}
    assert all(isinstance(stored[position], GlassesConnected) for position in positions)
    world.stop()


def test_an_input_the_log_refuses_is_acknowledged_only_when_the_log_takes_it() -> None:
    world = World(servers=["prod"], seed=2)
    runtime = world.runtimes["prod"]
    runtime.glasses_connected(USER).wait(timeout_s=1)
    world.log_fault("prod", 5_000)
    ack = runtime.glasses_disconnected(USER)
    world.run_for(4_000)
    assert not ack.done()
    assert runtime.backlog() == 1, "the backlog shows the log lagging"
    position = ack.wait(timeout_s=10)
    assert isinstance(next(world.stores["prod"].read_all(position)).event, GlassesDisconnected)
    assert runtime.backlog() == 0
    world.stop()


@pytest.mark.parametrize("kind", EXECUTORS)
def test_a_connection_storm_loses_no_acknowledged_input(kind: ExecutorKind, tmp_path: Path) -> None:
    log = tmp_path / "log.db"
    # The production thresholds: the harness's short ones would report all 400 phones absent
    # (no phone joins here) in the middle of the storm.
    store = lambda: SQLiteStore(log, synchronous="NORMAL")  # noqa: E731
    harness = Harness(kind, store=store, watch=AudioWatch())
    runtime = harness.runtimes["prod"]
    acks: list[Acknowledgement] = []

    def storm(first: int) -> None:
        for number in range(first, first + 100):
            acks.append(runtime.glasses_connected(f"u{number}"))

    if kind == "pool":  # as a web server's handlers would, from several threads
        senders = [threading.Thread(target=storm, args=(100 * n,)) for n in range(4)]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join()
    else:
        for first in range(0, 400, 100):
            storm(first)
    peak = runtime.backlog()
    positions = [ack.wait(timeout_s=30) for ack in acks]
    assert runtime.backlog() == 0
    assert peak > 0, "the storm was visible as a backlog"
    harness.stop()
    stored = {e.position: e for e in SQLiteStore(log, read_only=True).read_all()}
    assert sorted(stored[p].user for p in positions) == sorted(f"u{n}" for n in range(400))
    assert all(isinstance(stored[p].event, GlassesConnected) for p in positions)


def test_a_callback_hears_of_durability_once_and_its_failure_never_fails_the_session() -> None:
    world = World(servers=["prod"], seed=3)
    runtime = world.runtimes["prod"]
    heard: list[int] = []
    ack = runtime.glasses_connected(USER)

    def fails(_position: int) -> None:
        raise RuntimeError("the host's bug")

    ack.on_durable(fails)
    ack.on_durable(heard.append)
    position = ack.wait(timeout_s=1)
    ack.on_durable(heard.append)  # already durable: called at once
    assert heard == [position, position]
    view = runtime.session(USER)
    assert view is not None
    assert view.state == "ACTIVE", "the session went on with its turn"
    world.stop()


class _SlowDisk(ForwardingStore):
    """Each group's write waits until the test lets the disk go on."""

    def __init__(self, inner: EventStore) -> None:
        super().__init__(inner)
        self.writing = threading.Event()
        self.go_on = threading.Event()

    def append_group(self, batches: Sequence[Batch]) -> list[Outcome]:
        self.writing.set()
        assert self.go_on.wait(10), "the test let the disk go on"
        return self.inner.append_group(batches)


class _Busy(pykka.Actor):
    def on_receive(self, message: Any) -> None:
        assert isinstance(message, threading.Event)
        message.wait(10)


@pytest.mark.threads
def test_an_input_is_acknowledged_when_durable_though_every_worker_is_busy() -> None:
    """On the pool the journal acknowledges an input the moment its batch is durable, not once
    a worker runs the session's next turn; a query sent after that still sees the batch."""
    executor = PoolExecutor(workers=1)
    disk = _SlowDisk(MemoryStore())
    sfu = SimLiveKit(executor, random.Random(0), SfuConfig(join_latency_ms=(0, 0)))
    runtime = Runtime(server="prod", executor=executor, store=disk, connector=sfu.connector("prod"))
    busy = threading.Event()
    try:
        ack = runtime.glasses_connected(USER)
        assert disk.writing.wait(5)
        executor.spawn(_Busy).tell(busy)  # the only worker, held until the test lets it go
        disk.go_on.set()
        position = ack.wait(timeout_s=5)
        busy.set()
        view = runtime.session(USER)
        assert view is not None
        assert view.version >= 2, "the connection and the session's decisions on it"
        assert next(iter(disk.read_all(position))).event == GlassesConnected(epoch=view.epoch)
    finally:
        busy.set()
        disk.go_on.set()
        runtime.stop()
        executor.shutdown()


def faulty(kind: ExecutorKind, grace_ms: int = 60_000) -> tuple[Harness, FaultyStore]:
    """A runtime on `kind` whose log fails when the test says, on the executor's clock."""
    logs: list[FaultyStore] = []

    def now_ms() -> int:  # the harness is made after its store
        return harness.executor.now_ms()

    def store() -> EventStore:
        logs.append(FaultyStore(MemoryStore(), now_ms))
        return logs[0]

    harness = Harness(kind, store=store, grace_ms=grace_ms)
    return harness, logs[0]


@pytest.mark.parametrize("kind", EXECUTORS)
def test_an_input_the_runtime_stops_before_it_is_durable_completes_with_runtime_stopped(
    kind: ExecutorKind,
) -> None:
    """A host waiting for it, or told by callback, hears at once that the runtime stopped,
    not after its own timeout; the backlog no longer counts it."""
    harness, log = faulty(kind)
    log.fail_for(60_000)
    runtime = harness.runtimes["prod"]
    ack = runtime.glasses_connected(USER)
    stopped: list[RuntimeStopped] = []
    durable: list[int] = []
    ack.on_stopped(stopped.append)
    ack.on_durable(durable.append)
    assert harness.eventually(lambda: log.refused > 0), "the session tried, the log refused"
    assert not ack.done()
    harness.stop()
    assert ack.done()
    assert runtime.backlog() == 0
    with pytest.raises(RuntimeStopped, match="the runtime stopped before the input was known"):
        ack.wait(timeout_s=60)
    assert [type(error) for error in stopped] == [RuntimeStopped]
    assert durable == []
    ack.on_stopped(stopped.append)  # already stopped: called at once
    assert len(stopped) == 2


@pytest.mark.parametrize("kind", EXECUTORS)
def test_an_input_given_to_a_stopped_runtime_completes_at_once_with_runtime_stopped(
    kind: ExecutorKind,
) -> None:
    harness = Harness(kind)
    runtime = harness.runtimes["prod"]
    harness.stop()
    ack = runtime.glasses_connected(USER)
    assert ack.done()
    assert runtime.backlog() == 0
    with pytest.raises(RuntimeStopped, match="the runtime has stopped"):
        ack.wait(timeout_s=60)


def test_an_input_waiting_for_its_session_to_open_completes_with_runtime_stopped() -> None:
    """The supervisor keeps a returning user's inputs while the log cannot say the latest
    incarnation; a stop meanwhile completes them too."""
    harness, log = faulty("deterministic", grace_ms=1_000)
    runtime = harness.runtimes["prod"]
    runtime.glasses_connected(USER).wait(timeout_s=5)
    runtime.glasses_disconnected(USER).wait(timeout_s=5)
    harness.run_for(2_000)  # the grace period is over: a connect opens the next incarnation
    assert runtime.session(USER) is None
    log.fail_reads_for(60_000)
    ack = runtime.glasses_connected(USER)
    harness.run_for(1_000)
    assert runtime.session(USER) is None, "the input waits for the log to say the latest"
    assert not ack.done()
    harness.stop()
    with pytest.raises(RuntimeStopped):
        ack.wait(timeout_s=60)
    assert runtime.backlog() == 0

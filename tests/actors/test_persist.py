"""A session's turn is acted on only once its batch is durable, on both executors. On the pool
the append holds no worker: the session hands its batch to the journal and keeps its mail until
the journal answers; on the deterministic executor it appends inline."""

import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from actors.acknowledgement import Acknowledgement
from actors.pool_executor import PoolExecutor
from actors.runtime import Runtime
from events.catalog import Event, GlassesConnected, GlassesDisconnected, Input, SessionRestarted
from events.forwarding_store import ForwardingStore
from events.log import Batch, EventStore, Outcome
from events.memory_store import MemoryStore
from events.sqlite_store import SQLiteStore
from simulations.faulty_store import FaultyStore
from simulations.scale import InstantRooms
from tests.actors.harness import EXECUTORS, ExecutorKind, Harness, eventually

USER = "isaiah@mentra.glass"


class GatedStore(ForwardingStore):
    """A store whose grouped appends (the journal's) wait until `open()`: an fsync that takes
    as long as a test needs. Plain appends (the deterministic executor's) pass at once."""

    def __init__(self, inner: EventStore) -> None:
        super().__init__(inner)
        self.gate = threading.Event()
        self.entered = threading.Event()
        """Set once a group waits at the gate."""

    def open(self) -> None:
        self.gate.set()

    def append_group(self, batches: Sequence[Batch]) -> list[Outcome]:
        self.entered.set()
        self.gate.wait()
        return self.inner.append_group(batches)


def inputs(events: list[Event]) -> list[Event]:
    return [e for e in events if isinstance(e, Input)]


@pytest.fixture(params=EXECUTORS)
def gated(request: pytest.FixtureRequest) -> Iterator[tuple[Harness, GatedStore]]:
    store = GatedStore(MemoryStore())
    harness = Harness(request.param, store=lambda: store)
    yield harness, store
    store.open()
    harness.stop()


def test_a_session_whose_append_is_in_flight_keeps_its_mail_then_handles_it_in_order(
    gated: tuple[Harness, GatedStore],
) -> None:
    """Its acknowledgements wait for the batches to be durable, a query is answered with the
    durable view meanwhile, and the mail kept goes on in order, each append after the last."""
    harness, store = gated
    runtime = harness.runtimes["prod"]
    first = runtime.glasses_connected(USER, epoch=1)
    if harness.kind == "pool":
        assert eventually(store.entered.is_set)
    acks = [
        first,
        runtime.glasses_disconnected(USER),
        runtime.glasses_connected(USER, epoch=2),
        runtime.glasses_disconnected(USER),
    ]
    if harness.kind == "pool":
        assert not any(ack.done() for ack in acks), "no batch is durable yet"
        assert runtime.session(USER) is None, "a query is answered with the durable view"
        assert harness.events() == [], "nothing is written past the batch in flight"
        store.open()
    positions = [ack.wait(5) for ack in acks]
    stored = {e.position: e.event for e in store.read_all()}
    assert [stored[position] for position in positions] == [
        GlassesConnected(epoch=1),
        GlassesDisconnected(),
        GlassesConnected(epoch=2),
        GlassesDisconnected(),
    ], "each acknowledged with its own position"
    assert inputs(harness.events())[:4] == [stored[position] for position in positions]
    assert harness.count(SessionRestarted) == 0, "each append expected the version before it"


@pytest.mark.parametrize("kind", EXECUTORS)
def test_a_refused_append_restarts_the_session_and_loses_no_input(kind: ExecutorKind) -> None:
    now = [0]
    store = FaultyStore(MemoryStore(), lambda: now[0])
    harness = Harness(kind, store=lambda: store)
    try:
        runtime = harness.runtimes["prod"]
        store.fail_for(1_000)
        first = runtime.glasses_connected(USER, epoch=1)
        assert harness.eventually(lambda: store.refused >= 2), "refused, and again on restart"
        then = runtime.glasses_disconnected(USER)
        assert not first.done()
        assert not then.done()
        assert list(store.read_all()) == []
        now[0] = 1_000  # the disk is back
        positions = [first.wait(10), then.wait(10)]
        events = harness.events()
        assert isinstance(events[0], SessionRestarted), "the restart that succeeded comes first"
        glasses = [e for e in inputs(events) if not isinstance(e, SessionRestarted)]
        assert glasses[:2] == [GlassesConnected(epoch=1), GlassesDisconnected()]
        by_position = {e.position: type(e.event) for e in store.read_all()}
        assert [by_position[p] for p in positions] == [GlassesConnected, GlassesDisconnected]
    finally:
        harness.stop()


@pytest.mark.threads
def test_concurrent_connects_share_commits_on_the_pool() -> None:
    """With appends that hold no worker, a commit takes every batch queued while the one
    before it was written: far more than one per worker."""
    executor = PoolExecutor()
    with tempfile.TemporaryDirectory() as folder:
        store = GatedStore(SQLiteStore(Path(folder) / "log.db"))
        runtime = Runtime(
            server="prod", executor=executor, store=store, connector=InstantRooms(muted=True)
        )
        try:
            acks: list[Acknowledgement] = [runtime.glasses_connected("first@example.com")]
            assert eventually(store.entered.is_set)
            acks += [runtime.glasses_connected(f"u{n}@example.com") for n in range(40)]
            assert eventually(lambda: executor.journal.queued == 40)
            store.open()
            for ack in acks:
                ack.wait(10)
            sqlite = store.inner
            assert isinstance(sqlite, SQLiteStore)
            assert sqlite.commits > 0
            assert sqlite.grouped / sqlite.commits > 4, "more batches per fsync than workers"
        finally:
            store.open()
            runtime.stop()
            executor.shutdown()
            store.close()

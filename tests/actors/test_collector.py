"""An executor that owns CPython's cyclic collector, on either executor's clock: it freezes what
survives, frees cyclic garbage at its period or once enough actors have stopped, never freezes
garbage made before it, and gives everything back when it shuts down."""

import gc
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import pykka
import pytest

from actors.collector import Collector
from actors.deterministic_executor import DeterministicExecutor
from actors.executor import Executor
from actors.pool_executor import PoolExecutor
from tests.actors.harness import EXECUTORS, ExecutorKind, eventually

OFTEN = Collector(freeze_every_s=0.01, collect_every_s=600)
"""Freezes every 10 ms; its full collection is due only at its start."""


class Idle(pykka.Actor):
    def on_receive(self, message: Any) -> None:
        """Nothing to do."""


class Cycle:
    def __init__(self) -> None:
        self.me = self


class Tended:
    """An executor of `kind` that tends the collector, and a way to let its time pass."""

    def __init__(self, kind: ExecutorKind, collector: Collector) -> None:
        self._deterministic = (
            DeterministicExecutor(0, collector=collector) if kind == "deterministic" else None
        )
        self.executor: Executor = self._deterministic or PoolExecutor(collector=collector)

    def eventually(self, condition: Callable[[], bool], within_s: float = 10) -> bool:
        """Whether `condition` holds within `within_s` of this executor's time."""
        if self._deterministic is None:
            return eventually(condition, within_s)
        for _ in range(int(within_s * 100)):
            if condition():
                return True
            self._deterministic.advance(10)
        return condition()

    def frozen_cycle(self) -> weakref.ref[Cycle]:
        """A reference cycle that the executor has frozen, and nothing else references."""
        kept = Cycle()
        frozen, count = weakref.ref(kept), gc.get_freeze_count()
        assert self.eventually(lambda: gc.get_freeze_count() > count)
        return frozen


@pytest.fixture(params=EXECUTORS)
def kind(request: pytest.FixtureRequest) -> Iterator[ExecutorKind]:
    yield request.param
    gc.unfreeze()  # whatever a failed test left frozen


def test_an_executor_freezes_what_survives_and_unfreezes_it_at_shutdown(
    kind: ExecutorKind,
) -> None:
    tended = Tended(kind, OFTEN)
    try:
        frozen = tended.frozen_cycle()
        gc.collect()
        assert frozen() is not None, "a frozen cycle waits for the periodic collection"
    finally:
        tended.executor.shutdown()
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert frozen() is None


def test_a_frozen_cycle_is_freed_by_the_periodic_full_collection(kind: ExecutorKind) -> None:
    tended = Tended(kind, Collector(freeze_every_s=0.01, collect_every_s=0.2))
    try:
        frozen = tended.frozen_cycle()
        assert tended.eventually(lambda: frozen() is None)
    finally:
        tended.executor.shutdown()


@pytest.mark.parametrize(("stopped", "freed"), [(11, True), (10, False)])
def test_more_stopped_actors_than_the_least_bring_the_full_collection_forward(
    kind: ExecutorKind, stopped: int, freed: bool
) -> None:
    """With at least 10 to stop: 11 stopped bring it now, 10 leave it for its period."""
    tended = Tended(kind, Collector(freeze_every_s=0.01, collect_every_s=600, stopped_at_least=10))
    try:
        refs = [tended.executor.spawn(Idle) for _ in range(stopped)]
        frozen = tended.frozen_cycle()
        for ref in refs:
            tended.executor.wait(ref.stop(block=False), 5)
        # A cycle still there after half a second has outlived 50 periods, any of which would
        # have freed it had a full collection been due.
        assert tended.eventually(lambda: frozen() is None, within_s=10 if freed else 0.5) == freed
    finally:
        tended.executor.shutdown()


def test_a_starting_executor_never_freezes_garbage_made_before_it(kind: ExecutorKind) -> None:
    gc.disable()  # so that only the executor's own collection can free the cycle
    try:
        garbage = weakref.ref(Cycle())
        assert garbage() is not None
        tended = Tended(kind, OFTEN)
    finally:
        gc.enable()
    try:
        assert garbage() is None
    finally:
        tended.executor.shutdown()

"""Observers of the log see each durable batch once, with its append's duration, and never a
refused one; an observer that fails never fails the append."""

import pytest

from events.catalog import GlassesConnected
from events.envelope import Envelope, Pending
from events.log import Batch, WrongExpectedVersion
from events.memory_store import MemoryStore
from events.observed_store import ObservedStore


def pending(event_id: str) -> Pending:
    return Pending(
        event_id=event_id,
        time_ms=1,
        server="prod",
        user="ada@example.com",
        event=GlassesConnected(epoch=1),
    )


def test_observers_see_durable_batches_only() -> None:
    seen: list[tuple[list[int], float]] = []

    def observe(batch: list[Envelope], seconds: float) -> None:
        seen.append(([envelope.position for envelope in batch], seconds))

    store = ObservedStore(MemoryStore(), [observe])
    store.append("s", 0, [pending("a"), pending("b")])
    with pytest.raises(WrongExpectedVersion):
        store.append("s", 0, [pending("c")])
    assert [positions for positions, _ in seen] == [[1, 2]]
    assert seen[0][1] >= 0


def test_a_failing_observer_never_fails_the_append_nor_the_others() -> None:
    heard: list[int] = []

    def fails(_batch: list[Envelope], _seconds: float) -> None:
        raise RuntimeError("an observer's bug")

    store = ObservedStore(MemoryStore(), [fails, lambda batch, _s: heard.append(len(batch))])
    assert [e.position for e in store.append("s", 0, [pending("a")])] == [1]
    assert heard == [1]


def test_observers_of_a_group_see_each_durable_batch_and_no_refused_one() -> None:
    seen: list[list[int]] = []
    store = ObservedStore(
        MemoryStore(), [lambda batch, _s: seen.append([e.position for e in batch])]
    )
    outcomes = store.append_group(
        [
            Batch("s", 0, [pending("a")]),
            Batch("s", 0, [pending("b")]),
            Batch("t", 0, [pending("c")]),
        ]
    )
    assert isinstance(outcomes[1], WrongExpectedVersion)
    assert seen == [[1], [2]]

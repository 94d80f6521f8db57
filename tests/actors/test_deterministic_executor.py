"""The deterministic executor: a seed-chosen interleaving, FIFO per actor, a virtual clock that
jumps to the next deadline, futures that run the simulation, pykka's failure semantics."""

import gc
import weakref
from typing import Any

import pykka
import pytest

from actors.deterministic_executor import DeterministicExecutor, Livelock
from actors.executor import tell


class Recorder(pykka.Actor):
    def __init__(self, name: str, trace: list[str]) -> None:
        super().__init__()
        self.name = name
        self.trace = trace

    def on_receive(self, message: Any) -> Any:
        if message == "boom":
            raise RuntimeError("boom")
        self.trace.append(f"{self.name}{message}")
        return message


class PingPong(pykka.Actor):
    def __init__(self) -> None:
        super().__init__()
        self.peer: pykka.ActorRef[Any] | None = None

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, pykka.ActorRef):
            self.peer = message
        tell(self.peer, "ping")


def interleaving(seed: int) -> list[str]:
    executor = DeterministicExecutor(seed)
    trace: list[str] = []
    actors = [executor.spawn(Recorder, name, trace) for name in "abc"]
    for number in range(5):
        for actor in actors:
            actor.tell(number)
    executor.run_until_idle()
    return trace


def test_the_same_seed_gives_the_same_interleaving() -> None:
    assert interleaving(3) == interleaving(3)


def test_seeds_choose_different_interleavings_across_actors() -> None:
    assert len({tuple(interleaving(seed)) for seed in range(10)}) > 1


def test_each_mailbox_stays_in_order() -> None:
    for name in "abc":
        assert [e for e in interleaving(5) if e[0] == name] == [f"{name}{n}" for n in range(5)]


def test_the_clock_jumps_to_the_next_deadline_only_when_idle() -> None:
    executor = DeterministicExecutor(0)
    trace: list[str] = []
    actor = executor.spawn(Recorder, "a", trace)
    executor.call_at(60_000, lambda: tell(actor, "@60s"))
    executor.call_at(5_000, lambda: tell(actor, "@5s"))
    actor.tell("now")
    executor.advance_to(59_999)
    assert trace == ["anow", "a@5s"]
    assert executor.now_ms() == 59_999
    executor.advance(1)
    assert trace == ["anow", "a@5s", "a@60s"]


def test_a_cancelled_deadline_never_fires() -> None:
    executor = DeterministicExecutor(0)
    fired: list[int] = []
    executor.call_at(10, lambda: fired.append(1)).cancel()
    executor.advance(100)
    assert fired == []


class Token:
    """Something a timer's callback holds, to see when it is let go."""


def test_cancelling_a_deadline_lets_go_of_its_callback_at_once() -> None:
    """A cancelled deadline waits in the heap until due; what its callback held must not wait
    with it, for the cyclic collector to find in its oldest generation."""
    executor = DeterministicExecutor(0)

    def arm_and_cancel() -> weakref.ref[Token]:
        token = Token()
        executor.call_at(15_000, lambda: token).cancel()
        return weakref.ref(token)

    assert arm_and_cancel()() is None


def test_an_idle_actor_is_three_objects_for_the_cyclic_collector() -> None:
    """The actor, its mailbox (which is its stopped flag too) and its reference: a full
    collection walks every idle actor of a run."""
    executor = DeterministicExecutor(0)
    trace: list[str] = []
    executor.spawn(Recorder, "a", trace)  # makes the runtime class, once
    executor.run_until_idle()
    gc.collect()
    before = len(gc.get_objects())
    refs = [executor.spawn(Recorder, "a", trace) for _ in range(100)]
    executor.run_until_idle()
    gc.collect()
    assert len(gc.get_objects()) - before <= 3 * len(refs) + 1  # the list of refs


def test_waiting_on_a_future_runs_the_simulation_until_the_reply() -> None:
    executor = DeterministicExecutor(0)
    actor = executor.spawn(Recorder, "a", [])
    assert executor.wait(actor.ask(42, block=False), timeout_s=1) == 42


def test_an_ask_that_raises_returns_the_error_and_the_actor_lives_on() -> None:
    executor = DeterministicExecutor(0)
    actor = executor.spawn(Recorder, "a", [])
    with pytest.raises(RuntimeError, match="boom"):
        executor.wait(actor.ask("boom", block=False), timeout_s=1)
    assert actor.is_alive()


def test_a_tell_that_raises_stops_the_actor_and_later_tells_are_refused() -> None:
    executor = DeterministicExecutor(0)
    actor = executor.spawn(Recorder, "a", [])
    actor.tell("boom")
    executor.run_until_idle()
    assert not actor.is_alive()
    assert tell(actor, "late") is False


def test_stop_runs_the_queue_before_it_then_stops() -> None:
    executor = DeterministicExecutor(0)
    trace: list[str] = []
    actor = executor.spawn(Recorder, "a", trace)
    actor.tell(1)
    assert executor.wait(actor.stop(block=False), timeout_s=1) is True
    assert trace == ["a1"]
    assert executor.live_actors() == []


def test_actors_messaging_forever_without_time_passing_are_a_livelock() -> None:
    executor = DeterministicExecutor(0, max_steps_per_instant=1_000)
    first, second = executor.spawn(PingPong), executor.spawn(PingPong)
    first.tell(second)
    second.tell(first)
    with pytest.raises(Livelock):
        executor.run_until_idle()

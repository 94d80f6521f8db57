"""The GraceTimer: one actor, every deadline, fired as messages; re-arming and disarming win
over deadlines already scheduled."""

from typing import Any

import pykka

from actors.deterministic_executor import DeterministicExecutor
from actors.grace_timer import Arm, ArmedQuery, Disarm, DisarmAll, GraceTimer
from events.catalog import TimerFired


class Owner(pykka.Actor):
    def __init__(self, fired: list[tuple[int, Any]]) -> None:
        super().__init__()
        self.fired = fired

    def on_receive(self, message: Any) -> None:
        assert isinstance(message, TimerFired)
        self.fired.append((message.deadline_ms, message.timer))


def setup() -> tuple[DeterministicExecutor, pykka.ActorRef[Any], pykka.ActorRef[Any], list[Any]]:
    executor = DeterministicExecutor(0)
    fired: list[tuple[int, Any]] = []
    return executor, executor.spawn(GraceTimer, executor), executor.spawn(Owner, fired), fired


def test_a_deadline_fires_once_at_its_time() -> None:
    executor, timer, owner, fired = setup()
    timer.tell(Arm(owner_key="s", timer="grace", deadline_ms=60_000, owner=owner))
    executor.advance_to(59_999)
    assert fired == []
    executor.advance_to(120_000)
    assert fired == [(60_000, "grace")]
    assert executor.wait(timer.ask(ArmedQuery(), block=False), 1) == []


def test_re_arming_replaces_the_earlier_deadline() -> None:
    executor, timer, owner, fired = setup()
    timer.tell(Arm(owner_key="s", timer="grace", deadline_ms=1_000, owner=owner))
    timer.tell(Arm(owner_key="s", timer="grace", deadline_ms=5_000, owner=owner))
    executor.advance_to(10_000)
    assert fired == [(5_000, "grace")]


def test_disarming_cancels_one_timer_or_all_of_an_owner() -> None:
    executor, timer, owner, fired = setup()
    for kind, deadline in [("grace", 1_000), ("backoff", 2_000), ("cooldown", 3_000)]:
        timer.tell(Arm(owner_key="s", timer=kind, deadline_ms=deadline, owner=owner))
    timer.tell(Arm(owner_key="other", timer="grace", deadline_ms=4_000, owner=owner))
    timer.tell(Disarm(owner_key="s", timer="grace"))
    executor.run_until_idle()
    assert executor.wait(timer.ask(ArmedQuery(), block=False), 1) == [
        ("other", "grace"),
        ("s", "backoff"),
        ("s", "cooldown"),
    ]
    timer.tell(DisarmAll(owner_key="s"))
    executor.advance_to(10_000)
    assert fired == [(4_000, "grace")]


def test_a_deadline_for_a_stopped_owner_is_dropped_quietly() -> None:
    executor, timer, owner, fired = setup()
    timer.tell(Arm(owner_key="s", timer="grace", deadline_ms=1_000, owner=owner))
    owner.stop()
    executor.advance_to(2_000)
    assert fired == []
    assert timer.is_alive()

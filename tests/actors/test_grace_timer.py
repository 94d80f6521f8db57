"""The GraceTimer: one actor, every deadline, fired as messages; re-arming and disarming win
over deadlines already scheduled; deadlines are wall-clock instants, whatever the process's
monotonic clock says."""

from typing import Any

import pykka

from actors.deterministic_executor import WALL_CLOCK_ORIGIN_MS, DeterministicExecutor
from actors.grace_timer import Arm, ArmedQuery, Disarm, DisarmAll, GraceTimer
from events.catalog import TimerFired, TimerKind

W = WALL_CLOCK_ORIGIN_MS
"""The wall clock at the deterministic executor's time zero."""


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
    timer.tell(Arm(owner_key="s", timer="grace", deadline_ms=W + 60_000, owner=owner))
    executor.advance_to(59_999)
    assert fired == []
    executor.advance_to(120_000)
    assert fired == [(W + 60_000, "grace")]
    assert executor.wait(timer.ask(ArmedQuery(), block=False), 1) == []


def test_re_arming_replaces_the_earlier_deadline() -> None:
    executor, timer, owner, fired = setup()
    timer.tell(Arm(owner_key="s", timer="grace", deadline_ms=W + 1_000, owner=owner))
    timer.tell(Arm(owner_key="s", timer="grace", deadline_ms=W + 5_000, owner=owner))
    executor.advance_to(10_000)
    assert fired == [(W + 5_000, "grace")]


def test_disarming_cancels_one_timer_or_all_of_an_owner() -> None:
    executor, timer, owner, fired = setup()
    timers: list[tuple[TimerKind, int]] = [
        ("grace", 1_000),
        ("backoff", 2_000),
        ("cooldown", 3_000),
    ]
    for kind, deadline in timers:
        timer.tell(Arm(owner_key="s", timer=kind, deadline_ms=W + deadline, owner=owner))
    timer.tell(Arm(owner_key="other", timer="grace", deadline_ms=W + 4_000, owner=owner))
    timer.tell(Disarm(owner_key="s", timer="grace"))
    executor.run_until_idle()
    assert executor.wait(timer.ask(ArmedQuery(), block=False), 1) == [
        ("other", "grace"),
        ("s", "backoff"),
        ("s", "cooldown"),
    ]
    timer.tell(DisarmAll(owner_key="s"))
    executor.advance_to(10_000)
    assert fired == [(W + 4_000, "grace")]


def test_a_deadline_for_a_stopped_owner_is_dropped_quietly() -> None:
    executor, timer, owner, fired = setup()
    timer.tell(Arm(owner_key="s", timer="grace", deadline_ms=W + 1_000, owner=owner))
    owner.stop()
    executor.advance_to(2_000)
    assert fired == []
    assert timer.is_alive()


def test_a_deadline_is_a_wall_clock_instant_for_a_process_started_later() -> None:
    executor = DeterministicExecutor(0)
    executor.advance_to(25_000)
    process = executor.start_process()
    fired: list[tuple[int, Any]] = []
    timer, owner = process.spawn(GraceTimer, process), process.spawn(Owner, fired)
    assert process.now_ms() == 0, "a new process's monotonic clock starts at zero"
    timer.tell(Arm(owner_key="s", timer="grace", deadline_ms=W + 33_000, owner=owner))
    executor.advance_to(32_999)
    assert fired == []
    executor.advance_to(33_000)
    assert fired == [(W + 33_000, "grace")], "at the wall-clock deadline, not 33 s of uptime"


def test_a_deadline_already_past_fires_at_once() -> None:
    executor, timer, owner, fired = setup()
    executor.advance_to(10_000)
    timer.tell(Arm(owner_key="s", timer="grace", deadline_ms=W + 2_000, owner=owner))
    executor.run_until_idle()
    executor.advance(0)
    assert fired == [(W + 2_000, "grace")]

"""The GraceTimer actor: every deadline of a runtime, fired as messages on the executor's clock.

Deadlines arrive as wall-clock instants (as events record them) and are armed on the monotonic
clock, which a change of the wall clock does not disturb; one already past fires at once.
"""

from __future__ import annotations

from typing import Any

import msgspec
import pykka

from actors.executor import Executor, TimerHandle, tell
from events.catalog import TimerFired, TimerKind


class Arm(msgspec.Struct, frozen=True, kw_only=True):
    """Arm (or re-arm) the `timer` of `owner_key` for the wall-clock instant `deadline_ms`;
    when due, `owner` gets `TimerFired`."""

    owner_key: str
    timer: TimerKind
    deadline_ms: int
    owner: pykka.ActorRef[Any]


class Disarm(msgspec.Struct, frozen=True, kw_only=True):
    owner_key: str
    timer: TimerKind


class DisarmAll(msgspec.Struct, frozen=True, kw_only=True):
    owner_key: str


class _Due(msgspec.Struct, frozen=True, kw_only=True):
    owner_key: str
    timer: TimerKind
    deadline_ms: int


class ArmedQuery(msgspec.Struct, frozen=True, kw_only=True):
    """Ask which timers are armed, as `(owner_key, timer)` pairs."""


class GraceTimer(pykka.Actor):
    """One actor holds all deadlines; a session never owns a thread or a timer of its own."""

    def __init__(self, executor: Executor) -> None:
        super().__init__()
        self._executor = executor
        self._armed: dict[tuple[str, TimerKind], tuple[int, pykka.ActorRef[Any], TimerHandle]] = {}

    def on_receive(self, message: object) -> object:
        match message:
            case Arm(owner_key=key, timer=timer, deadline_ms=deadline, owner=owner):
                self._disarm((key, timer))
                me = self.actor_ref
                due = _Due(owner_key=key, timer=timer, deadline_ms=deadline)
                executor = self._executor
                due_in = max(0, deadline - executor.wall_ms())
                handle = executor.call_at(executor.now_ms() + due_in, lambda: tell(me, due))
                self._armed[(key, timer)] = (deadline, owner, handle)
            case Disarm(owner_key=key, timer=timer):
                self._disarm((key, timer))
            case DisarmAll(owner_key=key):
                for armed in [k for k in self._armed if k[0] == key]:
                    self._disarm(armed)
            case _Due(owner_key=key, timer=timer, deadline_ms=deadline):
                entry = self._armed.get((key, timer))
                if entry is not None and entry[0] == deadline:
                    del self._armed[(key, timer)]
                    tell(entry[1], TimerFired(timer=timer, deadline_ms=deadline))
            case ArmedQuery():
                return sorted(self._armed)
        return None

    def _disarm(self, key: tuple[str, TimerKind]) -> None:
        armed = self._armed.pop(key, None)
        if armed is not None:
            armed[2].cancel()

    def on_stop(self) -> None:
        for key in list(self._armed):
            self._disarm(key)

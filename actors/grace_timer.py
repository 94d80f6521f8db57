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
        self._armed: dict[str, dict[TimerKind, tuple[int, pykka.ActorRef[Any], TimerHandle]]] = {}
        """By owner, then by timer: an owner's timers go at once, whoever else has timers."""

    def on_receive(self, message: object) -> object:
        match message:
            case Arm(owner_key=key, timer=timer, deadline_ms=deadline, owner=owner):
                self._disarm(key, timer)
                me = self.actor_ref
                due = _Due(owner_key=key, timer=timer, deadline_ms=deadline)
                executor = self._executor
                due_in = max(0, deadline - executor.wall_ms())
                handle = executor.call_at(executor.now_ms() + due_in, lambda: tell(me, due))
                self._armed.setdefault(key, {})[timer] = (deadline, owner, handle)
            case Disarm(owner_key=key, timer=timer):
                self._disarm(key, timer)
            case DisarmAll(owner_key=key):
                for _, _, handle in self._armed.pop(key, {}).values():
                    handle.cancel()
            case _Due(owner_key=key, timer=timer, deadline_ms=deadline):
                timers = self._armed.get(key, {})
                entry = timers.get(timer)
                if entry is not None and entry[0] == deadline:
                    self._disarm(key, timer, cancel=False)
                    tell(entry[1], TimerFired(timer=timer, deadline_ms=deadline))
            case ArmedQuery():
                return sorted(
                    (key, timer) for key, timers in self._armed.items() for timer in timers
                )
        return None

    def _disarm(self, key: str, timer: TimerKind, *, cancel: bool = True) -> None:
        timers = self._armed.get(key)
        armed = timers.pop(timer, None) if timers is not None else None
        if armed is not None and cancel:
            armed[2].cancel()
        if timers is not None and not timers:
            del self._armed[key]

    def on_stop(self) -> None:
        for timers in self._armed.values():
            for _, _, handle in timers.values():
                handle.cancel()
        self._armed.clear()

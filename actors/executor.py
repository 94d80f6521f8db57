"""What actors need from the world they run in: spawning, a clock, timers, ids and randomness.

Two executors implement it: `PoolExecutor` (production: a fixed pool of worker threads whatever
the number of actors, the real clocks) and `DeterministicExecutor` (one thread, a virtual clock, a
seeded interleaving). The actor classes subclass `pykka.Actor` and never name either; the
executor supplies the runtime when it spawns.
"""

from __future__ import annotations

import logging
import random
import sys
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

import pykka

if TYPE_CHECKING:
    from pykka._envelope import Envelope

    from actors.journal import Journal

logger = logging.getLogger(__name__)

A = TypeVar("A", bound=pykka.Actor)
T = TypeVar("T")


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


class Timer:
    """A pending callback's handle, for an executor that keeps its callbacks by sequence
    number beside a heap of `(deadline, sequence)`: pairs of ints, which the cyclic collector
    stops tracking, so a cancelled timer that waits in the heap until it is due (a join's,
    15 s) costs it nothing. Cancelling drops the callback at once, and what it holds."""

    __slots__ = ("_callbacks", "_sequence")

    def __init__(self, callbacks: dict[int, Callable[[], object]], sequence: int) -> None:
        self._callbacks = callbacks
        self._sequence = sequence

    def cancel(self) -> None:
        self._callbacks.pop(self._sequence, None)


class Executor(Protocol):
    """Where actors run. `now_ms` and `call_at` use the process's monotonic clock (intervals,
    timers); `wall_ms` is the wall clock (what a log records)."""

    @property
    def random(self) -> random.Random:
        """The executor's random source (seeded on the deterministic executor)."""
        ...

    def spawn(self, actor_class: type[A], *args: Any, **kwargs: Any) -> pykka.ActorRef[A]: ...

    @property
    def journal(self) -> Journal | None:
        """Where sessions hand their appends, so that no actor's thread waits for a write;
        `None`: sessions append inline (one thread, no thread to hand them to)."""
        ...

    def now_ms(self) -> int: ...

    def wall_ms(self) -> int:
        """Wall-clock (UTC) milliseconds: the time of every event and every deadline in one."""
        ...

    def call_at(self, deadline_ms: int, callback: Callable[[], object]) -> TimerHandle:
        """Run `callback` (quick, non-blocking: it should only tell actors) at `deadline_ms`."""
        ...

    def new_id(self) -> str:
        """A fresh event id."""
        ...

    def future(self) -> pykka.Future[Any]:
        """A future this executor's `wait` can wait on, for a reply that is not an `ask`."""
        ...

    def wait(self, future: pykka.Future[T], timeout_s: float) -> T:
        """Wait for a reply from outside the actor system (the facade, tests)."""
        ...

    def shutdown(self) -> None:
        """Stop every actor this executor started and its timers."""
        ...


def uuid4_text(bits: int) -> str:
    """`str(uuid.UUID(int=bits, version=4))` of 128 random bits, at a third of its cost: ids
    and actor URNs are made for every event and every actor."""
    return _uuid_text(bits & ~(0xC000 << 48 | 0xF000 << 64) | 0x8000 << 48 | 0x4000 << 64)


def uuid7_text(unix_ms: int, bits: int) -> str:
    """The text of a version 7 UUID (RFC 9562): `unix_ms` in its first 48 bits, then 74 random
    `bits`. An id made in a later millisecond sorts after, so a log's index of event ids grows
    at its end, where a commit rewrites a page or two, instead of in a random page per event."""
    return _uuid_text(
        (unix_ms & _MS) << 80 | 0x7 << 76 | (bits >> 62 & 0xFFF) << 64 | 0x2 << 62 | bits & _LOW
    )


_MS = (1 << 48) - 1
_LOW = (1 << 62) - 1


def _uuid_text(made: int) -> str:
    text = f"{made:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


class StoppedFlag:
    """`actor.actor_stopped` on an executor whose mailboxes hold their actor's stopped flag
    (the part of `threading.Event` pykka uses: `is_set` and `set`): read from the class rather
    than stored in each actor, which saves a `threading.Event` per actor (a condition, a lock
    and a deque) and keeps a Session's attributes few enough for CPython to keep them inline
    instead of in a `__dict__` of their own."""

    def __get__(self, actor: pykka.Actor, owner: type[pykka.Actor]) -> threading.Event:
        return cast("threading.Event", actor.actor_inbox)


class _WeakActor:
    """`ref._actor_weakref` of a `HeldRef`, made when asked for (pykka's proxies ask): a weak
    reference kept per actor would be one more object for the collector to walk, and the
    reference holds the actor's mailbox, which holds the actor anyway."""

    def __get__(self, ref: HeldRef[Any], owner: type[HeldRef[Any]]) -> weakref.ref[Any]:
        return weakref.ref(ref._actor)


class HeldRef(pykka.ActorRef[A]):
    """`pykka.ActorRef` holding its actor, as the actor's mailbox does, instead of a weak
    reference to it."""

    _actor_weakref = _WeakActor()

    def __init__(self, actor: A) -> None:  # no `super().__init__()`: that makes the reference
        self.actor_class = actor.__class__
        self.actor_urn = actor.actor_urn
        self.actor_inbox = actor.actor_inbox
        self.actor_stopped = actor.actor_stopped
        self._actor = actor


def tell(ref: pykka.ActorRef[Any] | None, message: object) -> bool:
    """Tell `ref` if it is alive; report whether the message was delivered to its mailbox.

    Late callbacks from a room or a timer are normal: an actor that has stopped simply does not
    get them, and nothing crashes.
    """
    if ref is None:
        return False
    try:
        ref.tell(message)
    except pykka.ActorDeadError:
        return False
    return True


def deliver(actor: pykka.Actor, envelope: Envelope[Any]) -> None:
    """Handle one message as pykka's own loop (`Actor._actor_loop_running`) does: an ask gets
    the reply or the exception; a tell that fails goes to `on_failure` and stops the actor."""
    try:
        response = actor._handle_receive(envelope.message)
        if envelope.reply_to is not None:
            envelope.reply_to.set(response)
    except Exception:
        if envelope.reply_to is not None:
            logger.info("Exception returned from %s to caller:", actor, exc_info=True)
            envelope.reply_to.set_exception()
        else:
            actor._handle_failure(*sys.exc_info())
            try:
                actor.on_failure(*sys.exc_info())
            except Exception:
                actor._handle_failure(*sys.exc_info())

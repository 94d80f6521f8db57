"""Simulation executor: no threads, a virtual clock, and a seed-chosen interleaving.

Each step delivers one message to one actor, picked by the seeded random source among the actors
with mail, so the order across actors varies with the seed while each mailbox stays FIFO. When
every mailbox is empty the clock jumps to the next deadline. The same seed gives the same run.

Actors are ordinary pykka actors: the executor supplies pykka's runtime hooks (inbox, future, loop
start) and delivers each message through pykka's own message handling, so proxies, asks, `stop()`
and failure semantics behave as on threads. They are not entered in pykka's process-wide
`ActorRegistry`, whose removals scan a list: the executor keeps its own index of live actors.

Every operation costs O(1) or O(log n) in the number of actors, so that a run of 100,000 users
costs per user what a run of 100 does. CPython's full collections walk every tracked object, so
an idle actor is three (itself, its mailbox, its reference) and a timer none once cancelled.
With a `Collector` it tends CPython's cyclic collector on its virtual clock as the pool does on
its real one (`actors.collector`), checked when the clock moves rather than from a timer of its
own, so that the schedule is the same with it or without.

Schedule version 2: an actor leaves the list of actors with mail by swapping places with the
last one (version 1 shifted the rest down), so a seed gives another interleaving than it did
before that change, and still the same one every time.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import random
import sys
import uuid
from collections.abc import Callable
from typing import Any, TypeVar, cast

import pykka
from pykka._envelope import Envelope as PykkaEnvelope

from actors.collector import Collector, Tending
from actors.executor import HeldRef, StoppedFlag, Timer, TimerHandle, deliver, uuid4_text

A = TypeVar("A", bound=pykka.Actor)
T = TypeVar("T")

WALL_CLOCK_ORIGIN_MS = 1_760_000_000_000
"""The simulated wall clock at virtual time zero (an October 2025 instant, like the seed's logs)."""


class Livelock(RuntimeError):
    """The actors kept messaging each other without the clock ever needing to move."""


class _Mailbox(collections.deque[PykkaEnvelope[Any]]):
    """An actor's runtime state in one object: its FIFO mailbox, whether it has started and is
    in its executor's list of actors with mail, and its stopped flag (the part of
    `threading.Event` pykka uses). One gc-tracked object per actor instead of four (an inbox,
    its deque, a stopped flag, and the `__dict__` CPython makes for an actor with 30
    attributes or more), so a full collection has less to walk as the number of actors
    grows."""

    __slots__ = ("_executor", "owner", "ready", "started", "stopped")

    def __init__(self, executor: DeterministicExecutor) -> None:
        super().__init__()
        self._executor = executor
        self.owner: _Runnable | None = None
        self.started = False
        self.ready = False
        """In its executor's list of actors with mail."""
        self.stopped = False

    def put(self, envelope: PykkaEnvelope[Any], /) -> None:
        self.append(envelope)
        if self.owner is not None:
            self._executor._mark_ready(self)

    def get(self) -> PykkaEnvelope[Any]:
        return self.popleft()

    def empty(self) -> bool:
        return not self

    def is_set(self) -> bool:
        return self.stopped

    def set(self) -> None:
        self.stopped = True

    def wait(self, timeout: float | None = None) -> bool:
        return self.stopped


class _Future(pykka.Future[T]):
    """A future whose `get()` runs the simulation until the reply arrives.

    pykka builds futures with no arguments, so each executor binds `_executor` in a subclass.
    """

    _executor: DeterministicExecutor

    def __init__(self) -> None:
        super().__init__()
        self._done = False
        self._value: Any = None
        self._exc_info: Any = None

    def get(self, *, timeout: float | None = None) -> T:
        try:
            return super().get(timeout=timeout)
        except NotImplementedError:
            pass
        if not self._done:
            horizon = None if timeout is None else self._executor.now_ms() + int(timeout * 1000)
            self._executor.run_until(lambda: self._done, horizon_ms=horizon)
        if not self._done:
            msg = f"no reply within {timeout} s of virtual time"
            raise pykka.Timeout(msg)
        if self._exc_info is not None:
            raise self._exc_info[1]
        return cast("T", self._value)

    def set(self, value: Any | None = None) -> None:
        self._value = value
        self._done = True

    def set_exception(self, exc_info: Any = None) -> None:
        self._exc_info = exc_info if exc_info is not None else sys.exc_info()
        self._done = True


class _Runnable(pykka.Actor):
    """The runtime half of a deterministically executed actor. Its executor's attribute has a
    name of its own: actors keep the executor they were given as `_executor`."""

    _scheduler: DeterministicExecutor
    actor_stopped = StoppedFlag()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # What `pykka.Actor.__init__` does, without the `threading.Event` it makes for a flag
        # that lives in the mailbox here (a condition, a lock and a deque, then garbage).
        self.actor_urn = uuid.uuid4().urn
        self.actor_inbox = self._create_actor_inbox()
        self._actor_ref = HeldRef(self)

    def _start_actor_loop(self) -> None:
        mailbox = cast("_Mailbox", self.actor_inbox)
        mailbox.owner = self
        self._scheduler._mark_ready(mailbox)

    def _run_one(self, mailbox: _Mailbox) -> None:
        """Run `on_start` if it has not run yet, else handle the next message."""
        if not mailbox.started:
            mailbox.started = True
            self._actor_loop_setup()
        elif mailbox:
            deliver(self, mailbox.popleft())
        if mailbox.stopped:
            self._actor_loop_teardown()
            self._scheduler._forget(self)


class DeterministicExecutor:
    """Runs actors one message at a time in a seed-chosen order on a virtual clock."""

    def __init__(
        self,
        seed: int,
        *,
        max_steps_per_instant: int = 1_000_000,
        collector: Collector | None = None,
    ) -> None:
        """`collector`: how to tend the process's cyclic collector while it runs (`None`, the
        default: leave it alone, as tests that make many short runs in one process want)."""
        self.seed = seed
        self._random = random.Random(seed)
        self._now_ms = 0
        self._ready: list[_Mailbox] = []
        """The mailboxes of the actors with mail (or yet to start), each once."""
        self._heap: list[tuple[int, int]] = []
        """`(deadline, sequence)` of every timer: pairs of ints, which the cyclic collector
        stops tracking, so a cancelled timer that waits in the heap until it is due (a join's,
        15 s) costs it nothing."""
        self._callbacks: dict[int, Callable[[], object]] = {}
        """The callbacks of the timers neither fired nor cancelled, by sequence."""
        self._sequence = itertools.count()
        self._classes: dict[type[pykka.Actor], type[pykka.Actor]] = {}
        self._live: dict[str, pykka.ActorRef[Any]] = {}
        """Live actors by URN, in the order they started."""
        self._max_steps = max_steps_per_instant
        self._future_class = type("_Future", (_Future,), {"_executor": self})
        self.steps = 0
        self._stopped = 0
        """Actors stopped since the last full collection."""
        self._tending = None if collector is None else Tending(collector, 0)
        self._tend_at_ms = 0
        self._tend()

    @property
    def random(self) -> random.Random:
        return self._random

    @property
    def journal(self) -> None:
        """None: appends stay inline, in the turn, so a seed gives the same schedule."""
        return None

    def spawn(self, actor_class: type[A], *args: Any, **kwargs: Any) -> pykka.ActorRef[A]:
        runtime_class = self._classes.get(actor_class)
        if runtime_class is None:
            runtime_class = type(
                actor_class.__name__,
                (actor_class, _Runnable),
                {
                    "_scheduler": self,
                    "_create_actor_inbox": staticmethod(lambda: _Mailbox(self)),
                    "_create_future": staticmethod(self._future_class),
                },
            )
            self._classes[actor_class] = runtime_class
        # `Actor.start` without its entry in pykka's registry (see the module's docstring).
        actor = cast("_Runnable", runtime_class(*args, **kwargs))
        ref = cast("pykka.ActorRef[A]", actor.actor_ref)
        self._live[actor.actor_urn] = ref
        actor._start_actor_loop()
        return ref

    def now_ms(self) -> int:
        return self._now_ms

    def wall_ms(self) -> int:
        return WALL_CLOCK_ORIGIN_MS + self._now_ms

    def call_at(self, deadline_ms: int, callback: Callable[[], object]) -> TimerHandle:
        sequence = next(self._sequence)
        heapq.heappush(self._heap, (max(deadline_ms, self._now_ms), sequence))
        self._callbacks[sequence] = callback
        return Timer(self._callbacks, sequence)

    def new_id(self) -> str:
        return uuid4_text(self._random.getrandbits(128))

    def future(self) -> pykka.Future[Any]:
        made: pykka.Future[Any] = self._future_class()
        return made

    def wait(self, future: pykka.Future[T], timeout_s: float) -> T:
        return future.get(timeout=timeout_s)

    def live_actors(self) -> list[pykka.ActorRef[Any]]:
        return [ref for ref in self._live.values() if ref.is_alive()]

    def _forget(self, actor: _Runnable) -> None:
        """`actor` stopped: it leaves the index of live actors (and the list of actors with
        mail the next time the scheduler picks it)."""
        self._live.pop(actor.actor_urn, None)
        self._stopped += 1

    def start_process(self) -> Process:
        """A process starting now: these actors, this scheduler, a monotonic clock from zero."""
        return Process(self, origin_ms=self._now_ms)

    def crash(self, refs: list[pykka.ActorRef[Any]]) -> None:
        """Make actors vanish as a dying process does: no `on_stop`, mail never delivered."""
        for ref in refs:
            ref.actor_stopped.set()
            self._live.pop(ref.actor_urn, None)
            self._stopped += 1

    def shutdown(self) -> None:
        for ref in reversed(self.live_actors()):
            ref.stop(block=False)
        self.run_until_idle()
        self._heap.clear()
        self._callbacks.clear()
        if self._tending is not None:
            self._tending.end()
            self._tending = None

    def _tend(self) -> None:
        """Tend the collector if it is time (see `actors.collector`)."""
        if self._tending is not None and self._now_ms >= self._tend_at_ms:
            if self._tending.tend(self._now_ms, live=len(self._live), stopped=self._stopped):
                self._stopped = 0
            self._tend_at_ms = self._now_ms + self._tending.period_ms

    def _mark_ready(self, mailbox: _Mailbox) -> None:
        if not mailbox.ready:
            mailbox.ready = True
            self._ready.append(mailbox)

    def step(self) -> bool:
        """Deliver one message to one seed-chosen actor; `False` when no actor has mail."""
        while self._ready:
            index = self._random.randrange(len(self._ready)) if len(self._ready) > 1 else 0
            mailbox = self._ready[index]
            if mailbox.started and (not mailbox or mailbox.stopped):
                # Swap with the last one: O(1) (schedule version 2, see the module's docstring).
                last = self._ready.pop()
                if index < len(self._ready):
                    self._ready[index] = last
                mailbox.ready = False
                continue
            self.steps += 1
            cast("_Runnable", mailbox.owner)._run_one(mailbox)
            return True
        return False

    def run_until_idle(self) -> None:
        """Deliver messages until every mailbox is empty, without moving the clock."""
        for _ in range(self._max_steps):
            if not self.step():
                return
        msg = f"more than {self._max_steps} messages at t={self._now_ms} ms"
        raise Livelock(msg)

    def _fire_next(self, horizon_ms: int | None) -> bool:
        """Jump to the next live deadline within the horizon and run its callback."""
        while self._heap:
            deadline, sequence = self._heap[0]
            if horizon_ms is not None and deadline > horizon_ms:
                return False
            heapq.heappop(self._heap)
            callback = self._callbacks.pop(sequence, None)
            if callback is None:  # cancelled
                continue
            if deadline > self._now_ms:
                self._now_ms = deadline
                self._tend()
            callback()
            return True
        return False

    def advance_to(self, t_ms: int) -> None:
        """Run everything due up to `t_ms`; the clock ends at `t_ms`."""
        self.run_until_idle()
        while self._fire_next(t_ms):
            self.run_until_idle()
        if t_ms > self._now_ms:
            self._now_ms = t_ms
            self._tend()

    def advance(self, delta_ms: int) -> None:
        self.advance_to(self._now_ms + delta_ms)

    def run_until(self, done: Callable[[], bool], *, horizon_ms: int | None = None) -> None:
        """Run until `done()` holds, deadlines run out, or the clock would pass `horizon_ms`."""
        steps_at_this_instant = 0
        while not done():
            if self.step():
                steps_at_this_instant += 1
                if steps_at_this_instant > self._max_steps:
                    msg = f"more than {self._max_steps} messages at t={self._now_ms} ms"
                    raise Livelock(msg)
                continue
            if not self._fire_next(horizon_ms):
                return
            steps_at_this_instant = 0


class Process:
    """The deterministic executor as one simulated process sees it.

    Every process shares the scheduler, the randomness and the wall clock, but its monotonic
    clock starts at zero when it starts, as a real process's does: a server restarted from its
    log cannot carry its predecessor's monotonic times over, only wall-clock ones.
    """

    def __init__(self, executor: DeterministicExecutor, *, origin_ms: int) -> None:
        self._executor = executor
        self._origin_ms = origin_ms
        self._refs: dict[str, pykka.ActorRef[Any]] = {}
        self._prune_at = 64

    @property
    def random(self) -> random.Random:
        return self._executor.random

    @property
    def journal(self) -> None:
        return None

    def spawn(self, actor_class: type[A], *args: Any, **kwargs: Any) -> pykka.ActorRef[A]:
        ref = self._executor.spawn(actor_class, *args, **kwargs)
        self._refs[ref.actor_urn] = ref
        if len(self._refs) >= self._prune_at:
            # Dropping the dead only when the index has doubled keeps a spawn O(1) amortised.
            self._refs = {urn: known for urn, known in self._refs.items() if known.is_alive()}
            self._prune_at = max(64, 2 * len(self._refs))
        return ref

    def now_ms(self) -> int:
        return self._executor.now_ms() - self._origin_ms

    def wall_ms(self) -> int:
        return self._executor.wall_ms()

    def call_at(self, deadline_ms: int, callback: Callable[[], object]) -> TimerHandle:
        return self._executor.call_at(deadline_ms + self._origin_ms, callback)

    def new_id(self) -> str:
        return self._executor.new_id()

    def future(self) -> pykka.Future[Any]:
        return self._executor.future()

    def wait(self, future: pykka.Future[T], timeout_s: float) -> T:
        return self._executor.wait(future, timeout_s)

    def shutdown(self) -> None:
        """Stop this process's actors; the other processes go on."""
        for ref in reversed(list(self._refs.values())):
            if ref.is_alive():
                ref.stop(block=False)
        self._executor.run_until_idle()
        self._refs.clear()

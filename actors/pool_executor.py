"""Production executor: every actor on a fixed pool of worker threads, a timer thread, and the
journal's writer thread.

The process holds `workers + 2` threads of this executor however many actors it runs (6 with
the default of 4 workers). An actor with mail sits once in a FIFO run queue; a worker takes it,
handles at most `TURN` of its messages, and puts it back at the end of the queue if it still
has mail. So an actor handles one message at a time and never on two workers at once, its
mailbox is FIFO, and a flooded actor delays the others by at most `TURN` messages per turn.

Actors are ordinary pykka actors: the executor supplies pykka's runtime hooks (inbox, future,
loop start) and delivers each message through pykka's own handling, so `ask`, proxies, `stop()`
and failures behave as on `pykka.ThreadingActor`. Futures are `pykka.ThreadingFuture`: any
thread may wait on one. Actors are not entered in pykka's process-wide `ActorRegistry`, whose
removals scan a list; the executor keeps its own index of live actors by URN, so spawning and
stopping cost O(1) whatever the number of actors.

Where the time goes, and what that asks of the code that runs here:
- An actor that blocks blocks its worker, and only its worker: the other workers go on with
  the other actors. Sessions do not block on the log: they hand their appends to the executor's
  `Journal`, whose one writer thread commits every batch queued meanwhile in one transaction
  (one fsync), and hear back by message.
- The audio sink is called by the worker running the Bridge's turn: any worker of the pool,
  not always the same one for one user. It must be thread-safe and return quickly: while it
  runs, that worker serves nobody else.
- Health subscribers run on the worker running the Session's turn, with the same rules.
- `wait` blocks its calling thread. The runtime facade and tests call it from outside; an actor
  must never wait on another actor's reply: with a fixed pool, workers that all wait on replies
  that need a worker never get one (and the actors never do: a request and its reply are
  both messages).
- Timer callbacks run on the timer thread, one after another: they should only tell actors.
- The pool owns CPython's cyclic collector while it runs (`actors.collector`): it freezes
  what survives, so that a connect storm makes no full collection of every session so far.

Workers, the timer thread and the journal's thread are daemons: a process that exits without
`shutdown()` does not wait for them, and its actors' `on_stop` hooks do not run.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import logging
import math
import queue
import random
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

import pykka
from pykka._envelope import Envelope as PykkaEnvelope

from actors.collector import COLLECTOR, Collector, Tending
from actors.executor import (
    HeldRef,
    StoppedFlag,
    Timer,
    TimerHandle,
    deliver,
    uuid4_text,
    uuid7_text,
)
from actors.journal import Journal

A = TypeVar("A", bound=pykka.Actor)
T = TypeVar("T")

logger = logging.getLogger(__name__)

TURN = 8
"""The most messages a worker handles for one actor before it serves the next one in line."""

SHUTDOWN_S = 5.0
"""How long `shutdown()` waits, in all, for the actors to stop and the threads to end."""


class _Mailbox(collections.deque[PykkaEnvelope[Any]]):
    """An actor's runtime state in one object: its FIFO mailbox, which puts the actor in the
    run queue when mail arrives for an actor that is neither queued nor running, whether it
    has started, and its stopped flag (see `actors.executor.StoppedFlag`). One gc-tracked
    object per actor, as on the deterministic executor, instead of four."""

    __slots__ = ("_lock", "_ready", "_scheduled", "owner", "started", "stopped")

    def __init__(self, ready: queue.SimpleQueue[_Pooled | None]) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._ready = ready
        # Until its first turn (which runs on_start), the actor counts as queued: mail that
        # arrives before it starts waits for that turn.
        self._scheduled = True
        self.owner: _Pooled
        self.started = False
        self.stopped = False

    def put(self, envelope: PykkaEnvelope[Any], /) -> None:
        with self._lock:
            self.append(envelope)
            if self._scheduled:
                return
            self._scheduled = True
        self._ready.put(self.owner)

    def get(self) -> PykkaEnvelope[Any]:
        # Only the worker running the owner's turn takes mail: no lock needed against another
        # taker, and a deque's append and popleft are atomic with respect to each other.
        return self.popleft()

    def empty(self) -> bool:
        return not self

    def is_set(self) -> bool:
        return self.stopped

    def set(self) -> None:
        self.stopped = True

    def release(self) -> bool:
        """End a turn: whether the actor still has mail (it stays queued, and the caller puts
        it back in the run queue) or not (the next `put` queues it)."""
        with self._lock:
            if self:
                return True
            self._scheduled = False
            return False


class _Pooled(pykka.Actor):
    """The runtime half of an actor on the pool. Its executor's attribute has a name of its
    own: actors keep the executor they were given as `_executor`."""

    _pool: PoolExecutor
    actor_stopped = StoppedFlag()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # What `pykka.Actor.__init__` does, without its `threading.Event` (the flag lives in
        # the mailbox) and with a URN from the executor's generator instead of `uuid4`, which
        # asks the OS for every actor.
        self.actor_urn = self._pool._urn()
        self.actor_inbox = self._create_actor_inbox()
        self._actor_ref = HeldRef(self)

    def _start_actor_loop(self) -> None:
        inbox = cast("_Mailbox", self.actor_inbox)
        inbox.owner = self
        self._pool._ready.put(self)

    def _turn(self) -> None:
        """Run `on_start` if it has not run yet, then up to `TURN` messages (in the first turn
        too: mail told at or during the start, a session's first input, need not wait for a
        turn of its own); then tear down if stopped (again, for mail that came late) and leave
        or rejoin the run queue."""
        inbox = cast("_Mailbox", self.actor_inbox)
        if not inbox.started:
            inbox.started = True
            self._actor_loop_setup()
        for _ in range(TURN):
            if inbox.stopped or not inbox:
                break
            try:
                deliver(self, inbox.popleft())
            except BaseException:
                # What pykka's loop does then: stop every actor (of this executor, here).
                logger.debug("%r in %s: stopping all actors", sys.exc_info()[1], self)
                self._stop()
                self._pool._stop_all()
        if inbox.stopped:
            self._actor_loop_teardown()
            self._pool._forget(self)
        if inbox.release():
            self._pool._ready.put(self)


class PoolExecutor:
    """Actors on `workers` threads, the real clocks, a single timer thread, and a journal."""

    def __init__(self, workers: int = 4, collector: Collector | None = COLLECTOR) -> None:
        """`collector`: how the pool tends the process's cyclic collector while it runs
        (`None`: it leaves it alone)."""
        if workers < 1:
            msg = f"a pool needs at least one worker, not {workers}"
            raise ValueError(msg)
        self._origin = time.monotonic()
        self._random = random.Random()
        self._ready: queue.SimpleQueue[_Pooled | None] = queue.SimpleQueue()
        self._classes: dict[type[pykka.Actor], type[_Pooled]] = {}
        self._live: dict[str, pykka.ActorRef[Any]] = {}
        """Live actors by URN, in the order they started."""
        self._live_lock = threading.Lock()
        self._heap: list[tuple[int, int]] = []
        """`(deadline, sequence)` of every timer (see `actors.executor.Timer`)."""
        self._callbacks: dict[int, Callable[[], object]] = {}
        """The callbacks of the timers neither fired nor cancelled, by sequence."""
        self._sequence = itertools.count()
        self._condition = threading.Condition()
        self._closed = False
        self._workers = [
            threading.Thread(target=self._work, name=f"rejoin-worker-{n}", daemon=True)
            for n in range(workers)
        ]
        self._timers = threading.Thread(target=self._run_timers, name="rejoin-timers", daemon=True)
        for thread in [*self._workers, self._timers]:
            thread.start()
        self._journal = Journal()
        self._stopped = 0
        """Actors stopped since the last full collection."""
        self._tending = None if collector is None else Tending(collector, self.now_ms())
        if self._tending is not None:
            self._tend_collector(self._tending)

    @property
    def random(self) -> random.Random:
        return self._random

    @property
    def journal(self) -> Journal:
        return self._journal

    def spawn(self, actor_class: type[A], *args: Any, **kwargs: Any) -> pykka.ActorRef[A]:
        if self._closed:
            msg = f"cannot start {actor_class.__name__}: the executor is shut down"
            raise RuntimeError(msg)
        runtime_class = self._classes.get(actor_class)
        if runtime_class is None:
            made = type(
                actor_class.__name__,
                (actor_class, _Pooled),
                {
                    "_pool": self,
                    "_create_actor_inbox": staticmethod(lambda: _Mailbox(self._ready)),
                    "_create_future": staticmethod(pykka.ThreadingFuture),
                },
            )
            # Two threads may make a class at once; both are fine, and one is kept.
            runtime_class = self._classes.setdefault(actor_class, made)
        # `Actor.start` without its entry in pykka's registry (see the module's docstring).
        actor = runtime_class(*args, **kwargs)
        with self._live_lock:
            self._live[actor.actor_urn] = actor.actor_ref
        actor._start_actor_loop()
        return cast("pykka.ActorRef[A]", actor.actor_ref)

    def live_actors(self) -> list[pykka.ActorRef[Any]]:
        with self._live_lock:
            return [ref for ref in self._live.values() if ref.is_alive()]

    def _forget(self, actor: _Pooled) -> None:
        with self._live_lock:
            self._live.pop(actor.actor_urn, None)
            self._stopped += 1

    def _stop_all(self) -> list[pykka.Future[bool]]:
        """Ask every live actor to stop, newest first."""
        return [ref.stop(block=False) for ref in reversed(self.live_actors())]

    def now_ms(self) -> int:
        # Rounded up, and timers fire on the unrounded clock: `now_ms() + d` is then never less
        # than `d` ms away (rounded down, it fired up to 1 ms early, and a grace armed for a
        # wall-clock instant ended a millisecond before it in the log).
        return math.ceil(self._elapsed_ms())

    def _elapsed_ms(self) -> float:
        return (time.monotonic() - self._origin) * 1000

    def wall_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def call_at(self, deadline_ms: int, callback: Callable[[], object]) -> TimerHandle:
        with self._condition:
            sequence = next(self._sequence)
            self._callbacks[sequence] = callback
            heapq.heappush(self._heap, (deadline_ms, sequence))
            if self._heap[0][1] == sequence:
                # Only a new first deadline moves the timer thread's wake-up: a session's join
                # deadline, 15 s on, rarely does, and a wake-up for nothing costs two thread
                # switches and a turn at the GIL.
                self._condition.notify()
        return Timer(self._callbacks, sequence)

    def _tend_collector(self, tending: Tending) -> None:
        """Tend the collector (see `actors.collector`); then come back in its period."""
        now = self.now_ms()
        if tending.tend(now, live=len(self._live), stopped=self._stopped):
            with self._live_lock:
                self._stopped = 0
        self.call_at(now + tending.period_ms, lambda: self._tend_collector(tending))

    def new_id(self) -> str:
        # Random bits from the executor's own generator, seeded by the OS: `uuid4` asks the OS
        # for every id, a system call per event. Ids must be unique, not secret; in time order
        # they cost a durable log a third of the bytes it writes per commit (see `uuid7_text`).
        return uuid7_text(self.wall_ms(), self._random.getrandbits(74))

    def _urn(self) -> str:
        return f"urn:uuid:{uuid4_text(self._random.getrandbits(128))}"

    def future(self) -> pykka.Future[Any]:
        return pykka.ThreadingFuture()

    def wait(self, future: pykka.Future[T], timeout_s: float) -> T:
        """Block the calling thread until the reply (see the module's docstring: never from
        inside an actor)."""
        return future.get(timeout=timeout_s)

    def shutdown(self) -> None:
        """Stop every actor (each runs `on_stop`), then end the journal (once what it holds is
        written), the workers and the timer thread, within `SHUTDOWN_S` in all; an actor stuck
        in a turn is left behind on its daemon."""
        deadline = time.monotonic() + SHUTDOWN_S
        # A stopping actor may start another one (a supervisor's last turn): go round again.
        while not self._closed and time.monotonic() < deadline and (stopping := self._stop_all()):
            try:
                for future in stopping:
                    future.get(timeout=max(0.0, deadline - time.monotonic()))
            except pykka.Timeout:
                break
        if self.live_actors():
            logger.warning("actors still running after %g s; leaving them", SHUTDOWN_S)
        self._closed = True
        self._journal.close(timeout_s=max(0.0, deadline - time.monotonic()))
        with self._condition:
            self._heap.clear()
            self._callbacks.clear()
            self._condition.notify()
        for _ in self._workers:
            self._ready.put(None)
        for thread in [*self._workers, self._timers]:
            if thread is not threading.current_thread():
                thread.join(timeout=max(0.0, deadline - time.monotonic()))
        if self._tending is not None:
            self._tending.end()

    def _work(self) -> None:
        ready = self._ready
        while (actor := ready.get()) is not None:
            actor._turn()

    def _run_timers(self) -> None:
        while True:
            with self._condition:
                while not self._closed and (
                    not self._heap or self._heap[0][0] > self._elapsed_ms()
                ):
                    wait_s = (self._heap[0][0] - self._elapsed_ms()) / 1000 if self._heap else None
                    self._condition.wait(timeout=wait_s)
                if self._closed:
                    return
                _, sequence = heapq.heappop(self._heap)
                callback = self._callbacks.pop(sequence, None)
            if callback is not None:
                try:
                    callback()
                except Exception:
                    # One bad callback must not take every later deadline down with it.
                    logger.exception("timer callback failed")

"""Production executor: one pykka thread per actor and one timer thread for all deadlines."""

from __future__ import annotations

import heapq
import itertools
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar, cast

import pykka

from actors.executor import Deadline

A = TypeVar("A", bound=pykka.Actor)
T = TypeVar("T")

logger = logging.getLogger(__name__)


class ThreadingExecutor:
    """Actors on pykka threads, the monotonic clock, and a single timer thread."""

    def __init__(self) -> None:
        self._origin = time.monotonic()
        self._random = random.Random()
        self._classes: dict[type[pykka.Actor], type[pykka.Actor]] = {}
        self._refs: list[pykka.ActorRef[Any]] = []
        self._heap: list[tuple[int, int, Deadline]] = []
        self._sequence = itertools.count()
        self._condition = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run_timers, name="rejoin-timers", daemon=True)
        self._thread.start()

    @property
    def random(self) -> random.Random:
        return self._random

    def spawn(self, actor_class: type[A], *args: Any, **kwargs: Any) -> pykka.ActorRef[A]:
        runtime_class = self._classes.get(actor_class)
        if runtime_class is None:
            runtime_class = type(actor_class.__name__, (actor_class, pykka.ThreadingActor), {})
            self._classes[actor_class] = runtime_class
        ref = cast("pykka.ActorRef[A]", runtime_class.start(*args, **kwargs))
        self._refs = [known for known in self._refs if known.is_alive()]
        self._refs.append(ref)
        return ref

    def now_ms(self) -> int:
        return int((time.monotonic() - self._origin) * 1000)

    def wall_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def call_at(self, deadline_ms: int, callback: Callable[[], object]) -> Deadline:
        timer = Deadline(callback)
        with self._condition:
            heapq.heappush(self._heap, (deadline_ms, next(self._sequence), timer))
            self._condition.notify()
        return timer

    def new_id(self) -> str:
        return str(uuid.uuid4())

    def future(self) -> pykka.Future[Any]:
        return pykka.ThreadingFuture()

    def wait(self, future: pykka.Future[T], timeout_s: float) -> T:
        return future.get(timeout=timeout_s)

    def shutdown(self) -> None:
        for ref in reversed(self._refs):
            ref.stop(block=False)
        for ref in reversed(self._refs):
            ref.actor_stopped.wait(timeout=5)
        self._refs.clear()
        with self._condition:
            self._closed = True
            self._heap.clear()
            self._condition.notify()
        self._thread.join(timeout=5)

    def _run_timers(self) -> None:
        while True:
            with self._condition:
                while not self._closed and (not self._heap or self._heap[0][0] > self.now_ms()):
                    wait_s = (self._heap[0][0] - self.now_ms()) / 1000 if self._heap else None
                    self._condition.wait(timeout=wait_s)
                if self._closed:
                    return
                _, _, timer = heapq.heappop(self._heap)
            if not timer.cancelled:
                try:
                    timer.callback()
                except Exception:
                    # One bad callback must not take every later deadline down with it.
                    logger.exception("timer callback failed")

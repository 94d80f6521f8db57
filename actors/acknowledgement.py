"""Acknowledgements: a host learns when its input is durable, and how many are not yet.

A glasses input is acknowledged once it is in the log, before the session acts on it and
never after network I/O, so the host can answer the glasses at once and still promise that a
crash cannot lose what it acknowledged.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import pykka

__all__ = ["Acknowledgement", "Backlog"]

logger = logging.getLogger(__name__)


class Backlog:
    """How many inputs were accepted and are not yet durable. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 0

    def __len__(self) -> int:
        with self._lock:
            return self._count

    def _add(self, delta: int) -> None:
        with self._lock:
            self._count += delta


class Acknowledgement:
    """Completes with the input's position in the log once it is durable."""

    __slots__ = ("_backlog", "_callbacks", "_future", "_lock", "_make_future", "_position", "_wait")

    def __init__(
        self,
        future: Callable[[], pykka.Future[Any]],
        backlog: Backlog,
        wait: Callable[[pykka.Future[Any], float], Any],
    ) -> None:
        """`future` makes the future `wait` waits on: made only when someone waits before the
        input is durable, since a host that hears of it by `on_durable` never does, and a
        thread-safe future is a queue with its lock and three conditions, per input."""
        self._make_future = future
        self._backlog = backlog
        self._wait = wait
        self._lock = threading.Lock()
        self._position: int | None = None
        self._future: pykka.Future[Any] | None = None
        self._callbacks: list[Callable[[int], object]] | None = None
        backlog._add(1)

    def durable(self, position: int) -> None:
        """The input is in the log at `position` (the session calls this, once)."""
        with self._lock:
            if self._position is not None:
                return
            self._position = position
            callbacks, self._callbacks = self._callbacks, None
            future = self._future
        self._backlog._add(-1)
        if future is not None:
            future.set(position)
        for callback in callbacks or ():
            _call(callback, position)

    def on_durable(self, callback: Callable[[int], object]) -> None:
        """Call `callback(position)` once the input is durable: at once if it is already,
        else on the thread that makes it durable (it must only hand the news over)."""
        with self._lock:
            if self._position is None:
                if self._callbacks is None:
                    self._callbacks = []
                self._callbacks.append(callback)
                return
            position = self._position
        _call(callback, position)

    def done(self) -> bool:
        with self._lock:
            return self._position is not None

    def wait(self, timeout_s: float) -> int:
        """The input's position in the log, once durable; `TimeoutError` if not within
        `timeout_s` (on the deterministic executor, of virtual time)."""
        with self._lock:
            if self._position is not None:
                return self._position
            if self._future is None:
                self._future = self._make_future()
            future = self._future
        try:
            position: int = self._wait(future, timeout_s)
        except pykka.Timeout as error:
            msg = f"the input was not durable within {timeout_s:g} s"
            raise TimeoutError(msg) from error
        return position


def _call(callback: Callable[[int], object], position: int) -> None:
    # A host's callback runs in a session's turn or the journal's reply: its failure is the
    # host's, not theirs.
    try:
        callback(position)
    except Exception:
        logger.exception("an acknowledgement's callback failed")

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

__all__ = ["Acknowledgement", "Backlog", "RuntimeStopped"]

logger = logging.getLogger(__name__)


class RuntimeStopped(Exception):
    """The runtime stopped before it could say that the input was durable: it may be in the
    log or not. A host answers the glasses as for any input it could not take."""


class Backlog:
    """The inputs accepted and not yet durable. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: set[Acknowledgement] = set()

    def __len__(self) -> int:
        with self._lock:
            return len(self._pending)

    def stop(self, reason: str) -> None:
        """Complete every input still pending with `RuntimeStopped(reason)`."""
        with self._lock:
            pending = list(self._pending)
        for ack in pending:
            ack.stopped(reason)

    def _add(self, ack: Acknowledgement) -> None:
        with self._lock:
            self._pending.add(ack)

    def _remove(self, ack: Acknowledgement) -> None:
        with self._lock:
            self._pending.discard(ack)


class Acknowledgement:
    """Completes with the input's position in the log once it is durable, or with
    `RuntimeStopped` if the runtime stops first."""

    __slots__ = ("_backlog", "_callbacks", "_future", "_lock", "_make_future", "_outcome", "_wait")

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
        self._outcome: int | str | None = None
        """The input's position once durable, or why the runtime stopped first."""
        self._future: pykka.Future[Any] | None = None
        self._callbacks: list[tuple[bool, Callable[[Any], object]]] | None = None
        """Each callback, with whether it is for durability (else for a stop)."""
        backlog._add(self)

    def durable(self, position: int) -> None:
        """The input is in the log at `position` (the session calls this, once)."""
        self._settle(position)

    def stopped(self, reason: str) -> None:
        """The runtime stopped before the input was known to be durable (the runtime calls
        this); nothing if it was known already."""
        self._settle(reason)

    def _settle(self, outcome: int | str) -> None:
        with self._lock:
            if self._outcome is not None:
                return
            self._outcome = outcome
            callbacks, self._callbacks = self._callbacks, None
            future = self._future
        self._backlog._remove(self)
        if future is not None:
            future.set(outcome)
        for for_durable, callback in callbacks or ():
            _notify(for_durable, callback, outcome)

    def on_durable(self, callback: Callable[[int], object]) -> None:
        """Call `callback(position)` once the input is durable: at once if it is already,
        else on the thread that makes it durable (it must only hand the news over)."""
        self._on(True, callback)

    def on_stopped(self, callback: Callable[[RuntimeStopped], object]) -> None:
        """Call `callback(error)` if the runtime stops before the input is durable: at once if
        it has, else on the thread that stops it (it must only hand the news over)."""
        self._on(False, callback)

    def _on(self, for_durable: bool, callback: Callable[[Any], object]) -> None:
        with self._lock:
            outcome = self._outcome
            if outcome is None:
                if self._callbacks is None:
                    self._callbacks = []
                self._callbacks.append((for_durable, callback))
                return
        _notify(for_durable, callback, outcome)

    def done(self) -> bool:
        """Whether the input is known to be durable, or the runtime stopped first."""
        with self._lock:
            return self._outcome is not None

    def wait(self, timeout_s: float) -> int:
        """The input's position in the log, once durable; `RuntimeStopped` if the runtime
        stops first, `TimeoutError` if neither comes within `timeout_s` (on the deterministic
        executor, of virtual time)."""
        with self._lock:
            outcome = self._outcome
            if outcome is None:
                if self._future is None:
                    self._future = self._make_future()
                future = self._future
        if outcome is None:
            try:
                outcome = self._wait(future, timeout_s)
            except pykka.Timeout as error:
                msg = f"the input was not durable within {timeout_s:g} s"
                raise TimeoutError(msg) from error
        if isinstance(outcome, int):
            return outcome
        raise RuntimeStopped(outcome)


def _notify(for_durable: bool, callback: Callable[[Any], object], outcome: int | str) -> None:
    """Call a callback registered for durability with the position, one for a stop with the
    error, if that is how the input ended."""
    if isinstance(outcome, int):
        if for_durable:
            _call(callback, outcome)
    elif not for_durable:
        _call(callback, RuntimeStopped(outcome))


def _call(callback: Callable[[Any], object], outcome: object) -> None:
    # A host's callback runs in a session's turn, the journal's reply or the runtime's stop:
    # its failure is the host's, not theirs.
    try:
        callback(outcome)
    except Exception:
        logger.exception("an acknowledgement's callback failed")

"""A store that tells observers what it made durable, and how long each append took.

Logs and metrics read the runtime's decisions here, where they become facts: an observer sees
a batch only once the inner store has it, in the order each stream's appends completed, and
never one the store refused. Observers run on the appending thread, after the append: they
must be quick, and a failing observer is logged, never the append's failure.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from events.envelope import Envelope, Pending
from events.forwarding_store import ForwardingStore
from events.log import Batch, EventStore, Outcome

__all__ = ["AppendObserver", "ObservedStore"]

logger = logging.getLogger(__name__)

AppendObserver = Callable[[list[Envelope], float], object]
"""Called with a durable batch and the seconds its append took."""


class ObservedStore(ForwardingStore):
    """Wraps a store; after each append that succeeds, calls every observer."""

    def __init__(self, inner: EventStore, observers: Sequence[AppendObserver]) -> None:
        super().__init__(inner)
        self._observers = tuple(observers)

    def append(
        self, stream: str, expected_version: int, events: Sequence[Pending]
    ) -> list[Envelope]:
        began = time.perf_counter()
        stored = self.inner.append(stream, expected_version, events)
        self._tell(stored, time.perf_counter() - began)
        return stored

    def append_group(self, batches: Sequence[Batch]) -> list[Outcome]:
        began = time.perf_counter()
        outcomes = self.inner.append_group(batches)
        # Each batch of a group waited for the whole group's commit.
        seconds = time.perf_counter() - began
        for outcome in outcomes:
            if not isinstance(outcome, Exception):
                self._tell(outcome, seconds)
        return outcomes

    def _tell(self, stored: list[Envelope], seconds: float) -> None:
        for observer in self._observers:
            try:
                observer(stored, seconds)
            except Exception:
                logger.exception("an observer of the log failed on stream %s", stored[0].stream)

"""The journal: appends that hold no worker while they are written, as Akka's `persist` does.

A session hands its turn's batch to the journal and goes on with other work; one writer thread
takes every batch queued meanwhile (at most `GROUP`) and writes them with one `append_group`
per store, so that they share a transaction and its fsync, then hands each batch's outcome to
its `reply`. With a blocking append, at most one batch per worker could be in flight, and a
group never held more batches than there are workers.

Replies run on the writer thread, one after another: each should only tell an actor.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable
from typing import NamedTuple

from events.log import Batch, EventStore, LogError, Outcome

logger = logging.getLogger(__name__)

GROUP = 64
"""The most batches the writer takes at once: as many as one SQLite transaction takes
(`events.sqlite_store.MAX_GROUP`), so that the first batch's reply waits for one commit."""

Reply = Callable[[Outcome], object]


class _Write(NamedTuple):
    store: EventStore
    batch: Batch
    reply: Reply


class Journal:
    """One writer thread for any number of stores and sessions. Thread-safe."""

    def __init__(self, name: str = "rejoin-journal") -> None:
        self._queue: collections.deque[_Write] = collections.deque()
        self._condition = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def append(self, store: EventStore, batch: Batch, reply: Reply) -> None:
        """Queue `batch` for `store`; `reply` gets its envelopes once durable, or its refusal."""
        with self._condition:
            if not self._closed:
                self._queue.append(_Write(store, batch, reply))
                self._condition.notify()
                return
        reply(LogError(f"stream {batch.stream}: not appended: the journal is closed"))

    @property
    def queued(self) -> int:
        """Batches waiting for the writer to take them."""
        with self._condition:
            return len(self._queue)

    def close(self, timeout_s: float) -> None:
        """Write what is queued, then end the writer thread (waiting at most `timeout_s`)."""
        with self._condition:
            self._closed = True
            self._condition.notify()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=timeout_s)

    def _run(self) -> None:
        while True:
            with self._condition:
                while not self._queue and not self._closed:
                    self._condition.wait()
                if not self._queue:
                    return
                taken = [self._queue.popleft() for _ in range(min(GROUP, len(self._queue)))]
            self._write(taken)

    def _write(self, taken: list[_Write]) -> None:
        by_store: dict[int, list[_Write]] = {}
        for write in taken:
            by_store.setdefault(id(write.store), []).append(write)
        for writes in by_store.values():
            store = writes[0].store
            try:
                outcomes = store.append_group([write.batch for write in writes])
            except Exception as error:
                # A store is to report each batch's refusal; one that raises refuses them all,
                # and the writer goes on for the next batches.
                logger.exception("append_group raised instead of reporting its batches")
                outcomes = [error] * len(writes)
            for write, outcome in zip(writes, outcomes, strict=True):
                try:
                    write.reply(outcome)
                except Exception:
                    logger.exception("a journal reply failed")

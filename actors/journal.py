"""The journal: appends that hold no worker while they are written, as Akka's `persist` does.

A session hands its turn's batch to the journal and goes on with other work; one writer thread
takes every batch queued meanwhile (at most `GROUP`) and writes them with one `append_group`
per store, so that they share a transaction and its fsync, then hands each batch's outcome to
its `reply`. With a blocking append, at most one batch per worker could be in flight, and a
group never held more batches than there are workers.

Replies run on the writer thread, one after another: each should only tell an actor.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import NamedTuple

from events.log import Batch, EventStore, LogError, Outcome

logger = logging.getLogger(__name__)

GROUP = 256
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
        # A SimpleQueue rather than a deque under a condition: the writer takes its batches
        # without a lock the sessions' workers wait on while it waits for the GIL.
        self._queue: queue.SimpleQueue[_Write | None] = queue.SimpleQueue()
        self._closing = threading.Lock()
        """Held while a batch is queued or the journal closes: none is queued after the end."""
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def append(self, store: EventStore, batch: Batch, reply: Reply) -> None:
        """Queue `batch` for `store`; `reply` gets its envelopes once durable, or its refusal."""
        with self._closing:
            if not self._closed:
                self._queue.put(_Write(store, batch, reply))
                return
        reply(LogError(f"stream {batch.stream}: not appended: the journal is closed"))

    @property
    def queued(self) -> int:
        """Batches waiting for the writer to take them."""
        return self._queue.qsize()

    def close(self, timeout_s: float) -> None:
        """Write what is queued, then end the writer thread (waiting at most `timeout_s`)."""
        with self._closing:
            if not self._closed:
                self._closed = True
                self._queue.put(None)  # the end: the last item ever queued
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=timeout_s)

    def _run(self) -> None:
        ended = False
        while not ended:
            taken: list[_Write] = []
            item = self._queue.get()
            while item is not None:
                taken.append(item)
                if len(taken) == GROUP:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            ended = item is None
            if taken:
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

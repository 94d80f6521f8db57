"""An event store in memory, for simulations and tests."""

from __future__ import annotations

import threading
from array import array
from collections.abc import Iterator, Sequence

from events.envelope import Envelope, Pending
from events.log import (
    Batch,
    DuplicateEventId,
    Outcome,
    WrongExpectedVersion,
    check_batch,
    session_change,
)


class MemoryStore:
    """The log in a list. Thread-safe; holds envelopes as objects, so nothing is encoded."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._envelopes: list[Envelope] = []
        self._streams: dict[str, array[int]] = {}
        """Each stream's positions, unboxed: not a list of int objects for the cyclic
        collector to walk on every full pass, one per event of the run."""
        self._positions_by_id: dict[str, int] = {}
        self._open: dict[str, dict[str, int]] = {}
        """Per server, the streams of open sessions and their incarnations."""
        self._incarnations: dict[tuple[str, str], int] = {}

    def append(
        self, stream: str, expected_version: int, events: Sequence[Pending]
    ) -> list[Envelope]:
        check_batch(stream, events)
        with self._lock:
            stored = self._positions_by_id.get(events[0].event_id)
            if stored is not None:
                return self._stored_batch(stream, stored, events)
            if any(pending.event_id in self._positions_by_id for pending in events):
                msg = f"stream {stream}: a batch mixes stored and new event ids"
                raise DuplicateEventId(msg)
            positions = self._streams.setdefault(stream, array("q"))
            if len(positions) != expected_version:
                raise WrongExpectedVersion(stream, expected_version, len(positions))
            appended = []
            for offset, pending in enumerate(events):
                envelope = pending.at(
                    position=len(self._envelopes) + 1,
                    stream=stream,
                    version=expected_version + offset + 1,
                )
                self._envelopes.append(envelope)
                positions.append(envelope.position)
                self._positions_by_id[pending.event_id] = envelope.position
                appended.append(envelope)
                self._index(stream, pending)
            return appended

    def append_group(self, batches: Sequence[Batch]) -> list[Outcome]:
        """Each batch appended on its own: there is no fsync here to share."""
        outcomes: list[Outcome] = []
        for batch in batches:
            try:
                outcomes.append(self.append(batch.stream, batch.expected_version, batch.events))
            except Exception as error:
                outcomes.append(error)
        return outcomes

    def _index(self, stream: str, pending: Pending) -> None:
        change = session_change(pending)
        if change is None:
            return
        open_here = self._open.setdefault(change.server, {})
        if change.incarnation is None:
            open_here.pop(stream, None)
            return
        open_here[stream] = change.incarnation
        key = (change.server, change.user)
        self._incarnations[key] = max(self._incarnations.get(key, 0), change.incarnation)

    def _stored_batch(self, stream: str, first: int, events: Sequence[Pending]) -> list[Envelope]:
        stored = self._envelopes[first - 1 : first - 1 + len(events)]
        if [e.event_id for e in stored] != [p.event_id for p in events] or any(
            e.stream != stream for e in stored
        ):
            msg = f"stream {stream}: event id {events[0].event_id} is stored with other events"
            raise DuplicateEventId(msg)
        return stored

    def read_all(self, from_position: int = 1) -> Iterator[Envelope]:
        with self._lock:
            snapshot = self._envelopes[max(from_position, 1) - 1 :]
        yield from snapshot

    def read_stream(self, stream: str) -> list[Envelope]:
        with self._lock:
            return [self._envelopes[p - 1] for p in self._streams.get(stream, [])]

    def read_user(self, user: str) -> Iterator[Envelope]:
        with self._lock:
            return iter([envelope for envelope in self._envelopes if envelope.user == user])

    def stream_version(self, stream: str) -> int:
        with self._lock:
            return len(self._streams.get(stream, []))

    def open_streams(self, server: str) -> list[str]:
        with self._lock:
            open_here = self._open.get(server, {})
            return sorted(open_here, key=lambda stream: (open_here[stream], stream))

    def last_incarnation(self, server: str, user: str) -> int:
        with self._lock:
            return self._incarnations.get((server, user), 0)

    def session_users(self, server: str | None = None) -> list[str]:
        with self._lock:
            # In the order they first had one; a user with sessions on two servers, once.
            mine = (user for (where, user) in self._incarnations if server in (None, where))
            return list(dict.fromkeys(mine))

    def close(self) -> None:
        """Nothing to release."""

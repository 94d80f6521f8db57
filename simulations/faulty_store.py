"""An event store that fails as a full or failing disk does: for a while, every append raises."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from events.envelope import Envelope, Pending
from events.log import EventStore, LogError


class FaultyStore:
    """Wraps a store; while a fault is on, appends raise `LogError` and write nothing.

    `clock` gives the time faults are measured on (the world's, or the monotonic clock).
    """

    def __init__(self, inner: EventStore, clock: Callable[[], int]) -> None:
        self.inner = inner
        self._clock = clock
        self._failing_until_ms = -1
        self.refused = 0
        """Appends refused so far."""

    def fail_for(self, duration_ms: int) -> None:
        self._failing_until_ms = max(self._failing_until_ms, self._clock() + duration_ms)

    def append(
        self, stream: str, expected_version: int, events: Sequence[Pending]
    ) -> list[Envelope]:
        if self._clock() < self._failing_until_ms:
            self.refused += 1
            msg = f"stream {stream}: disk I/O error"
            raise LogError(msg)
        return self.inner.append(stream, expected_version, events)

    def read_all(self, from_position: int = 1) -> Iterator[Envelope]:
        return self.inner.read_all(from_position)

    def read_stream(self, stream: str) -> list[Envelope]:
        return self.inner.read_stream(stream)

    def stream_version(self, stream: str) -> int:
        return self.inner.stream_version(stream)

    def open_streams(self, server: str) -> list[str]:
        return self.inner.open_streams(server)

    def last_incarnation(self, server: str, user: str) -> int:
        return self.inner.last_incarnation(server, user)

    def close(self) -> None:
        self.inner.close()

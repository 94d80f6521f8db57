"""An event store that fails as a full or failing disk does: for a while, every append raises,
or every read of the index of sessions does."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from events.envelope import Envelope, Pending
from events.forwarding_store import ForwardingStore
from events.log import Batch, EventStore, LogError, Outcome


class FaultyStore(ForwardingStore):
    """Wraps a store; while a fault is on, appends raise `LogError` (a group's are each refused
    with one) and write nothing; while a read fault is on, reads of the index of sessions
    raise `LogError`.

    `clock` gives the time faults are measured on (the world's, or the monotonic clock).
    """

    def __init__(self, inner: EventStore, clock: Callable[[], int]) -> None:
        super().__init__(inner)
        self._clock = clock
        self._failing_until_ms = -1
        self._reads_failing_until_ms = -1
        self.refused = 0
        """Appends refused so far, each batch of a group counted."""

    def fail_for(self, duration_ms: int) -> None:
        self._failing_until_ms = max(self._failing_until_ms, self._clock() + duration_ms)

    def fail_reads_for(self, duration_ms: int) -> None:
        until = self._clock() + duration_ms
        self._reads_failing_until_ms = max(self._reads_failing_until_ms, until)

    def open_streams(self, server: str) -> list[str]:
        self._check_reads()
        return self.inner.open_streams(server)

    def last_incarnation(self, server: str, user: str) -> int:
        self._check_reads()
        return self.inner.last_incarnation(server, user)

    def session_users(self, server: str | None = None) -> list[str]:
        self._check_reads()
        return self.inner.session_users(server)

    def _check_reads(self) -> None:
        # The clock is asked only once a read fault was set: a runtime reads its index while
        # the world that owns the clock is still being made.
        if self._reads_failing_until_ms >= 0 and self._clock() < self._reads_failing_until_ms:
            msg = "the index of sessions: disk I/O error"
            raise LogError(msg)

    def append(
        self, stream: str, expected_version: int, events: Sequence[Pending]
    ) -> list[Envelope]:
        if self._clock() < self._failing_until_ms:
            self.refused += 1
            raise _refusal(stream)
        return self.inner.append(stream, expected_version, events)

    def append_group(self, batches: Sequence[Batch]) -> list[Outcome]:
        if self._clock() < self._failing_until_ms:
            self.refused += len(batches)
            return [_refusal(batch.stream) for batch in batches]
        return self.inner.append_group(batches)


def _refusal(stream: str) -> LogError:
    return LogError(f"stream {stream}: disk I/O error")


class RacedStore(ForwardingStore):
    """Wraps a store that other writers share: for the next `races` reads of a stream's
    version, another writer appends `rival(stream)` to that stream after the read, so that an
    append at the version read is refused, as a store shared by a fleet refuses the loser of
    a race."""

    def __init__(self, inner: EventStore, rival: Callable[[str], Pending]) -> None:
        super().__init__(inner)
        self._rival = rival
        self.races = 0

    def stream_version(self, stream: str) -> int:
        version = self.inner.stream_version(stream)
        if self.races:
            self.races -= 1
            self.inner.append(stream, version, [self._rival(stream)])
        return version

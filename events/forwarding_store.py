"""A store that forwards every call to another: the base of stores that change one behaviour
of the store they wrap (fail its appends, observe them)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from events.envelope import Envelope, Pending
from events.log import Batch, EventStore, Outcome

__all__ = ["ForwardingStore"]


class ForwardingStore:
    def __init__(self, inner: EventStore) -> None:
        self.inner = inner

    def append(
        self, stream: str, expected_version: int, events: Sequence[Pending]
    ) -> list[Envelope]:
        return self.inner.append(stream, expected_version, events)

    def append_group(self, batches: Sequence[Batch]) -> list[Outcome]:
        return self.inner.append_group(batches)

    def read_all(self, from_position: int = 1) -> Iterator[Envelope]:
        return self.inner.read_all(from_position)

    def read_stream(self, stream: str) -> list[Envelope]:
        return self.inner.read_stream(stream)

    def read_user(self, user: str) -> Iterator[Envelope]:
        return self.inner.read_user(user)

    def stream_version(self, stream: str) -> int:
        return self.inner.stream_version(stream)

    def open_streams(self, server: str) -> list[str]:
        return self.inner.open_streams(server)

    def last_incarnation(self, server: str, user: str) -> int:
        return self.inner.last_incarnation(server, user)

    def session_users(self, server: str | None = None) -> list[str]:
        return self.inner.session_users(server)

    def close(self) -> None:
        self.inner.close()

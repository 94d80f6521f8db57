"""The Prometheus figures of one server, named `rejoin_...` in base units.

Counters, the append latency and the open sessions by state come from the event log as it
becomes durable (`observe`), so they agree with what `rejoin replay` reads from the same log,
and a scrape (or a drain, which counts connected users ten times a second) asks no actor about
its session. Time to audio is what the host experiences: from a glasses connection made durable
to the first chunk of the user's audio the server hands over. No label carries a user id: a
fleet has thousands of users, and user ids are e-mail addresses.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from actors.bridge import AudioChunk
from events.catalog import (
    AudioStalled,
    BridgeDisconnected,
    BridgeJoined,
    BridgeJoinFailed,
    Input,
    RejoinDecided,
    RestartBudgetExhausted,
)
from events.envelope import Envelope
from events.projection import STATE_AFTER, SessionState, SessionView
from rejoin.aio import AsyncRuntime

__all__ = ["Metrics"]

OPEN: tuple[SessionState, ...] = ("ACTIVE", "GRACE")
APPEND_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
AUDIO_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0)


class Metrics:
    """One registry per server, so that two servers in one process never share a figure."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self._sessions = Gauge(
            "rejoin_sessions",
            "Open sessions by state: the glasses connected (ACTIVE), or away within grace.",
            ["state"],
            registry=registry,
        )
        self._bridges = Gauge("rejoin_live_bridges", "Bridge actors alive now.", registry=registry)
        self._backlog = Gauge(
            "rejoin_input_backlog",
            "Glasses inputs accepted and not yet durable: a backlog that grows is a log that lags.",
            registry=registry,
        )
        self._joins = Counter(
            "rejoin_joins", "Bridges that joined their user's room.", registry=registry
        )
        self._join_failures = Counter(
            "rejoin_join_failures", "Joins that failed or timed out.", registry=registry
        )
        self._disconnects = Counter(
            "rejoin_bridge_disconnects",
            "Bridges that left their room unasked, by LiveKit's reason "
            "(DUPLICATE_IDENTITY: kicked by a newer bridge of the same identity).",
            ["reason"],
            registry=registry,
        )
        self._rejoins = Counter(
            "rejoin_rejoins",
            "Rejoins decided, by the kind of input that led to them.",
            ["cause"],
            registry=registry,
        )
        self._exhausted = Counter(
            "rejoin_restart_budget_exhaustions",
            "Times a session's restart budget ran out.",
            registry=registry,
        )
        self._stalls = Counter(
            "rejoin_audio_stalls", "Audio stalls noticed by bridges.", registry=registry
        )
        self._appends = Histogram(
            "rejoin_log_append_seconds",
            "How long each durable append to the event log took.",
            buckets=APPEND_BUCKETS,
            registry=registry,
        )
        self._time_to_audio = Histogram(
            "rejoin_time_to_audio_seconds",
            "From a glasses connection made durable to the user's first audio on this server.",
            buckets=AUDIO_BUCKETS,
            registry=registry,
        )
        self._lock = threading.Lock()
        self._awaiting: dict[str, float] = {}
        """Users whose glasses connected and who have not been heard since, by when."""
        self._states: dict[str, SessionState] = {}
        """Each open session's state, by stream."""

    def observe(self, batch: list[Envelope], seconds: float) -> None:
        """An observer of the log (`events.observed_store`): count what became durable."""
        self._appends.observe(seconds)
        inputs = {envelope.event_id: envelope.event for envelope in batch}
        for envelope in batch:
            state = STATE_AFTER.get(type(envelope.event))
            if state is not None:
                with self._lock:
                    if state == "DISPOSED":
                        self._states.pop(envelope.stream, None)
                    else:
                        self._states[envelope.stream] = state
            match envelope.event:
                case BridgeJoined():
                    self._joins.inc()
                case BridgeJoinFailed():
                    self._join_failures.inc()
                case BridgeDisconnected(reason=reason):
                    self._disconnects.labels(reason=reason).inc()
                case RejoinDecided(cause=cause):
                    caused_by = inputs.get(cause)
                    kind = type(caused_by).__name__ if isinstance(caused_by, Input) else "other"
                    self._rejoins.labels(cause=kind).inc()
                case RestartBudgetExhausted():
                    self._exhausted.inc()
                case AudioStalled():
                    self._stalls.inc()

    def recovered(self, views: Iterable[SessionView]) -> None:
        """The sessions a starting server recovered from its log; what the log has said since
        (`observe`) is newer, and stays."""
        with self._lock:
            for view in views:
                if view.state != "DISPOSED":
                    self._states.setdefault(view.stream, view.state)

    def connected_users(self) -> int:
        """Sessions whose glasses are connected now."""
        with self._lock:
            return sum(state == "ACTIVE" for state in self._states.values())

    def connected(self, user: str) -> None:
        """The user's glasses connection is durable: time to audio runs from now."""
        with self._lock:
            self._awaiting[user] = time.monotonic()

    def heard(self, chunk: AudioChunk) -> None:
        """A chunk of the user's audio was handed over; called for every chunk, on a worker."""
        if chunk.user not in self._awaiting:
            return  # the common case, read without the lock: a dict lookup is atomic
        with self._lock:
            since = self._awaiting.pop(chunk.user, None)
        if since is not None:
            self._time_to_audio.observe(time.monotonic() - since)

    def left(self, user: str) -> None:
        """The user's glasses left: a connection that never heard audio is not timed."""
        with self._lock:
            self._awaiting.pop(user, None)

    async def exposition(self, runtime: AsyncRuntime) -> tuple[bytes, str]:
        """Set the gauges, then the text format and its content type."""
        facade = runtime.server.runtime
        bridges = await asyncio.to_thread(facade.live_bridges)
        with self._lock:
            states = collections.Counter(self._states.values())
        for state in OPEN:
            self._sessions.labels(state=state).set(states[state])
        self._bridges.set(len(bridges))
        self._backlog.set(facade.backlog())
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

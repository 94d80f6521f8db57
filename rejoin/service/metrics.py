"""The Prometheus figures of one server, named `rejoin_...` in base units.

No label carries a user id: a fleet has thousands of users, and user ids are e-mail addresses.
Gauges are read from the runtime when scraped.
"""

from __future__ import annotations

import asyncio
import collections

from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from events.projection import SessionState
from rejoin.aio import AsyncRuntime

__all__ = ["Metrics"]

STATES: tuple[SessionState, ...] = ("ACTIVE", "GRACE", "DISPOSED")


class Metrics:
    """One registry per server, so that two servers in one process never share a figure."""

    def __init__(self, runtime: AsyncRuntime) -> None:
        self._runtime = runtime
        self.registry = CollectorRegistry(auto_describe=True)
        self._sessions = Gauge(
            "rejoin_sessions",
            "Sessions in memory by state (ended ones while they are retained).",
            ["state"],
            registry=self.registry,
        )
        self._bridges = Gauge(
            "rejoin_live_bridges", "Bridge actors alive now.", registry=self.registry
        )
        self._backlog = Gauge(
            "rejoin_input_backlog",
            "Glasses inputs accepted and not yet durable: a backlog that grows is a log that lags.",
            registry=self.registry,
        )

    async def exposition(self) -> tuple[bytes, str]:
        """Read the gauges from the runtime, then the text format and its content type."""
        runtime = self._runtime.server.runtime
        views, bridges = await asyncio.to_thread(lambda: (runtime.views(), runtime.live_bridges()))
        states = collections.Counter(view.state for view in views.values())
        for state in STATES:
            self._sessions.labels(state=state).set(states[state])
        self._bridges.set(len(bridges))
        self._backlog.set(runtime.backlog())
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

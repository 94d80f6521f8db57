"""One server's runtime over the simulated LiveKit on either executor, for tests that must hold
on both: the deterministic one (virtual time, one thread) and the threading one (real time)."""

import random
import time
from collections.abc import Callable
from typing import Literal

from actors.connector import Deadlines
from actors.deterministic_executor import DeterministicExecutor
from actors.executor import Executor
from actors.runtime import Runtime
from actors.threading_executor import ThreadingExecutor
from events.catalog import Event
from events.log import EventStore
from events.memory_store import MemoryStore
from simulations.sim_livekit import SfuConfig, SimLiveKit

ExecutorKind = Literal["deterministic", "threading"]
EXECUTORS: list[ExecutorKind] = ["deterministic", "threading"]

SHORT = Deadlines(join_ms=400, lookup_ms=300)
"""Deadlines short enough for real time, long enough for a loaded machine's joins (5-20 ms)."""


class Harness:
    def __init__(
        self,
        kind: ExecutorKind,
        *,
        servers: tuple[str, ...] = ("prod",),
        deadlines: Deadlines = SHORT,
        grace_ms: int = 60_000,
        retention_ms: int = 600_000,
        store: Callable[[], EventStore] = MemoryStore,
    ) -> None:
        self.kind = kind
        self._deterministic = DeterministicExecutor(0) if kind == "deterministic" else None
        self.executor: Executor = self._deterministic or ThreadingExecutor()
        self.sfu = SimLiveKit(
            self.executor,
            random.Random(0),
            SfuConfig(join_latency_ms=(5, 20), lookup_latency_ms=(1, 5)),
        )
        self.stores = {server: store() for server in servers}
        self.runtimes = {
            server: Runtime(
                server=server,
                executor=self.executor,
                store=self.stores[server],
                connector=self.sfu.connector(server),
                deadlines=deadlines,
                grace_ms=grace_ms,
                retention_ms=retention_ms,
            )
            for server in servers
        }

    def run_for(self, ms: int) -> None:
        if self._deterministic is not None:
            self._deterministic.advance(ms)
        else:
            time.sleep(ms / 1000)

    def eventually(self, condition: Callable[[], bool], within_ms: int = 5_000) -> bool:
        """Whether `condition` holds within `within_ms` of this executor's time."""
        for _ in range(within_ms // 10):
            if condition():
                return True
            self.run_for(10)
        return condition()

    def events(self, server: str = "prod") -> list[Event]:
        return [envelope.event for envelope in self.stores[server].read_all()]

    def count(self, kind: type[Event], server: str = "prod") -> int:
        return sum(isinstance(event, kind) for event in self.events(server))

    def stop(self) -> None:
        for runtime in self.runtimes.values():
            runtime.stop()
        self.executor.shutdown()

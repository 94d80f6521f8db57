"""One server's runtime over the simulated LiveKit on either executor, for tests that must hold
on both: the deterministic one (virtual time, one thread) and the pool (real time, threads)."""

import random
import time
from collections.abc import Callable
from typing import Literal

from actors.bridge import AudioChunk, AudioWatch
from actors.connector import Deadlines
from actors.deterministic_executor import DeterministicExecutor
from actors.executor import Executor
from actors.policy import SUPERVISED, Policy
from actors.pool_executor import PoolExecutor
from actors.runtime import Runtime
from events.catalog import BridgeJoined, Event, RejoinDeclined
from events.log import EventStore
from events.memory_store import MemoryStore
from simulations.sim_livekit import SfuConfig, SimLiveKit

ExecutorKind = Literal["deterministic", "pool"]
EXECUTORS: list[ExecutorKind] = ["deterministic", "pool"]

SHORT = Deadlines(join_ms=400, lookup_ms=300)
"""Deadlines short enough for real time, long enough for a loaded machine's joins (5-20 ms)."""
LOOKING = Deadlines(join_ms=1_500, join_check_ms=300, lookup_ms=300)
"""A join check well within the join deadline, both short enough for real time."""
WATCH = AudioWatch(stall_after_ms=300, phone_absent_after_ms=500)
"""Thresholds for a phone that sends a chunk every 20 ms: fifteen chunks make a stall."""
CHUNK_MS = 20


def eventually(condition: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    """Whether `condition` holds within `timeout_s` of real time: for tests on the pool alone."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


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
        policy: Policy = SUPERVISED,
        watch: AudioWatch = WATCH,
        shared_log: bool = False,
    ) -> None:
        self.kind = kind
        self._deterministic = DeterministicExecutor(0) if kind == "deterministic" else None
        self.executor: Executor = self._deterministic or PoolExecutor()
        self.sfu = SimLiveKit(
            self.executor,
            random.Random(0),
            SfuConfig(join_latency_ms=(5, 20), lookup_latency_ms=(1, 5)),
        )
        fleet_log = store() if shared_log else None
        self.stores = {
            server: fleet_log if fleet_log is not None else store() for server in servers
        }
        self.chunks: list[AudioChunk] = []
        self._phones: dict[str, int] = {}
        """The users whose phones publish, and their next sequence number."""
        self.runtimes = {
            server: Runtime(
                server=server,
                executor=self.executor,
                store=self.stores[server],
                connector=self.sfu.connector(server),
                deadlines=deadlines,
                grace_ms=grace_ms,
                retention_ms=retention_ms,
                policy=policy,
                audio_watch=watch,
                audio_sink=self.chunks.append,
                shared_log=shared_log,
            )
            for server in servers
        }

    def phone(self, user: str, *, silent: bool = False) -> None:
        """`user`'s phone joins the room and sends a chunk every `CHUNK_MS` until `stop`."""
        self.sfu.phone_joined(user)
        self._phones[user] = 0
        pcm = bytes(2 * 16 * CHUNK_MS) if silent else b"\x10\x00" * 16 * CHUNK_MS
        self.executor.call_at(self.executor.now_ms() + CHUNK_MS, lambda: self._tick(user, pcm))

    def connected_and_joined(self, user: str, server: str, epoch: int) -> None:
        """`user`'s phone in the room, then the glasses connected to `server`, whose bridge
        joins."""
        self.phone(user)
        self.runtimes[server].glasses_connected(user, epoch=epoch).wait(timeout_s=5)
        assert self.eventually(lambda: self.count(BridgeJoined, server) == 1)

    def _tick(self, user: str, pcm: bytes) -> None:
        sequence = self._phones.get(user)
        if sequence is None:
            return
        self._phones[user] = (sequence + 1) % 256
        self.sfu.publish(user, bytes([sequence]) + pcm)
        self.executor.call_at(self.executor.now_ms() + CHUNK_MS, lambda: self._tick(user, pcm))

    def overtake_in_flight(self, user: str) -> None:
        """dev's joins hang, as one overtaken in flight does with the real SDK, while debug's
        bridge, of an older connection whose end debug has not noticed, joins."""
        self.phone(user)
        self.sfu.hang_joins("dev", 100)
        self.sfu.slow_next_join("debug", 100)
        self.runtimes["debug"].glasses_connected(user, epoch=1).wait(timeout_s=5)
        self.runtimes["dev"].glasses_connected(user, epoch=2).wait(timeout_s=5)

    def dev_won(self, user: str) -> bool:
        """After `overtake_in_flight`: dev alone holds the identity and hears the phone, and
        debug, kicked, has stayed down."""
        in_room = [p.server for p in self.sfu.participants(user)] == ["dev"]
        heard = any(c.server == "dev" for c in self.chunks[-5:])
        return in_room and heard and self.count(RejoinDeclined, "debug") == 1

    def step(self) -> None:
        """Deliver one message, on the deterministic executor: a test can then act between any
        two steps of a schedule."""
        assert self._deterministic is not None, "the pool's schedule is not the test's to step"
        self._deterministic.step()

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
        return [e.event for e in self.stores[server].read_all() if e.server == server]

    def count(self, kind: type[Event], server: str = "prod") -> int:
        return sum(isinstance(event, kind) for event in self.events(server))

    def stop(self) -> None:
        self._phones.clear()
        for runtime in self.runtimes.values():
            runtime.stop()
        self.executor.shutdown()

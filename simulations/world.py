"""A world of several servers, one simulated LiveKit, and users with glasses and phones.

Every server runs its own runtime with its own event log, or, with `shared_log`, all of them
write to one log the fleet shares and fence by it. All of them share one deterministic
executor, so one seed fixes the whole history: delivery order, join latencies, jitter, event
ids. The world records what a test needs to judge a run: where each user's glasses were and
when, which faults were active, and every audio chunk each server's sink received.
"""

from __future__ import annotations

import bisect
import math
import random
import threading
from collections.abc import Callable

import msgspec

from actors.bridge import AudioChunk
from actors.collector import Collector
from actors.deterministic_executor import DeterministicExecutor
from actors.policy import SUPERVISED, Policy
from actors.runtime import DEFAULT_GRACE_MS, Runtime
from events.log import EventStore, has_open_session, told_health
from events.memory_store import MemoryStore
from simulations.faulty_store import FaultyStore
from simulations.sim_livekit import SfuConfig, SimLiveKit


class Deliveries:
    """When audio chunks reached each server's sink, per user, in time order.

    Indexed by user and server so that judging an expectation is a binary search, not a scan of
    every chunk of the run. Thread-safe: a live run's sinks record from several threads.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._times: dict[tuple[str, str], list[int]] = {}

    def record(self, time_ms: int, server: str, user: str) -> None:
        with self._lock:
            self._times.setdefault((user, server), []).append(time_ms)

    def times(self, user: str, server: str) -> list[int]:
        """Every delivery time of `user`'s audio at `server`, ascending."""
        with self._lock:
            return list(self._times.get((user, server), ()))

    def heard(self, user: str, server: str, *, after_ms: int, until_ms: int) -> bool:
        """Whether a chunk of `user`'s reached `server` in `(after_ms, until_ms]`."""
        with self._lock:
            times = self._times.get((user, server), [])
            first = bisect.bisect_right(times, after_ms)
            return first < len(times) and times[first] <= until_ms


class Presence(msgspec.Struct, frozen=True, array_like=True):
    """From `time_ms` on, the user's glasses are connected to `server` (`None`: to none)."""

    time_ms: int
    user: str
    server: str | None


class Fault(msgspec.Struct, frozen=True, kw_only=True):
    kind: str
    start_ms: int
    end_ms: int
    server: str | None = None
    user: str | None = None


RECONNECT_AFTER_CRASH_MS = 1_000
"""How soon glasses reconnect to a server whose process died and restarted."""


def tone(samples: int) -> bytes:
    """A 440 Hz tone as PCM16LE, the phone's stand-in for speech."""
    return b"".join(
        int(8000 * math.sin(2 * math.pi * 440 * i / 16_000)).to_bytes(2, "little", signed=True)
        for i in range(samples)
    )


class World:
    def __init__(
        self,
        *,
        servers: list[str],
        seed: int = 0,
        policy: Policy = SUPERVISED,
        grace_ms: int = DEFAULT_GRACE_MS,
        sfu: SfuConfig | None = None,
        store_for: Callable[[str], EventStore] | None = None,
        silent_phones: bool = False,
        phones_send: bool = True,
        join_rate_per_s: int | None = None,
        shared_log: bool = False,
        collector: Collector | None = None,
    ) -> None:
        """`collector`: how the executor tends CPython's cyclic collector (see
        `actors.collector`); `None` leaves it alone, as tests that build many worlds want."""
        self.seed = seed
        self.policy = policy
        self.grace_ms = grace_ms
        self.join_rate_per_s = join_rate_per_s
        """Each server's own join rate (its share of the room server's); `None`: no limit."""
        self.executor = DeterministicExecutor(seed, collector=collector)
        # The room's randomness is separate from the scheduler's, so that adding a message
        # between actors does not change join latencies.
        self.rng = random.Random(seed ^ 0x5EED)
        self.sfu = SimLiveKit(self.executor, self.rng, sfu or SfuConfig())
        self.deliveries = Deliveries()
        self.presence: list[Presence] = []
        self.faults: list[Fault] = []
        self._where: dict[str, str | None] = {}
        self._epochs: dict[str, int] = {}
        self._sequence: dict[str, int] = {}
        self._phone_away_until: dict[str, int] = {}
        self._muted: set[str] = set()
        chunk_ms = self.sfu.config.audio_chunk_ms
        # A silent phone still sends chunks, of silent PCM: silence is not a gap.
        self._pcm = bytes(32 * chunk_ms) if silent_phones else tone(16 * chunk_ms)
        self.shared_log = shared_log
        """The servers write to one log and fence by it (`store_for` gives that one log, or
        one `MemoryStore` is made for all)."""
        if store_for is None and shared_log:
            fleet_log = MemoryStore()
            store_for = lambda _server: fleet_log  # noqa: E731
        self.stores = {
            server: (store_for or (lambda _server: MemoryStore()))(server) for server in servers
        }
        # The servers write through these, so that a log fault hits one server's appends.
        self.logs = {
            server: FaultyStore(store, lambda: self.now_ms) for server, store in self.stores.items()
        }
        self.runtimes = {server: self._start_runtime(server) for server in servers}
        if phones_send:  # a scale run without audio spares a visit to every user per chunk
            self.executor.call_at(chunk_ms, self._phone_tick)

    @property
    def servers(self) -> list[str]:
        return list(self.runtimes)

    @property
    def now_ms(self) -> int:
        """The world's own clock: virtual milliseconds since it began."""
        return self.executor.now_ms()

    @property
    def wall_ms(self) -> int:
        """The wall clock every server's log records."""
        return self.executor.wall_ms()

    def _start_runtime(self, server: str) -> Runtime:
        return Runtime(
            server=server,
            executor=self.executor.start_process(),
            store=self.logs[server],
            connector=self.sfu.connector(server),
            policy=self.policy,
            grace_ms=self.grace_ms,
            audio_sink=self._sink,
            join_rate_per_s=self.join_rate_per_s,
            shared_log=self.shared_log,
        )

    def _sink(self, chunk: AudioChunk) -> None:
        self.deliveries.record(self.now_ms, chunk.server, chunk.user)

    def _phone_tick(self) -> None:
        for user, server in self._where.items():
            if server is not None and user not in self._muted:
                sequence = self._sequence.get(user, 0)
                self._sequence[user] = (sequence + 1) % 256
                self.sfu.publish(user, bytes([sequence]) + self._pcm)
        self.executor.call_at(self.now_ms + self.sfu.config.audio_chunk_ms, self._phone_tick)

    # The glasses

    @property
    def connections(self) -> int:
        """How many times glasses connected to a server."""
        return sum(presence.server is not None for presence in self.presence)

    def session_open(self, server: str, user: str) -> bool:
        return has_open_session(self.stores[server], server, user)

    def health(self, server: str, user: str) -> str | None:
        return told_health(self.stores[server], server, user)

    def where(self, user: str) -> str | None:
        return self._where.get(user)

    def connect(self, user: str, server: str, *, close_noticed_after_ms: int = 0) -> None:
        """The glasses connect to `server`, dropping any other connection first.

        The server they leave learns of it `close_noticed_after_ms` later (a dead TCP connection
        is noticed only by a ping timeout); until then it believes they are still there.
        """
        self.disconnect(user, noticed_after_ms=close_noticed_after_ms)
        self._epochs[user] = self._epochs.get(user, 0) + 1
        self._where[user] = server
        self.presence.append(Presence(self.now_ms, user, server))
        if self.now_ms >= self._phone_away_until.get(user, -1):
            self.sfu.phone_joined(user)
        self.runtimes[server].glasses_connected(user, epoch=self._epochs[user])

    def disconnect(self, user: str, *, noticed_after_ms: int = 0) -> None:
        server = self._where.get(user)
        if server is None:
            return
        self._where[user] = None
        self.presence.append(Presence(self.now_ms, user, None))
        runtime = self.runtimes[server]
        if noticed_after_ms:
            self._fault("unnoticed_close", lasts_ms=noticed_after_ms, server=server, user=user)
            self.executor.call_at(
                self.now_ms + noticed_after_ms, lambda: runtime.glasses_disconnected(user)
            )
        else:
            runtime.glasses_disconnected(user)

    # Faults

    def _fault(
        self, kind: str, *, lasts_ms: int = 0, server: str | None = None, user: str | None = None
    ) -> None:
        self.faults.append(
            Fault(
                kind=kind,
                start_ms=self.now_ms,
                end_ms=self.now_ms + lasts_ms,
                server=server,
                user=user,
            )
        )

    def outage(self, duration_ms: int) -> None:
        self._fault("outage", lasts_ms=duration_ms)
        self.sfu.outage(duration_ms)

    def remove_bridge(self, server: str, user: str) -> None:
        """An operator removes `server`'s bridge from `user`'s room."""
        identity = self.policy.identity(user, server)
        for participant in self.sfu.participants(user):
            if participant.identity == identity and participant.server == server:
                self._fault("remove", server=server, user=user)
                self.sfu.remove_participant(user, identity)
                return

    def delete_room(self, user: str) -> None:
        """An operator deletes `user`'s room: every bridge in it is disconnected."""
        self._fault("remove", user=user)
        self.sfu.delete_room(user)

    def log_fault(self, server: str, duration_ms: int) -> None:
        """`server`'s log refuses every append for `duration_ms`, as a failing disk would."""
        self._fault("log_fault", lasts_ms=duration_ms, server=server)
        self.logs[server].fail_for(duration_ms)

    def log_read_fault(self, server: str, duration_ms: int) -> None:
        """`server`'s log cannot read its index of sessions for `duration_ms`."""
        self._fault("log_read_fault", lasts_ms=duration_ms, server=server)
        self.logs[server].fail_reads_for(duration_ms)

    def room_service_fault(self, server: str, duration_ms: int) -> None:
        """`server`'s room-service lookups fail or hang for `duration_ms`."""
        self._fault("room_service_fault", lasts_ms=duration_ms, server=server)
        self.sfu.room_service_fault(server, duration_ms)

    def audio_stall(self, user: str, duration_ms: int) -> None:
        """For `duration_ms`, no data reaches the bridges now in `user`'s room, which stay in
        it: the data path died (a fresh join gets data again)."""
        self._fault("audio_stall", lasts_ms=duration_ms, user=user)
        self.sfu.audio_stall(user, duration_ms)

    def sdk_reconnecting(self, server: str, duration_ms: int) -> None:
        """`server`'s bridges report reconnecting for `duration_ms`, and get no data."""
        self._fault("sdk_reconnecting", lasts_ms=duration_ms, server=server)
        self.sfu.sdk_reconnecting(server, duration_ms)

    def phone_leave(self, user: str, duration_ms: int) -> None:
        """`user`'s phone leaves the room and comes back `duration_ms` later (if the glasses
        are connected then; otherwise at their next connect)."""
        self._fault("phone_leave", lasts_ms=duration_ms, user=user)
        self._phone_away_until[user] = self.now_ms + duration_ms
        self.sfu.phone_left(user)
        self.executor.call_at(self.now_ms + duration_ms, lambda: self._phone_back(user))

    def _phone_back(self, user: str) -> None:
        if self.now_ms >= self._phone_away_until.get(user, -1) and self._where.get(user):
            self.sfu.phone_joined(user)

    def mute_phone(self, user: str, *, muted: bool) -> None:
        """`user` mutes the phone's microphone (or unmutes it): a muted phone sends nothing,
        and says so."""
        if muted:
            self._muted.add(user)
        else:
            self._muted.discard(user)
        self.sfu.phone_muted(user, muted=muted)

    def signal_loss(self, server: str, user: str) -> None:
        if self.sfu.drop_signal(user, server):
            self._fault("signal_loss", server=server, user=user)

    def crash(self, server: str) -> None:
        """`server`'s process dies and a new one starts from its log; its glasses reconnect
        `RECONNECT_AFTER_CRASH_MS` later."""
        for user in self._kill(server, "crash"):
            self._reconnect_later(user, server)

    def fail_over(self, server: str, to: list[str]) -> list[str]:
        """`server`'s process dies and a new one starts from its log, but its glasses all go
        elsewhere, `RECONNECT_AFTER_CRASH_MS` later and at the same instant: to the servers of
        `to` in turn. Returns the users it sent away, in the order they went."""
        moved = self._kill(server, "failover")
        for index, user in enumerate(moved):
            self._reconnect_later(user, to[index % len(to)])
        return moved

    def _kill(self, server: str, kind: str) -> list[str]:
        """Kill `server`'s process and start a new one from its log; the users it dropped."""
        dead = self.runtimes[server]
        self.executor.crash(dead.actors())
        self.sfu.process_died(server)
        self._fault(kind, lasts_ms=RECONNECT_AFTER_CRASH_MS, server=server)
        dropped = [user for user, where in self._where.items() if where == server]
        for user in dropped:
            self._where[user] = None
            self.presence.append(Presence(self.now_ms, user, None))
        self.runtimes[server] = self._start_runtime(server)
        return dropped

    def _reconnect_later(self, user: str, server: str) -> None:
        def reconnect() -> None:
            if self._where.get(user) is None:
                self.connect(user, server)

        self.executor.call_at(self.now_ms + RECONNECT_AFTER_CRASH_MS, reconnect)

    def restart_server(self, server: str) -> None:
        """Stop `server`'s runtime and start a new one on the same log, as a deploy would.

        The glasses connected to it lose their connection; the new runtime recovers every open
        session from the log.
        """
        self.runtimes[server].stop()
        for user, where in self._where.items():
            if where == server:
                self._where[user] = None
                self.presence.append(Presence(self.now_ms, user, None))
        self.runtimes[server] = self._start_runtime(server)

    # Time

    def run_until(self, t_ms: int) -> None:
        self.executor.advance_to(t_ms)

    def run_for(self, delta_ms: int) -> None:
        self.executor.advance(delta_ms)

    def settle(self) -> None:
        """Deliver every message due now, without moving the clock."""
        self.executor.run_until_idle()

    def stop(self) -> None:
        for runtime in self.runtimes.values():
            runtime.stop()
        self.executor.shutdown()

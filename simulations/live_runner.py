"""Running a scenario in real time against a LiveKit server with the real SDK.

One runtime per server on the pool executor (their logs merge by wall-clock time), one SDK
event loop, and a real phone participant per user that publishes PCM data packets while its
glasses are connected. Faults a real server cannot be told to inject are done through the
loopback server's test controls, or refused before anything starts.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

from livekit import api

from actors.bridge import AudioChunk
from actors.livekit_connector import EventLoopThread, LiveKitConnector, LiveKitSettings
from actors.policy import Policy
from actors.pool_executor import PoolExecutor
from actors.runtime import Runtime
from events.log import EventStore, has_open_session, told_health
from events.memory_store import MemoryStore
from events.projection import replay
from simulations.faulty_store import FaultyStore
from simulations.metrics import RUN_STREAM, compute, server_events
from simulations.phone import Phone
from simulations.scenario import USER_ACTIONS, Scenario, ScenarioError
from simulations.scenario_runner import (
    ExpectationResult,
    RunResult,
    run_ended,
    run_started,
    schedule,
)
from simulations.world import Deliveries

if TYPE_CHECKING:
    # Only a loopback run loads aiortc: a run against a real LiveKit needs no extra.
    from simulations.loopback import LoopbackThread

SETTLE_S = 2.0
"""How long the server gets to see the stopped runtimes' leaves before the zombie check."""


def refuse_unsupported(scenario: Scenario, loopback: bool) -> None:
    """Fail before starting when a step needs a fault this server cannot inject."""
    for index, step in enumerate(scenario.step):
        action = step.action
        loopback_only = ("sfu_outage_s", "signal_loss", "room_service_fault", "audio_stall")
        sim_only = ("crash", "sdk_reconnecting")
        if action in sim_only or (not loopback and action in loopback_only):
            where = "the simulated LiveKit" if action in sim_only else "--sfu sim or loopback"
            msg = f"{scenario.name}: step {index + 1} ({action}) needs {where}"
            raise ScenarioError(msg)


class LiveRun:
    def __init__(
        self,
        scenario: Scenario,
        policy: Policy,
        settings: LiveKitSettings,
        loopback: LoopbackThread | None,
        store: EventStore | None,
    ) -> None:
        self.scenario = scenario
        self.policy = policy
        self.settings = settings
        self.loopback = loopback
        self.origin = time.monotonic()
        self.origin_wall_ms = time.time_ns() // 1_000_000
        self.loop = EventLoopThread()
        self.deliveries = Deliveries()
        self._where: dict[str, str | None] = {}
        self._epochs: dict[str, int] = {}
        self.stores = {s: store or MemoryStore() for s in scenario.servers}
        self.logs = {s: FaultyStore(self.stores[s], self._now_ms) for s in scenario.servers}
        self.connectors = {s: LiveKitConnector(settings, self.loop) for s in scenario.servers}
        self.executors = {s: PoolExecutor() for s in scenario.servers}
        grace_ms = round(scenario.grace_s * 1000)
        self.runtimes = {
            server: Runtime(
                server=server,
                executor=self.executors[server],
                store=self.logs[server],
                connector=self.connectors[server],
                policy=policy,
                grace_ms=grace_ms,
                audio_sink=self._sink,
            )
            for server in scenario.servers
        }
        users = {step.user for step in scenario.step if step.user} | {
            e.user for e in scenario.expect
        }
        users |= {getattr(s, s.action) for s in scenario.step if s.action in USER_ACTIONS}
        self.phones = {user: Phone(self.loop, settings, user) for user in sorted(users)}
        self._returns: list[threading.Timer] = []

    def _sink(self, chunk: AudioChunk) -> None:
        self.deliveries.record(self._now_ms(), chunk.server, chunk.user)

    def _now_ms(self) -> int:
        return int((time.monotonic() - self.origin) * 1000)

    @property
    def _phone_deadline_s(self) -> float:
        return self.origin + self.scenario.end_s + 1

    def play(self) -> list[ExpectationResult]:
        for phone in self.phones.values():
            phone.join(deadline_s=self._phone_deadline_s)
        return schedule(self.scenario, self, self._sleep_until)

    def _sleep_until(self, at_ms: int) -> None:
        delay = self.origin + at_ms / 1000 - time.monotonic()
        if delay > 0:
            time.sleep(delay)

    def connect(self, user: str, server: str) -> None:
        self.disconnect(user)
        self._epochs[user] = self._epochs.get(user, 0) + 1
        self._where[user] = server
        self.phones[user].publishing = True
        self.runtimes[server].glasses_connected(user, epoch=self._epochs[user])

    def disconnect(self, user: str) -> None:
        server = self._where.get(user)
        if server is None:
            return
        self._where[user] = None
        self.phones[user].publishing = False
        self.runtimes[server].glasses_disconnected(user)

    def session_open(self, server: str, user: str) -> bool:
        return has_open_session(self.stores[server], server, user)

    def health(self, server: str, user: str) -> str | None:
        return told_health(self.stores[server], server, user)

    def audio_stall(self, user: str, duration_ms: int) -> None:
        for server in self.scenario.servers:
            identity = self.policy.identity(user, server)
            self._loopback().stall_data_to(user, identity, duration_ms / 1000)

    def phone_leave(self, user: str, duration_ms: int) -> None:
        phone = self.phones[user]
        phone.leave()
        back = threading.Timer(
            duration_ms / 1000, lambda: phone.join(deadline_s=self._phone_deadline_s)
        )
        back.daemon = True
        self._returns.append(back)
        back.start()

    def sdk_reconnecting(self, server: str, duration_ms: int) -> None:
        msg = f"a stuck SDK on {server} needs the simulated LiveKit"
        raise ScenarioError(msg)

    def log_fault(self, server: str, duration_ms: int) -> None:
        self.logs[server].fail_for(duration_ms)

    def room_service_fault(self, server: str, duration_ms: int) -> None:
        self._loopback().fail_room_service_for(duration_ms / 1000)

    def remove_bridge(self, server: str, user: str) -> None:
        identity = self.policy.identity(user, server)

        async def remove() -> None:
            s = self.settings
            client = api.LiveKitAPI(s.http_url, s.api_key, s.api_secret)
            try:
                await client.room.remove_participant(
                    api.RoomParticipantIdentity(room=user, identity=identity)
                )
            except api.TwirpError:
                pass  # nobody of that identity in the room: nothing to remove
            finally:
                await client.aclose()

        self.loop.submit(remove()).result(timeout=10)

    def signal_loss(self, server: str, user: str) -> None:
        self._loopback().drop_signal(user, self.policy.identity(user, server))

    def outage(self, duration_ms: int) -> None:
        loopback = self._loopback()
        loopback.refuse_joins_for(duration_ms / 1000)
        for server in self.scenario.servers:
            for user in self.phones:
                loopback.drop_signal(user, self.policy.identity(user, server))

    def crash(self, server: str) -> None:
        msg = f"a crash of {server} needs the simulated LiveKit"
        raise ScenarioError(msg)

    def _loopback(self) -> LoopbackThread:
        if self.loopback is None:
            msg = f"{self.scenario.name}: this fault needs the loopback server"
            raise ScenarioError(msg)
        return self.loopback

    def violations(self) -> list[str]:
        """Replay equals live, and nothing of a disposed session is left (invariants 3, 5)."""
        found = []
        for server, runtime in self.runtimes.items():
            live = runtime.views()
            rebuilt = {
                stream: view
                for stream, view in replay(self.stores[server].read_all()).items()
                if view.server == server
            }
            if rebuilt != live:
                found.append(f"replay: {server} differs from live")
            bridges = runtime.live_bridges()
            for view in live.values():
                if view.state == "DISPOSED" and view.stream in bridges:
                    found.append(f"zombie: bridge actor of disposed {view.stream}")
        return found

    def stop(self) -> list[str]:
        """Stop everything; return what was left behind (handles, participants)."""
        for back in self._returns:
            back.cancel()
            back.join(timeout=20)
        for runtime in self.runtimes.values():
            runtime.stop()
        for phone in self.phones.values():
            phone.leave()
        leftovers = []
        for server, connector in self.connectors.items():
            connector.close()
            if connector.live_handles:
                leftovers.append(f"zombie: {connector.live_handles} SDK handles of {server}")
        for executor in self.executors.values():
            executor.shutdown()
        if self.loopback is not None:
            rooms = self.loopback
            deadline = time.monotonic() + SETTLE_S
            while time.monotonic() < deadline and any(rooms.participants(u) for u in self.phones):
                time.sleep(0.05)
            for user in self.phones:
                for participant in rooms.participants(user):
                    leftovers.append(
                        f"zombie: {participant.identity} still in {user}'s room after stop"
                    )
        self.loop.stop()
        return leftovers


def run_live(
    scenario: Scenario,
    policy: Policy,
    settings: LiveKitSettings,
    *,
    loopback: LoopbackThread | None = None,
    store: EventStore | None = None,
) -> RunResult:
    refuse_unsupported(scenario, loopback is not None)
    live = LiveRun(scenario, policy, settings, loopback, store)
    started_ms = live.origin_wall_ms
    end_ms = started_ms + round(scenario.end_s * 1000)
    if store is not None:
        store.append(RUN_STREAM, 0, [run_started(scenario, policy, scenario.seed, started_ms)])
    try:
        expectations = live.play()
        if store is not None:
            store.append(RUN_STREAM, 1, [run_ended(end_ms)])
        violations = live.violations()
    finally:
        violations_on_stop = live.stop()
    metrics = compute(server_events(live.stores.values()), end_ms=end_ms)
    violations = [*violations, *violations_on_stop]
    return RunResult(
        scenario=scenario.name,
        policy=policy.name,
        seed=scenario.seed,
        passed=all(e.passed for e in expectations) and not violations,
        complete=True,
        expectations=expectations,
        invariant_violations=violations,
        metrics=metrics,
    )

"""Running a scenario in real time against a LiveKit server with the real SDK.

One runtime per server on the pool executor (their logs merge by wall-clock time), one SDK
event loop, and a real phone participant per user that publishes PCM data packets while its
glasses are connected. A server the scenario crashes runs in a child process of its own on a
SQLite log (`simulations.server_process`), killed with SIGKILL and started again on that log.
Faults a real server cannot be told to inject are done through the loopback server's test
controls, or refused before anything starts.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

import msgspec
from livekit import api

from actors.bridge import AudioChunk
from actors.livekit_connector import EventLoopThread, LiveKitConnector, LiveKitSettings
from actors.policy import Policy
from actors.pool_executor import PoolExecutor
from actors.runtime import Runtime
from events.envelope import Pending
from events.log import EventStore, has_open_session, told_health
from events.memory_store import MemoryStore
from events.projection import replay
from events.sqlite_store import SQLiteStore
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

_T = TypeVar("_T")

SETTLE_S = 2.0
"""How long the server gets to see the stopped runtimes' leaves before the zombie check."""
RECONNECT_AFTER_CRASH_S = 1.0
"""As in the simulation: the glasses of a crashed server reconnect a second later."""
CHILD_ANSWER_S = 30.0
"""How long a server process gets to start (recovering its log) or answer a command."""


def refuse_unsupported(scenario: Scenario, loopback: bool) -> None:
    """Fail before starting when a step needs a fault this server cannot inject."""
    for index, step in enumerate(scenario.step):
        action = step.action
        loopback_only = ("sfu_outage_s", "signal_loss", "room_service_fault", "audio_stall")
        sim_only = ("sdk_reconnecting",)
        if action == "crash" and scenario.shared_log:
            msg = (
                f"{scenario.name}: step {index + 1} (crash) needs --sfu sim when the servers "
                "share one log: a crashed server's process keeps a log of its own"
            )
            raise ScenarioError(msg)
        if action in sim_only or (not loopback and action in loopback_only):
            where = "the simulated LiveKit" if action in sim_only else "--sfu sim or loopback"
            msg = f"{scenario.name}: step {index + 1} ({action}) needs {where}"
            raise ScenarioError(msg)


def runtime_violations(server: str, runtime: Runtime, store: EventStore) -> list[str]:
    """Replay equals live, and nothing of a disposed session is left (invariants 3, 5)."""
    found = []
    live = runtime.views()
    rebuilt = {
        stream: view for stream, view in replay(store.read_all()).items() if view.server == server
    }
    if rebuilt != live:
        found.append(f"replay: {server} differs from live")
    bridges = runtime.live_bridges()
    for view in live.values():
        if view.state == "DISPOSED" and view.stream in bridges:
            found.append(f"zombie: bridge actor of disposed {view.stream}")
    return found


def connector_leftovers(server: str, connector: LiveKitConnector) -> list[str]:
    """Close the connector; the SDK handles it still held."""
    connector.close()
    if connector.live_handles:
        return [f"zombie: {connector.live_handles} SDK handles of {server}"]
    return []


class ServerProcess:
    """A server's runtime in a child process (`simulations.server_process`) on a SQLite log."""

    def __init__(
        self,
        server: str,
        log: Path,
        *,
        grace_ms: int,
        policy: Policy,
        settings: LiveKitSettings,
        on_audio: Callable[[str], None],
    ) -> None:
        self.server = server
        self.log = log
        self._on_audio = on_audio
        self._answers: queue.Queue[dict[str, Any]] = queue.Queue()
        argv = [str(log), server, str(grace_ms), policy.name]
        self._process = subprocess.Popen(
            [sys.executable, "-m", "simulations.server_process", *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._process.stdin is not None
        assert self._process.stdout is not None
        self._stdin = self._process.stdin
        self._reader = threading.Thread(
            target=self._read, args=(self._process.stdout,), name=f"{server}-process", daemon=True
        )
        self._reader.start()
        self._stdin.write(msgspec.json.encode(settings).decode() + "\n")
        self._stdin.flush()
        self._answer("ready")

    def _read(self, stdout: IO[str]) -> None:
        for line in stdout:
            message = json.loads(line)
            if "audio" in message:
                self._on_audio(message["audio"])
            else:
                self._answers.put(message)

    def _send(self, op: str, **fields: Any) -> None:
        self._stdin.write(json.dumps({"op": op, **fields}) + "\n")
        self._stdin.flush()

    def _answer(self, key: str) -> Any:
        try:
            return self._answers.get(timeout=CHILD_ANSWER_S)[key]
        except queue.Empty:
            msg = f"the process of {self.server} did not answer ({key}) in {CHILD_ANSWER_S} s"
            raise RuntimeError(msg) from None

    def glasses_connected(self, user: str, *, epoch: int) -> None:
        self._send("connect", user=user, epoch=epoch)

    def glasses_disconnected(self, user: str) -> None:
        self._send("disconnect", user=user)

    def fail_log_for(self, duration_ms: int) -> None:
        self._send("log_fault", ms=duration_ms)

    def violations(self) -> list[str]:
        self._send("check")
        found: list[str] = self._answer("violations")
        return found

    def stop(self) -> list[str]:
        """Stop the runtime as a host would; what it left behind."""
        self._send("stop")
        leftovers: list[str] = self._answer("leftovers")
        self._process.wait(timeout=CHILD_ANSWER_S)
        self._reader.join(timeout=CHILD_ANSWER_S)
        return leftovers

    def kill(self) -> None:
        """SIGKILL: the process dies without leaving its rooms or closing its log."""
        self._process.kill()
        self._process.wait(timeout=CHILD_ANSWER_S)
        self._reader.join(timeout=CHILD_ANSWER_S)
        self._stdin.close()


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
        self.loop = EventLoopThread()
        self.deliveries = Deliveries()
        self._where: dict[str, str | None] = {}
        self._epochs: dict[str, int] = {}
        if store is None and scenario.shared_log:
            store = MemoryStore()
        self.store = store
        crashing = {step.crash for step in scenario.step if step.crash is not None}
        in_process = [s for s in scenario.servers if s not in crashing]
        self.stores = {s: store or MemoryStore() for s in in_process}
        self.logs = {s: FaultyStore(self.stores[s], self._now_ms) for s in in_process}
        self.connectors = {s: LiveKitConnector(settings, self.loop) for s in in_process}
        self.executors = {s: PoolExecutor() for s in in_process}
        self.grace_ms = round(scenario.grace_s * 1000)
        self.runtimes = {
            server: Runtime(
                server=server,
                executor=self.executors[server],
                store=self.logs[server],
                connector=self.connectors[server],
                policy=policy,
                grace_ms=self.grace_ms,
                audio_sink=self._sink,
                shared_log=scenario.shared_log,
            )
            for server in in_process
        }
        self._logs_dir = tempfile.TemporaryDirectory(prefix="rejoin-live-")
        self._process_locks = {server: threading.Lock() for server in crashing}
        self.processes = {
            server: self._start_process(server, Path(self._logs_dir.name) / f"{index}.db")
            for index, server in enumerate(sorted(crashing))
        }
        self._restarts: list[threading.Thread] = []
        # The run starts once every server is up: a server process takes seconds to start.
        self.origin = time.monotonic()
        self.origin_wall_ms = time.time_ns() // 1_000_000
        users = {step.user for step in scenario.step if step.user} | {
            e.user for e in scenario.expect
        }
        users |= {getattr(s, s.action) for s in scenario.step if s.action in USER_ACTIONS}
        self.phones = {user: Phone(self.loop, settings, user) for user in sorted(users)}
        self._timers: list[threading.Timer] = []
        """Phones coming back, and closes noticed late: cancelled when the run stops."""

    def _sink(self, chunk: AudioChunk) -> None:
        self.deliveries.record(self._now_ms(), chunk.server, chunk.user)

    def _start_process(self, server: str, log: Path) -> ServerProcess:
        return ServerProcess(
            server,
            log,
            grace_ms=self.grace_ms,
            policy=self.policy,
            settings=self.settings,
            on_audio=lambda user: self.deliveries.record(self._now_ms(), server, user),
        )

    def _reading(self, server: str, read: Callable[[EventStore], _T]) -> _T:
        """`read` of `server`'s log; a server process's log is opened afresh for it."""
        host = self._host(server)
        if not isinstance(host, ServerProcess):
            return read(self.stores[server])
        log = SQLiteStore(host.log, read_only=True)
        try:
            return read(log)
        finally:
            log.close()

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

    def connect(self, user: str, server: str, *, close_noticed_after_ms: int = 0) -> None:
        self.disconnect(user, noticed_after_ms=close_noticed_after_ms)
        self._epochs[user] = self._epochs.get(user, 0) + 1
        self._where[user] = server
        self.phones[user].publishing = True
        self._host(server).glasses_connected(user, epoch=self._epochs[user])

    def disconnect(self, user: str, *, noticed_after_ms: int = 0) -> None:
        server = self._where.get(user)
        if server is None:
            return
        self._where[user] = None
        self.phones[user].publishing = False
        host = self._host(server)
        if noticed_after_ms:
            self._later(
                threading.Timer(noticed_after_ms / 1000, lambda: host.glasses_disconnected(user))
            )
        else:
            host.glasses_disconnected(user)

    def _later(self, timer: threading.Timer) -> None:
        timer.daemon = True
        self._timers.append(timer)
        timer.start()

    def session_open(self, server: str, user: str) -> bool:
        return self._reading(server, lambda log: has_open_session(log, server, user))

    def health(self, server: str, user: str) -> str | None:
        return self._reading(server, lambda log: told_health(log, server, user))

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
        self._later(back)

    def sdk_reconnecting(self, server: str, duration_ms: int) -> None:
        msg = f"a stuck SDK on {server} needs the simulated LiveKit"
        raise ScenarioError(msg)

    def log_fault(self, server: str, duration_ms: int) -> None:
        host = self._host(server)
        if isinstance(host, ServerProcess):
            host.fail_log_for(duration_ms)
        else:
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
        """SIGKILL `server`'s process and start another on its log; its glasses reconnect a
        second later, or once the new process is up if it takes longer. Its bridges stay in
        their rooms until LiveKit notices they are gone, or the new process's join of the same
        identity replaces them."""
        crashed_at = time.monotonic()
        lock = self._process_locks[server]
        lock.acquire()
        dead = self.processes[server]
        dead.kill()
        dropped = [user for user, where in self._where.items() if where == server]
        for user in dropped:
            self._where[user] = None
            self.phones[user].publishing = False

        def restart() -> None:
            try:
                self.processes[server] = self._start_process(server, dead.log)
            finally:
                lock.release()
            time.sleep(max(0.0, crashed_at + RECONNECT_AFTER_CRASH_S - time.monotonic()))
            for user in dropped:
                if self._where.get(user) is None:
                    self.connect(user, server)

        # The schedule goes on while the new process starts (about 3 s of imports here).
        back = threading.Thread(target=restart, name=f"{server}-restart", daemon=True)
        self._restarts.append(back)
        back.start()

    def _host(self, server: str) -> Runtime | ServerProcess:
        """Where `server`'s inputs go: its runtime, or its process once it is up."""
        if server not in self.processes:
            return self.runtimes[server]
        with self._process_locks[server]:
            return self.processes[server]

    def _loopback(self) -> LoopbackThread:
        if self.loopback is None:
            msg = f"{self.scenario.name}: this fault needs the loopback server"
            raise ScenarioError(msg)
        return self.loopback

    def violations(self) -> list[str]:
        """Replay equals live, and nothing of a disposed session is left (invariants 3, 5)."""
        found = []
        for server, runtime in self.runtimes.items():
            found += runtime_violations(server, runtime, self.stores[server])
        for process in self.processes.values():
            found += process.violations()
        return found

    def stop(self) -> list[str]:
        """Stop everything; return what was left behind (handles, participants)."""
        for timer in self._timers:
            timer.cancel()
            timer.join(timeout=20)
        for restart in self._restarts:
            restart.join(timeout=CHILD_ANSWER_S)
        for runtime in self.runtimes.values():
            runtime.stop()
        leftovers = []
        for process in self.processes.values():
            leftovers += process.stop()
            self.stores[process.server] = self._adopt(process.log)
        self._logs_dir.cleanup()
        for phone in self.phones.values():
            phone.leave()
        for server, connector in self.connectors.items():
            leftovers += connector_leftovers(server, connector)
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

    def _adopt(self, log: Path) -> EventStore:
        """A server process's log copied into the run's store (a new one if none)."""
        target = self.store or MemoryStore()
        source = SQLiteStore(log, read_only=True)
        try:
            for envelope in source.read_all():
                pending = Pending(
                    event_id=envelope.event_id,
                    time_ms=envelope.time_ms,
                    server=envelope.server,
                    user=envelope.user,
                    event=envelope.event,
                )
                target.append(envelope.stream, envelope.version - 1, [pending])
        finally:
            source.close()
        return target


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

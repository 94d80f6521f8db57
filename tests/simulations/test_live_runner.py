"""What a live run accepts, and its server process: killed with SIGKILL, started again on its
log, it recovers the session the dead one acknowledged. No LiveKit is reachable here (the
bridge's joins fail), which is all the log needs."""

import time
from pathlib import Path

import msgspec
import pytest

from actors.livekit_connector import LiveKitSettings
from actors.policy import SUPERVISED
from events.catalog import GlassesConnected, ProcessRestarted
from events.sqlite_store import SQLiteStore
from simulations.live_runner import ServerProcess, refuse_unsupported
from simulations.scenario import Scenario, ScenarioError

USER = "ada@example.com"


def scenario(step: dict[str, object], *, shared_log: bool = False) -> Scenario:
    return msgspec.convert(
        {"name": "s", "servers": ["prod"], "shared_log": shared_log, "step": [{"at": 1.0, **step}]},
        Scenario,
    )


def test_a_crash_runs_live_against_any_livekit() -> None:
    refuse_unsupported(scenario({"crash": "prod"}), loopback=True)
    refuse_unsupported(scenario({"crash": "prod"}), loopback=False)


def test_a_crash_in_a_fleet_sharing_one_log_needs_the_simulated_livekit() -> None:
    with pytest.raises(ScenarioError, match=r"step 1 \(crash\) needs --sfu sim when the servers"):
        refuse_unsupported(scenario({"crash": "prod"}, shared_log=True), loopback=True)


def test_a_stuck_sdk_needs_the_simulated_livekit() -> None:
    with pytest.raises(ScenarioError, match=r"step 1 \(sdk_reconnecting\) needs the simulated"):
        refuse_unsupported(scenario({"sdk_reconnecting": "prod"}), loopback=True)


def test_a_signal_loss_needs_the_loopback_server() -> None:
    refuse_unsupported(scenario({"signal_loss": "prod", "user": USER}), loopback=True)
    with pytest.raises(ScenarioError, match=r"step 1 \(signal_loss\) needs --sfu sim or loopback"):
        refuse_unsupported(scenario({"signal_loss": "prod", "user": USER}), loopback=False)


def logged(log: Path, kind: type, within_s: float = 10) -> bool:
    """Whether an event of `kind` is in the log within `within_s`."""
    deadline = time.monotonic() + within_s
    while True:
        store = SQLiteStore(log, read_only=True)
        try:
            if any(isinstance(envelope.event, kind) for envelope in store.read_all()):
                return True
        finally:
            store.close()
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def test_a_killed_server_process_restarts_on_its_log(tmp_path: Path) -> None:
    log = tmp_path / "prod.db"
    settings = LiveKitSettings(url="ws://127.0.0.1:9", api_key="devkey", api_secret="x" * 32)

    def start() -> ServerProcess:
        return ServerProcess(
            "prod",
            log,
            grace_ms=60_000,
            policy=SUPERVISED,
            settings=settings,
            on_audio=lambda _user: None,
        )

    first = start()
    first.glasses_connected(USER, epoch=1)
    assert logged(log, GlassesConnected)
    first.kill()
    second = start()
    try:
        assert logged(log, ProcessRestarted), "the new process recovered the open session"
        assert second.violations() == []
    finally:
        assert second.stop() == []

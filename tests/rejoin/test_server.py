"""A server of a fleet whose log is shared (`REJOIN_SHARED_LOG`) tells the fleet of each glasses
connection through that log; one with a log of its own writes nothing beyond its sessions."""

from pathlib import Path

import pytest

from events.catalog import ConnectionRecorded
from events.fleet import fleet_stream
from rejoin import Server, Settings, SQLiteStore
from simulations.scale import InstantRooms

USER = "ada@example.com"
ENVIRONMENT = {
    "LIVEKIT_URL": "ws://127.0.0.1:7880",
    "LIVEKIT_API_KEY": "devkey",
    "LIVEKIT_API_SECRET": "api-secret-of-the-tests-0123456789",
}


@pytest.mark.parametrize("shared", ["true", "false"])
def test_each_server_of_a_fleet_records_its_glasses_connections_in_the_shared_log(
    shared: str, tmp_path: Path
) -> None:
    log = tmp_path / "fleet.db"
    for epoch, server in enumerate(["prod", "debug"], start=1):
        settings = Settings.from_environment(
            {
                **ENVIRONMENT,
                "REJOIN_SERVER": server,
                "REJOIN_LOG": str(log),
                "REJOIN_SHARED_LOG": shared,
            }
        )
        with Server(settings, connector=InstantRooms()) as running:
            running.runtime.glasses_connected(USER, epoch=epoch).wait(timeout_s=5)
    store = SQLiteStore(log, read_only=True)
    fleet = [(e.server, e.event) for e in store.read_stream(fleet_stream(USER))]
    store.close()
    expected = [("prod", 1), ("debug", 2)] if shared == "true" else []
    assert [(server, event.epoch) for server, event in fleet] == expected
    assert all(isinstance(event, ConnectionRecorded) for _, event in fleet)

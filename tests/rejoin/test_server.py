"""A server built from settings opens the log `REJOIN_LOG` names, a SQLite file or a
PostgreSQL database that a fleet's servers share; a server of a fleet whose log is shared
(`REJOIN_SHARED_LOG`) tells the fleet of each glasses connection through that log, and one with
a log of its own writes nothing beyond its sessions."""

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
    stream = store.read_stream(fleet_stream(USER))
    store.close()
    fleet = [(e.server, e.event.epoch) for e in stream if isinstance(e.event, ConnectionRecorded)]
    assert len(fleet) == len(stream), "the fleet stream records connections only"
    assert fleet == ([("prod", 1), ("debug", 2)] if shared == "true" else [])


def settings(server: str, log: str) -> Settings:
    return Settings.from_environment({**ENVIRONMENT, "REJOIN_SERVER": server, "REJOIN_LOG": log})


def test_servers_share_a_postgresql_log_and_a_restarted_one_recovers_its_sessions(
    postgres_url: str,
) -> None:
    log = postgres_url.replace("postgresql://rejoin@", "postgresql://rejoin:pa55@")
    with Server(settings("prod", log), connector=InstantRooms()) as prod:
        prod.runtime.glasses_connected(USER).wait(timeout_s=5)
        with Server(settings("debug", log), connector=InstantRooms()) as debug:
            debug.runtime.glasses_connected("bob@example.com").wait(timeout_s=5)
            assert debug.runtime.session(USER) is None, "each server reads its own sessions"
    with Server(settings("prod", log), connector=InstantRooms()) as restarted:
        assert restarted.runtime.session(USER) is not None, "recovered from the shared log"
        assert restarted.store.open_streams("prod") == ["prod/ada@example.com/1"]
        assert restarted.store.open_streams("debug") == ["debug/bob@example.com/1"]

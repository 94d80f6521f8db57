"""A server built from settings opens the log `REJOIN_LOG` names, a SQLite file or a
PostgreSQL database that a fleet's servers share."""

from rejoin import Server, Settings
from simulations.scale import InstantRooms

USER = "ada@example.com"
ENVIRONMENT = {
    "LIVEKIT_URL": "ws://127.0.0.1:7880",
    "LIVEKIT_API_KEY": "devkey",
    "LIVEKIT_API_SECRET": "api-secret-of-the-tests-0123456789",
}


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

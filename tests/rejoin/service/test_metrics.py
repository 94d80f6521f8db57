"""`/metrics`, read with prometheus-client's own parser, agrees with the log of the same run."""

import asyncio
import collections
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from actors.connector import RoomData, RoomDisconnected
from events.catalog import (
    AudioStalled,
    BridgeDisconnected,
    BridgeJoined,
    GraceStarted,
    Input,
    RejoinDecided,
    RestartBudgetExhausted,
)
from events.envelope import Pending
from events.projection import SessionView
from events.sqlite_store import SQLiteStore
from rejoin.service.metrics import Metrics
from tests.rejoin.service.test_api import Running, running

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(server: Running) -> Samples:
    async with server.http.get(f"{server.url}/metrics") as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def settled(server: Running, user: str, generation: int) -> None:
    for _ in range(500):
        code, status = await server.get(f"/v1/users/{user}")
        session, bridge = (status.get("session"), status.get("bridge")) if code == 200 else ({}, {})
        if (
            isinstance(session, dict)
            and isinstance(bridge, dict)
            and (session["bridge"], bridge["generation"]) == ("up", generation)
        ):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{user}'s bridge {generation} did not join within 5 s")


def test_the_metrics_agree_with_the_log_of_the_same_run(tmp_path: Path) -> None:
    async def run() -> Samples:
        async for server in running(tmp_path):
            for user in ("a@example.com", "b@example.com", "c@example.com"):
                await server.post(f"/v1/users/{user}/connect")
                await settled(server, user, 1)
            for room in ("a@example.com", "b@example.com"):
                server.rooms.callbacks[room](RoomData(payload=b"\x01" + bytes(320)))
            # Another server's bridge of the same identity takes a's place: a kick.
            server.rooms.callbacks["a@example.com"](RoomDisconnected(reason="DUPLICATE_IDENTITY"))
            await settled(server, "a@example.com", 2)
            await server.post("/v1/users/b@example.com/disconnect")
            for _ in range(100):
                samples = await scrape(server)
                if samples.get(("rejoin_time_to_audio_seconds_count", ())) == 2:
                    return samples
                await asyncio.sleep(0.01)
        raise AssertionError("the service stopped early")

    samples = asyncio.run(run())
    store = SQLiteStore(tmp_path / "prod.db", read_only=True)
    events = [envelope.event for envelope in store.read_all()]
    by_id = {envelope.event_id: envelope.event for envelope in store.read_all()}
    store.close()

    def count(kind: type) -> int:
        return sum(isinstance(event, kind) for event in events)

    assert samples[("rejoin_joins_total", ())] == count(BridgeJoined) == 4
    disconnects = collections.Counter(e.reason for e in events if isinstance(e, BridgeDisconnected))
    assert disconnects == {"DUPLICATE_IDENTITY": 1}
    assert samples[("rejoin_bridge_disconnects_total", (("reason", "DUPLICATE_IDENTITY"),))] == 1
    rejoins = collections.Counter(
        type(by_id[e.cause]).__name__ for e in events if isinstance(e, RejoinDecided)
    )
    for cause, times in rejoins.items():
        assert samples[("rejoin_rejoins_total", (("cause", cause),))] == times
    assert samples[("rejoin_audio_stalls_total", ())] == count(AudioStalled)
    assert samples[("rejoin_restart_budget_exhaustions_total", ())] == count(RestartBudgetExhausted)
    assert samples[("rejoin_log_append_seconds_count", ())] == count(Input)
    assert samples[("rejoin_time_to_audio_seconds_count", ())] == 2, "a and b were heard"
    assert samples[("rejoin_sessions", (("state", "ACTIVE"),))] == 2
    assert samples[("rejoin_sessions", (("state", "GRACE"),))] == 1
    assert samples[("rejoin_live_bridges", ())] == 3
    assert not any("example.com" in str(labels) for _, labels in samples), "no user id label"


def test_sessions_recovered_at_start_count_and_the_log_since_is_newer() -> None:
    metrics = Metrics()
    stream = "prod/a@example.com/1"
    grace = Pending(
        event_id="g",
        time_ms=1,
        server="prod",
        user="a@example.com",
        event=GraceStarted(cause="c", why="the server restarted", deadline_ms=60_000),
    ).at(position=9, stream=stream, version=5)
    metrics.observe([grace], 0.001)
    recovered = [
        SessionView(
            stream=f"prod/{user}/1",
            server="prod",
            user=user,
            incarnation=1,
            version=4,
            state="ACTIVE",
            epoch=1,
            time_ms=0,
        )
        for user in ("a@example.com", "b@example.com")
    ]
    metrics.recovered(recovered)
    assert metrics.connected_users() == 1, "a is in grace, as the log said after its recovery"

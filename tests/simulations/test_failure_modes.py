"""One named test per failure mode of research/mentraos-bridge-history.md section 6: each sets up
the mode in the deterministic world (or, where the mode is about the log, on a store) and
asserts what the user gets: audio back, or a clear state and a reason, never a silent failure.
Other modules test each mode in depth; this one is the index a reader checks the list against."""

import itertools
import sqlite3
from pathlib import Path

import pytest

from actors.policy import SUPERVISED
from events.catalog import (
    AudioStalled,
    BridgeDisconnected,
    BridgeStarted,
    BridgeStopped,
    Event,
    GraceStarted,
    HealthChanged,
    PhoneAbsent,
    RestartBudgetExhausted,
    SessionDisposed,
)
from events.log import LogError
from events.projection import replay_stream
from events.sqlite_store import SQLiteStore
from simulations.invariants import all_violations, kick_war, zombies
from simulations.sim_livekit import DEPARTURE_DETECTION_MS, SfuConfig
from simulations.world import World

USER = "isaiah@mentra.glass"


def events(world: World, server: str) -> list[Event]:
    return [envelope.event for envelope in world.stores[server].read_all()]


def hears(world: World, server: str, within_ms: int = 1_000) -> bool:
    """Whether the user's audio reached `server`'s sink within the last `within_ms`."""
    now = world.now_ms
    return world.deliveries.heard(USER, server, after_ms=now - within_ms, until_ms=now)


def on(server: str, *, sfu: SfuConfig | None = None, silent_phones: bool = False) -> World:
    """A world of prod and debug whose user is connected to `server` and has audio there."""
    made = World(servers=["prod", "debug"], seed=7, sfu=sfu, silent_phones=silent_phones)
    made.connect(USER, server)
    made.run_for(3_000)
    assert hears(made, server)
    return made


def test_mode_01_a_duplicate_identity_kick_is_not_answered_by_the_server_the_user_left() -> None:
    world = on("prod")
    world.connect(USER, "debug")
    world.run_for(30_000)
    prod = events(world, "prod")
    (kicked,) = [e for e in prod if isinstance(e, BridgeDisconnected)]
    assert kicked.reason == "DUPLICATE_IDENTITY"
    assert sum(isinstance(e, BridgeStarted) for e in prod) == 1, "prod never rejoined"
    assert hears(world, "debug")
    assert kick_war(world) == []


def test_mode_02_a_reconnect_within_grace_does_not_reuse_the_dead_bridge() -> None:
    world = on("prod")
    world.connect(USER, "debug")
    world.run_for(5_000)
    world.connect(USER, "prod")
    world.run_for(2_000)
    assert hears(world, "prod")
    assert sum(isinstance(e, BridgeStarted) for e in events(world, "prod")) == 2


def test_mode_03_a_log_of_another_format_is_refused_with_one_clear_line(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    SQLiteStore(path).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value = '99' WHERE key = 'format'")
    db.close()
    with pytest.raises(LogError) as refused:
        SQLiteStore(path)
    message = str(refused.value)
    assert str(path) in message
    assert "\n" not in message


def test_mode_04_a_crashed_servers_stale_bridge_is_replaced_not_fought() -> None:
    world = on("prod")
    world.crash("prod")  # its bridge lingers in the room until LiveKit notices
    world.run_for(20_000)
    assert hears(world, "prod")
    identities = [p.identity for p in world.sfu.participants(USER) if p.server == "prod"]
    assert len(identities) == 1, "one bridge of prod's in the room"
    assert all_violations(world) == []


def test_mode_04_a_crashed_servers_stale_bridge_is_left_to_livekit_once_its_session_ends() -> None:
    """The glasses left, the server died near the end of grace, and the restarted process ends
    the session: the dead process's bridge is in the room until LiveKit notices, and nothing of
    the runtime's is. RemoveParticipant names an identity, not a connection, and every server
    joins with the user's one identity: a removal could take a newer bridge of another server
    (or this one) that joined meanwhile, so the runtime leaves the dead one to LiveKit."""
    world = World(servers=["prod"], seed=4, grace_ms=10_000)
    world.connect(USER, "prod")
    world.run_until(2_000)
    world.disconnect(USER)
    world.run_until(11_000)
    world.crash("prod")
    world.run_until(13_000)
    assert any(isinstance(e, SessionDisposed) for e in events(world, "prod"))
    (stale,) = world.sfu.participants(USER)
    assert (stale.server, stale.state) == ("prod", "orphaned")
    assert zombies(world) == [], "the dead process's bridge is LiveKit's to remove"
    world.run_until(11_000 + DEPARTURE_DETECTION_MS + 1)
    assert world.sfu.participants(USER) == [], "LiveKit noticed"
    assert all_violations(world) == []


def test_mode_05_a_join_completing_after_its_bridge_was_replaced_touches_nothing() -> None:
    world = World(servers=["prod"], seed=7)
    world.sfu.slow_next_join("prod", 20_000)  # completes 5 s after the join deadline gave up
    world.connect(USER, "prod")
    world.run_for(40_000)
    prod = world.stores["prod"].read_all()
    stopped = next(e.position for e in prod if isinstance(e.event, BridgeStopped))
    late = [
        e.event
        for e in world.stores["prod"].read_all(from_position=stopped)
        if getattr(e.event, "generation", 2) == 1 and not isinstance(e.event, BridgeStopped)
    ]
    assert late == [], "nothing of generation 1 after it was stopped"
    assert [p.sid for p in world.sfu.participants(USER)] == ["PA_2"], "only its replacement"
    assert world.sfu.kicks == 0
    assert hears(world, "prod")


def test_mode_06_a_server_that_dies_recovers_every_open_session_from_its_log() -> None:
    world = World(servers=["prod", "debug"], seed=7)
    users = [f"user{n}@mentra.glass" for n in range(5)]
    for user in users:
        world.connect(user, "prod")
    world.run_for(3_000)
    world.crash("prod")
    world.run_for(10_000)
    now = world.now_ms
    for user in users:
        assert world.deliveries.heard(user, "prod", after_ms=now - 1_000, until_ms=now)
    assert all_violations(world) == []


def test_mode_07_a_token_that_expires_during_a_long_outage_leads_to_a_fresh_join() -> None:
    world = on("prod", sfu=SfuConfig(token_ttl_ms=20_000))
    world.signal_loss("prod", USER)
    world.outage(25_000)
    world.run_for(60_000)
    prod = events(world, "prod")
    assert sum(isinstance(e, BridgeStarted) for e in prod) >= 2, "a new join, a new token"
    assert hears(world, "prod")


def test_mode_08_a_missing_phone_is_reported_and_no_bridge_is_restarted() -> None:
    world = on("prod")
    world.phone_leave(USER, 20_000)
    world.run_for(10_000)
    assert world.health("prod", USER) == "phone_absent"
    world.run_for(15_000)
    prod = events(world, "prod")
    assert any(isinstance(e, PhoneAbsent) for e in prod)
    assert sum(isinstance(e, BridgeStarted) for e in prod) == 1
    assert hears(world, "prod")


def test_mode_09_silent_no_audio_is_noticed_while_silence_is_not() -> None:
    quiet = on("prod", silent_phones=True)
    quiet.run_for(30_000)
    assert not any(isinstance(e, AudioStalled) for e in events(quiet, "prod"))
    stalled = on("prod")
    stalled.audio_stall(USER, 30_000)
    stalled.run_for(3_000)
    prod = events(stalled, "prod")
    assert any(isinstance(e, AudioStalled) for e in prod)
    assert sum(isinstance(e, BridgeStarted) for e in prod) == 2
    assert hears(stalled, "prod")


def test_mode_10_a_bridge_that_keeps_failing_backs_off_spends_its_budget_then_cools_down() -> None:
    world = on("prod")
    world.outage(180_000)
    world.run_for(120_000)
    budget = SUPERVISED.budget
    prod = list(world.stores["prod"].read_all())
    exhausted = next(e.time_ms for e in prod if isinstance(e.event, RestartBudgetExhausted))
    starts = [e.time_ms for e in prod if isinstance(e.event, BridgeStarted)][1:]
    before = [t for t in starts if t <= exhausted]
    assert len(before) <= budget.intensity, "no more restarts than the budget allows"
    waits = [b - a for a, b in itertools.pairwise(before)]
    assert waits[0] < 1_000 <= budget.max_backoff_ms <= waits[-1], "the waits grew"
    after = [t for t in starts if t > exhausted]
    assert after, "and it tried again"
    assert after[0] - exhausted >= budget.cooldown_ms, "after the cool-down, not before"


@pytest.mark.parametrize(
    ("room_service", "given_up"),
    [("answers", "the room service says nobody holds"), ("fails", "no join within 15 s")],
)
def test_mode_11_a_join_that_never_answers_is_given_up_and_retried(
    room_service: str, given_up: str
) -> None:
    """The room holds no join 2 s after it began: it is given up at once. A room service that
    cannot say leaves the join to its deadline."""
    world = World(servers=["prod"], seed=7)
    if room_service == "fails":
        world.sfu.room_service_fault("prod", 60_000, hangs=False)
    world.sfu.hang_joins("prod", 5_000)
    world.connect(USER, "prod")
    world.run_for(20_000)
    prod = events(world, "prod")
    first = next(e for e in prod if isinstance(e, BridgeStopped))
    assert given_up in first.why
    assert sum(isinstance(e, BridgeStarted) for e in prod) >= 2
    assert hears(world, "prod")


def test_mode_12_when_the_runtime_stops_trying_the_user_is_told_why_and_until_when() -> None:
    world = on("prod")
    world.outage(180_000)
    world.run_for(120_000)
    told = [e for e in events(world, "prod") if isinstance(e, HealthChanged)]
    unavailable = [e for e in told if e.state == "unavailable"]
    assert unavailable, "the host is told"
    assert unavailable[-1].reason
    assert unavailable[-1].retry_at_ms is not None


def test_mode_13_status_tells_reconnecting_phone_presence_last_audio_and_reason() -> None:
    world = on("prod")
    world.sdk_reconnecting("prod", 5_000)
    world.run_for(500)
    status = world.runtimes["prod"].status(USER)
    assert status is not None
    assert status.bridge is not None
    assert status.bridge.sdk_state == "reconnecting"
    assert status.bridge.phone_present
    assert status.bridge.last_chunk_ms is not None
    world.connect(USER, "debug")
    world.run_for(1_000)
    session = world.runtimes["prod"].session(USER)
    assert session is not None
    assert session.last_disconnect_reason == "DUPLICATE_IDENTITY"


def test_mode_14_a_server_switch_leaves_no_zombie_and_grace_expiry_harms_no_one() -> None:
    world = on("prod")
    world.connect(USER, "debug")
    world.run_for(70_000)
    prod = events(world, "prod")
    assert any(isinstance(e, GraceStarted) for e in prod)
    assert any(isinstance(e, SessionDisposed) for e in prod)
    assert world.runtimes["prod"].live_bridges() == {}
    assert hears(world, "debug")
    assert zombies(world) == []


def test_mode_15_after_a_restart_the_session_is_what_its_log_says() -> None:
    world = on("prod")
    world.restart_server("prod")
    world.connect(USER, "prod")
    world.run_for(3_000)
    live = world.runtimes["prod"].session(USER)
    assert live is not None
    assert live == replay_stream(world.stores["prod"].read_stream(live.stream))
    assert hears(world, "prod")


def test_mode_16_a_node_rotation_outage_is_outlasted_by_the_retry_budget() -> None:
    world = on("prod")
    world.outage(25_000)  # a pod's cold start on node rotation
    world.run_for(40_000)
    prod = events(world, "prod")
    assert not any(isinstance(e, RestartBudgetExhausted) for e in prod)
    assert hears(world, "prod")


def test_mode_17_when_everyone_has_left_no_bridge_actor_or_participant_remains() -> None:
    world = on("prod")
    for server in ["debug", "prod", "debug"]:
        world.run_for(2_000)
        world.connect(USER, server)
    world.disconnect(USER)
    world.run_for(120_000)
    for server in world.servers:
        assert world.runtimes[server].live_bridges() == {}
        assert len(world.runtimes[server].actors()) == 2, "the supervisor and the timer"
    assert [p.server for p in world.sfu.participants(USER)] == []
    assert zombies(world) == []


def test_mode_18_giving_up_is_never_final_audio_returns_without_a_reconnect() -> None:
    world = on("prod")
    world.outage(120_000)
    world.run_for(180_000)
    states = [e.state for e in events(world, "prod") if isinstance(e, HealthChanged)]
    assert "unavailable" in states, "it gave up for a while"
    assert states[-1] == "ok"
    assert hears(world, "prod")
    assert [p.user for p in world.presence] == [USER], "with no reconnect of the glasses"

"""The `supervised` policy, row by row (DESIGN section 4), driven through a simulated world."""

from collections.abc import Iterator
from typing import TypeVar

import msgspec
import pytest

from actors.policy import SUPERVISED
from actors.restart_budget import RestartBudget
from events.catalog import (
    BridgeKept,
    BridgeReconnected,
    BridgeReconnecting,
    BridgeStarted,
    BridgeStatusRequested,
    BridgeStopped,
    BridgeTokenRefreshed,
    Event,
    GraceStarted,
    HealthChanged,
    IdentityHolderRequested,
    ProcessRestarted,
    RejoinDecided,
    RejoinDeclined,
    RestartBudgetExhausted,
    SessionDisposed,
    SessionOpened,
)
from events.envelope import Envelope
from simulations.invariants import all_violations
from simulations.sim_livekit import SfuConfig
from simulations.world import World

USER = "isaiah@mentra.glass"
E = TypeVar("E", bound=Event)


def events(world: World, server: str) -> list[Event]:
    return [envelope.event for envelope in world.stores[server].read_all()]


def decisions(world: World, server: str, kind: type[E]) -> list[E]:
    return [event for event in events(world, server) if isinstance(event, kind)]


def envelopes(world: World, server: str, kind: type[Event]) -> list[Envelope]:
    return [e for e in world.stores[server].read_all() if isinstance(e.event, kind)]


def heard(world: World, server: str, after_ms: int) -> bool:
    return world.deliveries.heard(USER, server, after_ms=after_ms, until_ms=world.now_ms)


@pytest.fixture
def world() -> Iterator[World]:
    made = World(servers=["prod", "debug"], seed=4)
    yield made
    assert all_violations(made) == []
    made.stop()


def test_a_first_connection_opens_a_session_and_starts_its_bridge(world: World) -> None:
    world.connect(USER, "prod")
    world.run_for(1_000)
    assert [type(e) for e in events(world, "prod")][:3] == [
        type(events(world, "prod")[0]),
        SessionOpened,
        BridgeStarted,
    ]
    assert heard(world, "prod", 0)


def test_a_blip_keeps_the_healthy_bridge_and_never_rejoins(world: World) -> None:
    world.connect(USER, "prod")
    world.run_for(1_000)
    joins = world.sfu.joins
    world.disconnect(USER)
    world.run_for(2_000)
    assert [p.server for p in world.sfu.participants(USER)] == ["prod"], "kept during grace"
    world.connect(USER, "prod")
    world.run_for(1_000)
    assert decisions(world, "prod", BridgeStatusRequested)
    assert decisions(world, "prod", BridgeKept)
    assert world.sfu.joins == joins
    assert heard(world, "prod", 3_000)


def test_grace_expiry_disposes_everything(world: World) -> None:
    world.connect(USER, "prod")
    world.run_for(1_000)
    world.disconnect(USER)
    world.run_for(60_000)
    assert decisions(world, "prod", SessionDisposed)
    assert world.runtimes["prod"].session(USER) is None
    assert world.sfu.participants(USER) == []
    assert world.runtimes["prod"].armed_timers() == []
    world.connect(USER, "prod")
    world.run_for(1_000)
    assert world.runtimes["prod"].session(USER) is not None
    assert "prod/isaiah@mentra.glass/2" in world.runtimes["prod"].views(), "a new incarnation"


def test_an_operator_removal_stays_down_until_the_next_reconnect(world: World) -> None:
    world.connect(USER, "prod")
    world.run_for(1_000)
    world.remove_bridge("prod", USER)
    world.run_for(10_000)
    declined = decisions(world, "prod", RejoinDeclined)
    assert declined
    assert "operator" in declined[-1].why
    assert not heard(world, "prod", 1_100)
    world.disconnect(USER)
    world.connect(USER, "prod")
    world.run_for(1_000)
    assert heard(world, "prod", 11_000)


def test_a_kick_by_a_newer_connection_while_active_stays_down(world: World) -> None:
    world.connect(USER, "prod")
    world.run_for(1_000)
    world.connect(USER, "debug", close_noticed_after_ms=30_000)
    world.run_for(5_000)
    assert world.runtimes["prod"].session(USER).state == "ACTIVE"  # type: ignore[union-attr]
    assert decisions(world, "prod", IdentityHolderRequested)
    assert "newer connection" in decisions(world, "prod", RejoinDeclined)[-1].why
    assert [p.server for p in world.sfu.participants(USER)] == ["debug"]


def test_leaving_during_a_join_cancels_it_so_it_cannot_kick_the_next_server() -> None:
    world = World(servers=["prod", "debug"], seed=1, sfu=SfuConfig(join_latency_ms=(50, 1_200)))
    world.connect(USER, "prod")
    world.connect(USER, "debug")
    world.run_for(5_000)
    stopped = decisions(world, "prod", BridgeStopped)
    assert stopped
    assert "before the join completed" in stopped[0].why
    assert world.sfu.kicks == 0
    assert [p.server for p in world.sfu.participants(USER)] == ["debug"]


def test_a_late_join_of_an_older_connection_is_fenced_by_epoch() -> None:
    for seed in range(50):
        world = World(
            servers=["prod", "debug"], seed=seed, sfu=SfuConfig(join_latency_ms=(50, 1_200))
        )
        world.connect(USER, "prod")
        # prod has not noticed the glasses left, so its join goes on and may finish last.
        world.connect(USER, "debug", close_noticed_after_ms=30_000)
        world.run_for(10_000)
        if decisions(world, "debug", IdentityHolderRequested):
            break
    else:
        pytest.fail("no seed made prod's join finish after debug's")
    fenced = [d for d in decisions(world, "debug", RejoinDecided) if "fenced" in d.why]
    assert fenced
    assert [p.server for p in world.sfu.participants(USER)] == ["debug"]
    assert all_violations(world) == []


def test_a_bridge_that_missed_its_kick_is_caught_by_the_room_service() -> None:
    # prod's signal drops; while the SDK tries to resume, debug's join kicks prod's participant,
    # which prod's bridge can only learn at its next resume attempt. The glasses come back first.
    for seed in range(50):
        world = World(servers=["prod", "debug"], seed=seed)
        world.connect(USER, "prod")
        world.run_for(1_000)
        world.signal_loss("prod", USER)
        world.connect(USER, "debug")
        world.run_for(250)
        world.connect(USER, "prod")
        world.run_for(3_000)
        caught = [d for d in decisions(world, "prod", RejoinDecided) if "thought" in d.why]
        if caught:
            break
    else:
        pytest.fail("no seed had the glasses back before prod's bridge heard of its kick")
    assert "debug holds the identity" in caught[0].why
    assert heard(world, "prod", 2_250)
    assert all_violations(world) == []


def test_a_deleted_room_is_an_operator_action_and_waits_for_the_next_reconnect(
    world: World,
) -> None:
    world.connect(USER, "prod")
    world.run_for(1_000)
    world.delete_room(USER)
    world.run_for(5_000)
    declined = decisions(world, "prod", RejoinDeclined)
    assert declined
    assert "operator (ROOM_DELETED)" in declined[-1].why
    assert len(decisions(world, "prod", BridgeStarted)) == 1
    world.disconnect(USER)
    world.connect(USER, "prod")
    world.run_for(1_000)
    assert len(decisions(world, "prod", BridgeStarted)) == 2


def test_an_expired_token_on_resume_is_replaced_by_a_fresh_join() -> None:
    world = World(servers=["prod"], seed=2, sfu=SfuConfig(token_ttl_ms=1_000))
    world.connect(USER, "prod")
    world.run_for(2_000)
    world.signal_loss("prod", USER)
    world.run_for(5_000)
    restart = decisions(world, "prod", RejoinDecided)
    assert restart
    assert restart[0].failure
    assert "JOIN_FAILURE" in restart[0].why
    assert len(decisions(world, "prod", BridgeStarted)) == 2
    assert heard(world, "prod", 4_000)


def test_refreshed_tokens_keep_a_resume_valid_and_the_resume_is_in_the_log() -> None:
    world = World(servers=["prod"], seed=2, sfu=SfuConfig(token_ttl_ms=1_000, token_refresh_ms=400))
    world.connect(USER, "prod")
    world.run_for(2_000)
    world.signal_loss("prod", USER)
    world.run_for(5_000)
    kinds = [type(e) for e in events(world, "prod")]
    assert BridgeTokenRefreshed in kinds
    resume = [k for k in kinds if k in (BridgeReconnecting, BridgeReconnected)]
    assert resume == [BridgeReconnecting, BridgeReconnected]
    told = [e.reason for e in decisions(world, "prod", HealthChanged)]
    assert "the bridge lost its connection; the SDK is resuming it" in told
    assert told[-1] == "the phone's audio reaches the bridge"
    assert len(decisions(world, "prod", BridgeStarted)) == 1, "the resume kept the bridge"
    assert all_violations(world) == []


def test_a_spent_budget_escalates_then_retries_after_the_cooldown() -> None:
    world = World(servers=["prod"], seed=3)
    world.connect(USER, "prod")
    world.run_for(1_000)
    world.outage(90_000)
    world.run_for(90_000)
    exhausted = decisions(world, "prod", RestartBudgetExhausted)
    assert exhausted, "repeated failures spend the budget"
    cooldown = SUPERVISED.budget.cooldown_ms
    world.run_for(cooldown + 5_000)
    assert heard(world, "prod", 91_000), "giving up was not permanent"
    assert all_violations(world) == []


def test_a_reconnect_after_failures_waits_out_the_backoff() -> None:
    slow_backoff = msgspec.structs.replace(
        SUPERVISED, budget=RestartBudget(min_backoff_ms=2_000, max_backoff_ms=4_000)
    )
    world = World(servers=["prod"], seed=5, policy=slow_backoff)
    world.outage(1_000)
    world.connect(USER, "prod")
    world.run_for(300)
    failed = decisions(world, "prod", RejoinDecided)
    assert failed[-1].delay_ms >= 2_000
    world.disconnect(USER)
    world.connect(USER, "prod")
    world.run_for(100)
    assert "already due" in decisions(world, "prod", RejoinDeclined)[-1].why
    assert len(decisions(world, "prod", BridgeStarted)) == 1
    world.run_for(5_000)
    assert len(decisions(world, "prod", BridgeStarted)) == 2
    assert heard(world, "prod", 2_000)


def test_a_restarted_server_recovers_its_sessions_from_the_log(world: World) -> None:
    world.connect(USER, "prod")
    world.run_for(1_000)
    world.restart_server("prod")
    world.run_for(1_000)
    recovered = world.runtimes["prod"].session(USER)
    assert recovered is not None
    assert recovered.state == "GRACE"
    assert decisions(world, "prod", ProcessRestarted)
    world.connect(USER, "prod")
    world.run_for(1_000)
    assert heard(world, "prod", 2_000)


def test_a_crash_during_grace_disposes_at_the_original_wall_clock_deadline() -> None:
    """The restarted process's monotonic clock starts again at zero: only a wall-clock
    deadline in the log means the same instant to it."""
    world = World(servers=["prod"], seed=4, grace_ms=8_000)
    world.connect(USER, "prod")
    world.run_until(25_000)
    world.disconnect(USER)
    world.run_until(26_000)
    world.crash("prod")
    world.run_until(32_999)
    assert world.runtimes["prod"].session(USER) is not None, "still in grace"
    world.run_until(33_000)
    assert world.runtimes["prod"].session(USER) is None, "disposed at 33 s, not 26 + 33 s"
    (grace,) = decisions(world, "prod", GraceStarted)
    (disposed,) = envelopes(world, "prod", SessionDisposed)
    assert disposed.time_ms == grace.deadline_ms
    world.run_until(60_000)
    assert all_violations(world) == []
    world.stop()

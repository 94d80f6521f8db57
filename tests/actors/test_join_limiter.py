"""A server's join limiter: turns spaced out, never more than the rate within a second, and the
supervised policy's bridges waiting for theirs (the other policies join as the seed's did)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors.join_limiter import JoinLimiter
from actors.policy import LEGACY, SUPERVISED, Policy
from events.catalog import BridgeJoined, BridgeStarted, JoinPaced, RejoinDeclined
from simulations.invariants import all_violations
from simulations.metrics import max_in_any_second
from simulations.world import World


def test_an_idle_limiter_gives_a_turn_at_once_and_a_crowd_turns_spaced_out() -> None:
    limiter = JoinLimiter(4)
    assert limiter.turn(1_000) == 1_000
    assert [limiter.turn(1_000) for _ in range(4)] == [1_250, 1_500, 1_750, 2_000]
    assert limiter.turn(9_000) == 9_000, "a quiet spell owes nobody a wait"


def test_a_rate_below_one_a_second_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        JoinLimiter(0)


@given(
    rate=st.integers(1, 1_500),
    gaps=st.lists(st.integers(0, 400), min_size=1, max_size=300),
)
def test_turns_never_exceed_the_rate_within_any_second_nor_come_early(
    rate: int, gaps: list[int]
) -> None:
    limiter = JoinLimiter(rate)
    now, turns = 0, []
    for gap in gaps:
        now += gap
        turn = limiter.turn(now)
        assert turn >= now
        turns.append(turn)
    assert turns == sorted(turns), "first asked, first served"
    assert max_in_any_second(turns) <= rate


def crowd(policy: Policy, users: int = 10) -> World:
    """`users` connect to one server at the same instant; it starts 4 joins a second."""
    world = World(servers=["prod"], seed=3, policy=policy, join_rate_per_s=4)
    world.run_until(1_000)
    for number in range(users):
        world.connect(f"u{number}@example.com", "prod")
    world.run_until(6_000)
    return world


def test_supervised_sessions_wait_for_their_turns_and_say_so_in_the_log() -> None:
    world = crowd(SUPERVISED)
    events = [envelope.event for envelope in world.stores["prod"].read_all()]
    paced = [event for event in events if isinstance(event, JoinPaced)]
    assert sorted(event.delay_ms for event in paced) == [250 * turn for turn in range(1, 10)]
    assert all("4 joins a second at most" in event.why for event in paced)
    assert world.sfu.admitted_join_ms == [1_000 + 250 * turn for turn in range(10)]
    assert sum(isinstance(event, BridgeJoined) for event in events) == 10
    assert all(world.health("prod", f"u{number}@example.com") == "ok" for number in range(10))
    # The last turn comes 2.25 s after the connect: liveness counts from the turn.
    assert all_violations(world) == []


def test_the_seeds_options_join_at_once_whatever_the_servers_join_rate() -> None:
    world = crowd(LEGACY)
    events = [envelope.event for envelope in world.stores["prod"].read_all()]
    assert not any(isinstance(event, JoinPaced) for event in events)
    assert sum(isinstance(event, BridgeStarted) for event in events) == 10
    assert world.sfu.admitted_join_ms == [1_000] * 10


def test_glasses_that_blip_while_their_join_waits_keep_its_turn() -> None:
    world = World(servers=["prod"], seed=3, join_rate_per_s=4)
    world.run_until(1_000)
    for number in range(20):
        world.connect(f"u{number}@example.com", "prod")
    world.run_until(1_100)
    paced = [e for e in world.stores["prod"].read_all() if isinstance(e.event, JoinPaced)]
    last = max(paced, key=lambda envelope: getattr(envelope.event, "delay_ms", 0)).user
    world.disconnect(last)
    world.run_until(1_200)
    world.connect(last, "prod")
    world.run_until(8_000)
    events = [e.event for e in world.stores["prod"].read_all() if e.user == last]
    assert [event.delay_ms for event in events if isinstance(event, JoinPaced)] == [4_750]
    declined = [event.why for event in events if isinstance(event, RejoinDeclined)]
    assert declined == ["the bridge is already due to start in 4550 ms"]
    assert world.deliveries.heard(last, "prod", after_ms=7_500, until_ms=8_000)
    # Its audio comes almost 5 s after the reconnect: liveness counts from the turn it waits for.
    assert all_violations(world) == []

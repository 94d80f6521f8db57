"""The slow-join race: prod, debug, prod, debug, faster than a join takes (50-1200 ms). A server
the user already left can finish its join after the server the user moved to, and kick it; epoch
fencing must leave the audio on the last server whatever the seed."""

from hypothesis import given
from hypothesis import strategies as st

from simulations.invariants import all_violations
from simulations.sim_livekit import SfuConfig
from simulations.world import World

USER = "isaiah@mentra.glass"
SLOW = SfuConfig(join_latency_ms=(50, 1_200))


@given(
    seed=st.integers(min_value=0, max_value=2**32 - 1),
    gaps_ms=st.lists(st.integers(min_value=0, max_value=49), min_size=3, max_size=3),
)
def test_the_slow_join_race_ends_with_audio_on_the_last_server(
    seed: int, gaps_ms: list[int]
) -> None:
    world = World(servers=["prod", "debug"], seed=seed, sfu=SLOW)
    world.connect(USER, "prod")
    for server, gap in zip(["debug", "prod", "debug"], gaps_ms, strict=True):
        world.run_for(gap)
        world.connect(USER, server)
    world.run_for(10_000)

    last_second = {
        server
        for server in world.servers
        if world.deliveries.heard(
            USER, server, after_ms=world.now_ms - 1_000, until_ms=world.now_ms
        )
    }
    assert last_second == {"debug"}, "audio ends on debug, and only there"
    assert world.sfu.kicks <= world.connections
    assert [p.server for p in world.sfu.participants(USER)] == ["debug"]
    assert all_violations(world) == []

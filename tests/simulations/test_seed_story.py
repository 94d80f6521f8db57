"""The seed's story end to end: prod, then debug (prod's bridge is kicked), back to prod within
grace. With the fix audio reaches prod again; with the pre-fix behaviour it never does."""

from actors.policy import LEGACY, SUPERVISED, Policy
from events.catalog import BridgeDisconnected, BridgeKept, BridgeStarted
from simulations.invariants import all_violations
from simulations.world import World

USER = "isaiah@mentra.glass"


def seed_story(policy: Policy) -> World:
    world = World(servers=["prod", "debug"], seed=1, policy=policy)
    world.connect(USER, "prod")
    world.run_until(5_000)
    world.connect(USER, "debug")
    world.run_until(10_000)
    world.connect(USER, "prod")
    world.run_until(15_000)
    return world


def audio_at(world: World, server: str, after_ms: int) -> list[int]:
    return [t for t in world.deliveries.times(USER, server) if t > after_ms]


def test_the_kicked_prod_bridge_is_restarted_when_the_user_returns_within_grace() -> None:
    world = seed_story(SUPERVISED)
    prod = [type(e.event) for e in world.stores["prod"].read_all()]
    assert BridgeDisconnected in prod, "debug's join kicked prod's bridge"
    assert prod.count(BridgeStarted) == 2, "prod started a second bridge on return"
    heard = audio_at(world, "prod", after_ms=10_000)
    assert heard, "audio reaches prod again"
    assert heard[0] - 10_000 < 2_000, "within the seed's 2 s target"
    assert audio_at(world, "debug", after_ms=10_000 + 2_000) == [], "and no longer debug"
    assert all_violations(world) == []


def test_pre_fix_behaviour_reuses_the_dead_bridge_and_prod_hears_nothing() -> None:
    world = seed_story(LEGACY)
    prod = [type(e.event) for e in world.stores["prod"].read_all()]
    assert BridgeKept in prod, "the reconnect reused the kicked bridge"
    assert prod.count(BridgeStarted) == 1
    assert audio_at(world, "prod", after_ms=10_000) == []
    assert any(v.startswith("liveness") for v in all_violations(world))

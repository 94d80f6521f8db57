"""Metrics come from logs alone, and do not depend on how the logs were stored."""

from actors.policy import LEGACY, SUPERVISED
from events.memory_store import MemoryStore
from simulations.metrics import Metrics, compute, server_events
from simulations.scenario import load
from simulations.scenario_runner import play, world_for


def metrics_of(name: str, *, shared_log: bool, legacy: bool = False) -> Metrics:
    scenario = load(name)
    world = world_for(
        scenario, LEGACY if legacy else SUPERVISED, 0, MemoryStore() if shared_log else None
    )
    play(world, scenario)
    return compute(server_events(world.stores.values()), end_ms=world.wall_ms)


def test_one_shared_log_and_one_log_per_server_give_the_same_metrics() -> None:
    for name in ["rapid-switch", "multiple-switches", "network-blip"]:
        assert metrics_of(name, shared_log=True) == metrics_of(name, shared_log=False)


def test_the_seed_story_measures_the_bug_and_the_fix() -> None:
    fixed = metrics_of("rapid-switch", shared_log=False)
    broken = metrics_of("rapid-switch", shared_log=False, legacy=True)
    assert fixed.reconnect_in_grace_audio_ratio == 1.0
    assert broken.reconnect_in_grace_audio_ratio == 0.0
    assert fixed.kicks == 2
    assert fixed.rejoins == 1
    assert broken.misrouted_audio_ms > 0
    assert fixed.misrouted_audio_ms == 0

"""Metrics come from logs alone, and do not depend on how the logs were stored."""

from pathlib import Path

from actors.policy import LEGACY, POLICIES, SUPERVISED
from events.catalog import (
    AnyEvent,
    BridgeJoined,
    BridgeStarted,
    FirstAudio,
    GlassesConnected,
    GlassesDisconnected,
    GraceStarted,
    SessionOpened,
)
from events.envelope import Envelope, Pending, stream_name
from events.memory_store import MemoryStore
from events.projection import SessionView, apply
from simulations.metrics import Metrics, canonical_order, compute, misroutes, server_events
from simulations.scenario import BUILT_IN, load
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


def logged(steps: list[tuple[str, int, AnyEvent]], user: str = "ada@example.com") -> list[Envelope]:
    """`steps` (server, time, event) as the envelopes of each server's first session of `user`."""
    log, versions = list[Envelope](), dict[str, int]()
    for position, (server, at, event) in enumerate(steps, start=1):
        stream = stream_name(server, user, 1)
        versions[stream] = versions.get(stream, 0) + 1
        pending = Pending(
            event_id=f"e{position}", time_ms=at, server=server, user=user, event=event
        )
        log.append(pending.at(position=position, stream=stream, version=versions[stream]))
    return log


def test_audio_still_misrouted_when_the_run_ends_counts_until_the_end() -> None:
    """prod's bridge, its session in grace, keeps the audio after the glasses moved to debug,
    and nothing ends that before the run does: the whole time counts, not none of it."""
    log = logged(
        [
            ("prod", 0, GlassesConnected(epoch=1)),
            ("prod", 0, SessionOpened(cause="c1", why="connected", incarnation=1, epoch=1)),
            (
                "prod",
                0,
                BridgeStarted(cause="c1", why="joins", generation=1, identity="i", epoch=1),
            ),
            (
                "prod",
                200,
                BridgeJoined(
                    generation=1, participant_sid="p", participant_count=2, phone_present=True
                ),
            ),
            ("prod", 1_000, GlassesDisconnected()),
            ("prod", 1_000, GraceStarted(cause="c2", why="away", deadline_ms=61_000)),
            ("debug", 1_500, GlassesConnected(epoch=2)),
        ]
    )
    assert compute(log, end_ms=9_500).misrouted_audio_ms == 8_000
    assert compute(
        log, end_ms=9_500
    ).misrouted_audio_ms == misrouted_by_every_stream_at_every_event(log, 9_500)


def test_a_connection_stamped_after_a_newer_one_does_not_hide_the_newer_ones_audio() -> None:
    """Live servers stamp an input when they take it: prod took the glasses' older connection
    (epoch 1) after debug took the newer one (epoch 2), and left it at once."""
    log = logged(
        [
            ("debug", 301, GlassesConnected(epoch=2)),
            ("debug", 301, SessionOpened(cause="c2", why="connected", incarnation=1, epoch=2)),
            (
                "debug",
                301,
                BridgeStarted(cause="c2", why="joins", generation=1, identity="i", epoch=2),
            ),
            ("prod", 303, GlassesConnected(epoch=1)),
            ("prod", 303, SessionOpened(cause="c1", why="connected", incarnation=1, epoch=1)),
            ("prod", 309, GlassesDisconnected()),
            ("debug", 800, FirstAudio(generation=1)),
        ]
    )
    metrics = compute(log, end_ms=10_000)
    assert metrics.time_to_audio_ms.count == 1
    assert metrics.time_to_audio_ms.p50 == 499
    assert metrics.switch_success_ratio is None, "prod's connection had no chance: no evidence"


def misrouted_by_every_stream_at_every_event(envelopes: list[Envelope], end_ms: int) -> int:
    """Misrouted audio as its definition reads, at the cost `compute` avoids: every stream
    looked at after every event, with the same test of each (`misroutes`), until `end_ms`."""
    views: dict[str, SessionView] = {}
    current: dict[str, str] = {}
    newest: dict[str, int] = {}
    since: dict[str, int] = {}
    closed = 0
    for envelope in canonical_order(envelopes):
        view = apply(views.get(envelope.stream), envelope)
        if view is not None:
            views[envelope.stream] = view
        user, event = envelope.user, envelope.event
        if isinstance(event, GlassesConnected) and event.epoch >= newest.get(user, event.epoch):
            current[user], newest[user] = envelope.server, event.epoch
        elif isinstance(event, GlassesDisconnected) and current.get(user) == envelope.server:
            del current[user]
        for stream, seen in views.items():
            misrouting = misroutes(seen, current.get(seen.user))
            if misrouting and stream not in since:
                since[stream] = envelope.time_ms
            elif not misrouting and stream in since:
                closed += envelope.time_ms - since.pop(stream)
    return closed + sum(end_ms - began for began in since.values())


def test_misrouted_audio_looks_only_at_the_streams_an_event_changes_and_counts_the_same() -> None:
    """Every built-in scenario and example under every policy: the same milliseconds as the
    definition, which looks at every stream after every event (and made a replay of a long
    log quadratic)."""
    scenarios = [*BUILT_IN, *sorted(str(path) for path in Path("examples").glob("*.toml"))]
    misrouted = 0
    for reference in scenarios:
        scenario = load(reference)
        for policy in POLICIES.values():
            world = world_for(scenario, policy, scenario.seed, None)
            play(world, scenario)
            envelopes = server_events(world.stores.values())
            expected = misrouted_by_every_stream_at_every_event(envelopes, world.wall_ms)
            assert compute(envelopes, end_ms=world.wall_ms).misrouted_audio_ms == expected
            misrouted += expected > 0
    assert misrouted >= 5, "the comparison covers runs that misroute"

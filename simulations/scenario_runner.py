"""Running a scenario in the simulated world under one policy: expectations, invariants, metrics.

The run is done twice from the same seed and the two logs compared byte for byte (invariant 6);
the metrics come from the first run's log, exactly as a replay of that log computes them.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any, Protocol

import msgspec

from actors.policy import Policy
from events.catalog import RunEnded, RunStarted
from events.envelope import Pending
from events.log import EventStore
from simulations.invariants import all_violations, log_bytes
from simulations.metrics import RUN_STREAM, Metrics, compute, server_events
from simulations.scenario import DEFAULT_FOR_S, Expect, Scenario, Step
from simulations.sim_livekit import SfuConfig
from simulations.world import Deliveries, World

AUDIO_WINDOW_MS = 500
"""`audio_on` holds when a chunk reached the server within this window before `at`."""


class ExpectationResult(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One expectation as judged; of its four targets only the one it names is printed."""

    at: float
    user: str
    passed: bool
    audio_on: str | None = None
    no_audio_on: str | None = None
    session_on: str | None = None
    no_session_on: str | None = None
    health_on: str | None = None
    health: str | None = None
    found: str | None = None
    """For `health_on`: the state the host was last told (`none` while no session is open)."""


class RunResult(msgspec.Struct, frozen=True, kw_only=True):
    scenario: str
    policy: str
    seed: int
    passed: bool
    complete: bool
    """The run reached its end (a replay of a log cut short says `false`)."""
    expectations: list[ExpectationResult]
    invariant_violations: list[str]
    metrics: Metrics


def world_for(scenario: Scenario, policy: Policy, seed: int, store: EventStore | None) -> World:
    knobs = scenario.sfu
    return World(
        servers=scenario.servers,
        seed=seed,
        policy=policy,
        grace_ms=int(scenario.grace_s * 1000),
        sfu=SfuConfig(
            join_latency_ms=knobs.join_latency_ms,
            audio_chunk_ms=knobs.audio_chunk_ms,
            token_ttl_ms=int(knobs.token_ttl_s * 1000),
        ),
        store_for=(lambda _server: store) if store is not None else None,
        shared_log=scenario.shared_log,
    )


def run(
    scenario: Scenario,
    policy: Policy,
    *,
    seed: int | None = None,
    store: EventStore | None = None,
) -> RunResult:
    """Run `scenario`; with `store`, every server logs into it and the run is recorded too."""
    chosen = scenario.seed if seed is None else seed
    world = world_for(scenario, policy, chosen, store)
    if store is not None:
        store.append(
            RUN_STREAM,
            store.stream_version(RUN_STREAM),
            [run_started(scenario, policy, chosen, world.wall_ms)],
        )
    expectations = play(world, scenario)
    if store is not None:
        store.append(RUN_STREAM, store.stream_version(RUN_STREAM), [run_ended(world.wall_ms)])
    violations = all_violations(world)
    twin = world_for(scenario, policy, chosen, None)
    play(twin, scenario)
    if log_bytes(twin) != log_bytes(world):
        violations.append("determinism: the same seed gave a different event log")
    metrics = compute(server_events(world.stores.values()), end_ms=world.wall_ms)
    world.stop()
    twin.stop()
    return RunResult(
        scenario=scenario.name,
        policy=policy.name,
        seed=chosen,
        passed=all(e.passed for e in expectations) and not violations,
        complete=True,
        expectations=expectations,
        invariant_violations=violations,
        metrics=metrics,
    )


def run_started(scenario: Scenario, policy: Policy, seed: int, time_ms: int) -> Pending:
    """The record of a run at the head of its log."""
    # The id is derived, not drawn: drawing would shift the seeded schedule of the run itself.
    return Pending(
        event_id=str(
            uuid.uuid5(uuid.NAMESPACE_URL, f"rejoin:{scenario.name}:{policy.name}:{seed}")
        ),
        time_ms=time_ms,
        server="",
        user="",
        event=RunStarted(
            scenario=msgspec.json.encode(scenario).decode(), policy=policy.name, seed=seed
        ),
    )


def run_ended(time_ms: int) -> Pending:
    """The record of a run's end, at its last instant."""
    return Pending(
        event_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"rejoin:run-ended:{time_ms}")),
        time_ms=time_ms,
        server="",
        user="",
        event=RunEnded(),
    )


class Stage(Protocol):
    """Where a scenario's steps happen: the simulated world, or a live run against LiveKit."""

    deliveries: Deliveries
    """Where the audio arrived: what `audio_on` is judged on."""

    def session_open(self, server: str, user: str) -> bool:
        """Whether `user` has an active or grace session on `server`, as its log says now."""
        ...

    def connect(self, user: str, server: str, *, close_noticed_after_ms: int = 0) -> None:
        """The glasses connect to `server`; the server they leave learns of it
        `close_noticed_after_ms` later."""
        ...

    def disconnect(self, user: str) -> None: ...

    def outage(self, duration_ms: int) -> None: ...

    def remove_bridge(self, server: str, user: str) -> None: ...

    def crash(self, server: str) -> None: ...

    def signal_loss(self, server: str, user: str) -> None: ...

    def log_fault(self, server: str, duration_ms: int) -> None: ...

    def room_service_fault(self, server: str, duration_ms: int) -> None: ...

    def audio_stall(self, user: str, duration_ms: int) -> None: ...

    def phone_leave(self, user: str, duration_ms: int) -> None: ...

    def sdk_reconnecting(self, server: str, duration_ms: int) -> None: ...

    def health(self, server: str, user: str) -> str | None:
        """The health `server` last told of `user`, as its log says now (`None`: no open
        session, or the glasses are away)."""
        ...


def schedule(
    scenario: Scenario, stage: Stage, wait_until: Callable[[int], object]
) -> list[ExpectationResult]:
    """Steps and expectations in time order; at one instant, steps first, in file order.
    `wait_until(ms)` lets the stage's time pass."""
    timeline: list[tuple[int, int, Callable[[], Any]]] = []
    results: dict[int, ExpectationResult] = {}
    for order, step in enumerate(scenario.step):
        timeline.append((_ms(step.at), order, _action(stage, step)))
    for index, expect in enumerate(scenario.expect):

        def check(index: int = index, expect: Expect = expect) -> None:
            results[index] = judge(stage, expect)

        timeline.append((_ms(expect.at), len(scenario.step) + index, check))
    for at_ms, _, act in sorted(timeline, key=lambda item: (item[0], item[1])):
        wait_until(at_ms)
        act()
    wait_until(_ms(scenario.end_s))
    return [results[index] for index in range(len(scenario.expect))]


def play(world: World, scenario: Scenario) -> list[ExpectationResult]:
    results = schedule(scenario, world, world.run_until)
    world.settle()
    return results


def _action(stage: Stage, step: Step) -> Callable[[], Any]:
    user = step.user or ""
    if step.connect is not None:
        noticed = _ms(step.noticed_after_s or 0)
        return lambda: stage.connect(user, step.connect or "", close_noticed_after_ms=noticed)
    if step.disconnect:
        return lambda: stage.disconnect(user)
    if step.sfu_outage_s is not None:
        return lambda: stage.outage(_ms(step.sfu_outage_s or 0))
    if step.remove_bridge is not None:
        return lambda: stage.remove_bridge(step.remove_bridge or "", user)
    if step.crash is not None:
        return lambda: stage.crash(step.crash or "")
    lasts = _ms(step.for_s if step.for_s is not None else DEFAULT_FOR_S)
    if step.log_fault is not None:
        return lambda: stage.log_fault(step.log_fault or "", lasts)
    if step.room_service_fault is not None:
        return lambda: stage.room_service_fault(step.room_service_fault or "", lasts)
    if step.audio_stall is not None:
        return lambda: stage.audio_stall(step.audio_stall or "", lasts)
    if step.phone_leave is not None:
        return lambda: stage.phone_leave(step.phone_leave or "", lasts)
    if step.sdk_reconnecting is not None:
        return lambda: stage.sdk_reconnecting(step.sdk_reconnecting or "", lasts)
    return lambda: stage.signal_loss(step.signal_loss or "", user)


def judge(stage: Stage, expect: Expect) -> ExpectationResult:
    """`audio_on` holds when a chunk reached the server in the window before `at`;
    `session_on` when the server's log has an open session of the user's at `at`;
    `health_on` when the health the server last told of the user is `health`."""
    at_ms, server, kind = _ms(expect.at), expect.server, expect.kind
    if kind == "health_on":
        found = stage.health(server, expect.user)
        return ExpectationResult(
            at=expect.at,
            user=expect.user,
            health_on=server,
            health=expect.health,
            found=found or "none",
            passed=found == expect.health,
        )
    if kind in ("audio_on", "no_audio_on"):
        seen = stage.deliveries.heard(
            expect.user, server, after_ms=at_ms - AUDIO_WINDOW_MS, until_ms=at_ms
        )
    else:
        seen = stage.session_open(server, expect.user)
    return ExpectationResult(
        at=expect.at,
        user=expect.user,
        **{kind: server},
        passed=seen == (kind in ("audio_on", "session_on")),
    )


def _ms(seconds: float) -> int:
    return round(seconds * 1000)

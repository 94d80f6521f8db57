"""A fleet under load: the simulated LiveKit's join rate holds, every user has audio again after
a server's failure, the same seed gives the same run, and a crowd of reconnects is paced rather
than a storm (failure mode 10). Deterministic executor, seeded; a few hundred users at most."""

import contextlib
import json
import math
from collections.abc import Iterator

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from events.catalog import BridgeStarted
from rejoin.cli import main
from simulations.invariants import all_violations, log_bytes
from simulations.load import LoadConfig, LoadResult, fleet, judge, play
from simulations.metrics import max_in_any_second
from simulations.world import RECONNECT_AFTER_CRASH_MS, World

FAILOVER = LoadConfig(
    users=300, seconds=40, fail_at_s=20, join_rate_per_s=60, switches=30, blips=30, seed=1
)
"""300 users over three servers at 60 joins a second (20 each); 98 of them fail over."""


@contextlib.contextmanager
def loaded(config: LoadConfig) -> Iterator[tuple[LoadResult, World]]:
    """The result of a load and the world it ran in, stopped afterwards."""
    world = fleet(config)
    try:
        moved = play(config, world)
        yield judge(config, world, moved, wall_s=0.0), world
    finally:
        world.stop()


def run(config: LoadConfig) -> tuple[LoadResult, dict[str, bytes]]:
    with loaded(config) as (result, world):
        return result, log_bytes(world)


def test_a_failover_sends_a_dead_servers_users_to_the_others_in_turn() -> None:
    world = World(servers=["prod", "debug", "dev"], seed=5)
    users = [f"u{number}@example.com" for number in range(4)]
    for user in users:
        world.connect(user, "prod")
    world.connect("stays@example.com", "debug")
    world.run_until(3_000)
    assert world.fail_over("prod", ["debug", "dev"]) == users
    assert all(world.where(user) is None for user in users)
    world.run_until(3_000 + RECONNECT_AFTER_CRASH_MS)
    assert [world.where(user) for user in users] == ["debug", "dev", "debug", "dev"]
    world.run_until(8_000)
    for user in users:
        assert world.deliveries.heard(user, world.where(user) or "", after_ms=7_500, until_ms=8_000)
        assert world.session_open("prod", user), "the restarted prod holds them in grace"
        assert world.health("prod", user) is None
    assert all_violations(world) == []


def test_a_failover_of_a_few_hundred_users_keeps_the_join_rate_and_brings_all_audio_back() -> None:
    result, _ = run(FAILOVER)
    assert result.moved_users > 90
    assert result.max_joins_in_1s <= FAILOVER.join_rate_per_s
    assert result.joins_refused == 0
    assert result.users_without_audio == 0
    assert result.time_to_audio_after_failover_ms.count == result.moved_users
    assert result.invariant_violations == []
    assert result.passed


def test_the_same_seed_gives_the_same_logs_and_the_same_result() -> None:
    config = msgspec.structs.replace(FAILOVER, users=150, seconds=30, fail_at_s=15)
    first, first_logs = run(config)
    again, again_logs = run(config)
    assert first_logs == again_logs
    assert msgspec.json.encode(first) == msgspec.json.encode(again)
    _, other_logs = run(msgspec.structs.replace(config, seed=2))
    assert other_logs != first_logs


def most_starts_in_any_second(world: World, server: str, after_ms: int) -> int:
    """The most bridges `server` started within any second after `after_ms` (world time)."""
    origin = world.wall_ms - world.now_ms
    starts = [
        envelope.time_ms - origin
        for envelope in world.stores[server].read_all()
        if isinstance(envelope.event, BridgeStarted) and envelope.time_ms - origin > after_ms
    ]
    return max_in_any_second(starts)


def test_failure_mode_10_a_reconnect_storm_is_paced_not_refused() -> None:
    """History section 6, mode 10: recovery actions that all fire at once become a storm.
    150 users on one server that dies; they all reconnect to the two others at one instant,
    and the room server admits 15 joins a second. Each survivor starts its share, 5 a second:
    nothing is refused, no restart budget is spent, and everyone has audio again within 15 s.
    Without the servers' limiters the same failover is refused over and over, the backoffs
    leave most of the room server's rate unused, and 19 s later users are still without audio."""
    storm = LoadConfig(
        users=150, seconds=60, fail_at_s=40, join_rate_per_s=15, all_on_failing=True, seed=4
    )
    with loaded(storm) as (paced, world):
        assert paced.moved_users == 150
        assert paced.joins_refused == 0
        assert paced.restart_budgets_spent == 0
        assert paced.users_without_audio == 0
        assert paced.max_joins_in_1s <= storm.join_rate_per_s
        # 75 users a server at 5 joins a second: the last one's turn comes after about 15 s.
        assert paced.time_to_audio_after_failover_ms.max is not None
        assert 14_000 < paced.time_to_audio_after_failover_ms.max < 17_000
        assert paced.passed
        for survivor in ("s2", "s3"):
            assert most_starts_in_any_second(world, survivor, after_ms=storm.fail_ms) <= 5

    stormed, _ = run(msgspec.structs.replace(storm, server_join_rate_per_s=0))
    assert stormed.joins_refused > stormed.moved_users, "refused more than once a user"
    assert stormed.max_joins_in_1s <= storm.join_rate_per_s, "the room server holds its limit"
    assert stormed.users_without_audio > 0


@st.composite
def failovers(draw: st.DrawFn) -> LoadConfig:
    """A small fleet whose failure comes once the busiest server's first joins are done, and
    which ends once the moved users' joins are, at the survivors' rate, with time to spare."""
    users, servers = draw(st.integers(5, 30)), draw(st.integers(2, 3))
    share, all_on_failing = draw(st.integers(2, 8)), draw(st.booleans())
    churn = draw(st.integers(0, users // 2))
    busiest = users if all_on_failing else math.ceil(users / servers)
    fail_at = 10 + busiest / share + 3
    return LoadConfig(
        users=users,
        servers=servers,
        seconds=fail_at + 1 + busiest / (share * (servers - 1)) + 5,
        fail_at_s=fail_at,
        join_rate_per_s=share * servers,
        all_on_failing=all_on_failing,
        switches=churn,
        blips=churn,
        seed=draw(st.integers(0, 2**32)),
    )


@settings(max_examples=15)
@given(config=failovers())
def test_any_failover_keeps_the_rate_and_brings_every_users_audio_back(config: LoadConfig) -> None:
    result, _ = run(config)
    assert result.max_joins_in_1s <= config.join_rate_per_s
    assert result.joins_refused == 0
    assert result.users_without_audio == 0
    assert result.invariant_violations == []


def test_rejoin_load_prints_its_figures_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        ["load", "--users", "60", "--seconds", "25", "--fail-at", "15", "--join-rate", "30"]
    )
    out, _ = capsys.readouterr()
    figures = json.loads(out)
    assert code == 0
    assert figures["users"] == 60
    assert figures["max_joins_in_1s"] <= figures["join_rate_limit"] == 30
    assert figures["server_join_rate"] == 10
    assert figures["users_without_audio"] == 0
    assert set(figures["time_to_audio_after_failover_ms"]) == {"count", "p50", "p99", "max"}


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--users", "many"], "--users: not a whole number"),
        (["--fail-at", "70", "--seconds", "60"], "the failure (70 s) must come"),
        (["--join-rate", "2"], "leaves no share for each of 3 servers"),
        (["--servers", "1"], "servers: must be from 2"),
        (["--server-join-rate", "-1"], "must be 0 (no limiter) or more"),
    ],
)
def test_rejoin_load_refuses_bad_arguments_in_one_line(
    capsys: pytest.CaptureFixture[str], argv: list[str], says: str
) -> None:
    code = main(["load", *argv])
    _, err = capsys.readouterr()
    assert code == 2
    assert says in err
    assert err.count("\n") == 1

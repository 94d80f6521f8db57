"""A fleet under load: many users over several servers, churn, and one server's failure.

Scenario files name each user and each step; a fleet has thousands of users, so this generates
its steps from a few knobs and a seed. Users connect over the first seconds, spread over the
servers (or all on the one that will fail); some switch to another server and some blip (leave
and come back to the same server within a few seconds); then the first server dies and all its
users reconnect to the others at the same instant (`World.fail_over`), the reconnect storm of
failure mode 10. The simulated LiveKit admits at most `join_rate_per_s` joins within any second
and refuses the rest with a 503; each server paces its own joins at its share of that rate.

What it reports is judged from the simulation itself: the joins the simulated LiveKit admitted
and refused, the audio chunks that reached each server's sink (time to audio is from the
glasses' reconnect to the first chunk of that user's at the new server's sink), and the
servers' event logs (paced joins, spent restart budgets, the invariants).
"""

from __future__ import annotations

import bisect
import random
import time
from collections.abc import Callable

import msgspec

from actors.collector import COLLECTOR
from actors.policy import POLICIES
from events.catalog import JoinPaced, RestartBudgetExhausted
from simulations.invariants import all_violations
from simulations.metrics import Distribution, distribution, max_in_any_second, server_events
from simulations.scenario import LIMITS, MAX_SERVERS, MAX_TIME_S
from simulations.scenario_runner import AUDIO_WINDOW_MS
from simulations.sim_livekit import SfuConfig
from simulations.world import RECONNECT_AFTER_CRASH_MS, World

RAMP_MS = 10_000
"""Users connect over the first 10 s (or half the time before the failure, if that is less)."""
BLIP_MS = (200, 3_000)
"""How long a blip keeps the glasses away: well within grace."""
MAX_USERS = 1_000_000


class LoadConfig(msgspec.Struct, frozen=True, kw_only=True):
    users: int = 1_000
    servers: int = 3
    seconds: float = 60.0
    """Simulated seconds in all."""
    fail_at_s: float = 30.0
    """When the first server dies and its users go to the others."""
    join_rate_per_s: int = 300
    """The most joins the simulated LiveKit admits within any second, all servers together."""
    server_join_rate_per_s: int | None = None
    """Each server's own join rate; `None`: its fair share, `join_rate_per_s // servers`; 0:
    no limiter (each server joins as fast as its sessions ask: the storm)."""
    all_on_failing: bool = False
    """Every user starts on the server that fails, rather than spread over all of them."""
    switches: int = 0
    """Users who switch to another server once, between their connect and the failure."""
    blips: int = 0
    """Users who leave and come back to the same server once, before the failure."""
    seed: int = 0
    policy: str = "supervised"

    def __post_init__(self) -> None:
        problem = _problem(self)
        if problem is not None:
            raise ValueError(problem)

    @property
    def server_names(self) -> list[str]:
        return [f"s{number}" for number in range(1, self.servers + 1)]

    @property
    def server_rate(self) -> int | None:
        """Each server's join rate; `None`: no limiter."""
        if self.server_join_rate_per_s is None:
            return self.join_rate_per_s // self.servers
        return self.server_join_rate_per_s or None

    @property
    def fail_ms(self) -> int:
        return round(self.fail_at_s * 1000)

    @property
    def ramp_ms(self) -> int:
        return min(RAMP_MS, self.fail_ms // 2)


def _problem(config: LoadConfig) -> str | None:
    """What is wrong with `config`, in one line; `None` if nothing."""
    if not 1 <= config.users <= MAX_USERS:
        return f"users: must be from 1 to {MAX_USERS}; found {config.users}"
    if not 2 <= config.servers <= MAX_SERVERS:
        return f"servers: must be from 2 to {MAX_SERVERS} (one fails); found {config.servers}"
    if not 0 < config.fail_at_s < config.seconds <= MAX_TIME_S:
        return (
            f"the failure ({config.fail_at_s:g} s) must come after 0 s and before the end "
            f"({config.seconds:g} s), which is at most {MAX_TIME_S:g} s"
        )
    if config.join_rate_per_s < config.servers:
        return (
            f"join rate: {config.join_rate_per_s} a second leaves no share for each of "
            f"{config.servers} servers"
        )
    own = config.server_join_rate_per_s
    if own is not None and own < 0:
        return f"server join rate: must be 0 (no limiter) or more; found {own}"
    if config.switches < 0 or config.blips < 0 or config.switches + config.blips > config.users:
        return (
            f"switches ({config.switches}) and blips ({config.blips}) must not be negative "
            f"and are one per user at most ({config.users} users)"
        )
    churn = config.switches + config.blips
    if churn and config.fail_ms - BLIP_MS[1] <= config.ramp_ms:
        return (
            f"the failure at {config.fail_at_s:g} s leaves no time for switches and blips "
            "after the users connect; fail later or churn none"
        )
    if not LIMITS["seed"].low <= config.seed <= LIMITS["seed"].high:
        return f"seed: must be from 0 to {int(LIMITS['seed'].high)}; found {config.seed}"
    if config.policy not in POLICIES:
        return f"policy: unknown {config.policy!r} (known: {', '.join(POLICIES)})"
    return None


class LoadResult(msgspec.Struct, frozen=True, kw_only=True):
    users: int
    servers: list[str]
    policy: str
    seed: int
    seconds: float
    failed_server: str
    failed_at_s: float
    moved_users: int
    """Users whose glasses the failure sent to the other servers."""
    join_rate_limit: int
    server_join_rate: int | None
    joins_admitted: int
    joins_refused: int
    max_joins_in_1s: int
    """The most joins the simulated LiveKit admitted within any second."""
    joins_paced: int
    """Bridge starts a server's join limiter held back (`JoinPaced`)."""
    longest_pace_ms: int
    restart_budgets_spent: int
    kicks: int
    users_without_audio: int
    """Users none of whose audio reached their server's sink within the last 500 ms."""
    time_to_audio_after_failover_ms: Distribution
    """From a moved user's reconnect to the first chunk at the new server's sink."""
    invariant_violations: list[str]
    passed: bool
    """Every user has audio at the end, the join rate held, and every invariant held."""
    wall_s: float
    """Wall time of the simulation (building and running the world; not the judging)."""


def user_names(config: LoadConfig) -> list[str]:
    return [f"u{number}@example.com" for number in range(config.users)]


def fleet(config: LoadConfig) -> World:
    """The world a load runs in: servers `s1`..`sN`, the join rates, nobody connected yet."""
    return World(
        servers=config.server_names,
        seed=config.seed,
        policy=POLICIES[config.policy],
        sfu=SfuConfig(join_rate_per_s=config.join_rate_per_s),
        join_rate_per_s=config.server_rate,
        collector=COLLECTOR,
    )


def play(config: LoadConfig, world: World) -> list[str]:
    """Connect, churn, fail the first server and run to the end; the users the failure moved."""
    rng = random.Random(config.seed)
    names = config.server_names
    failing, others = names[0], names[1:]
    users = user_names(config)
    first: dict[str, str] = {}
    timeline: list[tuple[int, Callable[[], object]]] = []
    for number, user in enumerate(users):
        first[user] = failing if config.all_on_failing else names[number % len(names)]
        timeline.append((number * config.ramp_ms // len(users), _connect(world, user, first[user])))
    # Each churned user switches or blips once, after connecting and before the failure.
    churned = rng.sample(users, config.switches + config.blips)
    for index, user in enumerate(churned):
        at = rng.randrange(config.ramp_ms, config.fail_ms - BLIP_MS[1])
        if index < config.switches:
            elsewhere = rng.choice([server for server in names if server != first[user]])
            timeline.append((at, _connect(world, user, elsewhere)))
        else:
            timeline.append((at, _blip(world, user, rng.randint(*BLIP_MS))))
    moved: list[str] = []
    timeline.append((config.fail_ms, lambda: moved.extend(world.fail_over(failing, others))))
    # A stable sort: at one instant, in the order generated.
    for at, act in sorted(timeline, key=lambda item: item[0]):
        world.run_until(at)
        act()
    world.run_until(round(config.seconds * 1000))
    world.settle()
    return moved


def _connect(world: World, user: str, server: str) -> Callable[[], None]:
    return lambda: world.connect(user, server)


def _blip(world: World, user: str, away_ms: int) -> Callable[[], None]:
    def blip() -> None:
        server = world.where(user)
        if server is not None:
            world.disconnect(user)
            world.executor.call_at(world.now_ms + away_ms, lambda: world.connect(user, server))

    return blip


def judge(config: LoadConfig, world: World, moved: list[str], wall_s: float) -> LoadResult:
    end_ms = world.now_ms
    waits = [
        delay
        for user in moved
        if (delay := _time_to_audio(world, user, config.fail_ms + RECONNECT_AFTER_CRASH_MS))
        is not None
    ]
    silent = sum(1 for user in user_names(config) if not _has_audio(world, user, end_ms))
    paced = spent = longest = 0
    for envelope in server_events(world.stores.values()):
        if isinstance(envelope.event, JoinPaced):
            paced += 1
            longest = max(longest, envelope.event.delay_ms)
        elif isinstance(envelope.event, RestartBudgetExhausted):
            spent += 1
    busiest = max_in_any_second(world.sfu.admitted_join_ms)
    violations = all_violations(world)
    return LoadResult(
        users=config.users,
        servers=config.server_names,
        policy=config.policy,
        seed=config.seed,
        seconds=config.seconds,
        failed_server=config.server_names[0],
        failed_at_s=config.fail_at_s,
        moved_users=len(moved),
        join_rate_limit=config.join_rate_per_s,
        server_join_rate=config.server_rate,
        joins_admitted=len(world.sfu.admitted_join_ms),
        joins_refused=world.sfu.refused_joins,
        max_joins_in_1s=busiest,
        joins_paced=paced,
        longest_pace_ms=longest,
        restart_budgets_spent=spent,
        kicks=world.sfu.kicks,
        users_without_audio=silent,
        time_to_audio_after_failover_ms=distribution(waits),
        invariant_violations=violations,
        passed=silent == 0 and busiest <= config.join_rate_per_s and not violations,
        wall_s=round(wall_s, 3),
    )


def _time_to_audio(world: World, user: str, since_ms: int) -> int | None:
    """From `since_ms` to the first chunk of `user`'s at the server the glasses are on."""
    server = world.where(user)
    if server is None:
        return None
    times = world.deliveries.times(user, server)
    first = bisect.bisect_left(times, since_ms)
    return times[first] - since_ms if first < len(times) else None


def _has_audio(world: World, user: str, end_ms: int) -> bool:
    server = world.where(user)
    return server is not None and world.deliveries.heard(
        user, server, after_ms=end_ms - AUDIO_WINDOW_MS, until_ms=end_ms
    )


def run_load(config: LoadConfig) -> LoadResult:
    started = time.perf_counter()
    world = fleet(config)
    moved = play(config, world)
    wall_s = time.perf_counter() - started
    try:
        return judge(config, world, moved, wall_s)
    finally:
        world.stop()

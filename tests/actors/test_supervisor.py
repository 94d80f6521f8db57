"""The supervisor supervises: a session whose turn fails (here, because its log refuses appends)
is rebuilt from its stream and restarted under a budget, keeps every input that reached it, and
brings the user's audio back; a bridge that cannot even start is replaced by its session."""

import random
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from actors.connector import JoinRequest, LookupAnswer, RoomEvent, RoomHandle
from actors.pool_executor import PoolExecutor
from actors.runtime import Runtime
from actors.supervisor import FILL_SLICE, SESSION_RESTARTS
from events.catalog import (
    AnyEvent,
    BridgeDisconnected,
    BridgeStarted,
    Event,
    GlassesConnected,
    GlassesDisconnected,
    SessionDisposed,
    SessionOpened,
    SessionRestarted,
    SessionResumed,
)
from events.envelope import Envelope, Pending, stream_name
from events.log import EventStore, WrongExpectedVersion
from events.memory_store import MemoryStore
from simulations.faulty_store import FaultyStore
from simulations.invariants import all_violations
from simulations.sim_livekit import SfuConfig, SimConnector, SimLiveKit
from simulations.world import World
from tests.actors.harness import EXECUTORS, ExecutorKind, Harness, eventually

USER = "isaiah@mentra.glass"


def kinds(world: World, server: str) -> list[type[Event]]:
    return [type(e.event) for e in world.stores[server].read_all()]


def heard(world: World, server: str, after_ms: int) -> bool:
    return world.deliveries.heard(USER, server, after_ms=after_ms, until_ms=world.now_ms)


def test_a_session_whose_log_fails_keeps_its_inputs_and_recovers_when_the_log_does() -> None:
    world = World(servers=["prod", "debug"], seed=2)
    world.connect(USER, "prod")
    world.run_until(1_000)
    world.log_fault("prod", 5_000)
    world.run_until(2_000)
    world.connect(USER, "debug")
    world.run_until(3_000)
    assert world.runtimes["prod"].session(USER) is not None, "a failed session still answers"
    world.connect(USER, "prod")
    world.run_until(4_000)
    assert world.runtimes["prod"].session(USER).state == "ACTIVE"  # type: ignore[union-attr]
    world.run_until(20_000)
    prod = kinds(world, "prod")
    restarted = prod.index(SessionRestarted)
    assert prod[restarted + 1 :].count(GlassesDisconnected) == 1, "the switch away, kept"
    assert prod[restarted + 1 :].count(GlassesConnected) == 1, "the return, kept"
    assert SessionResumed in prod[restarted:]
    assert BridgeStarted in prod[restarted:], "the bridge debug kicked is restarted"
    assert heard(world, "prod", 15_000), "audio is back on prod"
    assert all_violations(world) == []
    world.stop()


def test_a_log_that_fails_at_the_first_connection_opens_the_session_once_it_works() -> None:
    world = World(servers=["prod"], seed=3)
    world.log_fault("prod", 3_000)
    world.connect(USER, "prod")
    world.run_until(15_000)
    prod = kinds(world, "prod")
    assert prod[:3] == [SessionRestarted, GlassesConnected, SessionOpened]
    assert heard(world, "prod", 10_000)
    assert all_violations(world) == []
    world.stop()


def opened(world: World) -> list[str]:
    return [e.stream for e in world.stores["prod"].read_all() if isinstance(e.event, SessionOpened)]


def returning_while_the_log_cannot_be_read(world: World, fault_ms: int) -> None:
    """`USER` had a session on prod, which ended; at 3 s the log's reads fail for `fault_ms`,
    and the glasses come back to prod."""
    world.connect(USER, "prod")
    world.run_until(1_000)
    world.disconnect(USER)
    world.run_until(3_000)
    world.log_read_fault("prod", fault_ms)
    world.connect(USER, "prod")


def test_a_returning_user_whose_latest_incarnation_cannot_be_read_opens_soon_after_it_can() -> None:
    world = World(servers=["prod"], seed=4, grace_ms=1_000)
    returning_while_the_log_cannot_be_read(world, 2_000)
    world.run_until(5_000)
    assert opened(world) == [f"prod/{USER}/1"], "no incarnation opened without knowing the latest"
    # Asked again with backoff from 200 ms: the read that first succeeds comes within the
    # backoff that was due when the fault ended (1.6 s and its jitter), not a flat 5 s later.
    back_by = 5_000 + int(1_600 * (1 + SESSION_RESTARTS.jitter))
    world.run_until(back_by)
    assert opened(world) == [f"prod/{USER}/1", f"prod/{USER}/2"], "the input kept, asked again"
    world.run_until(back_by + 2_000)
    assert heard(world, "prod", back_by)
    assert all_violations(world) == []
    world.stop()


def test_a_disconnect_while_the_session_waits_to_open_follows_the_connect() -> None:
    """Dropped, as an input for no session, the disconnect would leave the session that opens
    later ACTIVE with its bridge in the room, for glasses that left."""
    world = World(servers=["prod"], seed=4, grace_ms=1_000)
    returning_while_the_log_cannot_be_read(world, 2_000)
    world.run_until(3_500)
    world.disconnect(USER)
    world.run_until(30_000)
    stream = f"prod/{USER}/2"
    told = [type(e.event) for e in world.stores["prod"].read_all() if e.stream == stream]
    assert told[:2] == [GlassesConnected, SessionOpened]
    assert GlassesDisconnected in told, "the disconnect, kept behind the connect"
    assert told[-1] == SessionDisposed, "grace ran out: nothing of the session remains"
    assert world.sfu.participants(USER) == []
    assert all_violations(world) == []
    world.stop()


def test_a_user_new_to_the_server_opens_a_session_without_reading_the_log() -> None:
    world = World(servers=["prod"], seed=4)
    world.log_read_fault("prod", 60_000)
    world.connect(USER, "prod")
    world.run_until(3_000)
    assert heard(world, "prod", 0), "the Bloom filter of the server's users says: never here"
    assert all_violations(world) == []
    world.stop()


def ended_sessions(store: EventStore, users: list[str]) -> None:
    """A session of each of `users` on prod, opened and disposed."""
    for user in users:
        life: list[AnyEvent] = [
            SessionOpened(cause="c", why="the glasses connected", incarnation=1, epoch=1),
            SessionDisposed(cause="c", why="grace ran out"),
        ]
        store.append(
            stream_name("prod", user, 1),
            0,
            [
                Pending(event_id=f"{user}-{n}", time_ms=n, server="prod", user=user, event=event)
                for n, event in enumerate(life)
            ],
        )


class RefusalsCounted(MemoryStore):
    """A log in memory that counts the appends it refused for a wrong expected version: an
    incarnation opened under a number the log already holds."""

    def __init__(self) -> None:
        super().__init__()
        self.refused = 0

    def append(
        self, stream: str, expected_version: int, events: Sequence[Pending]
    ) -> list[Envelope]:
        try:
            return super().append(stream, expected_version, events)
        except WrongExpectedVersion:
            self.refused += 1
            raise


def test_a_user_the_filter_has_not_reached_yet_is_asked_of_the_log() -> None:
    """At start the supervisor fills its filter of the log's users a slice a turn; a user
    connecting before the filter holds them all must not be taken for a stranger, whose
    incarnation 1 would collide with the one in the log."""
    users = [f"u{n}@example.com" for n in range(3 * FILL_SLICE)]
    store = RefusalsCounted()
    ended_sessions(store, users)
    harness = Harness("deterministic", store=lambda: store)
    runtime = harness.runtimes["prod"]
    last_filled = store.session_users("prod")[-1]  # the filter takes the log's users in order
    runtime.glasses_connected(last_filled, epoch=2).wait(timeout_s=5)
    assert store.stream_version(stream_name("prod", last_filled, 2)) > 0, "incarnation 2"
    assert store.refused == 0, "opened as incarnation 2 at once, not after colliding with 1"
    stranger = "new@example.com"
    harness.run_for(0)  # every slice, each a timer due now: the filter is full
    runtime.glasses_connected(stranger, epoch=2).wait(timeout_s=5)
    assert store.stream_version(stream_name("prod", stranger, 1)) > 0
    harness.stop()


class IndexWithoutUsers(RefusalsCounted):
    """A log whose list of the server's users is empty: the supervisor's filter takes every
    user for a stranger, as a filter that lost a user would."""

    def session_users(self, server: str | None = None) -> list[str]:
        return []


def test_a_colliding_session_ends_and_its_input_opens_the_next_incarnation() -> None:
    """Taken for a stranger, a returning user opens incarnation 1, which the log already holds,
    ended: the session's append is refused, and its restart rebuilds a disposed stream. It
    ends, as its disposal would have ended it, and the input it hands back opens incarnation 2
    (before, the input went back and forth between it and the supervisor for ever)."""
    store = IndexWithoutUsers()
    ended_sessions(store, [USER])
    harness = Harness("deterministic", store=lambda: store)
    runtime = harness.runtimes["prod"]
    runtime.glasses_connected(USER, epoch=2).wait(timeout_s=5)
    harness.run_for(5_000)
    view = runtime.session(USER)
    assert view is not None
    assert (view.stream, view.state) == (stream_name("prod", USER, 2), "ACTIVE")
    assert [p.server for p in harness.sfu.participants(USER)] == ["prod"], "its bridge joined"
    assert len(runtime.actors()) == 4, "the supervisor, the timer, one session and its bridge"
    assert store.refused == 1, "one collision, then the log was asked"
    harness.stop()


class IndexWithoutSessions(IndexWithoutUsers):
    """A log whose index of sessions has lost its rows (a damaged or tampered file): it says
    no user ever had a session, and that every user's latest incarnation is 0."""

    def last_incarnation(self, server: str, user: str) -> int:
        return 0


def connects_after_one_collision(kind: ExecutorKind, store: RefusalsCounted) -> None:
    """The user connects to a server on `store`: its first incarnation collides with the log
    once, and the second opens, joins and holds the session."""
    harness = Harness(kind, store=lambda: store)
    runtime = harness.runtimes["prod"]
    runtime.glasses_connected(USER, epoch=2).wait(timeout_s=5)
    assert harness.eventually(
        lambda: getattr(runtime.session(USER), "stream", "") == stream_name("prod", USER, 2)
    )
    assert harness.eventually(lambda: len(harness.sfu.participants(USER)) == 1), "it joined"
    assert store.refused == 1, "one collision"
    harness.stop()


@pytest.mark.parametrize("kind", EXECUTORS)
def test_a_session_the_index_lost_is_not_opened_again_once_it_ended(kind: ExecutorKind) -> None:
    """The log's index under-reports: asked, it still says incarnation 0. The first collision
    ends the rebuilt incarnation 1 as before; the supervisor then knows that stream ended and
    opens the next one, where it opened incarnation 1 again at once, for ever (a livelock)."""
    store = IndexWithoutSessions()
    ended_sessions(store, [USER])
    connects_after_one_collision(kind, store)


def stray_stream() -> IndexWithoutSessions:
    """A log whose index lost its rows, where the user's first stream holds one stray input
    and no session's opening."""
    store = IndexWithoutSessions()
    connected = GlassesConnected(epoch=1)
    store.append(
        stream_name("prod", USER, 1),
        0,
        [Pending(event_id="stray", time_ms=0, server="prod", user=USER, event=connected)],
    )
    return store


@pytest.mark.parametrize("kind", EXECUTORS)
def test_a_stream_that_holds_no_session_is_passed_over_for_the_next_incarnation(
    kind: ExecutorKind,
) -> None:
    """The stream a new session takes already holds records but no session's opening (a log
    whose index lost it, or forged): its rebuild finds no session. It hands the stream and its
    input back, and the supervisor opens the next incarnation; before, it failed and restarted
    on that stream for ever, backing off, and the user never had audio."""
    connects_after_one_collision(kind, stray_stream())


def test_an_input_that_reaches_a_session_giving_its_stream_up_goes_on_to_the_next() -> None:
    """A disconnect reaches the supervisor at each step, in turn, of a connect whose session
    gives up a stream that holds no session: wherever it lands, it is durable, never held by
    the session given up and lost with it."""
    for steps in range(40):
        harness = Harness("deterministic", store=stray_stream)
        runtime = harness.runtimes["prod"]
        connected = runtime.glasses_connected(USER, epoch=2)
        for _ in range(steps):
            harness.step()
        runtime.glasses_disconnected(USER).wait(timeout_s=5)
        connected.wait(timeout_s=5)
        harness.stop()


def test_restarts_back_off_while_the_log_fails_and_never_give_up() -> None:
    world = World(servers=["prod"], seed=5)
    world.connect(USER, "prod")
    world.run_until(1_000)
    world.log_fault("prod", 60_000)
    world.disconnect(USER)
    world.run_until(61_000)
    refused = world.logs["prod"].refused
    quick = SESSION_RESTARTS.intensity + 1
    assert quick < refused < quick + 60_000 / SESSION_RESTARTS.min_backoff_ms / 4, (
        "a few quick restarts, then backoff: no tight loop over a minute"
    )
    world.run_until(61_000 + 2 * SESSION_RESTARTS.max_backoff_ms)
    assert SessionRestarted in kinds(world, "prod"), "tried again once the log worked"
    world.stop()


class _BrokenConnector:
    """A connector whose `join` raises for its first `failures` calls, then passes on."""

    def __init__(self, inner: SimConnector, failures: int) -> None:
        self._inner = inner
        self._failures = failures

    def join(self, request: JoinRequest, on_event: Callable[[RoomEvent], object]) -> RoomHandle:
        if self._failures > 0:
            self._failures -= 1
            msg = "the SDK could not create a room"
            raise RuntimeError(msg)
        return self._inner.join(request, on_event)

    def lookup_holder(
        self, room: str, identity: str, reply: Callable[[LookupAnswer], object]
    ) -> None:
        self._inner.lookup_holder(room, identity, reply)


def test_a_bridge_that_fails_to_start_is_replaced_through_its_sessions_policy() -> None:
    world = World(servers=["prod"], seed=6)
    runtime = world.runtimes["prod"]
    broken = Runtime(
        server="prod",
        executor=world.executor.start_process(),
        store=world.logs["prod"],
        connector=_BrokenConnector(world.sfu.connector("prod"), failures=2),
        audio_sink=world._sink,
    )
    world.runtimes["prod"] = broken
    runtime.stop()
    world.connect(USER, "prod")
    world.run_until(5_000)
    prod = world.stores["prod"].read_all()
    lost = [e.event for e in prod if isinstance(e.event, BridgeDisconnected)]
    assert [e.reason for e in lost] == ["AGENT_ERROR", "AGENT_ERROR"]
    assert heard(world, "prod", 1_000)
    assert all_violations(world) == []
    world.stop()


def test_on_threads_a_session_whose_log_fails_recovers_with_every_input() -> None:
    executor = PoolExecutor()
    log = FaultyStore(MemoryStore(), lambda: int(time.monotonic() * 1000))
    sfu = SimLiveKit(executor, random.Random(0), SfuConfig(join_latency_ms=(5, 20)))
    runtime = Runtime(server="prod", executor=executor, store=log, connector=sfu.connector("prod"))
    actors = []
    try:
        runtime.glasses_connected(USER)
        assert eventually(lambda: getattr(runtime.session(USER), "bridge", None) == "up")
        actors = runtime.actors()
        log.fail_for(1_000)
        runtime.glasses_disconnected(USER)
        runtime.glasses_connected(USER)
        time.sleep(0.2)
        assert runtime.session(USER) is not None, "a failed session still answers"
        assert eventually(lambda: SessionRestarted in [type(e.event) for e in log.read_all()])
        assert eventually(lambda: getattr(runtime.session(USER), "state", None) == "ACTIVE")
        kept: list[Any] = [type(e.event) for e in log.read_all()]
        after = kept[kept.index(SessionRestarted) :]
        assert (after.count(GlassesDisconnected), after.count(GlassesConnected)) == (1, 1)
    finally:
        runtime.stop()
        executor.shutdown()
    assert not any(actor.is_alive() for actor in actors)

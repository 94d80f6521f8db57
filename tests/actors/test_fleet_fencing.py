"""Fencing by the log a fleet shares, on both executors: with the room service failing, a
server the glasses left finishes a slow join and kicks the server they moved to, which rejoins
on the log's word; the server they left reads the log too, and stays down. And a connection's
record reaches the fleet stream before the server acts, whoever else appends to it. A join
still in flight looks in the log for a bridge that joined since it began: one that finds it was
overtaken gives up at once, one that finds nothing waits on."""

import uuid

import pytest

from events.catalog import (
    BridgeJoined,
    BridgeStarted,
    BridgeStopped,
    ConnectionRecorded,
    RejoinDecided,
    RejoinDeclined,
    SessionRestarted,
    TimerFired,
)
from events.envelope import Pending
from events.fleet import APPEND_ATTEMPTS, fleet_stream
from events.memory_store import MemoryStore
from simulations.faulty_store import RacedStore
from tests.actors.harness import EXECUTORS, LOOKING, ExecutorKind, Harness

USER = "isaiah@mentra.glass"


@pytest.mark.parametrize("kind", EXECUTORS)
def test_a_late_join_is_fenced_by_the_shared_log_while_the_room_service_fails(
    kind: ExecutorKind,
) -> None:
    harness = Harness(kind, servers=("prod", "debug"), shared_log=True)
    try:
        for server in ("prod", "debug"):
            harness.sfu.room_service_fault(server, 600_000, hangs=False)
        harness.phone(USER)
        harness.sfu.slow_next_join("prod", 1_000)
        harness.runtimes["prod"].glasses_connected(USER, epoch=1).wait(timeout_s=5)
        # The glasses move on before prod's join completes, and prod does not notice.
        harness.runtimes["debug"].glasses_connected(USER, epoch=2).wait(timeout_s=5)

        def settled() -> bool:
            fenced = harness.count(RejoinDeclined, "prod") == 1
            in_room = [p.server for p in harness.sfu.participants(USER)] == ["debug"]
            heard = any(c.server == "debug" for c in harness.chunks[-5:])
            return fenced and in_room and heard

        assert harness.eventually(settled)
        debug = harness.events("debug")
        assert any(isinstance(e, RejoinDecided) and "fleet log" in e.why for e in debug)
        recorded = [e for e in harness.events("prod") if isinstance(e, ConnectionRecorded)]
        assert [e.epoch for e in recorded] == [1]
        assert harness.sfu.kicks == 2, "prod's late join kicked debug, debug's rejoin kicked prod"
    finally:
        harness.stop()


def rival(stream: str) -> Pending:
    """Another server's record of a connection, appended to `stream` before ours."""
    return Pending(
        event_id=str(uuid.uuid4()),
        time_ms=0,
        server="dev",
        user=USER,
        event=ConnectionRecorded(cause="c", why="another server's connection", epoch=0),
    )


@pytest.mark.parametrize("races", [2, APPEND_ATTEMPTS])
@pytest.mark.parametrize("kind", EXECUTORS)
def test_a_connections_record_that_loses_races_for_the_fleet_stream_lands_before_the_join(
    kind: ExecutorKind, races: int
) -> None:
    """Lost a few times, the record is appended again at once; lost every time, the turn
    fails and the restarted session records it. Either way it is in the log before the bridge
    starts."""
    harness = Harness(kind, shared_log=True, store=lambda: RacedStore(MemoryStore(), rival))
    log = harness.stores["prod"]
    assert isinstance(log, RacedStore)
    log.races = races
    try:
        harness.runtimes["prod"].glasses_connected(USER, epoch=1).wait(timeout_s=5)
        assert harness.eventually(lambda: harness.count(BridgeJoined) == 1)
        fleet = log.read_stream(fleet_stream(USER))
        assert [e.server for e in fleet] == ["dev"] * races + ["prod"]
        (started,) = [e for e in log.read_all() if isinstance(e.event, BridgeStarted)]
        assert fleet[-1].position < started.position
        assert harness.count(SessionRestarted) == (races == APPEND_ATTEMPTS)
    finally:
        harness.stop()


@pytest.mark.parametrize("kind", EXECUTORS)
def test_a_join_overtaken_in_flight_is_given_up_on_the_fleet_logs_word(kind: ExecutorKind) -> None:
    """dev's join never completes, as one overtaken in flight does with the real SDK, while
    debug's bridge (of an older connection) joins, and the room service fails: dev's first look
    at the log finds debug's join, gives its own up and joins again, before its join deadline;
    debug, kicked, stays down on the log's word."""
    harness = Harness(kind, servers=("debug", "dev"), shared_log=True, deadlines=LOOKING)
    try:
        for server in ("debug", "dev"):
            harness.sfu.room_service_fault(server, 600_000, hangs=False)
        harness.overtake_in_flight(USER)
        assert harness.eventually(lambda: harness.dev_won(USER))
        dev = harness.events("dev")
        (stopped,) = [e for e in dev if isinstance(e, BridgeStopped)]
        assert "overtaken in flight" in stopped.why
        assert "debug's bridge" in stopped.why
        checks = [e for e in dev if isinstance(e, TimerFired) and e.timer == "join_check"]
        assert len(checks) == 1, "given up at the first look, not at the join deadline"
        assert any(isinstance(e, RejoinDecided) and "fleet log" in e.why for e in dev)
        assert [e.generation for e in dev if isinstance(e, BridgeJoined)] == [2]
    finally:
        harness.stop()


@pytest.mark.parametrize("kind", EXECUTORS)
def test_a_slow_join_nobody_overtook_is_looked_at_and_left_to_its_deadline(
    kind: ExecutorKind,
) -> None:
    harness = Harness(kind, servers=("dev",), shared_log=True, deadlines=LOOKING)
    try:
        harness.sfu.hang_joins("dev", 100)
        harness.runtimes["dev"].glasses_connected(USER, epoch=1).wait(timeout_s=5)
        assert harness.eventually(lambda: harness.count(BridgeJoined, "dev") == 1)
        dev = harness.events("dev")
        checks = [e for e in dev if isinstance(e, TimerFired) and e.timer == "join_check"]
        assert len(checks) == LOOKING.join_ms // LOOKING.join_check_ms - 1
        (stopped,) = [e for e in dev if isinstance(e, BridgeStopped)]
        assert stopped.why == "no join within 1.5 s"
    finally:
        harness.stop()

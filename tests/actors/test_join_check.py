"""A join still in flight, on a server without a shared log, asked of the room service: one
the room does not hold after the check interval was overtaken (the real SDK tells it nothing
until its 15 s timeout) and is given up at once, the holder fenced by epoch."""

import pytest

from actors.connector import JoinRequest
from actors.policy import SUPERVISED
from events.catalog import (
    BridgeJoined,
    BridgeKept,
    BridgeStopped,
    IdentityHolderRequested,
    RejoinDecided,
    RejoinDeclined,
    TimerFired,
)
from tests.actors.harness import EXECUTORS, LOOKING, ExecutorKind, Harness

USER = "isaiah@mentra.glass"


@pytest.mark.parametrize("kind", EXECUTORS)
def test_a_join_the_room_does_not_hold_is_given_up_on_the_room_services_word(
    kind: ExecutorKind,
) -> None:
    """dev's join never completes, as one overtaken in flight does with the real SDK, while
    debug's bridge (of an older connection, whose end debug has not noticed) joins: dev's
    first check finds debug holding the identity, gives its own join up and joins again
    before its join deadline; debug, kicked, stays down."""
    harness = Harness(kind, servers=("debug", "dev"), deadlines=LOOKING)
    try:
        harness.overtake_in_flight(USER)
        assert harness.eventually(lambda: harness.dev_won(USER))
        dev = harness.events("dev")
        asked = [e for e in dev if isinstance(e, IdentityHolderRequested)]
        assert "a join in flight" in asked[0].why
        (stopped,) = [e for e in dev if isinstance(e, BridgeStopped)]
        assert "the room service says debug (epoch 1) holds the identity" in stopped.why
        checks = [e for e in dev if isinstance(e, TimerFired) and e.timer == "join_check"]
        assert len(checks) == 1, "given up at the first look, not at the join deadline"
        fenced = [e for e in dev if isinstance(e, RejoinDecided)]
        assert "older than ours" in fenced[0].why
        assert [e.generation for e in dev if isinstance(e, BridgeJoined)] == [2]
        declined = [e for e in harness.events("debug") if isinstance(e, RejoinDeclined)]
        assert "newer connection" in declined[0].why
    finally:
        harness.stop()


@pytest.mark.parametrize("kind", EXECUTORS)
def test_a_join_that_completes_before_its_check_is_never_asked_about(kind: ExecutorKind) -> None:
    harness = Harness(kind, servers=("dev",), deadlines=LOOKING)
    try:
        harness.connected_and_joined(USER, "dev", epoch=1)
        harness.run_for(2 * LOOKING.join_ms)
        dev = harness.events("dev")
        assert not [e for e in dev if isinstance(e, TimerFired) and e.timer == "join_check"]
        assert harness.count(IdentityHolderRequested, "dev") == 0
    finally:
        harness.stop()


@pytest.mark.parametrize("kind", EXECUTORS)
def test_a_kick_by_our_own_late_join_of_the_same_connection_is_rejoined(
    kind: ExecutorKind,
) -> None:
    """With the real SDK, a join given up in flight is waited out, never cancelled, and its
    retry can land seconds later, with this same connection's epoch, and kick the bridge that
    replaced it. The room service then names this server and epoch: the holder is that late
    join, leaving at once, and the bridge joins again."""
    harness = Harness(kind, servers=("dev",))
    try:
        harness.connected_and_joined(USER, "dev", epoch=2)
        late = JoinRequest(
            room=USER,
            identity=SUPERVISED.identity(USER, "dev"),
            server="dev",
            epoch=2,
            generation=1,
            phone_identity=USER,
        )
        harness.sfu.join(late, lambda _event: None)

        def back() -> bool:
            heard = any(c.server == "dev" and c.generation == 2 for c in harness.chunks[-5:])
            return harness.count(BridgeJoined, "dev") == 2 and heard

        assert harness.eventually(back)
        rejoins = [e for e in harness.events("dev") if isinstance(e, RejoinDecided)]
        assert "an earlier join of ours" in rejoins[0].why
    finally:
        harness.stop()


@pytest.mark.parametrize("kind", EXECUTORS)
def test_after_one_join_given_up_a_slow_server_is_waited_for(kind: ExecutorKind) -> None:
    """The room holds nobody at the first check, so the join is given up; the next is as slow
    to answer, but follows a failed join: it goes on, and joins, rather than being given up
    in turn for as long as the server stays slow."""
    harness = Harness(kind, servers=("dev",), deadlines=LOOKING)
    try:
        harness.phone(USER)
        harness.sfu.slow_next_join("dev", 2 * LOOKING.join_check_ms)
        harness.runtimes["dev"].glasses_connected(USER, epoch=1).wait(timeout_s=5)
        assert harness.eventually(lambda: harness.count(BridgeStopped, "dev") == 1)
        harness.sfu.slow_next_join("dev", 2 * LOOKING.join_check_ms)
        assert harness.eventually(lambda: harness.count(BridgeJoined, "dev") == 1)
        dev = harness.events("dev")
        assert [e.generation for e in dev if isinstance(e, BridgeJoined)] == [2]
        assert harness.count(BridgeStopped, "dev") == 1
        kept = [e for e in dev if isinstance(e, BridgeKept)]
        assert "follows a failed one" in kept[0].why
    finally:
        harness.stop()

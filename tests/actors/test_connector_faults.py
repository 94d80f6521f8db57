"""A session under the faults of the services it calls, on both executors: a room service that
cannot say who holds the identity (never read as "nobody"), calls that hang past their
deadlines, and credentials refused for good (no retries until the glasses come back)."""

from collections.abc import Iterator

import pytest

from events.catalog import (
    BridgeKept,
    BridgeStarted,
    BridgeStopped,
    IdentityHolderObserved,
    LookupRetryDecided,
    RejoinDeclined,
    RetriesStopped,
    TimerFired,
)
from tests.actors.harness import EXECUTORS, Harness

USER = "isaiah@mentra.glass"


@pytest.fixture(params=EXECUTORS)
def harness(request: pytest.FixtureRequest) -> Iterator[Harness]:
    made = Harness(request.param, servers=("prod", "debug"))
    yield made
    made.stop()


def bridge_up(harness: Harness, server: str = "prod") -> bool:
    return getattr(harness.runtimes[server].session(USER), "bridge", None) == "up"


def blip(harness: Harness) -> None:
    harness.runtimes["prod"].glasses_disconnected(USER)
    harness.runtimes["prod"].glasses_connected(USER)


@pytest.mark.parametrize("hangs", [False, True], ids=["fails", "hangs"])
def test_a_room_service_that_cannot_say_keeps_a_bridge_that_is_in_the_room(
    harness: Harness, hangs: bool
) -> None:
    harness.runtimes["prod"].glasses_connected(USER)
    assert harness.eventually(lambda: bridge_up(harness))
    harness.sfu.room_service_fault("prod", 60_000, hangs=hangs)
    blip(harness)
    assert harness.eventually(lambda: harness.count(BridgeKept) == 1)
    (kept,) = [e for e in harness.events() if isinstance(e, BridgeKept)]
    assert "could not say who holds the identity" in kept.why
    if hangs:
        assert any(isinstance(e, TimerFired) and e.timer == "lookup" for e in harness.events())
    assert harness.count(BridgeStarted) == 1, "never restarted on an unknown"
    assert harness.sfu.joins == 1


def test_a_kick_while_the_room_service_cannot_say_is_never_answered_with_a_blind_rejoin(
    harness: Harness,
) -> None:
    harness.runtimes["prod"].glasses_connected(USER, epoch=1)
    assert harness.eventually(lambda: bridge_up(harness))
    harness.sfu.room_service_fault("prod", 1_000)
    # The glasses move to debug; prod has not noticed yet, and its bridge is kicked.
    harness.runtimes["debug"].glasses_connected(USER, epoch=2)
    assert harness.eventually(lambda: harness.count(LookupRetryDecided) >= 1)
    assert harness.eventually(
        lambda: any(
            "newer connection" in e.why for e in harness.events() if isinstance(e, RejoinDeclined)
        )
    ), "once the room service answers, the newer connection keeps the identity"
    assert harness.count(BridgeStarted) == 1, "prod never rejoined blind"
    assert harness.sfu.kicks == 1, "no kick war"
    assert [p.server for p in harness.sfu.participants(USER)] == ["debug"]


def test_refused_credentials_stop_the_retries_until_the_glasses_reconnect(
    harness: Harness,
) -> None:
    harness.sfu.refuse_credentials("prod")
    harness.runtimes["prod"].glasses_connected(USER)
    assert harness.eventually(lambda: harness.count(RetriesStopped) == 1)
    harness.run_for(2_000)
    assert harness.count(BridgeStarted) == 1, "a permanent error is not retried with backoff"
    status = harness.runtimes["prod"].session(USER)
    assert status is not None
    assert status.unavailable is not None
    assert "401" in status.unavailable
    harness.sfu.refuse_credentials("prod", refused=False)
    blip(harness)
    assert harness.eventually(lambda: bridge_up(harness)), "a reconnect tries again"
    assert harness.count(BridgeStarted) == 2
    assert harness.runtimes["prod"].session(USER).unavailable is None  # type: ignore[union-attr]


def test_refused_credentials_are_never_read_as_nobody_holding_the_identity(
    harness: Harness,
) -> None:
    harness.runtimes["prod"].glasses_connected(USER)
    assert harness.eventually(lambda: bridge_up(harness))
    harness.sfu.refuse_credentials("prod")
    blip(harness)
    assert harness.eventually(lambda: harness.count(RetriesStopped) == 1)
    observed = [e for e in harness.events() if isinstance(e, IdentityHolderObserved)]
    assert observed[-1].permanent
    assert bridge_up(harness), "the bridge in the room stays"
    assert harness.count(BridgeStopped) == 0


def test_a_join_that_hangs_past_its_deadline_is_a_failure_and_is_retried(
    harness: Harness,
) -> None:
    harness.sfu.hang_joins("prod", 300)
    harness.runtimes["prod"].glasses_connected(USER)
    assert harness.eventually(lambda: bridge_up(harness))
    assert harness.count(BridgeStarted) == 2
    assert harness.count(BridgeStopped) == 1
    stopped = next(e for e in harness.events() if isinstance(e, BridgeStopped))
    assert "no join within 0.4 s" in stopped.why

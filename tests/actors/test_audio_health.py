"""Audio health on both executors: a stall while connected is noticed and fixed by a restart
under the budget, silence and a muted phone are not stalls, a missing phone is reported and
never "fixed" by churning the bridge, a stuck SDK is replaced, and the host hears each change
of health once it is in the log.

The failure modes of research/mentraos-bridge-history.md section 6 these pin down: 8 (the phone
not in the room while the bridge is healthy), 9 (silent no-audio behind healthy signals; and
silence that is not a fault), 12 (a failure the user is told of) and 13 (a status that shows
the SDK's reconnecting state, the phone's presence and the last packet time)."""

from collections.abc import Iterator

import pytest

from actors.policy import LEGACY
from events.catalog import (
    AudioResumed,
    AudioStalled,
    BridgeJoined,
    BridgeKept,
    BridgeStarted,
    BridgeStopped,
    HealthChanged,
    IdentityHolderRequested,
    LookupRetryDecided,
    PhoneAbsent,
    RejoinDeclined,
)
from events.projection import Health, replay_stream
from tests.actors.harness import EXECUTORS, WATCH, ExecutorKind, Harness

USER = "isaiah@mentra.glass"


@pytest.fixture(params=EXECUTORS)
def kind(request: pytest.FixtureRequest) -> ExecutorKind:
    kind: ExecutorKind = request.param
    return kind


@pytest.fixture
def harness(kind: ExecutorKind) -> Iterator[Harness]:
    made = Harness(kind)
    yield made
    made.stop()


def connected_with_audio(harness: Harness, *, silent: bool = False) -> list[tuple[str, Health]]:
    """The user connected, the phone sending, the health `ok`; the changes the host heard."""
    told: list[tuple[str, Health]] = []
    harness.runtimes["prod"].subscribe_health(lambda user, health: told.append((user, health)))
    harness.phone(USER, silent=silent)
    harness.runtimes["prod"].glasses_connected(USER)
    assert harness.eventually(lambda: health(harness) == "ok")
    return told


def health(harness: Harness) -> str | None:
    status = harness.runtimes["prod"].status(USER)
    return status.health.state if status is not None and status.health is not None else None


def changes(told: list[tuple[str, Health]]) -> list[str]:
    """The states the host was told, a state repeated with a new reason counted once."""
    states: list[str] = []
    for _, told_health in told:
        if not states or states[-1] != told_health.state:
            states.append(told_health.state)
    return states


def heard_after(harness: Harness, mark: int) -> bool:
    return len(harness.chunks) > mark


def test_a_stall_while_connected_is_noticed_and_the_bridge_restarted(harness: Harness) -> None:
    told = connected_with_audio(harness)
    harness.sfu.audio_stall(USER, 60_000)
    assert harness.eventually(lambda: harness.count(AudioStalled) == 1, within_ms=2_000)
    mark = len(harness.chunks)
    assert harness.eventually(lambda: heard_after(harness, mark), within_ms=2_000)
    assert harness.eventually(lambda: health(harness) == "ok")
    events = harness.events()
    (requested,) = [e for e in events if isinstance(e, IdentityHolderRequested)]
    assert "no audio for" in requested.why
    assert [e.generation for e in events if isinstance(e, BridgeStarted)] == [1, 2]
    (stopped,) = [e for e in events if isinstance(e, BridgeStopped)]
    assert "no audio reaches it" in stopped.why
    assert changes(told)[-4:] == ["ok", "audio_stalled", "connecting", "ok"]


def test_the_stall_is_judged_by_the_threshold(harness: Harness) -> None:
    connected_with_audio(harness)
    harness.sfu.audio_stall(USER, 60_000)
    assert harness.eventually(lambda: harness.count(AudioStalled) == 1, within_ms=2_000)
    (stalled,) = [e for e in harness.events() if isinstance(e, AudioStalled)]
    assert stalled.silent_ms >= WATCH.stall_after_ms
    assert stalled.last_chunk_ms is not None


def test_silent_chunks_never_make_a_stall(harness: Harness) -> None:
    connected_with_audio(harness, silent=True)
    harness.run_for(10 * WATCH.stall_after_ms)
    assert harness.count(AudioStalled) == 0
    assert harness.count(BridgeStarted) == 1
    assert health(harness) == "ok"


def test_a_muted_phone_that_sends_nothing_is_not_a_stall(harness: Harness) -> None:
    connected_with_audio(harness)
    harness.sfu.phone_muted(USER, muted=True)
    harness.sfu.audio_stall(USER, 60_000)  # and nothing reaches the bridge meanwhile
    harness.run_for(5 * WATCH.stall_after_ms)
    assert harness.count(AudioStalled) == 0
    assert harness.count(BridgeStarted) == 1
    status = harness.runtimes["prod"].status(USER)
    assert status is not None
    assert status.bridge is not None
    assert status.bridge.phone_muted
    assert status.health == Health(state="ok", reason="the phone is muted")


def test_a_phone_muted_before_the_bridge_joins_is_ok_from_the_join(harness: Harness) -> None:
    harness.sfu.phone_joined(USER)
    harness.sfu.phone_muted(USER, muted=True)
    harness.runtimes["prod"].glasses_connected(USER)
    assert harness.eventually(lambda: health(harness) == "ok")
    harness.run_for(5 * WATCH.phone_absent_after_ms)
    assert harness.count(AudioStalled) == 0
    assert harness.count(BridgeStarted) == 1
    (joined,) = [e for e in harness.events() if isinstance(e, BridgeJoined)]
    assert joined.phone_muted


def test_a_missing_phone_is_reported_absent_and_never_fixed_by_a_restart(
    harness: Harness,
) -> None:
    told = connected_with_audio(harness)
    harness.sfu.phone_left(USER)
    assert harness.eventually(lambda: health(harness) == "phone_absent", within_ms=2_000)
    harness.run_for(5 * WATCH.phone_absent_after_ms)
    assert harness.count(AudioStalled) == 0, "a missing phone is not a stall"
    assert harness.count(PhoneAbsent) == 1
    harness.sfu.phone_joined(USER)
    mark = len(harness.chunks)
    assert harness.eventually(lambda: heard_after(harness, mark))
    assert harness.eventually(lambda: health(harness) == "ok")
    assert harness.count(BridgeStarted) == 1, "the phone came back to the same bridge"
    assert changes(told)[-2:] == ["phone_absent", "ok"]


def test_a_stuck_sdk_is_replaced(harness: Harness) -> None:
    connected_with_audio(harness)
    harness.sfu.sdk_reconnecting("prod", 60_000)
    assert harness.eventually(
        lambda: (
            getattr(harness.runtimes["prod"].status(USER).bridge, "sdk_state", None)  # type: ignore[union-attr]
            in ("reconnecting", None)
        )
    )
    mark = len(harness.chunks)
    assert harness.eventually(lambda: heard_after(harness, mark), within_ms=2_000)
    assert harness.count(AudioStalled) == 1
    assert [e.generation for e in harness.events() if isinstance(e, BridgeStarted)] == [1, 2]


def test_a_stall_while_the_room_service_cannot_say_is_asked_again_not_restarted_blind(
    harness: Harness,
) -> None:
    connected_with_audio(harness)
    harness.sfu.room_service_fault("prod", 1_000, hangs=False)
    harness.sfu.audio_stall(USER, 60_000)
    assert harness.eventually(lambda: harness.count(LookupRetryDecided) >= 1, within_ms=2_000)
    assert harness.count(BridgeStarted) == 1, "no restart while the service cannot say"
    mark = len(harness.chunks)
    assert harness.eventually(lambda: heard_after(harness, mark), within_ms=4_000)
    assert harness.count(BridgeStarted) == 2


def test_status_reports_the_bridge_with_wall_clock_times(harness: Harness) -> None:
    connected_with_audio(harness)
    harness.run_for(200)
    status = harness.runtimes["prod"].status(USER)
    assert status is not None
    assert status.bridge is not None
    report = status.bridge
    now = harness.executor.wall_ms()
    assert report.sdk_state == "connected"
    assert report.generation == status.session.generation == 1
    assert report.chunks > 0
    assert report.lost_chunks == 0
    assert report.phone_present
    assert not report.stalled
    assert report.joined_ms is not None
    assert now - 10_000 < report.joined_ms <= now
    assert report.last_chunk_ms is not None
    assert report.joined_ms <= report.last_chunk_ms <= now
    assert report.phone_since_ms is not None
    assert report.phone_since_ms <= now


def test_what_the_host_was_told_is_in_the_log(harness: Harness) -> None:
    told = connected_with_audio(harness)
    harness.sfu.audio_stall(USER, 60_000)
    assert harness.eventually(lambda: health(harness) == "audio_stalled" or len(told) > 3)
    assert harness.eventually(lambda: health(harness) == "ok")
    logged = [e for e in harness.events() if isinstance(e, HealthChanged)]
    assert [(USER, Health(state=e.state, reason=e.reason)) for e in logged] == told
    view = replay_stream(harness.stores["prod"].read_stream(f"prod/{USER}/1"))
    assert view is not None
    assert view.health == told[-1][1]


def test_a_subscriber_that_fails_does_not_stop_the_others(harness: Harness) -> None:
    def broken(_user: str, _health: Health) -> None:
        raise RuntimeError("the host's handler has a bug")

    harness.runtimes["prod"].subscribe_health(broken)
    told = connected_with_audio(harness)
    assert told[-1][1].state == "ok"


def test_an_unsubscribed_host_hears_nothing_more(harness: Harness) -> None:
    told: list[tuple[str, Health]] = []
    stop = harness.runtimes["prod"].subscribe_health(lambda u, h: told.append((u, h)))
    stop()
    connected_with_audio(harness)
    assert told == []


def test_other_policies_record_the_stall_and_stay_silent(kind: ExecutorKind) -> None:
    harness = Harness(kind, policy=LEGACY)
    try:
        connected_with_audio(harness)
        harness.sfu.audio_stall(USER, 60_000)
        assert harness.eventually(lambda: harness.count(AudioStalled) == 1, within_ms=2_000)
        mark = len(harness.chunks)
        harness.run_for(5 * WATCH.stall_after_ms)
        assert len(harness.chunks) == mark, "silent for the whole stall"
        assert health(harness) == "audio_stalled"
        assert any(
            "does not act on silence" in e.why
            for e in harness.events()
            if isinstance(e, RejoinDeclined)
        )
        assert harness.count(AudioResumed) == 0
    finally:
        harness.stop()


def test_refused_credentials_tell_the_host_unavailable_with_the_retry_time(
    harness: Harness,
) -> None:
    """Failure mode 12: when the runtime gives up for a while, the user is told, with why and
    until when, not only the log."""
    harness.sfu.refuse_credentials("prod")
    harness.runtimes["prod"].glasses_connected(USER)
    assert harness.eventually(lambda: health(harness) == "unavailable")
    status = harness.runtimes["prod"].status(USER)
    assert status is not None
    assert status.health is not None
    assert "401" in (status.health.reason or "")
    retry_at = status.health.retry_at_ms
    assert retry_at is not None
    assert retry_at == status.session.escalated_until_ms
    assert retry_at - harness.executor.wall_ms() > 60_000, "a long cool-down, not a retry storm"


def test_an_operator_removal_tells_the_host_unavailable_until_the_next_reconnect(
    harness: Harness,
) -> None:
    connected_with_audio(harness)
    harness.sfu.remove_participant(USER, "cloud-agent:" + USER)
    assert harness.eventually(lambda: health(harness) == "unavailable")
    status = harness.runtimes["prod"].status(USER)
    assert status is not None
    assert status.health is not None
    assert "operator" in (status.health.reason or "")
    assert status.health.retry_at_ms is None, "it comes back at the glasses' next reconnect"
    harness.runtimes["prod"].glasses_disconnected(USER)
    harness.runtimes["prod"].glasses_connected(USER)
    assert harness.eventually(lambda: health(harness) == "ok")


def test_a_stall_does_not_outlive_the_glasses_leaving(harness: Harness) -> None:
    """The bridge watches only while the glasses are here: a stall it reported before they left
    is no reason to restart it when they come back (the data path may have recovered)."""
    connected_with_audio(harness)
    harness.sfu.room_service_fault("prod", 600, hangs=False)
    harness.sfu.audio_stall(USER, 500)
    assert harness.eventually(lambda: harness.count(AudioStalled) == 1, within_ms=2_000)
    harness.runtimes["prod"].glasses_disconnected(USER)
    harness.run_for(700)
    harness.runtimes["prod"].glasses_connected(USER)
    assert harness.eventually(lambda: harness.count(BridgeKept) == 1)
    assert harness.eventually(lambda: health(harness) == "ok")
    assert harness.count(BridgeStarted) == 1, "the healthy bridge was kept"

"""The real `livekit` SDK against the loopback server, each check in a private network
namespace of its own (scripts/netns-run): the seed scenarios, a bad token, refused credentials,
audio faults (a dead data path, a phone that leaves, a muted phone), switches faster than a
join, a token that expires during an outage, joins given up in flight, cycles of kicks,
abandoned joins and crashes checked for leaks, the SDK's drills on a bridge, and a server
process killed with SIGKILL."""

import functools
import json
from typing import Any

import pytest

from simulations.scenario import SEED_PLAN
from tests.netns import run_in_netns

pytestmark = pytest.mark.integration


@functools.cache
def in_netns(*argv: str, timeout_s: float = 120) -> dict[str, Any]:
    """A check's findings; a check two tests read runs once."""
    return run_in_netns("tests.integration.real_sdk_checks", *argv, timeout_s=timeout_s)


def kinds(result: dict[str, Any]) -> list[str]:
    """The kind of each event in a live run's story."""
    return [line.split(":", 1)[0] for line in result["story"]]


@pytest.mark.parametrize("name", SEED_PLAN)
def test_a_seed_scenario_passes_with_the_real_sdk(name: str) -> None:
    result = in_netns("scenario", name)
    assert result["invariant_violations"] == []
    assert all(e["passed"] for e in result["expectations"]), result["expectations"]
    assert result["passed"]
    assert result["metrics"]["zombie_bridges"] == 0


def test_switches_faster_than_a_join_end_with_audio_on_the_last_server_and_no_kick_war() -> None:
    """prod, debug, prod, debug 20 ms apart while the loopback server takes 50-1200 ms a join:
    whichever join reaches the server last, audio ends on debug, and the kicks stop."""
    result = in_netns("scenario", "examples/slow-join-race.toml")
    assert result["invariant_violations"] == []
    assert all(e["passed"] for e in result["expectations"]), result["expectations"]
    assert result["metrics"]["kicks"] <= 2, "the race's kick and at most a late SDK retry's"


def test_a_token_that_expires_during_a_long_outage_leads_to_a_fresh_join() -> None:
    """An 8 s outage: with tokens that outlive it the SDK resumes the bridge; with tokens of
    2 s (the bridge's and the ones the server pushes, no leeway) the SDK's resume is refused
    (401) and it gives up, and the bridge's policy joins again with a fresh token."""
    result = in_netns("token-outage", timeout_s=240)
    lasting, expiring = result["lasting"], result["expiring"]
    for run in (lasting, expiring):
        assert run["invariant_violations"] == []
        assert all(e["passed"] for e in run["expectations"]), run["expectations"]
    assert kinds(lasting).count("BridgeStarted") == 1
    assert "BridgeReconnected" in kinds(lasting), "resumed with a token that outlived the outage"
    assert kinds(expiring).count("BridgeStarted") == 2, "its tokens expired: a fresh join"
    assert "BridgeReconnected" not in kinds(expiring)


def test_the_duplicate_identity_kick_reaches_the_older_bridge() -> None:
    result = in_netns("scenario", "rapid-switch")
    assert result["metrics"]["kicks"] >= 2, "debug kicked prod, and prod kicked debug back"


def test_an_operator_removal_stays_down_until_the_glasses_reconnect() -> None:
    result = in_netns("admin-removal")
    assert result["passed"], result
    assert "BridgeDisconnected: PARTICIPANT_REMOVED" in result["story"]
    declined = [line for line in result["story"] if line.startswith("RejoinDeclined")]
    assert declined
    assert "operator" in declined[0]


def test_a_dead_data_path_is_noticed_and_audio_is_back_within_5_s() -> None:
    result = in_netns("audio-stall")
    assert result["passed"], result["expectations"]
    metrics = result["metrics"]
    assert metrics["stalls"] == 1
    assert metrics["stall_recovery_ms"]["count"] == 1
    assert metrics["audio_gap_ms"] < 5_000, metrics
    assert kinds(result).count("BridgeStarted") == 2, result["story"]


def test_a_phone_that_leaves_is_reported_and_its_return_needs_no_restart() -> None:
    result = in_netns("phone-leave")
    assert result["passed"], result["expectations"]
    assert kinds(result).count("BridgeStarted") == 1, result["story"]
    assert "PhoneAbsent" in kinds(result)
    assert "AudioStalled" not in kinds(result)


def test_a_phone_that_says_it_is_muted_is_never_a_stall() -> None:
    result = in_netns("muted-phone")
    assert result["before"] == "ok"
    assert result["while_muted"] == {"health": "the phone is muted", "phone_muted": True}
    assert result["stalls"] == 0
    assert result["bridges"] == 1
    assert result["chunks_after_unmute"] > 5


def test_a_bad_token_is_a_prompt_clear_join_failure_without_the_secret() -> None:
    result = in_netns("bad-token")
    assert [e["kind"] for e in result["events"]] == ["RoomJoinFailed"]
    assert "401" in result["events"][0]["error"] or "nauthori" in result["events"][0]["error"]
    assert not result["secret_leaked"]


def test_refused_credentials_are_a_permanent_error_never_retried_with_backoff() -> None:
    result = in_netns("refused-credentials")
    assert result["events"].count("BridgeStarted") == 1, result["events"]
    assert result["permanent"] == [True]
    assert "RetriesStopped" in result["events"]
    assert "401" in result["unavailable"]
    assert "not-the-secret-either" not in json.dumps(result)


def test_a_join_given_up_in_flight_is_waited_out_and_never_kicks_the_newer_one() -> None:
    result = in_netns("abandoned-join")
    for way in ("left", "timed_out"):
        found = result[way]
        # The server pushes a refreshed token at each join, sometimes before `connect` returns.
        newer = [kind for kind in found["newer"] if kind != "RoomTokenRefreshed"]
        assert newer == ["RoomJoined"], (way, found)
        assert len(found["participants"]) == 1, (way, found)
        assert '"epoch": 2' in found["participants"][0], "the newer join holds the identity"
        assert found["handles"] == 1
        assert found["handles_after_leave"] == 0
    assert result["left"]["older"] == [], "a join its bridge left reports nothing"
    assert result["timed_out"]["older"] == ["RoomJoinFailed"], "only that it did not join"


SDK_ICE_TIMEOUT_S = 15.0
"""How long the pinned SDK waits for its peer connection before it retries the join."""


def test_the_sdk_tells_a_join_overtaken_in_flight_nothing_until_its_retry_kicks_the_newer() -> None:
    """Why the fleet log is read while a join is in flight: the SDK ignores the server's Leave
    while `Room.connect` waits for its peer connection, says nothing for 15 s, and then its own
    retry joins again and kicks the newer join. Nothing is left once both leave."""
    result = in_netns("overtaken-in-flight")
    assert result["overtaken_after_s"] < 2.0, result
    told_s = min(at for _, _, at in result["older"])
    assert told_s >= SDK_ICE_TIMEOUT_S, f"the SDK told the overtaken join something: {result}"
    # The server pushes a refreshed token at each join, sometimes before `connect` returns.
    (kind, _, landed_s), *_ = [e for e in result["older"] if e[0] != "RoomTokenRefreshed"]
    assert kind == "RoomJoined", result
    newer = [(kind, reason) for kind, reason, _ in result["newer"] if kind != "RoomTokenRefreshed"]
    assert newer == [("RoomJoined", None), ("RoomDisconnected", "DUPLICATE_IDENTITY")], result
    kicked_s = result["newer"][-1][2]
    assert abs(kicked_s - landed_s) < 1.0, "the older join's retry kicked the newer"
    assert result["holder"] == ['{"server": "prod", "epoch": 1}'], result
    assert result["handles_after_leave"] == 0


def test_a_fleet_gives_up_a_join_overtaken_in_flight_at_once_and_keeps_the_identity() -> None:
    result = in_netns("fleet-overtaken")
    dev = [(kind, why, at) for server, kind, why, at in result["story"] if server == "dev"]
    (stopped_s,) = [at for kind, why, at in dev if kind == "BridgeStopped"][:1]
    assert stopped_s < 3.0, "given up at the first look at the log, not at the join timeout"
    joined = [at for kind, _, at in dev if kind == "BridgeJoined"]
    assert joined[0] < 7.0, result["story"]
    debug = [kind for server, kind, _, _ in result["story"] if server == "debug"]
    assert "RejoinDeclined" in debug, "debug, kicked, stayed down on the log's word"
    assert result["holder"] == ['{"server": "dev", "epoch": 2}'], result
    assert result["heard_lately"] == {"debug": False, "dev": True}
    assert result["handles"] == 0


def test_cycles_of_kicks_abandoned_joins_and_crashes_leave_nothing_behind() -> None:
    """`REJOIN_LEAK_CYCLES=50` for the figures in BENCHMARKS.md (10 by default)."""
    result = in_netns("leak-cycles", timeout_s=600)
    assert result["kicked_newer"] == 0, "a join made earlier never kicks a newer one"
    for kind, found in result["kinds"].items():
        before, middle, after = found["before"], found["middle"], found["after"]
        assert after["sdk_handles"] <= before["sdk_handles"], kind
        assert after["our_threads"] == before["our_threads"], kind
        # The kernel's count of threads, not Python's: the SDK's native pool threads enter
        # Python lazily as "Dummy-N", and Python keeps a dummy after its thread has ended, so a
        # pool thread that ends when idle and is started again later adds one (seen once: 5
        # after a kick cycle's 4) without any thread more. A pool that fills once is fine,
        # growth that goes on with the cycles is a leak.
        assert after["os_threads"] <= max(before["os_threads"], middle["os_threads"]), kind
        assert after["asyncio_tasks"] <= before["asyncio_tasks"], kind
        assert after["fds"] <= before["fds"], kind
        assert after["udp_sockets"] <= before["udp_sockets"], kind
        assert after["participants"] <= before["participants"], kind
        assert after["rss_kb"] - before["rss_kb"] < 5_000, f"{kind}: RSS grew 5 MB or more"


def test_every_drill_on_a_bridge_ends_with_the_users_audio_back() -> None:
    result = in_netns("drills")
    assert result["invariant_violations"] == []
    assert [e["at"] for e in result["expectations"] if not e["passed"]] == []
    assert all(result["faults"][name] for name in result["faults"]), "every drill found the bridge"
    assert "BridgeDisconnected: SERVER_SHUTDOWN" in result["story"], "the server leave"


def test_a_resumed_bridge_keeps_its_sid_and_needs_no_rejoin() -> None:
    faults = in_netns("drills")["faults"]
    before, dropped = faults["signal-reconnect"]
    assert dropped is True
    assert faults["sid-after-resume"] == before


REPLACEMENT_S = 1.0
"""Longer than the loopback server takes to close a replaced participant, shorter than the
crashed process's restart (about 3.4 s here)."""


def test_a_crash_leaves_a_stale_bridge_until_the_restarts_join_replaces_it() -> None:
    result = in_netns("crash")
    assert result["passed"], result["expectations"]
    first, second = result["bridge_sids"]
    # The dead process's bridge stayed until its successor replaced it; the last bridge leaves
    # when the run stops. A poll may catch the replacement itself, the moment the server takes
    # the old bridge out and before it lets the new one in: that moment is short, where a
    # bridge dropped at the crash would leave the room empty the seconds a restart takes.
    watched, at = result["watched"], result["watched_at"]
    if watched == [[], [first], [], [second], []]:
        assert at[3] - at[2] < REPLACEMENT_S, f"the room was empty from {at[2]} s to {at[3]} s"
    else:
        assert watched == [[], [first], [second], []]
    assert "ProcessRestarted: " in result["story"]


def test_the_phones_audio_track_reaches_the_bridge_as_16_khz_chunks() -> None:
    result = in_netns("track-audio")
    assert result["chunks"] >= 10
    assert result["sizes"] == [1 + 3_200], "a sequence byte and 100 ms of 16 kHz PCM16"
    assert result["loud"] >= result["chunks"] // 2
    assert result["sequences"] == list(range(len(result["sequences"])))

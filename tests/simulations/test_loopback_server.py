"""The loopback LiveKit server against the real SDK (`livekit` 1.2.1).

WebRTC ignores loopback interfaces, so each test runs one scenario in a child process inside
`scripts/netns-run` (a private network namespace): the child starts the server on its own
thread, drives the SDK, and prints what it saw as one JSON line, which the test checks.
Run a scenario by hand with
`scripts/netns-run .venv/bin/python -m tests.simulations.test_loopback_server <scenario>`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import math
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any

import aiohttp
import pytest
from livekit import api, rtc
from livekit.rtc.room import EventTypes

from simulations.loopback import LoopbackServer, LoopbackThread
from tests.netns import NETNS_RUN, run_in_netns

SECRET = "loopback-test-secret-of-32-bytes-or-more"
ROOM = "room-1"
CONNECT_TIMEOUT_S = 20.0
SCENARIO_TIMEOUT_S = 45.0

Findings = dict[str, Any]


# The child side: scenarios that drive the SDK against a server in the same process.


def token(identity: str, *, metadata: str = "", secret: str = SECRET, room: str = ROOM) -> str:
    grants = api.VideoGrants(room_join=True, room=room)
    return (
        api.AccessToken("devkey", secret)
        .with_identity(identity)
        .with_metadata(metadata)
        .with_grants(grants)
        .to_jwt()
    )


async def connect(
    url: str,
    identity: str,
    *,
    metadata: str = "",
    lk_room: rtc.Room | None = None,
    options: rtc.RoomOptions | None = None,
) -> rtc.Room:
    """Join ROOM, by default in the SDK's dual peer connection mode, which skips the
    `/rtc/v1` attempt that the server answers with 404."""
    lk_room = lk_room or rtc.Room()
    options = options or rtc.RoomOptions(single_peer_connection=False)
    await asyncio.wait_for(
        lk_room.connect(url, token(identity, metadata=metadata), options), CONNECT_TIMEOUT_S
    )
    return lk_room


def future_of(lk_room: rtc.Room, event: EventTypes) -> asyncio.Future[Any]:
    """A future of the first argument of the room's next `event`."""
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    def settle(*args: Any) -> None:
        if not future.done():
            future.set_result(args[0] if args else None)

    lk_room.on(event, settle)
    return future


async def sees_each_other(server: LoopbackThread) -> Findings:
    alice = await connect(server.url, "alice")
    joined = future_of(alice, "participant_connected")
    # bob keeps the SDK's defaults: it tries /rtc/v1 first and falls back on its 404.
    bob = await connect(server.url, "bob", options=rtc.RoomOptions())
    newcomer = await asyncio.wait_for(joined, 5)
    bob_sees = sorted(p.identity for p in bob.remote_participants.values())
    left = future_of(alice, "participant_disconnected")
    await bob.disconnect()
    leaver = await asyncio.wait_for(left, 5)
    return {
        "alice_saw_join_of": newcomer.identity,
        "bob_sees": bob_sees,
        "bob_sid_prefix": bob.local_participant.sid[:3],
        "alice_saw_leave_of": leaver.identity,
        "in_room": [p.identity for p in server.participants(ROOM)],
    }


async def data_reaches_others(server: LoopbackThread) -> Findings:
    rooms = {name: await connect(server.url, name) for name in ("alice", "bob", "carol")}
    receivers = ("bob", "carol")
    received: dict[str, list[list[Any]]] = {name: [] for name in receivers}
    for name in receivers:

        def record(packet: rtc.DataPacket, name: str = name) -> None:
            sender = packet.participant.identity if packet.participant else None
            received[name].append([packet.data.decode(), packet.topic, sender, int(packet.kind)])

        rooms[name].on("data_received", record)
    # A channel opens on the server a little after `connect` returns; a packet from each
    # receiver on each channel proves both open before alice sends.
    ready: list[str] = []
    rooms["alice"].on("data_received", lambda packet: ready.append(packet.topic))
    for name in receivers:
        for reliable in (True, False):
            await rooms[name].local_participant.publish_data(
                b"ready", reliable=reliable, topic=f"{name} ready", destination_identities=["alice"]
            )
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and len(ready) < 4:
        await asyncio.sleep(0.05)
    alice = rooms["alice"].local_participant
    await alice.publish_data(b"for bob", reliable=True, topic="x", destination_identities=["bob"])
    await alice.publish_data(b"for all", reliable=False, topic="y")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (len(received["bob"]) < 2 or not received["carol"]):
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)  # anything misrouted would arrive by now
    return {name: sorted(packets) for name, packets in received.items()}


async def duplicate_identity(server: LoopbackThread) -> Findings:
    first = await connect(server.url, "alice")
    kicked = future_of(first, "disconnected")
    second = await connect(server.url, "alice")
    reason = await asyncio.wait_for(kicked, 5)
    await asyncio.sleep(0.3)
    return {
        "reason": int(reason),
        "second_state": int(second.connection_state),
        "in_room": [(p.identity, p.sid) for p in server.participants(ROOM)],
        "second_sid": second.local_participant.sid,
    }


async def remove_participant(server: LoopbackThread) -> Findings:
    alice = await connect(server.url, "alice")
    removed = future_of(alice, "disconnected")
    async with api.LiveKitAPI(server.url, "devkey", SECRET) as lkapi:
        await lkapi.room.remove_participant(
            api.RoomParticipantIdentity(room=ROOM, identity="alice")
        )
        try:
            await lkapi.room.remove_participant(
                api.RoomParticipantIdentity(room=ROOM, identity="alice")
            )
            again = "removed twice"
        except api.TwirpError as error:
            again = error.code
    return {
        "reason": int(await asyncio.wait_for(removed, 5)),
        "second_removal": again,
        "in_room": len(server.participants(ROOM)),
    }


async def admin_kicks(server: LoopbackThread) -> Findings:
    kicked = {}
    for name in ("bob", "carol"):
        lk_room = await connect(server.url, name)
        kicked[name] = future_of(lk_room, "disconnected")
    async with api.LiveKitAPI(server.url, "devkey", SECRET) as lkapi:
        await lkapi.room.create_room(api.CreateRoomRequest(name="other"))
        await lkapi.room.delete_room(api.DeleteRoomRequest(room=ROOM))
        try:
            await lkapi.room.delete_room(api.DeleteRoomRequest(room=ROOM))
            again = "deleted twice"
        except api.TwirpError as error:
            again = error.code
        rooms = await lkapi.room.list_rooms(api.ListRoomsRequest())
    reasons = {name: int(await asyncio.wait_for(f, 5)) for name, f in kicked.items()}
    dave = await connect(server.url, "dave")
    shut = future_of(dave, "disconnected")
    server.stop()
    return {
        "room_deleted": reasons,
        "second_deletion": again,
        "rooms": sorted(r.name for r in rooms.rooms),
        "server_shutdown": int(await asyncio.wait_for(shut, 5)),
    }


async def participant_metadata(server: LoopbackThread) -> Findings:
    metadata = json.dumps({"server": "prod", "epoch": 3})
    alice = await connect(server.url, "alice", metadata=metadata)
    changed = future_of(alice, "participant_metadata_changed")
    async with api.LiveKitAPI(server.url, "devkey", SECRET) as lkapi:
        listed = await lkapi.room.list_participants(api.ListParticipantsRequest(room=ROOM))
        got = await lkapi.room.get_participant(
            api.RoomParticipantIdentity(room=ROOM, identity="alice")
        )
        updated = await lkapi.room.update_participant(
            api.UpdateParticipantRequest(room=ROOM, identity="alice", metadata="new")
        )
        rooms = await lkapi.room.list_rooms(api.ListRoomsRequest())
        await asyncio.wait_for(changed, 5)
    # A join token has no roomAdmin grant.
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            server.url.replace("ws://", "http://") + "/twirp/livekit.RoomService/ListParticipants",
            data=api.ListParticipantsRequest(room=ROOM).SerializeToString(),
            headers={
                "Authorization": f"Bearer {token('alice')}",
                "Content-Type": "application/protobuf",
            },
        ) as reply,
    ):
        denied = [reply.status, (await reply.json())["code"]]
    return {
        "listed": [(p.identity, p.metadata) for p in listed.participants],
        "got": [got.identity, got.metadata, got.sid == alice.local_participant.sid],
        "updated": updated.metadata,
        "local_metadata": alice.local_participant.metadata,
        "rooms": [(r.name, r.num_participants) for r in rooms.rooms],
        "without_admin_grant": denied,
    }


async def bad_token(server: LoopbackThread) -> Findings:
    lk_room = rtc.Room()
    started = time.monotonic()
    try:
        await asyncio.wait_for(
            lk_room.connect(
                server.url,
                token("alice", secret="not-the-secret"),
                rtc.RoomOptions(single_peer_connection=False),
            ),
            CONNECT_TIMEOUT_S,
        )
        error = "connected"
    except rtc.ConnectError as failure:
        error = str(failure)
    return {"error": error, "seconds": time.monotonic() - started}


async def refused_joins(server: LoopbackThread) -> Findings:
    server.refuse_joins_for(60)
    started = time.monotonic()
    try:
        await connect(server.url, "alice")
        error = "connected"
    except rtc.ConnectError as failure:
        error = str(failure)
    return {"error": error, "seconds": time.monotonic() - started}


async def outcome(lk_room: rtc.Room, timeout_s: float = 25) -> str:
    """What the room does next: reconnected, disconnected (with the reason), or neither."""
    reconnected = future_of(lk_room, "reconnected")
    disconnected = future_of(lk_room, "disconnected")
    done, _ = await asyncio.wait(
        {reconnected, disconnected}, timeout=timeout_s, return_when="FIRST_COMPLETED"
    )
    if reconnected in done:
        return "reconnected"
    if disconnected in done:
        return f"disconnected {rtc.DisconnectReason.Name(disconnected.result())}"
    return "neither"


async def data_arrives(sender: rtc.Room, receiver: rtc.Room, timeout_s: float = 10) -> bool:
    """Whether a packet from `sender` reaches `receiver`, sending until one does."""
    got = future_of(receiver, "data_received")
    identity = receiver.local_participant.identity
    deadline = time.monotonic() + timeout_s
    while not got.done() and time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            await sender.local_participant.publish_data(b"hi", destination_identities=[identity])
        await asyncio.sleep(0.2)
    return got.done()


async def dropped_signal(server: LoopbackThread) -> Findings:
    alice = await connect(server.url, "alice")
    first_sid = alice.local_participant.sid
    next_step = asyncio.create_task(outcome(alice))
    dropped = server.drop_signal(ROOM, "alice")
    return {
        "dropped": dropped,
        "outcome": await next_step,
        "in_room": [(p.identity, p.sid == first_sid) for p in server.participants(ROOM)],
    }


async def resume_past_the_window(server: LoopbackThread) -> Findings:
    """The departure timeout is 1 s here; joins (resumes included) are refused for 3 s."""
    alice = await connect(server.url, "alice")
    bob = await connect(server.url, "bob")
    first_sid = alice.local_participant.sid
    gone = future_of(bob, "participant_disconnected")
    next_step = asyncio.create_task(outcome(alice))
    server.refuse_joins_for(3)
    started = time.monotonic()
    server.drop_signal(ROOM, "alice")
    await asyncio.wait_for(gone, 5)
    departed_after_s = time.monotonic() - started
    result = await next_step
    await asyncio.sleep(0.5)
    return {
        "departed_after_s": departed_after_s,
        "outcome": result,
        "in_room": sorted((p.identity, p.sid == first_sid) for p in server.participants(ROOM)),
        "data_after": await data_arrives(bob, alice),
    }


DRILLS = (
    "SIMULATE_SIGNAL_RECONNECT",
    "SIMULATE_SPEAKER",
    "SIMULATE_NODE_FAILURE",
    "SIMULATE_SERVER_LEAVE",
    "SIMULATE_MIGRATION",
    "SIMULATE_FORCE_TCP",
    "SIMULATE_FULL_RECONNECT",
    "SIMULATE_DISCONNECT_SIGNAL_ON_RESUME",
)


async def drills(server: LoopbackThread) -> Findings:
    """Each drill the SDK can ask for, on a fresh alice beside bob: what alice saw, whether
    she kept her SID, and whether bob's data reaches her afterwards."""
    bob = await connect(server.url, "bob")
    seen: Findings = {}
    for name in DRILLS:
        alice = await connect(server.url, "alice")
        first_sid = alice.local_participant.sid
        speaking = future_of(bob, "active_speakers_changed")
        next_step = asyncio.create_task(outcome(alice, timeout_s=12))
        await alice.simulate_scenario(rtc.SimulateScenarioKind.Value(name))
        result = await next_step
        if result.startswith("disconnected"):
            alice = await connect(server.url, "alice")
        # The SDK's local sid is not refreshed by a full reconnect; the server's is.
        sids = [p.sid for p in server.participants(ROOM) if p.identity == "alice"]
        seen[name] = {
            "outcome": result,
            "same_sid": sids == [first_sid],
            "data_after": await data_arrives(bob, alice),
            "bob_heard_a_speaker": speaking.done(),
            "in_room": sorted(p.identity for p in server.participants(ROOM)),
        }
        await alice.disconnect()
    return seen


async def token_refresh(server: LoopbackThread) -> Findings:
    """Tokens are refreshed every second here."""
    alice = rtc.Room()
    refreshed: list[float] = []
    alice.on("token_refreshed", lambda *_: refreshed.append(time.monotonic()))
    first = token("alice")
    await asyncio.wait_for(
        alice.connect(server.url, first, rtc.RoomOptions(single_peer_connection=False)),
        CONNECT_TIMEOUT_S,
    )
    await asyncio.sleep(2.5)
    latest = alice._token  # the SDK keeps the refreshed token for its next resume
    assert latest is not None
    claims = api.TokenVerifier("devkey", SECRET).verify(latest)
    assert claims.video is not None
    return {
        "refreshes": len(refreshed),
        "new_token": latest != first,
        "claims": [claims.identity, claims.video.room, claims.video.room_join],
    }


async def feed_sine(source: rtc.AudioSource, seconds: float) -> None:
    """Capture a 440 Hz tone in 10 ms frames; the source paces it once its queue is full."""
    rate = source.sample_rate
    samples = rate // 100
    for index in range(int(seconds * 100)):
        frame = rtc.AudioFrame.create(rate, 1, samples)
        data = frame.data
        for i in range(samples):
            data[i] = int(8000 * math.sin(2 * math.pi * 440 * (index * samples + i) / rate))
        await source.capture_frame(frame)


async def loud_frames(track: rtc.Track, seconds: float) -> int:
    """How many frames of `track` carry sound within `seconds`."""
    stream = rtc.AudioStream(track)
    loud = 0

    async def count() -> None:
        nonlocal loud
        async for event in stream:
            loud += max(abs(v) for v in event.frame.data) > 1000

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(count(), seconds)
    await stream.aclose()
    return loud


async def audio_reaches_subscribers(server: LoopbackThread) -> Findings:
    # With the SDK's defaults alice's publisher also offers the single-PC recvonly m-lines.
    alice = await connect(server.url, "alice", options=rtc.RoomOptions())
    bob = await connect(server.url, "bob")
    bob_subscribed = future_of(bob, "track_subscribed")
    source = rtc.AudioSource(48_000, 1)
    track = rtc.LocalAudioTrack.create_audio_track("mic", source)
    options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
    publication = await asyncio.wait_for(alice.local_participant.publish_track(track, options), 15)
    feeding = asyncio.create_task(feed_sine(source, seconds=8))
    bob_track = await asyncio.wait_for(bob_subscribed, 10)
    carol = rtc.Room()
    carol_subscribed = future_of(carol, "track_subscribed")
    await connect(server.url, "carol", lk_room=carol)
    carol_track = await asyncio.wait_for(carol_subscribed, 10)
    heard = {"bob": await loud_frames(bob_track, 1.5), "carol": await loud_frames(carol_track, 1.5)}
    feeding.cancel()
    return {
        "sid_prefix": publication.sid[:3],
        "same_sid": bob_track.sid == carol_track.sid == publication.sid,
        "heard": {name: frames > 50 for name, frames in heard.items()},
    }


SCENARIOS: dict[str, Callable[[LoopbackThread], Coroutine[Any, Any, Findings]]] = {
    scenario.__name__: scenario
    for scenario in (
        sees_each_other,
        data_reaches_others,
        duplicate_identity,
        remove_participant,
        admin_kicks,
        participant_metadata,
        bad_token,
        refused_joins,
        dropped_signal,
        resume_past_the_window,
        drills,
        token_refresh,
        audio_reaches_subscribers,
    )
}
SERVER_KNOBS: dict[str, dict[str, Any]] = {
    "resume_past_the_window": {"departure_timeout_s": 1.0},
    "token_refresh": {"token_refresh_s": 1.0},
}
TIMEOUTS_S = {"drills": 150.0}


def run_scenario(name: str) -> Findings:
    server = LoopbackThread(LoopbackServer(api_secret=SECRET, port=0, **SERVER_KNOBS.get(name, {})))
    server.start()
    try:
        return asyncio.run(SCENARIOS[name](server))
    finally:
        server.stop()


# The parent side: one child process per scenario, inside a private network namespace.


@functools.cache
def findings(name: str) -> Findings:
    timeout_s = TIMEOUTS_S.get(name, SCENARIO_TIMEOUT_S)
    result: Findings = run_in_netns(__name__, name, timeout_s=timeout_s)
    return result


@pytest.fixture(scope="module", autouse=True)
def network_namespace() -> None:
    probe = subprocess.run([str(NETNS_RUN), "true"], capture_output=True, timeout=10, check=False)
    if probe.returncode != 0:
        pytest.skip(f"no private network namespace here: {probe.stderr!r:.300}")


def test_the_sdk_connects_and_sees_the_other_participant() -> None:
    seen = findings("sees_each_other")
    assert seen["alice_saw_join_of"] == "bob"
    assert seen["bob_sees"] == ["alice"]
    assert seen["bob_sid_prefix"] == "PA_"


def test_a_client_leave_removes_it_and_tells_the_others() -> None:
    seen = findings("sees_each_other")
    assert seen["alice_saw_leave_of"] == "bob"
    assert seen["in_room"] == ["alice"]


def test_data_reaches_the_others_by_topic_and_destination() -> None:
    reliable, lossy = int(rtc.DataPacketKind.KIND_RELIABLE), int(rtc.DataPacketKind.KIND_LOSSY)
    assert findings("data_reaches_others") == {
        "bob": [["for all", "y", "alice", lossy], ["for bob", "x", "alice", reliable]],
        "carol": [["for all", "y", "alice", lossy]],
    }


def test_a_duplicate_identity_disconnects_the_older_room() -> None:
    seen = findings("duplicate_identity")
    assert seen["reason"] == rtc.DisconnectReason.DUPLICATE_IDENTITY == 2
    assert seen["second_state"] == rtc.ConnectionState.CONN_CONNECTED
    assert seen["in_room"] == [["alice", seen["second_sid"]]]


def test_remove_participant_disconnects_it_as_removed() -> None:
    seen = findings("remove_participant")
    assert seen == {
        "reason": rtc.DisconnectReason.PARTICIPANT_REMOVED,
        "second_removal": "not_found",
        "in_room": 0,
    }


def test_delete_room_and_shutdown_disconnect_with_their_reasons() -> None:
    deleted, shutdown = rtc.DisconnectReason.ROOM_DELETED, rtc.DisconnectReason.SERVER_SHUTDOWN
    assert findings("admin_kicks") == {
        "room_deleted": {"bob": deleted, "carol": deleted},
        "second_deletion": "not_found",
        "rooms": ["other"],
        "server_shutdown": shutdown,
    }


def test_the_room_service_reports_and_updates_metadata() -> None:
    metadata = json.dumps({"server": "prod", "epoch": 3})
    assert findings("participant_metadata") == {
        "listed": [["alice", metadata]],
        "got": ["alice", metadata, True],
        "updated": "new",
        "local_metadata": "new",
        "rooms": [[ROOM, 1]],
        "without_admin_grant": [403, "permission_denied"],
    }


def test_a_bad_token_fails_the_connect_promptly_and_clearly() -> None:
    seen = findings("bad_token")
    assert "401" in seen["error"]
    assert "invalid or expired token" in seen["error"]
    assert seen["seconds"] < 3


def test_refused_joins_make_the_connect_fail() -> None:
    seen = findings("refused_joins")
    assert seen["error"] != "connected"
    assert "503" in seen["error"]


def test_a_dropped_signal_is_resumed_within_the_window_keeping_the_sid() -> None:
    seen = findings("dropped_signal")
    assert seen["dropped"] is True
    assert seen["outcome"] == "reconnected"
    assert seen["in_room"] == [["alice", True]], "alice is back, with the same SID"


def test_past_the_departure_timeout_the_participant_is_gone_and_rejoins_afresh() -> None:
    seen = findings("resume_past_the_window")
    assert 0.9 < seen["departed_after_s"] < 2.5
    assert seen["outcome"] == "reconnected"
    assert seen["in_room"] == [["alice", False], ["bob", False]], "alice has a new SID"
    assert seen["data_after"] is True


EXPECTED_DRILLS = {
    # The client closes its own signal: a resume, same SID.
    "SIMULATE_SIGNAL_RECONNECT": ("reconnected", True),
    # Nothing but a speaker update for the others.
    "SIMULATE_SPEAKER": ("neither", True),
    # The server drops the participant without a Leave: the resume finds nobody, rejoin.
    "SIMULATE_NODE_FAILURE": ("reconnected", False),
    "SIMULATE_MIGRATION": ("reconnected", False),
    # A Leave{SERVER_SHUTDOWN, DISCONNECT}: the SDK gives up; the test joins again.
    "SIMULATE_SERVER_LEAVE": ("disconnected SERVER_SHUTDOWN", False),
    # Client-side full reconnects.
    "SIMULATE_FORCE_TCP": ("reconnected", False),
    "SIMULATE_FULL_RECONNECT": ("reconnected", False),
    # The server closes the signal of the resume: the SDK escalates to a full reconnect.
    "SIMULATE_DISCONNECT_SIGNAL_ON_RESUME": ("reconnected", False),
}


@pytest.mark.parametrize("drill", sorted(EXPECTED_DRILLS))
def test_a_drill_is_answered_as_a_real_server_does_and_data_flows_after(drill: str) -> None:
    seen = findings("drills")[drill]
    assert (seen["outcome"], seen["same_sid"]) == EXPECTED_DRILLS[drill], seen
    assert seen["data_after"] is True
    assert seen["in_room"] == ["alice", "bob"]
    assert seen["bob_heard_a_speaker"] is (drill == "SIMULATE_SPEAKER")


def test_refreshed_tokens_reach_the_client() -> None:
    seen = findings("token_refresh")
    assert seen["refreshes"] >= 2, "one at the join, then one a second"
    assert seen["new_token"] is True
    assert seen["claims"] == ["alice", ROOM, True]


def test_published_audio_reaches_present_and_later_subscribers() -> None:
    assert findings("audio_reaches_subscribers") == {
        "sid_prefix": "TR_",
        "same_sid": True,
        "heard": {"bob": True, "carol": True},
    }


if __name__ == "__main__":
    print(json.dumps(run_scenario(sys.argv[1])))

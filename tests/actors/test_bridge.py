"""The Bridge: it reports its join, answers status at once, hands audio on only while the
session lets it, counts sequence gaps as loss, and leaves when stopped."""

from collections.abc import Callable
from typing import Any

import pykka

from actors.bridge import LATE_WITHIN_MS, AudioChunk, AudioWatch, Bridge
from actors.connector import JoinRequest, LookupAnswer, Nobody, RoomData, RoomEvent, RoomJoined
from actors.deterministic_executor import DeterministicExecutor
from actors.messages import GateAudio, StatusRequest
from events.catalog import BridgeJoined, BridgeStatusObserved, FirstAudio


class Inbox(pykka.Actor):
    def __init__(self, received: list[Any]) -> None:
        super().__init__()
        self.received = received

    def on_receive(self, message: Any) -> None:
        self.received.append(message)


class ManualConnector:
    """A connector whose room events the test sends by hand."""

    def __init__(self) -> None:
        self.send: Callable[[RoomEvent], object] = lambda _event: None
        self.left = 0

    def join(self, request: JoinRequest, on_event: Callable[[RoomEvent], object]) -> "Handle":
        self.send = on_event
        return Handle(self)

    def lookup_holder(
        self, room: str, identity: str, reply: Callable[[LookupAnswer], object]
    ) -> None:
        reply(Nobody())


class Handle:
    def __init__(self, connector: ManualConnector) -> None:
        self.connector = connector

    def leave(self) -> None:
        self.connector.left += 1


def start() -> tuple[DeterministicExecutor, Any, ManualConnector, list[Any], list[AudioChunk]]:
    executor = DeterministicExecutor(0)
    received: list[Any] = []
    chunks: list[AudioChunk] = []
    session = executor.spawn(Inbox, received)
    connector = ManualConnector()
    request = JoinRequest(
        room="ada",
        identity="cloud-agent:ada",
        server="prod",
        epoch=1,
        generation=1,
        phone_identity="ada",
    )
    bridge = executor.spawn(
        Bridge,
        stream="prod/ada/1",
        request=request,
        session=session,
        supervisor=session,
        connector=connector,
        executor=executor,
        sink=chunks.append,
        audio_open=True,
        watching=True,
        watch=AudioWatch(),
    )
    executor.run_until_idle()
    return executor, bridge, connector, received, chunks


def test_sequence_gaps_count_as_loss_and_late_packets_do_not() -> None:
    executor, bridge, connector, received, chunks = start()
    connector.send(RoomJoined(participant_sid="PA_1", participant_count=2, phone_present=True))
    for sequence in [0, 1, 3, 2, 4, 7]:
        connector.send(RoomData(payload=bytes([sequence]) + b"\x00\x00"))
    bridge.tell(StatusRequest(generation=1))
    executor.run_until_idle()
    status = [m for m in received if isinstance(m, BridgeStatusObserved)]
    assert status[0].lost_chunks == 3, "2 missing at first, then 5 and 6; the late 2 is no jump"
    assert status[0].connected
    assert [c.sequence for c in chunks] == [0, 1, 3, 4, 7]
    assert [type(m) for m in received[:2]] == [BridgeJoined, FirstAudio]


def test_closed_audio_is_not_handed_on_and_reopening_reports_first_audio_again() -> None:
    executor, bridge, connector, received, chunks = start()
    connector.send(RoomJoined(participant_sid="PA_1", participant_count=2, phone_present=True))
    bridge.tell(GateAudio(open=False, watch=False))
    executor.run_until_idle()
    connector.send(RoomData(payload=b"\x00\x00\x00"))
    executor.run_until_idle()
    assert chunks == []
    bridge.tell(GateAudio(open=True, watch=True))
    executor.run_until_idle()
    connector.send(RoomData(payload=b"\x01\x00\x00"))
    executor.run_until_idle()
    assert [c.sequence for c in chunks] == [1]
    assert sum(isinstance(m, FirstAudio) for m in received) == 1


def test_stopping_the_bridge_leaves_the_room_once() -> None:
    executor, bridge, connector, _, _ = start()
    executor.wait(bridge.stop(block=False), 1)
    assert connector.left == 1


def test_a_backward_jump_after_a_long_silence_is_heard_not_taken_for_a_late_packet() -> None:
    """A phone that went on counting while it was not heard (away from the room, or its data
    path dead for longer than 12.8 s) comes back with a sequence far behind: it is audio."""
    executor, _, connector, _, chunks = start()
    connector.send(RoomJoined(participant_sid="PA_1", participant_count=2, phone_present=True))
    for sequence in [0, 1, 2]:
        connector.send(RoomData(payload=bytes([sequence]) + b"\x00\x00"))
    executor.advance(LATE_WITHIN_MS + 5_000)
    connector.send(RoomData(payload=bytes([200]) + b"\x00\x00"))
    connector.send(RoomData(payload=bytes([201]) + b"\x00\x00"))
    executor.run_until_idle()
    assert [c.sequence for c in chunks] == [0, 1, 2, 200, 201]

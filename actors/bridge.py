"""The Bridge actor: one room connection for one session, through a connector.

It tracks what a status request needs, answers at once even while its join is in flight (the join
completes as a message), forwards the phone's audio to the server's sink, and on any loss reports
the reason to its session and stops: it never rejoins on its own.
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Any

import msgspec
import pykka

from actors.connector import (
    JoinRequest,
    PhonePresence,
    RoomConnector,
    RoomData,
    RoomDisconnected,
    RoomHandle,
    RoomJoined,
    RoomJoinFailed,
)
from actors.executor import Executor, tell
from actors.messages import BridgeExited, GateAudio, StatusRequest
from events.catalog import (
    BridgeDisconnected,
    BridgeJoined,
    BridgeJoinFailed,
    BridgeStatusObserved,
    DisconnectReason,
    FirstAudio,
)


class AudioChunk(msgspec.Struct, frozen=True, kw_only=True):
    """Phone audio as it reaches a server: PCM16LE, 16 kHz, mono; `time_ms` is wall-clock."""

    server: str
    user: str
    generation: int
    sequence: int
    pcm: bytes
    time_ms: int


AudioSink = Callable[[AudioChunk], None]


class _Join(msgspec.Struct, frozen=True):
    """Join the room: a message, not `on_start`, so that a connector that raises is a failure
    the session hears of (pykka reports no failure of `on_start`)."""


class Bridge(pykka.Actor):
    def __init__(
        self,
        *,
        stream: str,
        request: JoinRequest,
        user: str,
        session: pykka.ActorRef[Any],
        supervisor: pykka.ActorRef[Any],
        connector: RoomConnector,
        executor: Executor,
        sink: AudioSink,
        audio_open: bool,
    ) -> None:
        super().__init__()
        self._stream = stream
        self._request = request
        self._user = user
        self._session = session
        self._supervisor = supervisor
        self._connector = connector
        self._executor = executor
        self._sink = sink
        self._audio_open = audio_open
        self._handle: RoomHandle | None = None
        self._connected = False
        self._phone_present = False
        self._heard_audio = False
        self._last_sequence: int | None = None
        self._last_reason: DisconnectReason | None = None
        self._lost_chunks = 0

    @property
    def generation(self) -> int:
        return self._request.generation

    def on_start(self) -> None:
        self.actor_ref.tell(_Join())

    def on_receive(self, message: object) -> object:
        generation = self.generation
        match message:
            case _Join():
                me = self.actor_ref
                self._handle = self._connector.join(self._request, lambda event: tell(me, event))
            case RoomData(payload=payload):
                self._on_audio(payload)
            case RoomJoined(participant_sid=sid, participant_count=count, phone_present=phone):
                self._connected = True
                self._phone_present = phone
                tell(
                    self._session,
                    BridgeJoined(
                        generation=generation,
                        participant_sid=sid,
                        participant_count=count,
                        phone_present=phone,
                    ),
                )
            case PhonePresence(present=present):
                self._phone_present = present
            case StatusRequest():
                tell(
                    self._session,
                    BridgeStatusObserved(
                        generation=generation,
                        connected=self._connected,
                        phone_present=self._phone_present,
                        last_disconnect_reason=self._last_reason,
                        lost_chunks=self._lost_chunks,
                    ),
                )
            case GateAudio(open=is_open):
                self._audio_open = is_open
                if is_open:
                    self._heard_audio = False
            case RoomJoinFailed(error=error, permanent=permanent):
                failed = BridgeJoinFailed(generation=generation, error=error, permanent=permanent)
                tell(self._session, failed)
                self.stop()
            case RoomDisconnected(reason=reason):
                self._connected = False
                self._last_reason = reason
                tell(self._session, BridgeDisconnected(generation=generation, reason=reason))
                self.stop()
        return None

    def _on_audio(self, payload: bytes) -> None:
        if not payload:
            return
        sequence = payload[0]
        if self._last_sequence is not None:
            gap = (sequence - self._last_sequence - 1) % 256
            if gap >= 128:
                # The lossy channel is unordered: this one is late (or repeated), not a jump.
                return
            self._lost_chunks += gap
        self._last_sequence = sequence
        if self._audio_open:
            if not self._heard_audio:
                self._heard_audio = True
                tell(self._session, FirstAudio(generation=self.generation))
            self._sink(
                AudioChunk(
                    server=self._request.server,
                    user=self._user,
                    generation=self.generation,
                    sequence=sequence,
                    pcm=payload[1:],
                    time_ms=self._executor.wall_ms(),
                )
            )

    def _release(self) -> None:
        if self._handle is not None:
            self._handle.leave()
            self._handle = None
        tell(self._supervisor, BridgeExited(stream=self._stream, generation=self.generation))

    def on_stop(self) -> None:
        self._release()

    def on_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._release()
        tell(self._session, BridgeDisconnected(generation=self.generation, reason="AGENT_ERROR"))

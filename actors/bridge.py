"""The Bridge actor: one room connection for one session, through a connector.

It tracks what a status request needs, answers at once even while its join is in flight (the join
completes as a message), forwards the phone's audio to the server's sink, and on any loss reports
the reason to its session and stops: it never rejoins on its own.

It also watches the audio. While the glasses are connected, the bridge is in the room and the
phone is present and not muted, a silence longer than `AudioWatch.stall_after_ms` is reported
to the session as `AudioStalled`, and the next chunk as `AudioResumed`. Silence means no chunk
at all: the phone sends chunks of silent PCM when nobody speaks, so quiet speech is never a gap.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from types import TracebackType
from typing import Any, Literal

import msgspec
import pykka

from actors.connector import (
    JoinRequest,
    PhoneMuted,
    PhonePresence,
    RoomConnector,
    RoomData,
    RoomDisconnected,
    RoomHandle,
    RoomJoined,
    RoomJoinFailed,
    RoomReconnecting,
    RoomTokenRefreshed,
)
from actors.executor import Executor, TimerHandle, tell
from actors.messages import BridgeExited, GateAudio, ReportQuery, StatusRequest
from events.catalog import (
    AudioResumed,
    AudioStalled,
    BridgeDisconnected,
    BridgeJoined,
    BridgeJoinFailed,
    BridgeReconnected,
    BridgeReconnecting,
    BridgeStatusObserved,
    BridgeTokenRefreshed,
    DisconnectReason,
    FirstAudio,
    PhonePresenceObserved,
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


class AudioWatch(msgspec.Struct, frozen=True, kw_only=True):
    """When silence is a stall, and when a missing phone is reported absent."""

    stall_after_ms: int = 1_000
    """Ten chunk periods of 100 ms. The lossy channel drops single chunks, and a mobile
    network delays a few in a row; ten lost in a row is not loss but a dead path. Short enough
    that detection, a room-service check and a rejoin fit within 3 s of the stall's start."""
    phone_absent_after_ms: int = 5_000
    """A phone joins its room at about the time the glasses connect, and a mobile join can
    take seconds: reporting sooner would flash `phone_absent` at ordinary connects."""


LATE_WITHIN_MS = 1_000
"""How late a packet of the unordered lossy channel can be. A backward jump of the sequence
within this time of the chunk before is a late packet; after a longer silence it is the phone,
which went on counting while it was not heard (or restarted its count), and is heard again."""

SdkState = Literal["joining", "connected", "reconnecting", "disconnected"]


class BridgeReport(msgspec.Struct, frozen=True, kw_only=True):
    """What a bridge knows of its room and its audio now; times are wall-clock milliseconds."""

    generation: int
    sdk_state: SdkState
    joined_ms: int | None
    last_chunk_ms: int | None
    chunks: int
    """Chunks of the phone's received since the join."""
    lost_chunks: int
    """Chunks missing from the phone's sequence since the join (lossy channel)."""
    phone_present: bool
    phone_since_ms: int | None
    """When the phone last joined or left the room, as this bridge saw it."""
    phone_muted: bool
    stalled: bool
    last_disconnect_reason: DisconnectReason | None


class _Join(msgspec.Struct, frozen=True):
    """Join the room: a message, not `on_start`, so that a connector that raises is a failure
    the session hears of (pykka reports no failure of `on_start`)."""


class _Watchdog(msgspec.Struct, frozen=True):
    """Time to look at the silence."""


class Bridge(pykka.Actor):
    def __init__(
        self,
        *,
        stream: str,
        request: JoinRequest,
        session: pykka.ActorRef[Any],
        supervisor: pykka.ActorRef[Any],
        connector: RoomConnector,
        executor: Executor,
        sink: AudioSink,
        audio_open: bool,
        watching: bool,
        watch: AudioWatch,
    ) -> None:
        super().__init__()
        self._stream = stream
        self._request = request
        self._session = session
        self._supervisor = supervisor
        self._connector = connector
        self._executor = executor
        self._sink = sink
        self._audio_open = audio_open
        self._watching = watching
        """The glasses are connected to this server: silence matters."""
        self._watch = watch
        self._handle: RoomHandle | None = None
        self._sdk: SdkState = "joining"
        self._joined_ms: int | None = None
        self._phone_present = False
        self._phone_since_ms: int | None = None
        self._phone_muted = False
        self._heard_audio = False
        self._last_sequence: int | None = None
        self._last_reason: DisconnectReason | None = None
        self._chunks = 0
        self._lost_chunks = 0
        self._last_chunk_ms: int | None = None
        self._last_chunk_at: int | None = None
        """When the last chunk arrived, on the monotonic clock."""
        self._quiet_since: int | None = None
        """Since when (monotonic) the watchdog counts silence; `None` while it does not."""
        self._stalled = False
        self._watchdog: TimerHandle | None = None

    @property
    def generation(self) -> int:
        return self._request.generation

    def on_start(self) -> None:
        self.actor_ref.tell(_Join())

    def on_receive(self, message: object) -> object:
        generation = self.generation
        match message:
            case _Join():
                # A partial, not a closure: the room keeps it as long as the bridge lives, and
                # a closure is three objects (function, cell, tuple) for the collector to walk.
                forward = functools.partial(tell, self.actor_ref)
                self._handle = self._connector.join(self._request, forward)
            case RoomData(payload=payload):
                self._on_audio(payload)
            case RoomJoined(
                participant_sid=sid, participant_count=count, phone_present=phone, phone_muted=mute
            ):
                self._sdk = "connected"
                self._joined_ms = self._executor.wall_ms()
                self._phone_present, self._phone_muted = phone, mute
                self._phone_since_ms = self._joined_ms if phone else None
                tell(
                    self._session,
                    BridgeJoined(
                        generation=generation,
                        participant_sid=sid,
                        participant_count=count,
                        phone_present=phone,
                        phone_muted=mute,
                    ),
                )
                self._rewatch()
            case PhonePresence(present=present) if present != self._phone_present:
                self._phone_present = present
                self._phone_muted = self._phone_muted and present
                self._phone_since_ms = self._executor.wall_ms()
                self._phone_changed()
            case PhoneMuted(muted=muted) if muted != self._phone_muted:
                self._phone_muted = muted
                self._phone_changed()
            case RoomReconnecting(reconnecting=reconnecting):
                self._reconnecting(reconnecting=reconnecting)
            case RoomTokenRefreshed(expires_ms=expires_ms):
                refreshed = BridgeTokenRefreshed(generation=generation, expires_ms=expires_ms)
                tell(self._session, refreshed)
            case _Watchdog():
                self._watchdog = None
                self._look_at_silence()
            case StatusRequest():
                tell(
                    self._session,
                    BridgeStatusObserved(
                        generation=generation,
                        connected=self._sdk in ("connected", "reconnecting"),
                        phone_present=self._phone_present,
                        last_disconnect_reason=self._last_reason,
                        lost_chunks=self._lost_chunks,
                    ),
                )
            case ReportQuery():
                return self.report()
            case GateAudio(open=is_open, watch=watching):
                self._audio_open = is_open
                if watching:
                    self._heard_audio = False
                self._watching = watching
                self._rewatch()
            case RoomJoinFailed(error=error, permanent=permanent):
                failed = BridgeJoinFailed(generation=generation, error=error, permanent=permanent)
                tell(self._session, failed)
                self.stop()
            case RoomDisconnected(reason=reason):
                self._sdk = "disconnected"
                self._last_reason = reason
                self._rewatch()
                tell(self._session, BridgeDisconnected(generation=generation, reason=reason))
                self.stop()
        return None

    def report(self) -> BridgeReport:
        return BridgeReport(
            generation=self.generation,
            sdk_state=self._sdk,
            joined_ms=self._joined_ms,
            last_chunk_ms=self._last_chunk_ms,
            chunks=self._chunks,
            lost_chunks=self._lost_chunks,
            phone_present=self._phone_present,
            phone_since_ms=self._phone_since_ms,
            phone_muted=self._phone_muted,
            stalled=self._stalled,
            last_disconnect_reason=self._last_reason,
        )

    def _reconnecting(self, *, reconnecting: bool) -> None:
        """The SDK began, or ended, resuming its connection: the session records each change."""
        if self._sdk not in ("connected", "reconnecting"):
            return
        sdk: SdkState = "reconnecting" if reconnecting else "connected"
        if sdk != self._sdk:
            self._sdk = sdk
            change = BridgeReconnecting if reconnecting else BridgeReconnected
            tell(self._session, change(generation=self.generation))

    # The watchdog

    def _expecting_audio(self) -> bool:
        return (
            self._watching
            and self._sdk in ("connected", "reconnecting")
            and self._phone_present
            and not self._phone_muted
        )

    def _phone_changed(self) -> None:
        if self._sdk in ("connected", "reconnecting"):
            observed = PhonePresenceObserved(
                generation=self.generation, present=self._phone_present, muted=self._phone_muted
            )
            tell(self._session, observed)
        self._rewatch()

    def _rewatch(self) -> None:
        """Start counting silence when audio becomes expected; stop when it no longer is (a
        stall ends with it: the phone left, or muted, or the glasses left)."""
        if not self._expecting_audio():
            self._quiet_since = None
            self._stalled = False
            if self._watchdog is not None:
                self._watchdog.cancel()
                self._watchdog = None
        elif self._quiet_since is None:
            self._quiet_since = self._executor.now_ms()
            self._arm_watchdog()

    def _arm_watchdog(self) -> None:
        if self._watchdog is None and self._quiet_since is not None and not self._stalled:
            me, due = self.actor_ref, self._quiet_since + self._watch.stall_after_ms
            self._watchdog = self._executor.call_at(due, lambda: tell(me, _Watchdog()))

    def _look_at_silence(self) -> None:
        # One timer for the whole silence, moved on only when it fires: a chunk costs nothing.
        if self._quiet_since is None or self._stalled:
            return
        silent = self._executor.now_ms() - self._quiet_since
        if silent < self._watch.stall_after_ms:
            self._arm_watchdog()
            return
        self._stalled = True
        stalled = AudioStalled(
            generation=self.generation, last_chunk_ms=self._last_chunk_ms, silent_ms=silent
        )
        tell(self._session, stalled)

    def _on_audio(self, payload: bytes) -> None:
        if not payload:
            return
        sequence = payload[0]
        now = self._executor.now_ms()
        if self._last_sequence is not None and self._last_chunk_at is not None:
            gap = (sequence - self._last_sequence - 1) % 256
            if gap >= 128 and now - self._last_chunk_at < LATE_WITHIN_MS:
                # The lossy channel is unordered: this one is late (or repeated), not a jump.
                return
            if gap < 128:
                self._lost_chunks += gap
        self._last_sequence = sequence
        self._chunks += 1
        self._last_chunk_ms = self._executor.wall_ms()
        self._last_chunk_at = now
        if self._quiet_since is not None:
            if self._stalled:
                self._stalled = False
                resumed = AudioResumed(
                    generation=self.generation, silent_ms=now - self._quiet_since
                )
                tell(self._session, resumed)
            self._quiet_since = now
            self._arm_watchdog()
        if self._audio_open:
            if not self._heard_audio:
                self._heard_audio = True
                tell(self._session, FirstAudio(generation=self.generation))
            self._sink(
                AudioChunk(
                    server=self._request.server,
                    user=self._request.room,  # each user has a room of their own
                    generation=self.generation,
                    sequence=sequence,
                    pcm=payload[1:],
                    time_ms=self._executor.wall_ms(),
                )
            )

    def _release(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
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

"""The connector to a real LiveKit server, through the `livekit` SDK and `livekit-api`.

One asyncio event loop, on one thread, serves every connection of a runtime: the SDK is asyncio,
and a bridge must never block its mailbox on the network. `join` returns at once; the SDK's
events come back through the bridge's callback, which only tells the bridge actor a message.
Each join gets a freshly minted token: a short TTL, only the grants a bridge needs (join the
room and subscribe; no publishing), and metadata `{server, epoch}` so other servers can fence.
No token or secret ever reaches a log or an error message.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Coroutine
from datetime import timedelta
from typing import Any, TypeVar, get_args

import msgspec
from livekit import api, rtc
from livekit.protocol import models

from actors.connector import (
    MUTED_ATTRIBUTE,
    IdentityHolder,
    JoinRequest,
    LookupAnswer,
    LookupFailed,
    Nobody,
    PhoneMuted,
    PhonePresence,
    RoomData,
    RoomDisconnected,
    RoomEvent,
    RoomJoined,
    RoomJoinFailed,
    RoomReconnecting,
    RoomTokenRefreshed,
)
from actors.redaction import redact, register_secret
from events.catalog import DisconnectReason

logger = logging.getLogger(__name__)

PCM_RATE = 16_000
CHUNK_MS = 100
"""The audio a bridge hands on: the seed's format, whether it came as data or as a track."""

T = TypeVar("T")


class LiveKitSettings(msgspec.Struct, frozen=True, kw_only=True):
    url: str
    api_key: str
    api_secret: str
    token_ttl_s: int = 600
    connect_timeout_s: float = 10.0
    lookup_timeout_s: float = 5.0
    leave_timeout_s: float = 5.0
    settle_timeout_s: float = 5.0
    """How long after a join began connecting the next join of its identity waits for it to
    settle (see `LiveKitHandle`). The SDK gives up on a join the server has not answered within
    5 s (its join-response timeout), and one the server answered is in the room, where the next
    join kicks it: past this, an earlier join can land late only through the SDK's own retries.
    A connect the server answered can take 15 s more to return when it was kicked meanwhile;
    it is still waited out and left, but no longer holds up the next join."""
    sdk_give_up_s: float = 100.0
    """How long the pinned SDK can take to end a `Room.connect`, so how long `close` waits for
    a join in flight: four attempts (its three join retries), each up to 5 s for the signal, 5 s
    for the join response and 15 s for the peer connection. A join overtaken in flight by a
    newer join of its identity takes one attempt's 15 s, then its retry lands, or is itself
    overtaken by another late retry and takes 15 s more."""
    single_peer_connection: bool | None = None
    """`None` lets the SDK choose (single PC, falling back on a 404); the loopback server speaks
    only the two-PC protocol, and `False` skips the fallback's noise."""

    def __post_init__(self) -> None:
        register_secret(self.api_secret)

    def room_options(self, *, auto_subscribe: bool) -> rtc.RoomOptions:
        return rtc.RoomOptions(
            auto_subscribe=auto_subscribe, single_peer_connection=self.single_peer_connection
        )

    def __repr__(self) -> str:
        return f"LiveKitSettings(url={self.url!r}, api_key={self.api_key!r}, api_secret=***)"

    def token(
        self, *, identity: str, room: str, grants: api.VideoGrants, metadata: str = ""
    ) -> str:
        """A token with this settings' TTL for one participant of one room."""
        return (
            api.AccessToken(self.api_key, self.api_secret)
            .with_identity(identity)
            .with_metadata(metadata)
            .with_ttl(timedelta(seconds=self.token_ttl_s))
            .with_grants(grants)
            .to_jwt()
        )

    @property
    def http_url(self) -> str:
        return self.url.replace("wss://", "https://", 1).replace("ws://", "http://", 1)


def bridge_token(settings: LiveKitSettings, request: JoinRequest) -> str:
    """A token for one join of one bridge."""
    return settings.token(
        identity=request.identity,
        room=request.room,
        metadata=json.dumps({"server": request.server, "epoch": request.epoch}),
        grants=api.VideoGrants(
            room_join=True,
            room=request.room,
            can_subscribe=True,
            can_publish=False,
            can_publish_data=False,
        ),
    )


_PERMANENT = re.compile(
    r"\b(401|403)\b|unauthori[sz]ed|forbidden|permission|invalid (api )?key|"
    r"failed to parse the url|invalid url|relative url|unsupported url scheme",
    re.IGNORECASE,
)
_PERMANENT_CODES = frozenset({"unauthenticated", "permission_denied", "malformed"})


def is_permanent(error: str) -> bool:
    """Whether an SDK error says trying again cannot help: credentials refused, a URL that
    does not parse. Anything else (refused connections, timeouts, 5xx) may pass."""
    return _PERMANENT.search(error) is not None


def reason_name(reason: int) -> DisconnectReason:
    """The policy's name for an SDK disconnect reason (an unknown number is UNKNOWN_REASON)."""
    try:
        name = models.DisconnectReason.Name(reason)
    except ValueError:
        return "UNKNOWN_REASON"
    known: dict[str, DisconnectReason] = {n: n for n in get_args(DisconnectReason)}
    return known.get(name, "UNKNOWN_REASON")


class EventLoopThread:
    """One asyncio event loop on a daemon thread; coroutines are submitted from any thread."""

    def __init__(self, name: str = "rejoin-livekit") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        self.loop.close()


class LiveKitConnector:
    """Bridges reach LiveKit rooms through this; `close()` releases every handle it made."""

    def __init__(self, settings: LiveKitSettings, loop: EventLoopThread | None = None) -> None:
        self.settings = settings
        self._owns_loop = loop is None
        self._loop = loop or EventLoopThread()
        self._handles: set[LiveKitHandle] = set()
        self._lock = threading.Lock()
        self._latest: dict[tuple[str, str], LiveKitHandle] = {}
        """The newest handle of each room and identity, touched on the loop only: the next join
        of that identity waits for it to settle."""
        self._background: set[asyncio.Future[None]] = set()
        """Leaves that outlasted their timeout, kept until they finish."""
        self._api: api.LiveKitAPI | None = None

    @property
    def live_handles(self) -> int:
        with self._lock:
            return len(self._handles)

    def join(self, request: JoinRequest, on_event: Callable[[RoomEvent], object]) -> LiveKitHandle:
        handle = LiveKitHandle(self, request, on_event)
        with self._lock:
            self._handles.add(handle)
        handle.start(self._loop)
        return handle

    def _forget(self, handle: LiveKitHandle) -> None:
        if self._latest.get(handle.key) is handle:
            del self._latest[handle.key]
        with self._lock:
            self._handles.discard(handle)

    def _settle(self, work: asyncio.Future[None]) -> None:
        """Let `work` finish in the background if it has not: never cancelled, never lost."""
        if work.done():
            if not work.cancelled() and work.exception() is not None:
                logger.warning("leaving the room failed: %s", redact(str(work.exception())))
            return
        logger.warning("leaving the room takes longer than its timeout; it goes on meanwhile")
        self._background.add(work)
        work.add_done_callback(self._background.discard)

    def lookup_holder(
        self, room: str, identity: str, reply: Callable[[LookupAnswer], object]
    ) -> None:
        self._loop.submit(self._lookup(room, identity, reply))

    async def _lookup(
        self, room: str, identity: str, reply: Callable[[LookupAnswer], object]
    ) -> None:
        try:
            info = await asyncio.wait_for(
                self._room_service().get_participant(
                    api.RoomParticipantIdentity(room=room, identity=identity)
                ),
                timeout=self.settings.lookup_timeout_s,
            )
        except api.TwirpError as error:
            if error.code == "not_found":
                reply(Nobody())
            else:
                message = redact(f"{error.code}: {error.message}")
                reply(LookupFailed(error=message, permanent=error.code in _PERMANENT_CODES))
            return
        except TimeoutError:
            timeout = self.settings.lookup_timeout_s
            reply(LookupFailed(error=f"no answer within {timeout:g} s"))
            return
        except Exception as error:
            message = redact(str(error) or type(error).__name__)
            reply(LookupFailed(error=message, permanent=is_permanent(message)))
            return
        reply(_holder(info.metadata))

    def _room_service(self) -> Any:
        if self._api is None:
            s = self.settings
            self._api = api.LiveKitAPI(s.http_url, s.api_key, s.api_secret)
        return self._api.room

    def close(self) -> None:
        """Leave every room, close the room service client, and stop the loop if it is ours."""
        with self._lock:
            handles = list(self._handles)
        for handle in handles:
            handle.leave()
        # A join in flight is waited out, as long as the SDK may take to end it: stopping the
        # loop under it would strand the SDK's room-event handshake, and the SDK would SIGTERM
        # the process (see `LiveKitHandle`).
        deadline = time.monotonic() + self.settings.sdk_give_up_s + self.settings.leave_timeout_s
        for handle in handles:
            handle.wait_released(timeout_s=max(0.0, deadline - time.monotonic()))
        if self._api is not None:
            self._loop.submit(self._api.aclose()).result(timeout=5)
            self._api = None
        if self._owns_loop:
            self._loop.stop()


def token_expiry_ms(token: str) -> int | None:
    """When an access token expires (its `exp` claim, wall-clock ms), read without verifying
    it: the server that signed it handed it over; `None` if it does not say."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return None
    expiry = claims.get("exp") if isinstance(claims, dict) else None
    return expiry * 1000 if isinstance(expiry, int) else None


def _holder(metadata: str) -> IdentityHolder:
    try:
        fields = json.loads(metadata) if metadata else {}
    except json.JSONDecodeError:
        fields = {}
    server = fields.get("server")
    epoch = fields.get("epoch")
    return IdentityHolder(
        server=server if isinstance(server, str) else None,
        epoch=epoch if isinstance(epoch, int) else None,
    )


def _muted(phone: rtc.Participant) -> bool:
    """The phone says it is muted: by its `rejoin.muted` attribute, or by muting every audio
    track it publishes."""
    if phone.attributes.get(MUTED_ATTRIBUTE) == "true":
        return True
    audio = [p for p in phone.track_publications.values() if p.kind == rtc.TrackKind.KIND_AUDIO]
    return bool(audio) and all(p.muted for p in audio)


class LiveKitHandle:
    """One join of one bridge: the SDK room, its event handlers, and its release.

    A handle is one task on the connector's loop: wait until the join before it of the same
    identity has settled, connect, stay until asked to leave or disconnected, then disconnect.
    It never cancels `Room.connect`: with the pinned SDK a cancelled connect goes on in its Rust
    core, joins late and kicks the newer join of the identity as a duplicate
    (livekit/python-sdks#804), and, never told that Python is ready for its room's events, makes
    the SDK send SIGTERM to the whole process 15 s later (python-sdks#784;
    `scripts/bench-abandon` measures both). A join given up on (left, or past
    `connect_timeout_s`) is waited out and then left, and the next join of its identity starts
    once the one before has settled: it is in the room (where it can only be kicked), released,
    or connecting for `settle_timeout_s` already. A late join can neither act for a newer
    bridge nor kick it.
    """

    def __init__(
        self,
        connector: LiveKitConnector,
        request: JoinRequest,
        on_event: Callable[[RoomEvent], object],
    ) -> None:
        self._connector = connector
        self._request = request
        self._on_event = on_event
        self._room: rtc.Room | None = None
        self._readers: list[asyncio.Task[None]] = []
        self._left = threading.Event()
        """Nothing more reaches the bridge: it left, or was told the join failed."""
        self._released = threading.Event()
        # Bound to the connector's loop when first awaited there (Python 3.10+).
        self._leaving = asyncio.Event()
        """Set on the loop: leave now (asked to, or the room disconnected by itself)."""
        self._settled = asyncio.Event()
        """Set on the loop once this join can no longer reach the server late (it is in the
        room, or released): the next join of its identity may start."""
        self._connecting_since: float | None = None
        """When `Room.connect` began (the loop's clock)."""

    @property
    def key(self) -> tuple[str, str]:
        return (self._request.room, self._request.identity)

    def start(self, loop: EventLoopThread) -> None:
        self._loop = loop
        loop.submit(self._run())

    def leave(self) -> None:
        if self._left.is_set():
            return
        self._left.set()
        self._loop.loop.call_soon_threadsafe(self._leaving.set)

    def wait_released(self, timeout_s: float) -> bool:
        return self._released.wait(timeout_s)

    def _tell(self, event: RoomEvent) -> None:
        if not self._left.is_set():
            self._on_event(event)

    async def _run(self) -> None:
        try:
            if not self._left.is_set():
                await self._after_previous()
            if not self._left.is_set():
                await self._connect_and_stay()
        except Exception:
            logger.exception("a join of %s failed unexpectedly", self._request.room)
            self._tell(RoomJoinFailed(error="the connector failed; see its log"))
        finally:
            await self._release()

    async def _after_previous(self) -> None:
        """Wait until the join made before this one for the same identity has settled, or has
        been connecting for `settle_timeout_s`."""
        previous = self._connector._latest.get(self.key)
        self._connector._latest[self.key] = self
        if previous is None:
            return
        loop, patience = asyncio.get_running_loop(), self._connector.settings.settle_timeout_s
        while not previous._settled.is_set():
            since = previous._connecting_since
            # One still waiting for its own predecessor has not begun: it may yet land.
            wait = patience if since is None else since + patience - loop.time()
            if wait <= 0:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(previous._settled.wait(), timeout=wait)

    async def _connect_and_stay(self) -> None:
        settings, request = self._connector.settings, self._request
        token = bridge_token(settings, request)
        room = rtc.Room(loop=asyncio.get_running_loop())
        self._room = room
        room.on("disconnected", self._disconnected)
        room.on("data_received", self._data_received)
        room.on("participant_connected", self._participant_connected)
        room.on("participant_disconnected", self._participant_disconnected)
        room.on("track_subscribed", self._track_subscribed)
        room.on("reconnecting", lambda: self._tell(RoomReconnecting(reconnecting=True)))
        room.on("reconnected", lambda: self._tell(RoomReconnecting(reconnecting=False)))
        room.on("token_refreshed", self._token_refreshed)
        room.on("participant_attributes_changed", self._attributes_changed)
        room.on("track_muted", self._mute_changed)
        room.on("track_unmuted", self._mute_changed)
        options = settings.room_options(auto_subscribe=True)
        self._connecting_since = asyncio.get_running_loop().time()
        connect = asyncio.ensure_future(room.connect(settings.url, token, options))
        await asyncio.wait({connect}, timeout=settings.connect_timeout_s)
        if not connect.done():
            self._tell(RoomJoinFailed(error=f"no join within {settings.connect_timeout_s:g} s"))
            self._left.set()
            await asyncio.wait({connect})
        if connect.exception() is not None:
            message = redact(str(connect.exception()) or type(connect.exception()).__name__)
            self._tell(RoomJoinFailed(error=message, permanent=is_permanent(message)))
            return
        if self._left.is_set():
            return
        phone = room.remote_participants.get(request.phone_identity)
        self._tell(
            RoomJoined(
                participant_sid=room.local_participant.sid,
                participant_count=len(room.remote_participants) + 1,
                phone_present=phone is not None,
                phone_muted=phone is not None and _muted(phone),
            )
        )
        # In the room, it can only be kicked by a newer join now, never kick one.
        self._settled.set()
        await self._leaving.wait()

    def _disconnected(self, reason: int) -> None:
        self._tell(RoomDisconnected(reason=reason_name(reason)))
        # A room that ended by itself (a kick, say) holds nothing worth keeping, whether or not
        # its bridge is still there to leave it.
        self._leaving.set()

    def _token_refreshed(self) -> None:
        token = getattr(self._room, "_token", None)
        self._tell(RoomTokenRefreshed(expires_ms=token_expiry_ms(token) if token else None))

    def _data_received(self, packet: rtc.DataPacket) -> None:
        sender = packet.participant
        if sender is not None and sender.identity == self._request.phone_identity:
            self._tell(RoomData(payload=bytes(packet.data)))

    def _track_subscribed(
        self,
        track: rtc.Track,
        _publication: rtc.RemoteTrackPublication,
        participant: rtc.RemoteParticipant,
    ) -> None:
        if (
            participant.identity == self._request.phone_identity
            and track.kind == rtc.TrackKind.KIND_AUDIO
            and not self._left.is_set()
        ):
            self._readers.append(asyncio.get_running_loop().create_task(self._read_track(track)))

    async def _read_track(self, track: rtc.Track) -> None:
        """Turn the phone's audio track into the chunks its data packets would carry: 100 ms
        of PCM16LE at 16 kHz, mono, after a rolling sequence byte."""
        stream = rtc.AudioStream.from_track(
            track=track, sample_rate=PCM_RATE, num_channels=1, frame_size_ms=CHUNK_MS
        )
        sequence = 0
        try:
            async for event in stream:
                pcm = bytes(event.frame.data.cast("B"))
                self._tell(RoomData(payload=bytes([sequence]) + pcm))
                sequence = (sequence + 1) % 256
        finally:
            await stream.aclose()

    def _participant_connected(self, participant: rtc.RemoteParticipant) -> None:
        if participant.identity == self._request.phone_identity:
            self._tell(PhonePresence(present=True))
            if _muted(participant):
                self._tell(PhoneMuted(muted=True))

    def _attributes_changed(self, _changed: dict[str, str], participant: rtc.Participant) -> None:
        self._mute_changed(participant)

    def _mute_changed(self, participant: rtc.Participant, *_publication: object) -> None:
        if participant.identity == self._request.phone_identity:
            self._tell(PhoneMuted(muted=_muted(participant)))

    def _participant_disconnected(self, participant: rtc.RemoteParticipant) -> None:
        if participant.identity == self._request.phone_identity:
            self._tell(PhonePresence(present=False))

    async def _release(self) -> None:
        self._left.set()
        readers, self._readers = self._readers, []
        for reader in readers:
            reader.cancel()
        if readers:
            await asyncio.gather(*readers, return_exceptions=True)
        room, self._room = self._room, None
        if room is not None and room.isconnected():
            # Never cancelled either: a cancelled close keeps the room's UDP sockets
            # (livekit/rust-sdks#1334). One that takes too long finishes in the background.
            leaving = asyncio.ensure_future(room.disconnect())
            await asyncio.wait({leaving}, timeout=self._connector.settings.leave_timeout_s)
            self._connector._settle(leaving)
        self._connector._forget(self)
        self._settled.set()
        self._released.set()

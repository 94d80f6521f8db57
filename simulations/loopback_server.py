"""A small LiveKit-compatible server on this machine, so the real SDK can be tested end to end.

It speaks what `livekit` 1.2.1 needs (research/livekit-wire-protocol.md): the v0 `/rtc` signal
WebSocket with `subscriber_primary=false` (`/rtc/v1` answers 404 so the client falls back), a
publisher peer connection answered by aiortc, data forwarded between participants by channel
label, the kicks of the real server (duplicate identity, removal, room deletion, shutdown) as
Leave requests, and the RoomService over Twirp. A resume is refused with
`Leave{STATE_MISMATCH, RECONNECT}`, so a dropped client always rejoins from scratch.

ICE ignores loopback interfaces: run it and its clients inside `scripts/netns-run`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import WSMsgType, web
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCDataChannel,
    RTCIceCandidate,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.contrib.media import MediaRelay
from aiortc.mediastreams import MediaStreamError
from aiortc.sdp import SessionDescription, candidate_from_sdp
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from livekit import api
from livekit.api.access_token import Claims
from livekit.protocol import models, room, rtc

log = logging.getLogger(__name__)

_M = TypeVar("_M", bound=Message)
_T = TypeVar("_T")
_A = TypeVar("_A")

PING_INTERVAL_S = 5
PING_TIMEOUT_S = 15
SERVER_VERSION = "1.9.0"
"""Must be semver: the SDK's RPC code parses it and panics otherwise."""
FORWARDED_LABELS = frozenset({"_reliable", "_lossy"})
"""The data channels whose packets reach other participants; `_data_track` is not relayed."""
WS_CLOSE_TIMEOUT_S = 2.0
SUBSCRIBER_ANSWER_TIMEOUT_S = 10.0
_TWIRP_STATUS = {
    "unauthenticated": 401,
    "permission_denied": 403,
    "not_found": 404,
    "bad_route": 404,
    "malformed": 400,
    "unavailable": 503,
}


def _new_sid(prefix: str) -> str:
    return prefix + secrets.token_hex(6)


def _now_ms() -> int:
    return int(time.time() * 1000)


class _TwirpError(Exception):
    """A RoomService failure, answered as Twirp's JSON error."""

    def __init__(self, code: str, msg: str) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg

    def response(self) -> web.Response:
        body = json.dumps({"code": self.code, "msg": self.msg})
        return web.Response(
            status=_TWIRP_STATUS[self.code], text=body, content_type="application/json"
        )


class _Peer:
    """One aiortc peer connection, serialising its negotiation with the client's candidates.

    aiortc drops a candidate that arrives before the remote description, and applying one is
    asynchronous, so candidates wait on the lock and those that come first are kept until then.
    """

    def __init__(self) -> None:
        # No ICE servers: aiortc would otherwise try Google's STUN server.
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self._lock = asyncio.Lock()
        self._early: list[RTCIceCandidate] = []

    async def answer(self, offer_sdp: str) -> str:
        """Apply the client's offer and return the answer, with every local candidate in it."""
        async with self._lock:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
            await self.pc.setLocalDescription(await self.pc.createAnswer())
            await self._add_early()
            return self.pc.localDescription.sdp

    async def offer(self) -> str:
        """Return a new offer, with every local candidate in it."""
        async with self._lock:
            await self.pc.setLocalDescription(await self.pc.createOffer())
            return self.pc.localDescription.sdp

    async def accept_answer(self, answer_sdp: str) -> None:
        """Apply the client's answer to an offer of ours."""
        async with self._lock:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer_sdp, type="answer"))
            await self._add_early()

    async def add_candidate(self, candidate: RTCIceCandidate) -> None:
        """Add a trickled candidate now, or once the remote description is applied."""
        async with self._lock:
            if self.pc.remoteDescription is None:
                self._early.append(candidate)
            else:
                await self.pc.addIceCandidate(candidate)

    async def _add_early(self) -> None:
        early, self._early = self._early, []
        for candidate in early:
            await self.pc.addIceCandidate(candidate)

    async def close(self) -> None:
        """Close the peer connection."""
        await self.pc.close()


def _parse_candidate(candidate_init: str) -> RTCIceCandidate | None:
    """The aiortc candidate of the SDK's trickle JSON, or None for one aiortc cannot use."""
    try:
        init = json.loads(candidate_init)
        line = str(init.get("candidate", ""))
    except (ValueError, AttributeError):
        return None
    line = line.removeprefix("candidate:")
    # aioice only does UDP; libwebrtc also trickles TCP candidates.
    if not line or " udp " not in f" {line.lower()} ":
        return None
    try:
        candidate = candidate_from_sdp(line)
    except (AssertionError, ValueError, IndexError):
        return None
    candidate.sdpMid = init.get("sdpMid")
    candidate.sdpMLineIndex = init.get("sdpMLineIndex")
    return candidate


@dataclass(eq=False)
class _Participant:
    """One signal session of one participant: its WebSocket, peer connections, channels and
    tracks."""

    room: str
    info: models.ParticipantInfo
    ws: web.WebSocketResponse
    auto_subscribe: bool
    publisher: _Peer = field(default_factory=_Peer)
    subscriber: _Peer | None = None
    channels: dict[str, RTCDataChannel] = field(default_factory=dict)
    announced: dict[str, models.TrackInfo] = field(default_factory=dict)
    """Tracks the client asked to publish, by its cid, until their media arrives."""
    cid_by_mid: dict[str, str] = field(default_factory=dict)
    media: dict[str, MediaStreamTrack] = field(default_factory=dict)
    """The published tracks' media, by track sid."""
    offering: asyncio.Lock = field(default_factory=asyncio.Lock)
    """Held from a subscriber offer until its answer, so offers never cross."""
    answered: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    closed: bool = False
    deaf_until: float = 0.0
    """Until when (monotonic) no data packet is forwarded to this participant."""

    @property
    def identity(self) -> str:
        return self.info.identity


@dataclass(eq=False)
class _Room:
    info: models.Room
    participants: dict[str, _Participant] = field(default_factory=dict)


class LoopbackServer:
    """A LiveKit-compatible server for the real SDK, on one asyncio event loop."""

    def __init__(
        self,
        *,
        api_key: str = "devkey",
        api_secret: str = "secret",
        host: str = "127.0.0.1",
        port: int = 7880,
    ) -> None:
        self._verifier = api.TokenVerifier(api_key, api_secret)
        self._host = host
        self._port = port
        self._rooms: dict[str, _Room] = {}
        self._refuse_until = 0.0
        self._room_service_down_until = 0.0
        self._runner: web.AppRunner | None = None
        self._relay = MediaRelay()
        self._twirp: dict[str, Callable[[api.VideoGrants, _Body], Awaitable[Message]]] = {
            "CreateRoom": self._create_room,
            "ListRooms": self._list_rooms,
            "DeleteRoom": self._delete_room,
            "ListParticipants": self._list_participants,
            "GetParticipant": self._get_participant,
            "RemoveParticipant": self._remove_participant,
            "UpdateParticipant": self._update_participant,
            "UpdateRoomMetadata": self._update_room_metadata,
            "SendData": self._send_data,
        }

    @property
    def url(self) -> str:
        """The signal URL; with port 0 it names the port picked by `start`."""
        return f"ws://{self._host}:{self._port}"

    async def start(self) -> None:
        """Listen on host:port."""
        app = web.Application()
        app.router.add_get("/rtc/v1", self._not_found)
        app.router.add_get("/rtc", self._signal)
        app.router.add_get("/rtc/validate", self._validate)
        app.router.add_post("/twirp/livekit.RoomService/{method}", self._room_service)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        if self._port == 0:
            server = site._server
            assert isinstance(server, asyncio.Server)
            self._port = server.sockets[0].getsockname()[1]
        log.info("loopback LiveKit server listening on %s", self.url)

    async def stop(self) -> None:
        """Disconnect everyone with SERVER_SHUTDOWN and stop listening."""
        for lk_room in list(self._rooms.values()):
            for participant in list(lk_room.participants.values()):
                await self._end(participant, leave=models.DisconnectReason.SERVER_SHUTDOWN)
        self._rooms.clear()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def refuse_joins_for(self, seconds: float) -> None:
        """Fail every join for `seconds` with HTTP 503, which the SDK retries, then gives up on."""
        self._refuse_until = time.monotonic() + seconds

    def fail_room_service_for(self, seconds: float) -> None:
        """Answer every RoomService call with 503 `unavailable` for `seconds`."""
        self._room_service_down_until = time.monotonic() + seconds

    def stall_data_to(self, room_name: str, identity: str, seconds: float) -> bool:
        """Forward no data packets to this participant for `seconds`, keeping it connected: a
        data path that died. A later join of the same identity gets data again. Returns False
        if no such participant is in the room."""
        lk_room = self._rooms.get(room_name)
        participant = lk_room.participants.get(identity) if lk_room else None
        if participant is None:
            return False
        participant.deaf_until = time.monotonic() + seconds
        return True

    async def drop_signal(self, room_name: str, identity: str) -> bool:
        """Close a participant's signal WebSocket without a Leave, like a network drop.

        It leaves the room at once, so the SDK's resume is refused and it rejoins from scratch.
        Returns False if no such participant is in the room.
        """
        lk_room = self._rooms.get(room_name)
        participant = lk_room.participants.get(identity) if lk_room else None
        if participant is None:
            return False
        await self._end(participant, leave=None)
        return True

    def participants(self, room_name: str) -> list[models.ParticipantInfo]:
        """Copies of the infos of the participants in a room, in join order."""
        lk_room = self._rooms.get(room_name)
        if lk_room is None:
            return []
        # A snapshot first: LoopbackThread users may call this from another thread.
        return [_copy(p.info) for p in list(lk_room.participants.values())]

    # HTTP endpoints

    async def _not_found(self, request: web.Request) -> web.Response:
        # The SDK falls back to the v0 `/rtc` path only when `/rtc/v1` answers exactly 404.
        return web.Response(status=404, text="not found")

    def _refusing(self) -> bool:
        return time.monotonic() < self._refuse_until

    def _join_claims(self, request: web.Request) -> Claims | str:
        """The claims of a join's token, or why it may not join."""
        claims = self._claims(request)
        if claims is None:
            return "invalid or expired token"
        video = claims.video
        if video is None or not video.room_join or not video.room:
            return "token lacks the roomJoin grant or a room"
        if not claims.identity:
            return "token lacks an identity"
        return claims

    def _claims(self, request: web.Request) -> Claims | None:
        header = request.headers.get("Authorization", "")
        token = header.removeprefix("Bearer ").strip()
        if not token or token == header:
            return None
        try:
            return self._verifier.verify(token)
        # PyJWT raises its own errors for bad signatures and expiry, and ValueError/TypeError
        # for malformed claims; all mean the same here.
        except Exception:
            return None

    async def _validate(self, request: web.Request) -> web.Response:
        # The SDK asks here only after a failed upgrade: 401 makes it fail at once, 503 retry.
        if self._refusing():
            return web.Response(status=503, text="joins are refused for now")
        claims = self._join_claims(request)
        if isinstance(claims, str):
            return web.Response(status=401, text=claims)
        return web.Response(text="success")

    async def _signal(self, request: web.Request) -> web.StreamResponse:
        if self._refusing():
            return web.Response(status=503, text="joins are refused for now")
        claims = self._join_claims(request)
        if isinstance(claims, str):
            log.info("refused a join: %s", claims)
            return web.Response(status=401, text=claims)
        ws = web.WebSocketResponse(timeout=WS_CLOSE_TIMEOUT_S)
        await ws.prepare(request)
        if request.query.get("reconnect") in {"1", "true"}:
            # No resume: like the real server for an unknown session, ask for a full rejoin.
            await _send(
                ws,
                rtc.SignalResponse(
                    leave=rtc.LeaveRequest(
                        reason=models.DisconnectReason.STATE_MISMATCH,
                        action=rtc.LeaveRequest.Action.RECONNECT,
                    )
                ),
            )
            await ws.close()
            return ws
        auto_subscribe = request.query.get("auto_subscribe", "1") in {"1", "true"}
        participant = await self._join(claims, ws, auto_subscribe=auto_subscribe)
        try:
            await self._read(participant)
        finally:
            await self._end(participant, leave=None)
        return ws

    async def _room_service(self, request: web.Request) -> web.Response:
        try:
            method = self._twirp.get(request.match_info["method"])
            if method is None:
                raise _TwirpError("bad_route", "no such RoomService method")
            if time.monotonic() < self._room_service_down_until:
                raise _TwirpError("unavailable", "the room service is unavailable")
            encoding = request.content_type
            if encoding not in ("application/protobuf", "application/json"):
                # What Twirp answers a Content-Type it does not speak.
                raise _TwirpError("bad_route", f"unexpected Content-Type: {encoding!r}")
            claims = self._claims(request)
            if claims is None:
                raise _TwirpError("unauthenticated", "invalid or expired token")
            body = _Body(await request.read(), json=encoding == "application/json")
            reply = await method(claims.video or api.VideoGrants(), body)
        except _TwirpError as error:
            return error.response()
        if body.json:
            # As a Go Twirp server writes it: field names as in the .proto, defaults included.
            text = json_format.MessageToJson(
                reply, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
            )
            return web.Response(text=text, content_type="application/json")
        return web.Response(body=reply.SerializeToString(), content_type="application/protobuf")

    # Signal sessions

    async def _join(
        self, claims: Claims, ws: web.WebSocketResponse, *, auto_subscribe: bool
    ) -> _Participant:
        assert claims.video is not None
        room_name = claims.video.room
        lk_room = self._room(room_name)
        old = lk_room.participants.get(claims.identity)
        if old is not None:
            log.info("%s joined %s again; disconnecting the older session", old.identity, room_name)
            await self._end(old, leave=models.DisconnectReason.DUPLICATE_IDENTITY)
        grants = claims.video
        info = models.ParticipantInfo(
            sid=_new_sid("PA_"),
            identity=claims.identity,
            name=claims.name,
            metadata=claims.metadata,
            attributes=claims.attributes or {},
            state=models.ParticipantInfo.State.ACTIVE,
            joined_at=int(time.time()),
            joined_at_ms=_now_ms(),
            version=1,
            permission=models.ParticipantPermission(
                can_subscribe=grants.can_subscribe is not False,
                can_publish=grants.can_publish is not False,
                can_publish_data=grants.can_publish_data is not False,
                can_update_metadata=bool(grants.can_update_own_metadata),
            ),
        )
        participant = _Participant(room=room_name, info=info, ws=ws, auto_subscribe=auto_subscribe)
        publisher = participant.publisher.pc
        publisher.on("datachannel", lambda c: self._on_channel(participant, c))
        publisher.on("track", lambda t: self._spawn(participant, self._publish(participant, t)))
        others = [_copy(p.info) for p in lk_room.participants.values()]
        lk_room.participants[claims.identity] = participant
        await _send(
            ws,
            rtc.SignalResponse(
                join=rtc.JoinResponse(
                    room=_copy(lk_room.info),
                    participant=_copy(info),
                    other_participants=others,
                    subscriber_primary=False,
                    ping_interval=PING_INTERVAL_S,
                    ping_timeout=PING_TIMEOUT_S,
                    server_version=SERVER_VERSION,
                    server_info=models.ServerInfo(
                        edition=models.ServerInfo.Edition.Standard,
                        version=SERVER_VERSION,
                        protocol=16,
                        node_id="loopback",
                    ),
                )
            ),
        )
        log.info("%s joined %s as %s", claims.identity, room_name, info.sid)
        await self._broadcast(lk_room, info, skip=participant)
        published = [
            (other.info.sid, track_sid, track)
            for other in lk_room.participants.values()
            for track_sid, track in other.media.items()
        ]
        if published:
            self._spawn(participant, self._subscribe(participant, published))
        return participant

    async def _read(self, participant: _Participant) -> None:
        async for message in participant.ws:
            if message.type is not WSMsgType.BINARY:
                continue
            request = rtc.SignalRequest()
            try:
                request.ParseFromString(message.data)
            except DecodeError:
                log.warning("skipped an undecodable signal frame from %s", participant.identity)
                continue
            if not await self._handle(participant, request):
                return

    async def _handle(self, participant: _Participant, request: rtc.SignalRequest) -> bool:
        """Act on one signal request; False once the participant has left."""
        kind = request.WhichOneof("message")
        if kind == "ping_req":
            pong = rtc.Pong(last_ping_timestamp=request.ping_req.timestamp, timestamp=_now_ms())
            await _send(participant.ws, rtc.SignalResponse(pong_resp=pong))
        elif kind == "ping":
            await _send(participant.ws, rtc.SignalResponse(pong=_now_ms()))
        elif kind == "offer":
            offer = request.offer
            participant.cid_by_mid.update(_cids_by_mid(offer.sdp))
            self._spawn(participant, self._answer(participant, offer.sdp, offer.id))
        elif kind == "answer" and participant.subscriber is not None:
            self._spawn(participant, self._accept_answer(participant, request.answer.sdp))
        elif kind == "trickle":
            candidate = _parse_candidate(request.trickle.candidateInit)
            publishing = request.trickle.target == rtc.SignalTarget.PUBLISHER
            peer = participant.publisher if publishing else participant.subscriber
            if candidate is not None and peer is not None:
                self._spawn(participant, peer.add_candidate(candidate))
        elif kind == "add_track":
            await self._announce(participant, request.add_track)
        elif kind == "leave":
            log.info("%s left %s", participant.identity, participant.room)
            return False
        return True

    async def _answer(self, participant: _Participant, sdp: str, offer_id: int) -> None:
        answer = await participant.publisher.answer(sdp)
        await _send(
            participant.ws,
            rtc.SignalResponse(
                answer=rtc.SessionDescription(type="answer", sdp=answer, id=offer_id)
            ),
        )

    async def _accept_answer(self, participant: _Participant, sdp: str) -> None:
        assert participant.subscriber is not None
        await participant.subscriber.accept_answer(sdp)
        participant.answered.set()

    async def _announce(self, participant: _Participant, request: rtc.AddTrackRequest) -> None:
        """Give a track the client is about to publish its sid; the room hears of it with its
        media."""
        info = models.TrackInfo(
            sid=_new_sid("TR_"),
            type=request.type,
            name=request.name,
            source=request.source,
            muted=request.muted,
            disable_dtx=request.disable_dtx,
            stereo=request.stereo,
            stream=request.stream,
        )
        participant.announced[request.cid] = info
        published = rtc.TrackPublishedResponse(cid=request.cid, track=info)
        await _send(participant.ws, rtc.SignalResponse(track_published=published))

    async def _publish(self, owner: _Participant, track: MediaStreamTrack) -> None:
        """Announce a track whose media has arrived to the room and subscribe the others."""
        # aiortc's track id is not the SDK's cid; the offer's msid names it per mid.
        mid = next(
            (t.mid for t in owner.publisher.pc.getTransceivers() if t.receiver.track is track),
            None,
        )
        info = owner.announced.pop(owner.cid_by_mid.get(mid or "", ""), None)
        if info is None:
            log.warning("%s sent media for a track it never announced", owner.identity)
            return
        info.mid = mid or ""
        owner.media[info.sid] = track
        # aiortc queues every decoded frame until it is read, subscribers or not.
        self._spawn(owner, _drain(self._relay.subscribe(track, buffered=False)))
        owner.info.tracks.append(info)
        owner.info.version += 1
        lk_room = self._rooms.get(owner.room)
        if lk_room is None:
            return
        # The SDK must know the track before the offer that carries it.
        await self._broadcast(lk_room, _copy(owner.info), skip=owner)
        for other in list(lk_room.participants.values()):
            if other is not owner:
                self._spawn(other, self._subscribe(other, [(owner.info.sid, info.sid, track)]))

    async def _subscribe(
        self, subscriber: _Participant, tracks: list[tuple[str, str, MediaStreamTrack]]
    ) -> None:
        """Send relayed copies of (publisher sid, track sid, media) to a participant."""
        if not subscriber.auto_subscribe or not subscriber.info.permission.can_subscribe:
            return
        if subscriber.subscriber is None:
            subscriber.subscriber = _Peer()
        peer = subscriber.subscriber
        for publisher_sid, track_sid, track in tracks:
            transceiver = peer.pc.addTransceiver(self._relay.subscribe(track), "sendonly")
            # The SDK finds the publication by this stream id; aiortc only sets it privately.
            transceiver.sender._stream_id = f"{publisher_sid}|{track_sid}"
        async with subscriber.offering:
            subscriber.answered.clear()
            offer = rtc.SessionDescription(type="offer", sdp=await peer.offer())
            await _send(subscriber.ws, rtc.SignalResponse(offer=offer))
            await asyncio.wait_for(subscriber.answered.wait(), SUBSCRIBER_ANSWER_TIMEOUT_S)

    def _spawn(self, participant: _Participant, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        participant.tasks.add(task)
        task.add_done_callback(lambda t: _finish(participant, t))

    def _on_channel(self, participant: _Participant, channel: RTCDataChannel) -> None:
        participant.channels[channel.label] = channel
        if channel.label in FORWARDED_LABELS:
            channel.on("message", lambda data: self._forward(participant, channel.label, data))

    def _forward(self, sender: _Participant, label: str, data: bytes | str) -> None:
        """Send a data packet's bytes on the same-label channel of each of its recipients.

        The label says reliable or lossy: the SDK writes `DataPacket.kind` inverted.
        """
        if not isinstance(data, bytes):
            return
        packet = models.DataPacket()
        try:
            packet.ParseFromString(data)
        except DecodeError:
            return
        wanted = set(packet.destination_identities) | set(packet.user.destination_identities)
        lk_room = self._rooms.get(sender.room)
        if lk_room is None:
            return
        now = time.monotonic()
        for other in lk_room.participants.values():
            if other is sender or (wanted and other.identity not in wanted):
                continue
            if now < other.deaf_until:
                continue
            channel = other.channels.get(label)
            if channel is not None and channel.readyState == "open":
                channel.send(data)

    async def _end(
        self, participant: _Participant, *, leave: models.DisconnectReason | None
    ) -> None:
        """Take a participant out of its room, telling it why first when `leave` is given."""
        if participant.closed:
            return
        participant.closed = True
        lk_room = self._rooms.get(participant.room)
        if lk_room is not None and lk_room.participants.get(participant.identity) is participant:
            del lk_room.participants[participant.identity]
        # The Leave must come before the close, or the SDK takes the close for a network drop.
        if leave is not None:
            await _send(
                participant.ws,
                rtc.SignalResponse(
                    leave=rtc.LeaveRequest(reason=leave, action=rtc.LeaveRequest.Action.DISCONNECT)
                ),
            )
        current = asyncio.current_task()
        for task in list(participant.tasks):
            if task is not current:
                task.cancel()
        await participant.ws.close()
        await participant.publisher.close()
        if participant.subscriber is not None:
            await participant.subscriber.close()
        if lk_room is not None:
            gone = _copy(participant.info)
            gone.state = models.ParticipantInfo.State.DISCONNECTED
            await self._broadcast(lk_room, gone, skip=participant)

    async def _broadcast(
        self, lk_room: _Room, info: models.ParticipantInfo, *, skip: _Participant | None
    ) -> None:
        update = rtc.SignalResponse(update=rtc.ParticipantUpdate(participants=[info]))
        for other in list(lk_room.participants.values()):
            if other is not skip:
                await _send(other.ws, update)

    def _room(self, name: str) -> _Room:
        lk_room = self._rooms.get(name)
        if lk_room is None:
            now = int(time.time())
            info = models.Room(
                sid=_new_sid("RM_"), name=name, creation_time=now, creation_time_ms=_now_ms()
            )
            lk_room = self._rooms[name] = _Room(info=info)
        return lk_room

    def _existing(self, room_name: str) -> _Room:
        lk_room = self._rooms.get(room_name)
        if lk_room is None:
            raise _TwirpError("not_found", "requested room does not exist")
        return lk_room

    def _participant(self, room_name: str, identity: str) -> _Participant:
        lk_room = self._rooms.get(room_name)
        participant = lk_room.participants.get(identity) if lk_room else None
        if participant is None:
            raise _TwirpError("not_found", "participant does not exist")
        return participant

    # RoomService

    async def _create_room(self, grants: api.VideoGrants, body: _Body) -> Message:
        _require(grants.room_create, "roomCreate")
        request = _parse(room.CreateRoomRequest, body)
        lk_room = self._room(request.name)
        if request.metadata:
            lk_room.info.metadata = request.metadata
        return _room_info(lk_room)

    async def _list_rooms(self, grants: api.VideoGrants, body: _Body) -> Message:
        _require(grants.room_list, "roomList")
        request = _parse(room.ListRoomsRequest, body)
        names = set(request.names)
        return room.ListRoomsResponse(
            rooms=[_room_info(r) for n, r in self._rooms.items() if not names or n in names]
        )

    async def _delete_room(self, grants: api.VideoGrants, body: _Body) -> Message:
        _require(grants.room_create, "roomCreate")
        request = _parse(room.DeleteRoomRequest, body)
        lk_room = self._existing(request.room)
        for participant in list(lk_room.participants.values()):
            await self._end(participant, leave=models.DisconnectReason.ROOM_DELETED)
        del self._rooms[request.room]
        return room.DeleteRoomResponse()

    async def _list_participants(self, grants: api.VideoGrants, body: _Body) -> Message:
        request = _parse(room.ListParticipantsRequest, body)
        _require_admin(grants, request.room)
        self._existing(request.room)
        return room.ListParticipantsResponse(participants=self.participants(request.room))

    async def _get_participant(self, grants: api.VideoGrants, body: _Body) -> Message:
        request = _parse(room.RoomParticipantIdentity, body)
        _require_admin(grants, request.room)
        return _copy(self._participant(request.room, request.identity).info)

    async def _remove_participant(self, grants: api.VideoGrants, body: _Body) -> Message:
        request = _parse(room.RoomParticipantIdentity, body)
        _require_admin(grants, request.room)
        participant = self._participant(request.room, request.identity)
        await self._end(participant, leave=models.DisconnectReason.PARTICIPANT_REMOVED)
        return room.RemoveParticipantResponse()

    async def _update_room_metadata(self, grants: api.VideoGrants, body: _Body) -> Message:
        request = _parse(room.UpdateRoomMetadataRequest, body)
        _require_admin(grants, request.room)
        lk_room = self._existing(request.room)
        lk_room.info.metadata = request.metadata
        update = rtc.SignalResponse(room_update=rtc.RoomUpdate(room=_room_info(lk_room)))
        for participant in list(lk_room.participants.values()):
            await _send(participant.ws, update)
        return _room_info(lk_room)

    async def _send_data(self, grants: api.VideoGrants, body: _Body) -> Message:
        request = _parse(room.SendDataRequest, body)
        _require_admin(grants, request.room)
        lk_room = self._existing(request.room)
        packet = models.DataPacket(
            kind=request.kind,
            user=models.UserPacket(
                payload=request.data,
                topic=request.topic,
                destination_identities=request.destination_identities,
            ),
            destination_identities=request.destination_identities,
        )
        wanted = set(request.destination_identities)
        label = "_lossy" if request.kind == models.DataPacket.Kind.LOSSY else "_reliable"
        data = packet.SerializeToString()
        for participant in lk_room.participants.values():
            if wanted and participant.identity not in wanted:
                continue
            channel = participant.channels.get(label)
            if channel is not None and channel.readyState == "open":
                channel.send(data)
        return room.SendDataResponse()

    async def _update_participant(self, grants: api.VideoGrants, body: _Body) -> Message:
        request = _parse(room.UpdateParticipantRequest, body)
        _require_admin(grants, request.room)
        participant = self._participant(request.room, request.identity)
        info = participant.info
        if request.metadata:
            info.metadata = request.metadata
        if request.name:
            info.name = request.name
        for key, value in request.attributes.items():
            if value:
                info.attributes[key] = value
            else:
                info.attributes.pop(key, None)
        info.version += 1
        # The participant itself hears of it too, so its local metadata changes.
        await self._broadcast(self._rooms[request.room], _copy(info), skip=None)
        return _copy(info)


def _cids_by_mid(offer_sdp: str) -> dict[str, str]:
    """The SDK's track cid of each mid of an offer (its `a=msid:- <cid>`)."""
    cids = {}
    for media in SessionDescription.parse(offer_sdp).media:
        parts = (media.msid or "").split()
        if media.rtp.muxId and len(parts) == 2:
            cids[media.rtp.muxId] = parts[1]
    return cids


async def _drain(track: MediaStreamTrack) -> None:
    """Read a track until it ends."""
    with contextlib.suppress(MediaStreamError):
        while True:
            await track.recv()


def _room_info(lk_room: _Room) -> models.Room:
    info = _copy(lk_room.info)
    info.num_participants = len(lk_room.participants)
    return info


def _require(granted: bool | None, grant: str) -> None:
    if not granted:
        raise _TwirpError("permission_denied", f"the token lacks the {grant} grant")


def _require_admin(grants: api.VideoGrants, room_name: str) -> None:
    _require(grants.room_admin, "roomAdmin")
    if grants.room != room_name:
        raise _TwirpError("permission_denied", "the token's roomAdmin grant is for another room")


@dataclass(frozen=True)
class _Body:
    """A RoomService request's body, and whether it is JSON (the Node SDK's) or protobuf."""

    data: bytes
    json: bool


def _parse(cls: type[_M], body: _Body) -> _M:
    message = cls()
    if body.json:
        try:
            json_format.Parse(body.data or b"{}", message, ignore_unknown_fields=True)
        except (json_format.ParseError, UnicodeDecodeError) as error:
            msg = f"the request body is not valid JSON for {cls.__name__}"
            raise _TwirpError("malformed", msg) from error
        return message
    try:
        message.ParseFromString(body.data)
    except DecodeError as error:
        raise _TwirpError("malformed", "the request body is not a valid protobuf") from error
    return message


def _copy(message: _M) -> _M:
    clone = type(message)()
    clone.CopyFrom(message)
    return clone


async def _send(ws: web.WebSocketResponse, response: rtc.SignalResponse) -> None:
    """Send a signal response; a socket that is gone already needs nothing more."""
    if ws.closed:
        return
    try:
        await ws.send_bytes(response.SerializeToString())
    except (ConnectionError, RuntimeError):
        log.debug("could not send %s: the socket is closing", response.WhichOneof("message"))


def _finish(participant: _Participant, task: asyncio.Task[None]) -> None:
    participant.tasks.discard(task)
    if not task.cancelled() and task.exception() is not None:
        log.warning("work for %s failed", participant.identity, exc_info=task.exception())


class LoopbackThread:
    """A LoopbackServer on its own event loop in a daemon thread, controllable from others."""

    def __init__(
        self,
        *,
        api_key: str = "devkey",
        api_secret: str = "secret",
        host: str = "127.0.0.1",
        port: int = 7880,
    ) -> None:
        self.server = LoopbackServer(api_key=api_key, api_secret=api_secret, host=host, port=port)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="loopback-livekit", daemon=True
        )

    @property
    def url(self) -> str:
        """The server's signal URL."""
        return self.server.url

    def start(self, timeout: float = 10.0) -> None:
        """Start the thread and return once the server is listening."""
        self._thread.start()
        try:
            self._call(self.server.start(), timeout)
        except BaseException:
            self._end_thread(timeout)
            raise

    def stop(self, timeout: float = 10.0) -> None:
        """Disconnect everyone, stop the server and end the thread."""
        if not self._thread.is_alive():
            return
        try:
            self._call(self.server.stop(), timeout)
        finally:
            self._end_thread(timeout)

    def refuse_joins_for(self, seconds: float, timeout: float = 10.0) -> None:
        """See LoopbackServer.refuse_joins_for."""
        self._call(_later(self.server.refuse_joins_for, seconds), timeout)

    def fail_room_service_for(self, seconds: float, timeout: float = 10.0) -> None:
        """See LoopbackServer.fail_room_service_for."""
        self._call(_later(self.server.fail_room_service_for, seconds), timeout)

    def stall_data_to(
        self, room_name: str, identity: str, seconds: float, timeout: float = 10.0
    ) -> bool:
        """See LoopbackServer.stall_data_to."""
        return self._call(
            _later(lambda args: self.server.stall_data_to(*args), (room_name, identity, seconds)),
            timeout,
        )

    def drop_signal(self, room_name: str, identity: str, timeout: float = 10.0) -> bool:
        """See LoopbackServer.drop_signal."""
        return self._call(self.server.drop_signal(room_name, identity), timeout)

    def participants(self, room_name: str, timeout: float = 10.0) -> list[models.ParticipantInfo]:
        """See LoopbackServer.participants."""
        return self._call(_later(self.server.participants, room_name), timeout)

    def _call(self, work: Coroutine[Any, Any, _T], timeout: float) -> _T:
        return asyncio.run_coroutine_threadsafe(work, self._loop).result(timeout)

    def _end_thread(self, timeout: float) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self._loop.close()


async def _later(work: Callable[[_A], _T], argument: _A) -> _T:
    """`work(argument)`, as a coroutine to run on the server's loop."""
    return work(argument)


def serve(host: str, port: int, api_secret: str) -> None:
    """Run a LoopbackServer until Ctrl-C."""

    async def run() -> None:
        server = LoopbackServer(api_secret=api_secret, host=host, port=port)
        await server.start()
        try:
            await asyncio.Event().wait()
        finally:
            await server.stop()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        log.info("loopback LiveKit server stopped")

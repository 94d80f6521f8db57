"""The rooms and their participants' signal sessions: join, negotiation, publishing,
subscribing, data forwarding, and taking a participant out with or without a Leave."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web
from aiortc import MediaStreamTrack, RTCDataChannel
from aiortc.contrib.media import MediaRelay
from google.protobuf.message import DecodeError
from livekit.api.access_token import Claims
from livekit.protocol import models, rtc

from simulations.loopback.peer import Peer, cids_by_mid, drain, parse_candidate
from simulations.loopback.wire import (
    PING_INTERVAL_S,
    PING_TIMEOUT_S,
    SERVER_VERSION,
    copy,
    new_sid,
    now_ms,
    send,
)

log = logging.getLogger(__name__)

FORWARDED_LABELS = frozenset({"_reliable", "_lossy"})
"""The data channels whose packets reach other participants; `_data_track` is not relayed."""
SUBSCRIBER_ANSWER_TIMEOUT_S = 10.0
DEPARTURE_TIMEOUT_S = 20.0
"""How long a participant whose signal dropped without a Leave stays, resumable, in its room."""
TOKEN_REFRESH_S = 300.0
"""How often a connected participant gets a fresh token (a real server's 5 minutes)."""
SIMULATED_DISCONNECT_WINDOW_S = 5.0
"""How long a `disconnect_signal_on_resume` drill waits for the resume it spoils."""
MUTED_RESUMES = 3
"""How many resumes a `disconnect_signal_on_resume_no_messages` drill closes unanswered."""

Mint = Callable[[Claims], str]
"""A fresh token of the same identity and grants as the claims, for `refresh_token`."""


@dataclass(eq=False)
class Participant:
    """One signal session of one participant: its WebSocket, peer connections, channels and
    tracks."""

    room: str
    info: models.ParticipantInfo
    claims: Claims
    ws: web.WebSocketResponse
    """The signal socket now; a resume swaps in the new one."""
    auto_subscribe: bool
    publisher: Peer = field(default_factory=Peer)
    subscriber: Peer | None = None
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
    departure: asyncio.TimerHandle | None = None
    """While its signal is down: when it leaves the room unless it resumes first."""
    last_reliable_seq: int = 0
    """The sequence of its last reliable packet, so a resume resends only what came after."""
    spoil_resume_until: float = 0.0
    """Until when (monotonic) its next resume gets its signal closed (a drill)."""
    mute_resumes_until: float = 0.0
    """Until when (monotonic) its resumes get their signal closed before any answer (a drill),
    at most `MUTED_RESUMES` times."""
    muted_resumes: int = 0

    @property
    def identity(self) -> str:
        return self.info.identity


@dataclass(eq=False)
class Room:
    info: models.Room
    participants: dict[str, Participant] = field(default_factory=dict)

    def room_info(self) -> models.Room:
        """The room as the RoomService and RoomUpdate tell it."""
        info = copy(self.info)
        info.num_participants = len(self.participants)
        return info


class Rooms:
    """Every room of the server and the signal sessions of their participants."""

    def __init__(
        self,
        mint: Mint,
        *,
        departure_timeout_s: float = DEPARTURE_TIMEOUT_S,
        token_refresh_s: float = TOKEN_REFRESH_S,
    ) -> None:
        self.rooms: dict[str, Room] = {}
        self._relay = MediaRelay()
        self._mint = mint
        self._departure_timeout_s = departure_timeout_s
        self._token_refresh_s = token_refresh_s

    def room(self, name: str) -> Room:
        """The room of that name, created if it does not exist."""
        lk_room = self.rooms.get(name)
        if lk_room is None:
            now = int(time.time())
            info = models.Room(
                sid=new_sid("RM_"), name=name, creation_time=now, creation_time_ms=now_ms()
            )
            lk_room = self.rooms[name] = Room(info=info)
        return lk_room

    def find(self, room_name: str, identity: str) -> Participant | None:
        """The participant of that identity in that room, if any."""
        lk_room = self.rooms.get(room_name)
        return lk_room.participants.get(identity) if lk_room else None

    def participants(self, room_name: str) -> list[models.ParticipantInfo]:
        """Copies of the infos of the participants in a room, in join order."""
        lk_room = self.rooms.get(room_name)
        if lk_room is None:
            return []
        # A snapshot first: LoopbackThread users may call this from another thread.
        return [copy(p.info) for p in list(lk_room.participants.values())]

    async def close_all(self, reason: models.DisconnectReason) -> None:
        """Take everyone out of every room with that reason."""
        for lk_room in list(self.rooms.values()):
            for participant in list(lk_room.participants.values()):
                await self.end(participant, leave=reason)
        self.rooms.clear()

    async def session(
        self, claims: Claims, ws: web.WebSocketResponse, *, auto_subscribe: bool, resume: bool
    ) -> None:
        """Join (or resume), then serve the participant's signal requests on this socket until
        it leaves, is gone, or its socket drops: then it lingers, resumable, for the departure
        timeout, as a real server keeps a participant whose media may still be up."""
        if resume:
            resumed = await self._resume(claims, ws)
            if resumed is None:
                return
            participant = resumed
        else:
            participant = await self._join(claims, ws, auto_subscribe=auto_subscribe)
        dropped = False
        try:
            dropped = await self._read(participant, ws)
        finally:
            if participant.ws is ws:
                if dropped and not participant.closed:
                    self._linger(participant)
                else:
                    await self.end(participant, leave=None)

    def _linger(self, participant: Participant) -> None:
        log.info(
            "%s's signal dropped; it stays in %s for %s s unless it resumes",
            participant.identity,
            participant.room,
            self._departure_timeout_s,
        )

        def depart() -> None:
            participant.departure = None
            self._spawn(participant, self.end(participant, leave=None))

        loop = asyncio.get_running_loop()
        participant.departure = loop.call_later(self._departure_timeout_s, depart)

    async def _resume(self, claims: Claims, ws: web.WebSocketResponse) -> Participant | None:
        """Give a participant of the claims' identity this socket, and tell it what it missed;
        None, after asking the client for a full rejoin, when there is no one to resume."""
        assert claims.video is not None
        participant = self.find(claims.video.room, claims.identity)
        if participant is None:
            # What a real server answers a resume of a participant it no longer has.
            await send(
                ws,
                rtc.SignalResponse(
                    leave=rtc.LeaveRequest(
                        reason=models.DisconnectReason.STATE_MISMATCH,
                        action=rtc.LeaveRequest.Action.RECONNECT,
                    )
                ),
            )
            await ws.close()
            return None
        if participant.departure is not None:
            participant.departure.cancel()
            participant.departure = None
        old, participant.ws = participant.ws, ws
        # The client gave up on the old socket; its reader sees it is no longer current.
        await old.close()
        if time.monotonic() < participant.mute_resumes_until:
            participant.muted_resumes += 1
            if participant.muted_resumes >= MUTED_RESUMES:
                participant.mute_resumes_until = 0.0
            await ws.close()
            return participant
        lk_room = self.room(participant.room)
        reconnect = rtc.ReconnectResponse(
            server_info=_server_info(), last_message_seq=participant.last_reliable_seq
        )
        await send(ws, rtc.SignalResponse(reconnect=reconnect))
        # Metadata may have changed while it was away.
        everyone = [copy(p.info) for p in lk_room.participants.values()]
        await send(ws, rtc.SignalResponse(update=rtc.ParticipantUpdate(participants=everyone)))
        await send(ws, rtc.SignalResponse(room_update=rtc.RoomUpdate(room=lk_room.room_info())))
        log.info(
            "%s resumed in %s as %s", participant.identity, participant.room, participant.info.sid
        )
        if time.monotonic() < participant.spoil_resume_until:
            participant.spoil_resume_until = 0.0
            await ws.close()
        return participant

    async def _join(
        self, claims: Claims, ws: web.WebSocketResponse, *, auto_subscribe: bool
    ) -> Participant:
        assert claims.video is not None
        room_name = claims.video.room
        lk_room = self.room(room_name)
        old = lk_room.participants.get(claims.identity)
        if old is not None:
            log.info("%s joined %s again; disconnecting the older session", old.identity, room_name)
            await self.end(old, leave=models.DisconnectReason.DUPLICATE_IDENTITY)
        grants = claims.video
        info = models.ParticipantInfo(
            sid=new_sid("PA_"),
            identity=claims.identity,
            name=claims.name,
            metadata=claims.metadata,
            attributes=claims.attributes or {},
            state=models.ParticipantInfo.State.ACTIVE,
            joined_at=int(time.time()),
            joined_at_ms=now_ms(),
            version=1,
            permission=models.ParticipantPermission(
                can_subscribe=grants.can_subscribe is not False,
                can_publish=grants.can_publish is not False,
                can_publish_data=grants.can_publish_data is not False,
                can_update_metadata=bool(grants.can_update_own_metadata),
            ),
        )
        participant = Participant(
            room=room_name, info=info, claims=claims, ws=ws, auto_subscribe=auto_subscribe
        )
        publisher = participant.publisher.pc
        publisher.on("datachannel", lambda c: self._on_channel(participant, c))
        publisher.on("track", lambda t: self._spawn(participant, self._publish(participant, t)))
        others = [copy(p.info) for p in lk_room.participants.values()]
        lk_room.participants[claims.identity] = participant
        await send(
            ws,
            rtc.SignalResponse(
                join=rtc.JoinResponse(
                    room=copy(lk_room.info),
                    participant=copy(info),
                    other_participants=others,
                    subscriber_primary=False,
                    ping_interval=PING_INTERVAL_S,
                    ping_timeout=PING_TIMEOUT_S,
                    server_version=SERVER_VERSION,
                    server_info=_server_info(),
                )
            ),
        )
        log.info("%s joined %s as %s", claims.identity, room_name, info.sid)
        self._spawn(participant, self._refresh_tokens(participant))
        await self.broadcast(lk_room, info, skip=participant)
        published = [
            (other.info.sid, track_sid, track)
            for other in lk_room.participants.values()
            for track_sid, track in other.media.items()
        ]
        if published:
            self._spawn(participant, self._subscribe(participant, published))
        return participant

    async def _refresh_tokens(self, participant: Participant) -> None:
        """Push a fresh token at once and then every refresh interval, as a real server does,
        so the client can still resume once the token it joined with has expired."""
        while True:
            token = rtc.SignalResponse(refresh_token=self._mint(participant.claims))
            await send(participant.ws, token)
            await asyncio.sleep(self._token_refresh_s)

    async def _read(self, participant: Participant, ws: web.WebSocketResponse) -> bool:
        """Serve requests from `ws`; True when the socket dropped without a Leave."""
        async for message in ws:
            if message.type is not WSMsgType.BINARY:
                continue
            request = rtc.SignalRequest()
            try:
                request.ParseFromString(message.data)
            except DecodeError:
                log.warning("skipped an undecodable signal frame from %s", participant.identity)
                continue
            if not await self._handle(participant, request):
                return False
        return True

    async def _handle(self, participant: Participant, request: rtc.SignalRequest) -> bool:
        """Act on one signal request; False once the participant has left."""
        kind = request.WhichOneof("message")
        if kind == "ping_req":
            pong = rtc.Pong(last_ping_timestamp=request.ping_req.timestamp, timestamp=now_ms())
            await send(participant.ws, rtc.SignalResponse(pong_resp=pong))
        elif kind == "ping":
            await send(participant.ws, rtc.SignalResponse(pong=now_ms()))
        elif kind == "offer":
            offer = request.offer
            participant.cid_by_mid.update(cids_by_mid(offer.sdp))
            self._spawn(participant, self._answer(participant, offer.sdp, offer.id))
        elif kind == "answer" and participant.subscriber is not None:
            self._spawn(participant, self._accept_answer(participant, request.answer.sdp))
        elif kind == "trickle":
            candidate = parse_candidate(request.trickle.candidateInit)
            publishing = request.trickle.target == rtc.SignalTarget.PUBLISHER
            peer = participant.publisher if publishing else participant.subscriber
            if candidate is not None and peer is not None:
                self._spawn(participant, peer.add_candidate(candidate))
        elif kind == "add_track":
            await self._announce(participant, request.add_track)
        elif kind == "simulate":
            return await self.simulate(participant, request.simulate)
        elif kind == "leave":
            log.info("%s left %s", participant.identity, participant.room)
            return False
        return True

    async def simulate(self, participant: Participant, drill: rtc.SimulateScenario) -> bool:
        """Answer a drill as a real server does; False when it took the participant out.

        Node failure and migration drop the participant without a Leave (its resume then
        finds nobody and is told to rejoin), a server leave is a Leave{SERVER_SHUTDOWN,
        DISCONNECT}, a speaker update says it speaks for that many seconds, and
        `disconnect_signal_on_resume` closes the signal of its next resume within 5 s (after
        answering it; `..._no_messages` before, up to three resumes). A switch of candidate
        protocol, a bandwidth cap or `leave_request_full_reconnect` changes nothing here.
        """
        kind = drill.WhichOneof("scenario")
        log.info("%s asked for the %s drill", participant.identity, kind)
        if kind in ("node_failure", "migration"):
            await self.end(participant, leave=None)
            return False
        if kind == "server_leave":
            await self.end(participant, leave=models.DisconnectReason.SERVER_SHUTDOWN)
            return False
        if kind == "speaker_update":
            self._spawn(participant, self._speak(participant, drill.speaker_update))
        elif kind == "disconnect_signal_on_resume":
            participant.spoil_resume_until = time.monotonic() + SIMULATED_DISCONNECT_WINDOW_S
        elif kind == "disconnect_signal_on_resume_no_messages":
            participant.mute_resumes_until = time.monotonic() + SIMULATED_DISCONNECT_WINDOW_S
            participant.muted_resumes = 0
        return True

    async def leave(
        self,
        participant: Participant,
        reason: models.DisconnectReason,
        action: rtc.LeaveRequest.Action,
    ) -> None:
        """Send a Leave with that action: DISCONNECT takes the participant out, RESUME drops
        its signal (it lingers and resumes), RECONNECT takes it out after asking for a rejoin."""
        if action == rtc.LeaveRequest.Action.DISCONNECT:
            await self.end(participant, leave=reason)
            return
        await send(
            participant.ws, rtc.SignalResponse(leave=rtc.LeaveRequest(reason=reason, action=action))
        )
        if action == rtc.LeaveRequest.Action.RESUME:
            await participant.ws.close()
        else:
            await self.end(participant, leave=None)

    async def _speak(self, participant: Participant, seconds: int) -> None:
        lk_room = self.rooms.get(participant.room)
        if lk_room is None:
            return
        for active, level, after_s in ((True, 0.9, seconds), (False, 0.0, 0)):
            speaker = models.SpeakerInfo(sid=participant.info.sid, level=level, active=active)
            changed = rtc.SignalResponse(speakers_changed=rtc.SpeakersChanged(speakers=[speaker]))
            for other in list(lk_room.participants.values()):
                await send(other.ws, changed)
            await asyncio.sleep(after_s)

    async def _answer(self, participant: Participant, sdp: str, offer_id: int) -> None:
        answer = await participant.publisher.answer(sdp)
        await send(
            participant.ws,
            rtc.SignalResponse(
                answer=rtc.SessionDescription(type="answer", sdp=answer, id=offer_id)
            ),
        )

    async def _accept_answer(self, participant: Participant, sdp: str) -> None:
        assert participant.subscriber is not None
        await participant.subscriber.accept_answer(sdp)
        participant.answered.set()

    async def _announce(self, participant: Participant, request: rtc.AddTrackRequest) -> None:
        """Give a track the client is about to publish its sid; the room hears of it with its
        media."""
        info = models.TrackInfo(
            sid=new_sid("TR_"),
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
        await send(participant.ws, rtc.SignalResponse(track_published=published))

    async def _publish(self, owner: Participant, track: MediaStreamTrack) -> None:
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
        self._spawn(owner, drain(self._relay.subscribe(track, buffered=False)))
        owner.info.tracks.append(info)
        owner.info.version += 1
        lk_room = self.rooms.get(owner.room)
        if lk_room is None:
            return
        # The SDK must know the track before the offer that carries it.
        await self.broadcast(lk_room, copy(owner.info), skip=owner)
        for other in list(lk_room.participants.values()):
            if other is not owner:
                self._spawn(other, self._subscribe(other, [(owner.info.sid, info.sid, track)]))

    async def _subscribe(
        self, subscriber: Participant, tracks: list[tuple[str, str, MediaStreamTrack]]
    ) -> None:
        """Send relayed copies of (publisher sid, track sid, media) to a participant."""
        if not subscriber.auto_subscribe or not subscriber.info.permission.can_subscribe:
            return
        if subscriber.subscriber is None:
            subscriber.subscriber = Peer()
        peer = subscriber.subscriber
        for publisher_sid, track_sid, track in tracks:
            transceiver = peer.pc.addTransceiver(self._relay.subscribe(track), "sendonly")
            # The SDK finds the publication by this stream id; aiortc only sets it privately.
            transceiver.sender._stream_id = f"{publisher_sid}|{track_sid}"
        async with subscriber.offering:
            subscriber.answered.clear()
            offer = rtc.SessionDescription(type="offer", sdp=await peer.offer())
            await send(subscriber.ws, rtc.SignalResponse(offer=offer))
            await asyncio.wait_for(subscriber.answered.wait(), SUBSCRIBER_ANSWER_TIMEOUT_S)

    def _spawn(self, participant: Participant, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        participant.tasks.add(task)
        task.add_done_callback(lambda t: _finish(participant, t))

    def _on_channel(self, participant: Participant, channel: RTCDataChannel) -> None:
        participant.channels[channel.label] = channel
        if channel.label in FORWARDED_LABELS:
            channel.on("message", lambda data: self._forward(participant, channel.label, data))

    def _forward(self, sender: Participant, label: str, data: bytes | str) -> None:
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
        if label == "_reliable":
            sender.last_reliable_seq = max(sender.last_reliable_seq, packet.sequence)
        wanted = set(packet.destination_identities) | set(packet.user.destination_identities)
        lk_room = self.rooms.get(sender.room)
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

    async def end(self, participant: Participant, *, leave: models.DisconnectReason | None) -> None:
        """Take a participant out of its room, telling it why first when `leave` is given."""
        if participant.closed:
            return
        participant.closed = True
        if participant.departure is not None:
            participant.departure.cancel()
            participant.departure = None
        lk_room = self.rooms.get(participant.room)
        if lk_room is not None and lk_room.participants.get(participant.identity) is participant:
            del lk_room.participants[participant.identity]
        # The Leave must come before the close, or the SDK takes the close for a network drop.
        if leave is not None:
            await send(
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
            gone = copy(participant.info)
            gone.state = models.ParticipantInfo.State.DISCONNECTED
            await self.broadcast(lk_room, gone, skip=participant)

    async def broadcast(
        self, lk_room: Room, info: models.ParticipantInfo, *, skip: Participant | None
    ) -> None:
        """Tell every participant of the room but `skip` of a participant's new state."""
        update = rtc.SignalResponse(update=rtc.ParticipantUpdate(participants=[info]))
        for other in list(lk_room.participants.values()):
            if other is not skip:
                await send(other.ws, update)


def _server_info() -> models.ServerInfo:
    return models.ServerInfo(
        edition=models.ServerInfo.Edition.Standard,
        version=SERVER_VERSION,
        protocol=16,
        node_id="loopback",
    )


def _finish(participant: Participant, task: asyncio.Task[None]) -> None:
    participant.tasks.discard(task)
    if not task.cancelled() and task.exception() is not None:
        log.warning("work for %s failed", participant.identity, exc_info=task.exception())

"""The RoomService over Twirp, in both encodings a real server accepts: protobuf (the Python
SDK) and JSON (the Node server SDK), with a real server's grants and error codes."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from livekit import api
from livekit.api.access_token import Claims
from livekit.protocol import models, room, rtc

from simulations.loopback.rooms import Participant, Room, Rooms
from simulations.loopback.wire import copy, send

_M = TypeVar("_M", bound=Message)

_TWIRP_STATUS = {
    "unauthenticated": 401,
    "permission_denied": 403,
    "not_found": 404,
    "bad_route": 404,
    "malformed": 400,
    "unavailable": 503,
}


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


@dataclass(frozen=True)
class _Body:
    """A RoomService request's body, and whether it is JSON (the Node SDK's) or protobuf."""

    data: bytes
    json: bool


class RoomService:
    """`/twirp/livekit.RoomService/{method}` over the server's rooms."""

    def __init__(self, rooms: Rooms, claims: Callable[[web.Request], Claims | None]) -> None:
        self._rooms = rooms
        self._claims = claims
        self._down_until = 0.0
        self._methods: dict[str, Callable[[api.VideoGrants, _Body], Awaitable[Message]]] = {
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

    def fail_for(self, seconds: float) -> None:
        """Answer every call with 503 `unavailable` for `seconds`."""
        self._down_until = time.monotonic() + seconds

    async def handle(self, request: web.Request) -> web.Response:
        """Answer one Twirp call."""
        try:
            method = self._methods.get(request.match_info["method"])
            if method is None:
                raise _TwirpError("bad_route", "no such RoomService method")
            if time.monotonic() < self._down_until:
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

    def _existing(self, room_name: str) -> Room:
        lk_room = self._rooms.rooms.get(room_name)
        if lk_room is None:
            raise _TwirpError("not_found", "requested room does not exist")
        return lk_room

    def _participant(self, room_name: str, identity: str) -> Participant:
        participant = self._rooms.find(room_name, identity)
        if participant is None:
            raise _TwirpError("not_found", "participant does not exist")
        return participant

    async def _create_room(self, grants: api.VideoGrants, body: _Body) -> Message:
        _require(grants.room_create, "roomCreate")
        request = _parse(room.CreateRoomRequest, body)
        lk_room = self._rooms.room(request.name)
        if request.metadata:
            lk_room.info.metadata = request.metadata
        return lk_room.room_info()

    async def _list_rooms(self, grants: api.VideoGrants, body: _Body) -> Message:
        _require(grants.room_list, "roomList")
        request = _parse(room.ListRoomsRequest, body)
        names = set(request.names)
        return room.ListRoomsResponse(
            rooms=[r.room_info() for n, r in self._rooms.rooms.items() if not names or n in names]
        )

    async def _delete_room(self, grants: api.VideoGrants, body: _Body) -> Message:
        _require(grants.room_create, "roomCreate")
        request = _parse(room.DeleteRoomRequest, body)
        lk_room = self._existing(request.room)
        for participant in list(lk_room.participants.values()):
            await self._rooms.end(participant, leave=models.DisconnectReason.ROOM_DELETED)
        del self._rooms.rooms[request.room]
        return room.DeleteRoomResponse()

    async def _list_participants(self, grants: api.VideoGrants, body: _Body) -> Message:
        request = _parse(room.ListParticipantsRequest, body)
        _require_admin(grants, request.room)
        self._existing(request.room)
        return room.ListParticipantsResponse(participants=self._rooms.participants(request.room))

    async def _get_participant(self, grants: api.VideoGrants, body: _Body) -> Message:
        request = _parse(room.RoomParticipantIdentity, body)
        _require_admin(grants, request.room)
        return copy(self._participant(request.room, request.identity).info)

    async def _remove_participant(self, grants: api.VideoGrants, body: _Body) -> Message:
        request = _parse(room.RoomParticipantIdentity, body)
        _require_admin(grants, request.room)
        participant = self._participant(request.room, request.identity)
        await self._rooms.end(participant, leave=models.DisconnectReason.PARTICIPANT_REMOVED)
        return room.RemoveParticipantResponse()

    async def _update_room_metadata(self, grants: api.VideoGrants, body: _Body) -> Message:
        request = _parse(room.UpdateRoomMetadataRequest, body)
        _require_admin(grants, request.room)
        lk_room = self._existing(request.room)
        lk_room.info.metadata = request.metadata
        update = rtc.SignalResponse(room_update=rtc.RoomUpdate(room=lk_room.room_info()))
        for participant in list(lk_room.participants.values()):
            await send(participant.ws, update)
        return lk_room.room_info()

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
        await self._rooms.broadcast(self._rooms.rooms[request.room], copy(info), skip=None)
        return copy(info)


def _require(granted: bool | None, grant: str) -> None:
    if not granted:
        raise _TwirpError("permission_denied", f"the token lacks the {grant} grant")


def _require_admin(grants: api.VideoGrants, room_name: str) -> None:
    _require(grants.room_admin, "roomAdmin")
    if grants.room != room_name:
        raise _TwirpError("permission_denied", "the token's roomAdmin grant is for another room")


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

"""The loopback server's RoomService answers Twirp in both encodings a real server accepts:
JSON, as the Node server SDK (`livekit-server-sdk` 2.x) sends it, and protobuf, as the Python
SDK sends it, with the error codes a real server returns. No WebRTC is involved, so these run
on the loopback interface."""

import asyncio
import base64
import json
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from livekit import api

from simulations.loopback import LoopbackServer, LoopbackThread

SECRET = "room-service-secret-of-the-tests-0123456789"
ROOM = "lobby"


@pytest.fixture(scope="module")
def server() -> Iterator[LoopbackThread]:
    loopback = LoopbackThread(LoopbackServer(api_key="devkey", api_secret=SECRET, port=0))
    loopback.start()
    yield loopback
    loopback.stop()


def admin_token() -> str:
    grants = api.VideoGrants(room_create=True, room_list=True, room_admin=True, room=ROOM)
    return api.AccessToken("devkey", SECRET).with_grants(grants).to_jwt()


def call(
    server: LoopbackThread,
    method: str,
    body: dict[str, Any] | bytes,
    *,
    content_type: str = "application/json",
    token: str | None = None,
) -> tuple[int, dict[str, Any]]:
    """One RoomService call shaped as the Node SDK's Twirp client makes it."""
    url = server.url.replace("ws://", "http://") + f"/twirp/livekit.RoomService/{method}"
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": content_type, "Authorization": f"Bearer {token or admin_token()}"}

    async def post() -> tuple[int, dict[str, Any]]:
        async with aiohttp.ClientSession() as http, http.post(url, data=data, headers=headers) as r:
            return r.status, await r.json(content_type=None)

    return asyncio.run(post())


def test_every_method_answers_json_as_the_node_sdk_sends_it(server: LoopbackThread) -> None:
    code, created = call(server, "CreateRoom", {"name": ROOM, "emptyTimeout": 10, "metadata": "m"})
    assert code == 200
    assert (created["name"], created["metadata"], created["num_participants"]) == (ROOM, "m", 0)
    code, listed = call(server, "ListRooms", {"names": [ROOM]})
    assert [r["name"] for r in listed["rooms"]] == [ROOM]
    code, updated = call(server, "UpdateRoomMetadata", {"room": ROOM, "metadata": "new"})
    assert (code, updated["metadata"]) == (200, "new")
    assert call(server, "ListParticipants", {"room": ROOM}) == (200, {"participants": []})
    payload = base64.b64encode(b"hello").decode()
    sent = {"room": ROOM, "data": payload, "kind": "RELIABLE", "topic": "t"}
    assert call(server, "SendData", sent) == (200, {})
    missing = (404, {"code": "not_found", "msg": "participant does not exist"})
    for method, body in [
        ("GetParticipant", {"room": ROOM, "identity": "nobody"}),
        ("RemoveParticipant", {"room": ROOM, "identity": "nobody"}),
        ("UpdateParticipant", {"room": ROOM, "identity": "nobody", "metadata": "x"}),
    ]:
        assert call(server, method, body) == missing, method
    assert call(server, "DeleteRoom", {"room": ROOM}) == (200, {})
    assert call(server, "ListRooms", {})[1]["rooms"] == []


def test_the_python_sdk_calls_the_new_methods_in_protobuf(server: LoopbackThread) -> None:
    async def calls() -> tuple[str, int]:
        async with api.LiveKitAPI(server.url, "devkey", SECRET) as lkapi:
            await lkapi.room.create_room(api.CreateRoomRequest(name=ROOM))
            updated = await lkapi.room.update_room_metadata(
                api.UpdateRoomMetadataRequest(room=ROOM, metadata="from python")
            )
            await lkapi.room.send_data(api.SendDataRequest(room=ROOM, data=b"x", topic="t"))
            rooms = await lkapi.room.list_rooms(api.ListRoomsRequest(names=[ROOM]))
            await lkapi.room.delete_room(api.DeleteRoomRequest(room=ROOM))
            return updated.metadata, len(rooms.rooms)

    assert asyncio.run(calls()) == ("from python", 1)


@pytest.mark.parametrize(
    ("method", "body", "content_type", "answer"),
    [
        ("CreateRoom", b"{", "application/json", (400, "malformed")),
        ("CreateRoom", b"\xff\xff", "application/protobuf", (400, "malformed")),
        ("CreateRoom", b"{}", "text/plain", (404, "bad_route")),
        ("MakeCoffee", b"{}", "application/json", (404, "bad_route")),
        (
            "UpdateRoomMetadata",
            b'{"room": "elsewhere"}',
            "application/json",
            (403, "permission_denied"),
        ),
        ("UpdateRoomMetadata", b'{"room": "lobby"}', "application/json", (404, "not_found")),
    ],
)
def test_refusals_carry_the_codes_a_real_server_returns(
    server: LoopbackThread,
    method: str,
    body: bytes,
    content_type: str,
    answer: tuple[int, str],
) -> None:
    code, refusal = call(server, method, body, content_type=content_type)
    assert (code, refusal["code"]) == answer
    assert refusal["msg"]


def test_a_call_without_a_valid_token_is_unauthenticated(server: LoopbackThread) -> None:
    code, refusal = call(server, "ListRooms", {}, token="not-a-token")
    assert (code, refusal["code"]) == (401, "unauthenticated")

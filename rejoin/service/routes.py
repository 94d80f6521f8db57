"""The HTTP API of `rejoin serve`: JSON in and out, one WebSocket of audio per user.

Every refusal is a JSON object `{"error": "..."}` with one line that says what is wrong; nothing
a client sends reaches a traceback. The API is described by `openapi.json` beside this module,
served at `/openapi.json`.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from importlib import resources
from typing import TYPE_CHECKING, Any

import msgspec
from aiohttp import WSCloseCode, WSMsgType, web

from actors.acknowledgement import RuntimeStopped
from actors.redaction import redact

if TYPE_CHECKING:
    from rejoin.service.drain import Service

MAX_USER = 320
"""The longest user id taken: an e-mail address is at most 254 characters, with room to spare."""
USER_PATTERN = r"^[A-Za-z0-9!#$&'*+.=?^_`{|}~@-]+(?![\s\S])"
"""What a user id may hold: the characters of an ASCII e-mail address, but `/` and `%` (which
clients do not always escape in a path, where `%AB` would then mean a byte). The end is
"no character follows" rather than `$`, which in Python (and so in clients generated from the
OpenAPI document by Python tools) also matches before a final newline."""
MAX_BODY = 4_096
MAX_EPOCH = 2**63 - 1
SERVICE: web.AppKey[Service] = web.AppKey("service")
SOCKETS: web.AppKey[set[web.WebSocketResponse]] = web.AppKey("sockets")


class ConnectBody(msgspec.Struct, forbid_unknown_fields=True):
    epoch: int | float | None = None
    """Orders connections across servers; default: this server's wall-clock milliseconds. A
    whole number; JSON allows one to be written `871.0`."""


class Refused(Exception):
    """A request the API turns down: its status and its one-line reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def application(service: Service) -> web.Application:
    """The API's routes over `service`."""
    app = web.Application(client_max_size=MAX_BODY, middlewares=[_refusals])
    app[SERVICE] = service
    app[SOCKETS] = set()
    app.on_shutdown.append(_close_sockets)
    app.add_routes(
        [
            web.get("/livez", _livez),
            web.get("/readyz", _readyz),
            web.get("/metrics", _metrics),
            web.get("/openapi.json", _openapi),
            web.post("/v1/users/{user}/connect", _connect),
            web.post("/v1/users/{user}/disconnect", _disconnect),
            web.get("/v1/users/{user}", _status),
            web.get("/v1/users/{user}/audio", _audio),
        ]
    )
    return app


async def _close_sockets(app: web.Application) -> None:
    # A stopping server tells its listeners it is going away rather than leave them open
    # until the runner's shutdown timeout.
    sockets = app[SOCKETS]
    for socket in list(sockets):
        await socket.close(code=WSCloseCode.GOING_AWAY, message=b"server stopping")


def _json(body: object, status: int = 200) -> web.Response:
    return web.Response(
        body=msgspec.json.encode(body), status=status, content_type="application/json"
    )


@web.middleware
async def _refusals(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
    except Refused as refused:
        return _json({"error": redact(refused.reason)}, refused.status)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        refusal = _json({"error": error.reason}, error.status)
        if "Allow" in error.headers:
            refusal.headers["Allow"] = error.headers["Allow"]
        return refusal
    return response


def _user(request: web.Request) -> str:
    user = request.match_info["user"]
    if not 0 < len(user) <= MAX_USER:
        raise Refused(400, f"a user id has 1 to {MAX_USER} characters")
    if re.fullmatch(USER_PATTERN, user) is None:
        raise Refused(400, "a user id holds only the characters of an ASCII e-mail address")
    return user


async def _livez(_request: web.Request) -> web.Response:
    return _json({"status": "live"})


async def _readyz(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    if service.draining:
        return _json({"status": "draining"}, 503)
    return _json({"status": "ready"})


async def _metrics(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    body, content_type = await service.metrics.exposition(service.runtime)
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type
    return response


async def _openapi(_request: web.Request) -> web.Response:
    document = resources.files("rejoin.service").joinpath("openapi.json").read_bytes()
    return web.Response(body=document, content_type="application/json")


async def _connect(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    user = _user(request)
    body = await _body(request)
    try:
        epoch = msgspec.json.decode(body, type=ConnectBody).epoch if body else None
    except msgspec.ValidationError as error:
        raise Refused(400, f"the body: {error}") from None
    except msgspec.DecodeError:
        raise Refused(400, "the body is not JSON") from None
    if epoch is not None:
        if (isinstance(epoch, float) and not epoch.is_integer()) or not 0 <= epoch <= MAX_EPOCH:
            raise Refused(400, f"epoch is a whole number from 0 to {MAX_EPOCH}")
        epoch = int(epoch)
    if service.draining and not await service.has_open_session(user):
        raise Refused(503, "this server is draining: connect the glasses to another server")
    position = await _durable(service.runtime.glasses_connected(user, epoch))
    service.metrics.connected(user)
    return _json({"user": user, "position": position})


async def _disconnect(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    user = _user(request)
    if await _body(request):
        raise Refused(400, "a disconnect takes no body")
    position = await _durable(service.runtime.glasses_disconnected(user))
    service.metrics.left(user)
    return _json({"user": user, "position": position})


async def _body(request: web.Request) -> bytes:
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise Refused(413, f"a body has at most {MAX_BODY} bytes") from None


async def _durable(input_: Any) -> int:
    try:
        position: int = await input_
    except TimeoutError as error:
        raise Refused(503, f"{error}: the log may be failing; retry") from None
    except RuntimeStopped:
        raise Refused(503, "this server is stopping: retry on another server") from None
    return position


async def _status(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    user = _user(request)
    status = await service.runtime.status(user)
    if status is None:
        raise Refused(404, f"{user} has no session on this server")
    return _json(status)


async def _audio(request: web.Request) -> web.WebSocketResponse:
    """The user's phone audio as binary messages (PCM16LE, 16 kHz, mono, one chunk each) and
    each change of their health as a text message `{"health": {...}}`."""
    service = request.app[SERVICE]
    user = _user(request)
    socket = web.WebSocketResponse(heartbeat=30, max_msg_size=MAX_BODY)
    if not socket.can_prepare(request).ok:
        raise Refused(426, "this is a WebSocket: ask for the upgrade")
    await socket.prepare(request)
    request.app[SOCKETS].add(socket)
    audio = service.runtime.audio(user)
    healths = service.runtime.health_changes()

    async def send_audio() -> None:
        async for chunk in audio:
            await socket.send_bytes(chunk.pcm)

    async def send_health() -> None:
        async for changed, health in healths:
            if changed == user:
                await socket.send_str(msgspec.json.encode({"health": health}).decode())

    senders = [asyncio.create_task(send_audio()), asyncio.create_task(send_health())]
    try:
        async for message in socket:
            if message.type in (WSMsgType.ERROR, WSMsgType.CLOSE):
                break
    finally:
        request.app[SOCKETS].discard(socket)
        service.runtime.close_audio(audio)
        service.runtime.close_health(healths)
        for sender in senders:
            sender.cancel()
        for sender in senders:
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await sender
    return socket

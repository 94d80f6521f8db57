"""The loopback server's HTTP face: the signal endpoints with their token checks, the
RoomService, and the controls tests use to inject a real server's faults."""

from __future__ import annotations

import asyncio
import datetime
import logging
import time

from aiohttp import web
from livekit import api
from livekit.api.access_token import Claims
from livekit.protocol import models, rtc

from simulations.loopback.room_service import RoomService
from simulations.loopback.rooms import DEPARTURE_TIMEOUT_S, TOKEN_REFRESH_S, Rooms

log = logging.getLogger(__name__)

WS_CLOSE_TIMEOUT_S = 2.0
REFRESHED_TOKEN_TTL = datetime.timedelta(minutes=10)
"""A real server's default for the tokens it pushes."""
TOKEN_LEEWAY = datetime.timedelta(minutes=1)
"""How long past its expiry a real server still takes a token (livekit-server's leeway)."""


class LoopbackServer:
    """A LiveKit-compatible server for the real SDK, on one asyncio event loop."""

    def __init__(
        self,
        *,
        api_key: str = "devkey",
        api_secret: str = "secret",
        host: str = "127.0.0.1",
        port: int = 7880,
        departure_timeout_s: float = DEPARTURE_TIMEOUT_S,
        token_refresh_s: float = TOKEN_REFRESH_S,
        token_ttl: datetime.timedelta = REFRESHED_TOKEN_TTL,
        token_leeway: datetime.timedelta = TOKEN_LEEWAY,
    ) -> None:
        """`token_ttl`: the life of the tokens it pushes; `token_leeway`: how long past its
        expiry it takes a token. Tests shorten both to expire a token in seconds."""
        self._verifier = api.TokenVerifier(api_key, api_secret, leeway=token_leeway)
        self._token_ttl = token_ttl
        self._api_key = api_key
        self._api_secret = api_secret
        self._host = host
        self._port = port
        self._rooms = Rooms(
            self._mint, departure_timeout_s=departure_timeout_s, token_refresh_s=token_refresh_s
        )
        self._room_service = RoomService(self._rooms, self._claims)
        self._refuse_until = 0.0
        self._runner: web.AppRunner | None = None

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
        app.router.add_post("/twirp/livekit.RoomService/{method}", self._room_service.handle)
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
        await self._rooms.close_all(models.DisconnectReason.SERVER_SHUTDOWN)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # Test controls: the faults a real server shows, on demand.

    def refuse_joins_for(self, seconds: float) -> None:
        """Fail every join for `seconds` with HTTP 503, which the SDK retries, then gives up on."""
        self._refuse_until = time.monotonic() + seconds

    def fail_room_service_for(self, seconds: float) -> None:
        """Answer every RoomService call with 503 `unavailable` for `seconds`."""
        self._room_service.fail_for(seconds)

    def stall_data_to(self, room_name: str, identity: str, seconds: float) -> bool:
        """Forward no data packets to this participant for `seconds`, keeping it connected: a
        data path that died. A later join of the same identity gets data again. Returns False
        if no such participant is in the room."""
        participant = self._rooms.find(room_name, identity)
        if participant is None:
            return False
        participant.deaf_until = time.monotonic() + seconds
        return True

    async def drop_signal(self, room_name: str, identity: str) -> bool:
        """Close a participant's signal WebSocket without a Leave, like a network drop.

        It stays in the room for the departure timeout, and its SDK resumes with its SID.
        Returns False if no such participant is in the room.
        """
        participant = self._rooms.find(room_name, identity)
        if participant is None:
            return False
        await participant.ws.close()
        return True

    async def simulate(self, room_name: str, identity: str, drill: rtc.SimulateScenario) -> bool:
        """Answer a drill as if the participant had asked for it (`Room.simulate_scenario`).
        Returns False if no such participant is in the room."""
        participant = self._rooms.find(room_name, identity)
        if participant is None:
            return False
        await self._rooms.simulate(participant, drill)
        return True

    async def send_leave(
        self,
        room_name: str,
        identity: str,
        reason: models.DisconnectReason,
        action: rtc.LeaveRequest.Action,
    ) -> bool:
        """Send a participant a Leave with that reason and action, as a real server does on a
        failure it can recover from (RESUME, RECONNECT) or not (DISCONNECT).
        Returns False if no such participant is in the room."""
        participant = self._rooms.find(room_name, identity)
        if participant is None:
            return False
        await self._rooms.leave(participant, reason, action)
        return True

    def participants(self, room_name: str) -> list[models.ParticipantInfo]:
        """Copies of the infos of the participants in a room, in join order."""
        return self._rooms.participants(room_name)

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

    def _mint(self, claims: Claims) -> str:
        token = (
            api.AccessToken(self._api_key, self._api_secret)
            .with_identity(claims.identity)
            .with_name(claims.name)
            .with_metadata(claims.metadata)
            .with_attributes(claims.attributes or {})
            .with_ttl(self._token_ttl)
        )
        if claims.video is not None:
            token = token.with_grants(claims.video)
        return token.to_jwt()

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
        auto_subscribe = request.query.get("auto_subscribe", "1") in {"1", "true"}
        resume = request.query.get("reconnect") in {"1", "true"}
        await self._rooms.session(claims, ws, auto_subscribe=auto_subscribe, resume=resume)
        return ws

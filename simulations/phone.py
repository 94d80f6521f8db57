"""The user's phone in a real room: a participant publishing microphone audio as data packets.

Each packet is a 1-byte rolling sequence number then 100 ms of PCM16LE at 16 kHz, mono, on the
lossy channel, as the seed's phones send it. The phone publishes only while its glasses are
connected to some server, and never past its deadline: every loop that sends traffic is bounded.
"""

from __future__ import annotations

import asyncio
import time

from livekit import api, rtc

from actors.connector import RoomServerError
from actors.livekit_connector import EventLoopThread, LiveKitSettings
from actors.redaction import redact
from simulations.world import tone

CHUNK_S = 0.1


class Phone:
    def __init__(self, loop: EventLoopThread, settings: LiveKitSettings, user: str) -> None:
        self._loop = loop
        self._settings = settings
        self.user = user
        self.publishing = False
        self.sent = 0
        self._room: rtc.Room | None = None
        self._task: asyncio.Task[None] | None = None
        self._pcm = tone(int(16_000 * CHUNK_S))

    def join(self, *, deadline_s: float, timeout_s: float = 15.0) -> None:
        """Join the user's room and start the publishing loop, which ends at `deadline_s`
        (a `time.monotonic()` instant). Raises `RoomServerError` if the room cannot be joined."""
        try:
            self._loop.submit(self._join(deadline_s)).result(timeout=timeout_s)
        except (rtc.ConnectError, TimeoutError) as error:
            reason = redact(str(error)) or f"no answer within {timeout_s:g} s"
            msg = f"{self._settings.url}: the phone of {self.user} could not join: {reason}"
            raise RoomServerError(msg) from None

    async def _join(self, deadline_s: float) -> None:
        s = self._settings
        token = s.token(
            identity=self.user,
            room=self.user,
            grants=api.VideoGrants(
                room_join=True,
                room=self.user,
                can_publish=False,
                can_subscribe=False,
                can_publish_data=True,
            ),
        )
        room = rtc.Room(loop=asyncio.get_running_loop())
        await asyncio.wait_for(
            room.connect(s.url, token, s.room_options(auto_subscribe=False)),
            timeout=s.connect_timeout_s,
        )
        self._room = room
        self._task = asyncio.get_running_loop().create_task(self._publish(room, deadline_s))

    async def _publish(self, room: rtc.Room, deadline_s: float) -> None:
        sequence = 0
        next_at = time.monotonic()
        while next_at < deadline_s:
            if self.publishing and room.isconnected():
                payload = bytes([sequence]) + self._pcm
                sequence = (sequence + 1) % 256
                try:
                    await room.local_participant.publish_data(payload, reliable=False)
                    self.sent += 1
                except Exception:
                    pass
            next_at += CHUNK_S
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    def leave(self) -> None:
        self._loop.submit(self._leave()).result(timeout=10)

    async def _leave(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._room is not None:
            await self._room.disconnect()
            self._room = None

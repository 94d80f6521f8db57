"""The loopback server on a thread of its own, for callers without an event loop, and as
`rejoin loopback-server`."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from livekit.protocol import models, rtc

from simulations.loopback.server import LoopbackServer

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_A = TypeVar("_A")


class LoopbackThread:
    """A LoopbackServer on its own event loop in a daemon thread, controllable from others."""

    def __init__(self, server: LoopbackServer) -> None:
        self.server = server
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

    def simulate(
        self, room_name: str, identity: str, drill: rtc.SimulateScenario, timeout: float = 10.0
    ) -> bool:
        """See LoopbackServer.simulate."""
        return self._call(self.server.simulate(room_name, identity, drill), timeout)

    def send_leave(
        self,
        room_name: str,
        identity: str,
        reason: models.DisconnectReason,
        action: rtc.LeaveRequest.Action,
        timeout: float = 10.0,
    ) -> bool:
        """See LoopbackServer.send_leave."""
        return self._call(self.server.send_leave(room_name, identity, reason, action), timeout)

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


def serve(host: str, port: int, api_secret: str, *, departure_timeout_s: float) -> None:
    """Run a LoopbackServer until Ctrl-C."""

    async def run() -> None:
        server = LoopbackServer(
            api_secret=api_secret, host=host, port=port, departure_timeout_s=departure_timeout_s
        )
        await server.start()
        try:
            await asyncio.Event().wait()
        finally:
            await server.stop()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        log.info("loopback LiveKit server stopped")

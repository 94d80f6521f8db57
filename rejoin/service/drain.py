"""`rejoin serve`'s life: start, serve, drain on SIGTERM, stop.

Draining is how a deploy replaces a server without cutting anyone's audio (failure mode 16:
stopping makes every bridge leave at once). On the first SIGTERM the server turns `/readyz` to
503, so that the load balancer sends new glasses elsewhere, and refuses new sessions with 503;
sessions whose glasses are still connected keep their bridges until the glasses leave or
`drain_timeout_s` passes. Then every bridge leaves, the log is closed, and `run` returns. A
second SIGTERM (or SIGINT) skips the wait.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web

from actors.connector import RoomConnector
from actors.executor import Executor
from events.log import EventStore
from rejoin.aio import AsyncRuntime
from rejoin.service.metrics import Metrics
from rejoin.service.routes import application
from rejoin.settings import Settings

__all__ = ["Service"]

logger = logging.getLogger(__name__)

DRAIN_POLL_S = 0.1
"""How often a draining server looks for glasses still connected."""


class Service:
    """One server's runtime behind the HTTP API. `await start()`, then `await run()` until a
    signal (or `drain()`, `stop_now()`) ends it."""

    def __init__(
        self,
        settings: Settings,
        *,
        store: EventStore | None = None,
        connector: RoomConnector | None = None,
        executor: Executor | None = None,
    ) -> None:
        self.settings = settings
        self._parts = (store, connector, executor)
        self.draining = False
        self._runtime: AsyncRuntime | None = None
        self._runner: web.AppRunner | None = None
        self._drained = asyncio.Event()
        self._now = asyncio.Event()
        self.metrics = Metrics()
        self.port = settings.port
        """The port the API listens on (the one the system chose, for a setting of 0)."""

    @property
    def runtime(self) -> AsyncRuntime:
        assert self._runtime is not None, "the service has started"
        return self._runtime

    async def start(self) -> None:
        """Recover the open sessions from the log, then listen."""
        store, connector, executor = self._parts
        self._runtime = await AsyncRuntime.start(
            self.settings,
            store=store,
            connector=connector,
            executor=executor,
            observers=[self.metrics.observe],
            audio_taps=[self.metrics.heard],
        )
        # Once, at start: from now on the log's batches keep the figures up to date.
        self.metrics.recovered(
            (await asyncio.to_thread(self._runtime.server.runtime.views)).values()
        )
        self._runner = web.AppRunner(application(self), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.host, self.settings.port)
        await site.start()
        sockets = self._runner.addresses
        if sockets:
            self.port = sockets[0][1]
        logger.info("serving %s on %s:%d", self.settings.server, self.settings.host, self.port)

    def install_signal_handlers(self) -> None:
        """SIGTERM drains, and a second one stops at once; SIGINT stops at once."""
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._on_term)
        loop.add_signal_handler(signal.SIGINT, self.stop_now)

    def _on_term(self) -> None:
        if self.draining:
            self.stop_now()
        else:
            self.drain()

    def drain(self) -> None:
        """Refuse new sessions and turn not ready; `run` ends once every connected user's
        glasses have left, or at the drain timeout."""
        if not self.draining:
            logger.info("draining: new sessions refused for %g s", self.settings.drain_timeout_s)
            self.draining = True
            asyncio.get_running_loop().create_task(self._drain())

    def stop_now(self) -> None:
        """End `run` without waiting for glasses to leave."""
        self._now.set()

    async def _drain(self) -> None:
        deadline = asyncio.get_running_loop().time() + self.settings.drain_timeout_s
        loop = asyncio.get_running_loop()
        while loop.time() < deadline and self.metrics.connected_users() > 0:
            await asyncio.sleep(DRAIN_POLL_S)
        self._drained.set()

    async def has_open_session(self, user: str) -> bool:
        """Whether `user` has a session in progress here (their glasses connected or in grace)."""
        view = await self.runtime.session(user)
        return view is not None and view.state != "DISPOSED"

    async def run(self) -> None:
        """Serve until drained or stopped, then stop: bridges leave, the log is closed."""
        waits = [asyncio.create_task(self._drained.wait()), asyncio.create_task(self._now.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
            await self.close()

    async def close(self) -> None:
        """Stop listening, then stop the runtime and release what it made."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._runtime is not None:
            await self._runtime.close()
            self._runtime = None
        logger.info("stopped %s", self.settings.server)

"""A TCP proxy that holds each new connection for a while before it reaches the server: a slow
path to LiveKit's signal endpoint, so a join can be caught in flight (and abandoned) without
the server knowing of it. Media does not pass through it: ICE goes to the server directly."""

from __future__ import annotations

import asyncio
import contextlib


class DelayProxy:
    """Forwards `127.0.0.1:port` (0: any free port) to `upstream`, each connection `delay_s`
    late. Runs on the caller's event loop."""

    def __init__(self, upstream_host: str, upstream_port: int, delay_s: float) -> None:
        self._upstream = (upstream_host, upstream_port)
        self.delay_s = delay_s
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        assert self._server is not None, "started"
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server = await asyncio.start_server(self._accept, host, port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for pipe in list(self._pipes):
            pipe.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await asyncio.sleep(self.delay_s)
            up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        except (OSError, asyncio.CancelledError):
            writer.close()
            return
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            pipe = asyncio.get_running_loop().create_task(_pipe(source, sink))
            self._pipes.add(pipe)
            pipe.add_done_callback(self._pipes.discard)


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    try:
        while data := await source.read(65_536):
            sink.write(data)
            await sink.drain()
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            sink.close()

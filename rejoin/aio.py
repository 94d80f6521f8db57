"""The runtime for asyncio hosts: awaitable inputs and queries, audio and health as iterators.

The actors run on the pool's threads, as they do for every host. What reaches an asyncio host
is handed over to its loop: an input's acknowledgement completes an awaitable on that loop,
and each chunk of audio and each health change is put on the queue of every stream that asked
for it. A stream's queue is bounded: a consumer that falls behind loses the oldest items, and
the stream counts them (`dropped`), because a voice server wants the newest audio, not a
growing delay, and a runtime thread must never wait for a host.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
from collections.abc import AsyncIterator, Sequence
from types import TracebackType
from typing import Generic, TypeVar

from actors.acknowledgement import Acknowledgement, RuntimeStopped
from actors.bridge import AudioChunk, AudioSink
from actors.connector import RoomConnector
from actors.executor import Executor
from actors.runtime import Status
from events.log import EventStore
from events.observed_store import AppendObserver
from events.projection import Health, SessionView
from rejoin.server import Server
from rejoin.settings import Settings

__all__ = ["AsyncRuntime", "Stream"]

T = TypeVar("T")

AUDIO_BUFFER = 50
"""Chunks a stream of audio holds for a slow consumer: 5 s of 100 ms chunks."""
HEALTH_BUFFER = 10_000
"""Changes a stream of health holds for a slow consumer."""


class Stream(Generic[T]):
    """Items handed over from the runtime's threads, read with `async for` on one loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, size: int) -> None:
        self._loop = loop
        self._items: collections.deque[T] = collections.deque(maxlen=size)
        self._ready = asyncio.Event()
        self._closed = False
        self.dropped = 0
        """Items lost because the consumer fell behind."""

    def offer(self, item: T) -> None:
        """Hand `item` over from any thread."""
        # A closed loop raises: its host has gone, and nobody is left to read.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._put, item)

    def close(self) -> None:
        """End the stream, from any thread, once the items already handed over are read."""
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._end)

    def _put(self, item: T) -> None:
        if self._closed:
            return
        if len(self._items) == self._items.maxlen:
            self.dropped += 1
        self._items.append(item)
        self._ready.set()

    def _end(self) -> None:
        self._closed = True
        self._ready.set()

    def __aiter__(self) -> AsyncIterator[T]:
        return self

    async def __anext__(self) -> T:
        while not self._items:
            if self._closed:
                raise StopAsyncIteration
            self._ready.clear()
            await self._ready.wait()
        return self._items.popleft()


class AsyncRuntime:
    """One server's runtime (see `Server`) for a host on an asyncio loop.

    Start it with `await AsyncRuntime.start(settings)` inside the loop that will use it, and
    end it with `await runtime.close()` (or `async with`). Every method is called on that loop.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        """Use `start`: a runtime needs its server, which is made off the loop."""
        self._loop = loop
        self._lock = threading.Lock()
        self._audio: dict[str | None, list[Stream[AudioChunk]]] = {}
        self._healths: list[Stream[tuple[str, Health]]] = []
        self._taps: tuple[AudioSink, ...] = ()
        self._server: Server | None = None

    @classmethod
    async def start(
        cls,
        settings: Settings,
        *,
        store: EventStore | None = None,
        connector: RoomConnector | None = None,
        executor: Executor | None = None,
        observers: Sequence[AppendObserver] = (),
        audio_taps: Sequence[AudioSink] = (),
    ) -> AsyncRuntime:
        """Start the server of `settings` (recovering its open sessions from the log) without
        blocking the loop. A store, connector or executor passed in is used and left open;
        `observers` see every durable batch (see `Server`); `audio_taps` see every chunk on
        the worker that hands it over, before any stream does, and must return at once."""
        runtime = cls(asyncio.get_running_loop())
        runtime._taps = tuple(audio_taps)
        runtime._server = await asyncio.to_thread(
            Server,
            settings,
            audio_sink=runtime._hand_over,
            store=store,
            connector=connector,
            executor=executor,
            observers=observers,
        )
        runtime._server.runtime.subscribe_health(runtime._hand_over_health)
        return runtime

    @property
    def server(self) -> Server:
        assert self._server is not None, "an AsyncRuntime is made by `start`"
        return self._server

    async def glasses_connected(
        self, user: str, epoch: int | None = None, *, timeout_s: float = 5.0
    ) -> int:
        """The user's glasses connected to this server (see `Runtime.glasses_connected`);
        returns once the input is durable, with its position in the log. Raises
        `RuntimeStopped` if the runtime stops first, `TimeoutError` after `timeout_s`."""
        return await self._durable(self.server.runtime.glasses_connected(user, epoch), timeout_s)

    async def glasses_disconnected(self, user: str, *, timeout_s: float = 5.0) -> int:
        """The user's glasses left this server; returns once the input is durable."""
        return await self._durable(self.server.runtime.glasses_disconnected(user), timeout_s)

    async def _durable(self, ack: Acknowledgement, timeout_s: float) -> int:
        durable: asyncio.Future[int] = self._loop.create_future()

        def settle(position: int) -> None:
            if not durable.done():
                durable.set_result(position)

        def fail(error: RuntimeStopped) -> None:
            if not durable.done():
                durable.set_exception(error)

        ack.on_durable(lambda position: self._loop.call_soon_threadsafe(settle, position))
        ack.on_stopped(lambda error: self._loop.call_soon_threadsafe(fail, error))
        try:
            return await asyncio.wait_for(durable, timeout_s)
        except TimeoutError:
            msg = f"the input was not durable within {timeout_s:g} s"
            raise TimeoutError(msg) from None

    async def status(self, user: str) -> Status | None:
        """The user's session, health and bridge on this server, or `None`."""
        return await asyncio.to_thread(self.server.runtime.status, user)

    async def session(self, user: str) -> SessionView | None:
        """The user's current session as its log tells it, or `None`."""
        return await asyncio.to_thread(self.server.runtime.session, user)

    def backlog(self) -> int:
        """Inputs accepted and not yet durable."""
        return self.server.runtime.backlog()

    def audio(self, user: str | None = None, *, buffer: int = AUDIO_BUFFER) -> Stream[AudioChunk]:
        """A stream of `user`'s phone audio on this server (every user's, for `None`), from
        now until `close_audio` or `close`."""
        stream: Stream[AudioChunk] = Stream(self._loop, buffer)
        with self._lock:
            self._audio[user] = [*self._audio.get(user, []), stream]
        return stream

    def close_audio(self, stream: Stream[AudioChunk]) -> None:
        """End `stream`: it gets no more audio."""
        with self._lock:
            self._audio = {
                user: [s for s in streams if s is not stream]
                for user, streams in self._audio.items()
            }
        stream.close()

    def health_changes(self, *, buffer: int = HEALTH_BUFFER) -> Stream[tuple[str, Health]]:
        """A stream of `(user, health)` for each change of a user's health on this server,
        each once it is in the log, from now until `close`."""
        stream: Stream[tuple[str, Health]] = Stream(self._loop, buffer)
        with self._lock:
            self._healths = [*self._healths, stream]
        return stream

    def close_health(self, stream: Stream[tuple[str, Health]]) -> None:
        """End `stream`: it gets no more changes."""
        with self._lock:
            self._healths = [s for s in self._healths if s is not stream]
        stream.close()

    def _hand_over(self, chunk: AudioChunk) -> None:
        # Runs on a worker of the pool for every chunk: the lists are replaced, never changed
        # in place, so reading them needs no lock.
        for tap in self._taps:
            tap(chunk)
        audio = self._audio
        for stream in audio.get(chunk.user, ()):
            stream.offer(chunk)
        for stream in audio.get(None, ()):
            stream.offer(chunk)

    def _hand_over_health(self, user: str, health: Health) -> None:
        for stream in self._healths:
            stream.offer((user, health))

    async def close(self) -> None:
        """Stop the server (bridges leave their rooms) and end every stream."""
        if self._server is not None:
            await asyncio.to_thread(self._server.close)
        with self._lock:
            streams = [s for streams in self._audio.values() for s in streams]
            self._audio = {}
            healths, self._healths = self._healths, []
        for stream in streams:
            stream.close()
        for health in healths:
            health.close()

    async def __aenter__(self) -> AsyncRuntime:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        await self.close()

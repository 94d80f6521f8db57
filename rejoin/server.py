"""One rejoin server in a process: a runtime built from settings, and the parts it owns."""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType

from actors.bridge import AudioSink
from actors.connector import RoomConnector
from actors.executor import Executor
from actors.livekit_connector import LiveKitConnector
from actors.pool_executor import PoolExecutor
from actors.runtime import Runtime, discard_audio
from events.locations import open_log
from events.log import EventStore
from events.observed_store import AppendObserver, ObservedStore
from rejoin.logs import DecisionLog
from rejoin.settings import Settings

__all__ = ["Server"]


class Server:
    """The runtime of `settings.server`, on a `PoolExecutor`, with the log at `settings.log`
    (a SQLite file or a PostgreSQL database) and the LiveKit of `settings.livekit`. Starting
    it recovers every open session from the log; `close()` stops it (bridges leave their
    rooms) and releases what it made. A store, connector or executor passed in is used
    instead, and left open.

    `audio_sink` is called on a worker of the pool for every chunk of phone audio: it must be
    thread-safe and return at once (`AsyncRuntime` hands chunks to an asyncio loop). Every
    durable decision becomes a record of the `rejoin.decisions` logger (`rejoin.logs`), and
    each of `observers` is called with every durable batch.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        audio_sink: AudioSink = discard_audio,
        store: EventStore | None = None,
        connector: RoomConnector | None = None,
        executor: Executor | None = None,
        observers: Sequence[AppendObserver] = (),
    ) -> None:
        self.settings = settings
        self._own_store = store is None
        self._own_connector: LiveKitConnector | None = None
        self._own_executor = executor is None
        log = store if store is not None else open_log(settings.log)
        self.store: EventStore = ObservedStore(log, [DecisionLog(settings), *observers])
        if connector is None:
            connector = self._own_connector = LiveKitConnector(settings.livekit)
        self.executor: Executor = executor if executor is not None else PoolExecutor()
        try:
            self.runtime = Runtime(
                server=settings.server,
                executor=self.executor,
                store=self.store,
                connector=connector,
                policy=settings.policy,
                grace_ms=settings.grace_ms,
                audio_sink=audio_sink,
                deadlines=settings.deadlines,
                audio_watch=settings.audio_watch,
                join_rate_per_s=settings.join_rate_per_s,
                shared_log=settings.shared_log,
            )
        except BaseException:
            self._release()
            raise

    def close(self) -> None:
        """Stop the runtime, then release the executor, connector and log it made."""
        try:
            self.runtime.stop()
        finally:
            self._release()

    def _release(self) -> None:
        if self._own_executor:
            self.executor.shutdown()
        if self._own_connector is not None:
            self._own_connector.close()
        if self._own_store:
            self.store.close()

    def __enter__(self) -> Server:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

"""The runtime a server embeds: one supervisor, one grace timer, and the facade to drive them."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import msgspec
import pykka

from actors.acknowledgement import Acknowledgement, Backlog
from actors.bridge import AudioChunk, AudioSink, AudioWatch, BridgeReport
from actors.connector import Deadlines, RoomConnector
from actors.executor import Executor, tell
from actors.grace_timer import ArmedQuery, GraceTimer
from actors.health_feed import HealthFeed, HealthSubscriber
from actors.messages import (
    BridgeQuery,
    ForUser,
    ReportQuery,
    SessionQuery,
    Shutdown,
    Tree,
    TreeQuery,
    ViewQuery,
)
from actors.policy import SUPERVISED, Policy
from actors.supervisor import Supervisor
from events.catalog import GlassesConnected, GlassesDisconnected, TimerKind
from events.log import EventStore
from events.projection import Health, SessionView, replay_stream

logger = logging.getLogger(__name__)

DEFAULT_GRACE_MS = 60_000
DEFAULT_RETENTION_MS = 600_000
"""How long an ended session's view stays in memory, for `views()` and `status()` callers."""
DEFAULT_DEADLINES = Deadlines()
DEFAULT_AUDIO_WATCH = AudioWatch()


class Status(msgspec.Struct, frozen=True, kw_only=True):
    """A user's session on this server: as its log tells it, what the host was last told,
    and what its bridge knows now (`None` when no bridge of the current generation lives)."""

    session: SessionView
    health: Health | None
    bridge: BridgeReport | None


def discard_audio(_chunk: AudioChunk) -> None:
    """The sink of a runtime nobody listens to."""


class Runtime:
    """One server's actors. Starting it recovers every open session from the log.

    The facade's methods may be called from any thread; each input reaches the user's session,
    which appends it to the log before acting on it. `join_rate_per_s` is the most joins this
    server starts in a second, its share of what its LiveKit admits (`None`: no limit).
    `shared_log` says that every server of the fleet writes to `store`: each glasses connection
    is then recorded fleet-wide, and fencing reads the log before the room service.
    """

    def __init__(
        self,
        *,
        server: str,
        executor: Executor,
        store: EventStore,
        connector: RoomConnector,
        policy: Policy = SUPERVISED,
        grace_ms: int = DEFAULT_GRACE_MS,
        audio_sink: AudioSink = discard_audio,
        deadlines: Deadlines = DEFAULT_DEADLINES,
        audio_watch: AudioWatch = DEFAULT_AUDIO_WATCH,
        retention_ms: int = DEFAULT_RETENTION_MS,
        reply_timeout_s: float = 5.0,
        join_rate_per_s: int | None = None,
        shared_log: bool = False,
    ) -> None:
        self.server = server
        self.policy = msgspec.structs.replace(policy, shared_log=True) if shared_log else policy
        self._executor = executor
        self._store = store
        self._timeout = reply_timeout_s
        self._backlog = Backlog()
        self._health = HealthFeed()
        recovered = _recoverable(store, server)
        self._timer = executor.spawn(GraceTimer, executor)
        self._supervisor: pykka.ActorRef[Supervisor] = executor.spawn(
            Supervisor,
            server=server,
            store=store,
            executor=executor,
            policy=self.policy,
            grace_ms=grace_ms,
            connector=connector,
            deadlines=deadlines,
            watch=audio_watch,
            health=self._health,
            sink=audio_sink,
            timer=self._timer,
            recovered=recovered,
            users=store.session_users(server),
            retention_ms=retention_ms,
            join_rate_per_s=join_rate_per_s,
        )

    def glasses_connected(self, user: str, epoch: int | None = None) -> Acknowledgement:
        """The user's glasses connected to this server; `epoch` orders connections across
        servers (default: this server's wall-clock milliseconds). The acknowledgement completes
        once the input is durable: answer the glasses then."""
        stamped = epoch if epoch is not None else self._executor.wall_ms()
        return self._input(user, GlassesConnected(epoch=stamped))

    def glasses_disconnected(self, user: str) -> Acknowledgement:
        """The user's glasses left this server; acknowledged once durable."""
        return self._input(user, GlassesDisconnected())

    def backlog(self) -> int:
        """Inputs accepted and not yet durable: a backlog that grows is a log that lags."""
        return len(self._backlog)

    def _input(self, user: str, event: GlassesConnected | GlassesDisconnected) -> Acknowledgement:
        ack = Acknowledgement(self._executor.future, self._backlog, self._executor.wait)
        if not tell(self._supervisor, ForUser(user=user, event=event, ack=ack)):
            ack.stopped("the runtime has stopped: the input was not taken")
        return ack

    def subscribe_health(self, subscriber: HealthSubscriber) -> Callable[[], None]:
        """Call `subscriber(user, health)` at each change of a connected user's health on this
        server, once the change is in the log; returns the call that unsubscribes. It runs on
        a runtime thread: hand the change over to your own loop and return."""
        return self._health.subscribe(subscriber)

    def session(self, user: str) -> SessionView | None:
        """The user's current session on this server as its log tells it, or `None`."""
        session = self._ask(self._supervisor, SessionQuery(user=user))
        if session is None:
            return None
        try:
            view: SessionView | None = self._ask(session, ViewQuery())
        except pykka.ActorDeadError:
            return None  # it ended between the two questions
        return view

    def status(self, user: str) -> Status | None:
        """The user's current session, health and bridge, or `None` if there is no session."""
        view = self.session(user)
        if view is None:
            return None
        report: BridgeReport | None = None
        live = self._ask(self._supervisor, BridgeQuery(stream=view.stream))
        if live is not None and live[0] == view.generation:
            try:
                report = self._ask(live[1], ReportQuery())
            except pykka.ActorDeadError:
                report = None  # it left the room between the two questions
        return Status(session=view, health=view.health, bridge=report)

    def views(self) -> dict[str, SessionView]:
        """This runtime's sessions by stream: the open ones, and those that ended within the
        retention period (`replay` of the log has every one)."""
        tree: Tree = self._ask(self._supervisor, TreeQuery())
        views = dict(tree.ended)
        for session in tree.sessions.values():
            try:
                view: SessionView | None = self._ask(session, ViewQuery())
            except pykka.ActorDeadError:
                continue  # it ended, and left memory, between the two questions
            if view is not None:
                views[view.stream] = view
        return views

    def live_bridges(self) -> dict[str, int]:
        """Bridge actors alive now: stream to generation."""
        tree: Tree = self._ask(self._supervisor, TreeQuery())
        return {stream: generation for stream, (generation, _) in tree.bridges.items()}

    def actors(self) -> list[pykka.ActorRef[Any]]:
        """Every actor of this runtime."""
        tree: Tree = self._ask(self._supervisor, TreeQuery())
        bridges = [bridge for _, bridge in tree.bridges.values()]
        return [self._supervisor, self._timer, *tree.sessions.values(), *bridges]

    def armed_timers(self) -> list[tuple[str, TimerKind]]:
        armed: list[tuple[str, TimerKind]] = self._ask(self._timer, ArmedQuery())
        return armed

    def stop(self) -> None:
        """Stop every session and bridge (bridges leave their rooms), then the runtime; an
        input not yet known to be durable then completes with `RuntimeStopped`."""
        try:
            if self._supervisor.is_alive():
                self._stop_actors()
        finally:
            # Inputs a session had not made durable, or that waited for their session to
            # open, would keep their hosts waiting until a timeout, and the backlog counting.
            self._backlog.stop("the runtime stopped before the input was known to be durable")

    def _stop_actors(self) -> None:
        children: list[pykka.ActorRef[Any]] = self._ask(self._supervisor, Shutdown())
        # Every child is asked at once, so their stops overlap rather than wait in turn (10,000
        # users took 2.3 s one by one); the supervisor and the timer go once they are stopped.
        stopping = [ref.stop(block=False) for ref in children]
        del children  # a stopped actor is garbage as soon as the runtime forgets it
        for future in stopping:
            self._executor.wait(future, self._timeout)
        for ref in (self._supervisor, self._timer):
            self._executor.wait(ref.stop(block=False), self._timeout)

    def _ask(self, ref: pykka.ActorRef[Any], message: object) -> Any:
        return self._executor.wait(ref.ask(message, block=False), self._timeout)


def _recoverable(store: EventStore, server: str) -> list[SessionView]:
    """The sessions of `server` to recover: those its index calls open, as their streams say.
    The stream, not the index, says whether a session ended: a damaged or forged index that
    calls an ended one open would recover a session that hands every input back. And a user
    has one session: of two an index calls open, the older would end at its grace's end and
    take the supervisor's session of the user, the newer, with it (the index gives the oldest
    first, so the newest is kept). Each one passed over is logged: only a damaged or forged
    log has any."""
    recovered: dict[str, SessionView] = {}
    for stream in store.open_streams(server):
        view = replay_stream(store.read_stream(stream))
        if view is None or view.state == "DISPOSED":
            logger.warning(
                "%s: the index calls %s open, but its stream has no open session", server, stream
            )
            continue
        older = recovered.get(view.user)
        if older is not None:
            logger.warning(
                "%s: the index calls two sessions of %s open; recovering %s, not %s",
                server,
                view.user,
                stream,
                older.stream,
            )
        recovered[view.user] = view
    return list(recovered.values())

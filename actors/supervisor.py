"""The Supervisor actor: the root of a runtime's actors.

It routes glasses inputs to the user's session (opening a new incarnation when there is none),
starts and stops bridges when a session asks, and knows every live child, so a stopped runtime
leaves nothing behind. A session addresses its bridge through the reference the supervisor hands
it for that generation; a bridge of an older generation is stopped before a newer one starts.

It starts from the open sessions only (the store's index of sessions), and keeps an ended
session's final view for `retention_ms`, so that memory follows the users of the moment, not the
length of the history. Of every user who ever had a session on its server it keeps a Bloom
filter (ten bits a user, made with room for as many again): a user it certainly never had opens
incarnation 1 without a read of the log. It adds the log's users to the filter `FILL_SLICE` at
a time, a turn each, so that start-up does not wait for their hashing (100,000 users take 0.3 s
or more); until the filter holds them all, every user is a "maybe". That needs the supervisor
to be the only one opening sessions of its server, as the runtime already assumes (two
processes with one server name would act on the same sessions).

It owns the server's join limiter (`JoinLimiter`, when the runtime is given a join rate and the
policy limits joins), which every session consults before its bridge joins.

A user whose latest incarnation the log cannot tell waits: the supervisor keeps that user's
inputs in order and asks again with backoff (`SESSION_RESTARTS`), so a disconnect that arrives
meanwhile still follows the connect it ends.

It supervises its sessions one for one, as OTP does: a session whose turn failed is restarted at
once a few times, then with backoff (`SESSION_RESTARTS`), and never given up on. A failed bridge
is replaced by its session's policy, which hears of the failure as the bridge's loss.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec
import pykka

from actors.bloom_filter import BloomFilter
from actors.bridge import AudioSink, AudioWatch, Bridge
from actors.connector import Deadlines, RoomConnector
from actors.executor import Executor, tell
from actors.health_feed import HealthFeed
from actors.join_limiter import JoinLimiter
from actors.messages import (
    BridgeAttached,
    BridgeExited,
    BridgeQuery,
    ForUser,
    RestartSession,
    SessionEnded,
    SessionFailed,
    SessionQuery,
    Shutdown,
    StartBridge,
    StopBridge,
    StreamTaken,
    Tree,
    TreeQuery,
)
from actors.policy import Policy
from actors.restart_budget import RestartBudget
from actors.session import Session
from events.catalog import GlassesConnected, GlassesDisconnected, ProcessRestarted
from events.envelope import stream_name
from events.log import EventStore
from events.projection import SessionView

logger = logging.getLogger(__name__)

SESSION_RESTARTS = RestartBudget(
    intensity=3, period_ms=5_000, min_backoff_ms=200, max_backoff_ms=5_000, jitter=0.2
)
"""Three quick restarts within 5 s, then backoff up to 5 s: a log that fails for a while is
tried again every few seconds, and recovery follows within seconds of its return."""


class _Forget(msgspec.Struct, frozen=True, kw_only=True):
    """An ended session's retention is over."""

    stream: str


class _OpenDue(msgspec.Struct, frozen=True, kw_only=True):
    """Time to ask the log again for the latest incarnation of `user`, whose inputs wait."""

    user: str


FILL_SLICE = 2_000
"""Users a turn of the supervisor adds to its filter at start: a few milliseconds of hashing,
between which it routes inputs as usual."""


class _Fill(msgspec.Struct, frozen=True):
    """Add the next slice of the log's users to the filter."""


class _RestartDue(msgspec.Struct, frozen=True, kw_only=True):
    user: str
    stream: str
    error: str
    restarts: int


class Supervisor(pykka.Actor):
    def __init__(
        self,
        *,
        server: str,
        store: EventStore,
        executor: Executor,
        policy: Policy,
        grace_ms: int,
        connector: RoomConnector,
        deadlines: Deadlines,
        watch: AudioWatch,
        health: HealthFeed,
        sink: AudioSink,
        timer: pykka.ActorRef[Any],
        recovered: list[SessionView],
        users: list[str],
        retention_ms: int,
        join_rate_per_s: int | None = None,
    ) -> None:
        super().__init__()
        self._server = server
        self._store = store
        self._executor = executor
        self._policy = policy
        self._grace_ms = grace_ms
        self._connector = connector
        self._deadlines = deadlines
        self._watch = watch
        self._health = health
        self._sink = sink
        self._timer = timer
        self._recovered = sorted(recovered, key=lambda view: view.incarnation)
        self._had_session = BloomFilter(capacity=max(4_096, 2 * len(users)))
        """Every user who ever had a session here: those of the log at start, then each one
        this supervisor opens."""
        self._unfilled = list(reversed(users))
        """The log's users not yet in the filter, the next at the end: while there are any,
        the filter cannot say that a user never had a session here."""
        self._retention_ms = retention_ms
        self._joins = (
            JoinLimiter(join_rate_per_s)
            if join_rate_per_s is not None and policy.limit_joins
            else None
        )
        """One limiter for all of this server's sessions: the rate is the server's, not each
        user's."""
        self._sessions: dict[str, pykka.ActorRef[Any]] = {}
        self._ended: dict[str, SessionView] = {}
        self._taken: set[str] = set()
        """Streams given up because they hold records but no session: only a damaged or forged
        log has any."""
        self._bridges: dict[str, tuple[int, pykka.ActorRef[Any]]] = {}
        self._restarts: dict[str, list[int]] = {}
        """When each failing session was (or will be) restarted, on the monotonic clock."""
        self._waiting: dict[str, list[ForUser]] = {}
        """The inputs, in order, of each user whose session cannot open until the log says
        which incarnation was the latest: a disconnect that arrives meanwhile follows the
        connect it ends, instead of finding no session and being dropped."""
        self._open_failures: dict[str, int] = {}
        """Reads of each waiting user's latest incarnation that failed in a row."""

    def on_start(self) -> None:
        for view in self._recovered:
            session = self._spawn_session(view.user, view.stream, view.incarnation, view)
            self._sessions[view.user] = session
            tell(session, ProcessRestarted())
        self._recovered = []
        self._fill()

    def _fill(self) -> None:
        """Add a slice of the log's users to the filter; if more are left, the next slice is
        due now, as a timer: on the deterministic executor it waits until no actor has mail,
        so the recovered sessions and the inputs of the moment go first."""
        unfilled = self._unfilled
        for _ in range(min(FILL_SLICE, len(unfilled))):
            self._had_session.add(unfilled.pop())
        if unfilled:
            me = self.actor_ref
            self._executor.call_at(self._executor.now_ms(), lambda: tell(me, _Fill()))

    def on_receive(self, message: object) -> object:
        match message:
            case ForUser(user=user) if user in self._waiting:
                self._waiting[user].append(message)
            case _OpenDue(user=user):
                for waited in self._waiting.pop(user, []):
                    self.on_receive(waited)
            case ForUser(user=user, event=event, ack=ack):
                session = self._sessions.get(user)
                if session is None and isinstance(event, GlassesConnected):
                    session = self._open_session(user, message)
                if session is not None:
                    tell(session, message)
                elif ack is not None and isinstance(event, GlassesDisconnected):
                    ack.durable(0)  # no session to leave: nothing to record
            case _Fill():
                self._fill()
            case SessionFailed():
                self._restart_later(message)
            case _RestartDue(user=user, stream=stream, error=error, restarts=restarts):
                tell(
                    self._sessions.get(user),
                    RestartSession(
                        error=error, restarts=restarts, bridge=self._bridges.get(stream)
                    ),
                )
            case SessionEnded(user=user, final=final):
                self._forget_session(user, final.stream)
                self._ended[final.stream] = final
                me, forget = self.actor_ref, _Forget(stream=final.stream)
                self._executor.call_at(
                    self._executor.now_ms() + self._retention_ms, lambda: tell(me, forget)
                )
            case _Forget(stream=stream):
                self._ended.pop(stream, None)
            case StreamTaken(user=user, stream=stream):
                self._forget_session(user, stream)
                self._taken.add(stream)
            case StartBridge():
                self._start_bridge(message)
            case StopBridge(stream=stream, generation=generation):
                live = self._bridges.get(stream)
                if live is not None and live[0] == generation:
                    live[1].stop(block=False)
            case BridgeExited(stream=stream, generation=generation):
                live = self._bridges.get(stream)
                if live is not None and live[0] == generation:
                    del self._bridges[stream]
            case SessionQuery(user=user):
                return self._sessions.get(user)
            case BridgeQuery(stream=stream):
                return self._bridges.get(stream)
            case TreeQuery():
                return Tree(
                    sessions=dict(self._sessions),
                    ended=dict(self._ended),
                    bridges=dict(self._bridges),
                )
            case Shutdown():
                children = [bridge for _, bridge in self._bridges.values()]
                children.extend(self._sessions.values())
                self._sessions.clear()
                return children
        return None

    def _forget_session(self, user: str, stream: str) -> None:
        """Stop `user`'s session of `stream`, over: the user's next input opens a new one."""
        session = self._sessions.pop(user, None)
        self._restarts.pop(stream, None)
        if session is not None:
            session.stop(block=False)

    def _open_session(self, user: str, routed: ForUser) -> pykka.ActorRef[Any] | None:
        """A new incarnation of `user`'s session, numbered after the store's latest."""
        known = user in self._had_session
        had_session = known or bool(self._unfilled)
        try:
            latest = self._store.last_incarnation(self._server, user) if had_session else 0
        except Exception:
            # Without the latest incarnation a new stream could collide with an old one: keep
            # the input, and the user's inputs after it, and ask the store again with backoff.
            failures = self._open_failures.get(user, 0) + 1
            self._open_failures[user] = failures
            delay = SESSION_RESTARTS.backoff_ms(failures, self._executor.random)
            logger.exception(
                "cannot read %s's latest incarnation; trying again in %d ms", user, delay
            )
            self._waiting[user] = [routed]
            me, due = self.actor_ref, _OpenDue(user=user)
            self._executor.call_at(self._executor.now_ms() + delay, lambda: tell(me, due))
            return None
        self._open_failures.pop(user, None)
        stream = stream_name(self._server, user, latest + 1)
        while stream in self._ended or stream in self._taken:
            # That incarnation ended here, or its stream holds no session, so the log holds it,
            # whatever its index says (a damaged index says 0): opened again, it would collide
            # and end again, for ever.
            latest += 1
            stream = stream_name(self._server, user, latest + 1)
        session = self._spawn_session(user, stream, latest + 1, None)
        self._sessions[user] = session
        if not known:  # added once: the filter follows the users, not their sessions
            self._had_session.add(user)
        return session

    def _restart_later(self, failed: SessionFailed) -> None:
        """Restart a failed session now while within the budget, later once it is spent."""
        now = self._executor.now_ms()
        recent = SESSION_RESTARTS.recent(self._restarts.get(failed.stream, ()), now)
        beyond = len(recent) + 1 - SESSION_RESTARTS.intensity
        delay = SESSION_RESTARTS.backoff_ms(beyond, self._executor.random)
        self._restarts[failed.stream] = [*recent, now + delay]
        due = _RestartDue(
            user=failed.user, stream=failed.stream, error=failed.error, restarts=len(recent) + 1
        )
        me = self.actor_ref
        if delay:
            logger.warning(
                "session %s failed %d times within %g s (%s); restarting in %d ms",
                failed.stream,
                len(recent) + 1,
                SESSION_RESTARTS.period_ms / 1000,
                failed.error,
                delay,
            )
            self._executor.call_at(now + delay, lambda: tell(me, due))
        else:
            tell(me, due)

    def _spawn_session(
        self, user: str, stream: str, incarnation: int, recovered: SessionView | None
    ) -> pykka.ActorRef[Any]:
        return self._executor.spawn(
            Session,
            server=self._server,
            user=user,
            stream=stream,
            store=self._store,
            executor=self._executor,
            policy=self._policy,
            grace_ms=self._grace_ms,
            supervisor=self.actor_ref,
            timer=self._timer,
            connector=self._connector,
            deadlines=self._deadlines,
            watch=self._watch,
            health=self._health,
            recovered=recovered,
            joins=self._joins,
        )

    def _start_bridge(self, start: StartBridge) -> None:
        older = self._bridges.get(start.stream)
        if older is not None:
            older[1].stop(block=False)
        bridge = self._executor.spawn(
            Bridge,
            stream=start.stream,
            request=start.request,
            session=start.session,
            supervisor=self.actor_ref,
            connector=self._connector,
            executor=self._executor,
            sink=self._sink,
            audio_open=start.audio_open,
            watching=start.watching,
            watch=self._watch,
        )
        self._bridges[start.stream] = (start.request.generation, bridge)
        tell(start.session, BridgeAttached(generation=start.request.generation, bridge=bridge))

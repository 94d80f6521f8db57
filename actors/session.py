"""The Session actor: one user's state on one server, and every decision about its bridge.

Each input is handled in one turn: decide, append the input with its decisions to the log as one
atomic batch, then, once it is durable, act (tell the supervisor, arm timers, ask the bridge) and
acknowledge it. Nothing acts on an input before it is durable, and the session's state changes
only by applying the events it appended. Every time in an event, deadlines included, is
wall-clock: a process that restarts from the log honours the deadlines its predecessor set.

Where the executor has a journal (the pool), the append holds no thread: the session hands the
batch to the journal and keeps every message that arrives until the journal's `Persisted`
answer; then it acts, acknowledges, and handles the kept messages in order. Queries for its view
are answered meanwhile, with the durable view. Where it has none (the deterministic executor,
one thread) the session appends inline, within the turn. A session stopped while its append is
in flight neither acts on that input nor acknowledges it, durable or not. Where the fleet shares
the log, a glasses connection's turn first appends the connection's record to the user's fleet
stream (`events.fleet`), the same way, and its own batch only once that record is durable.

A turn that fails (a refused append, or any other error) leaves nothing behind: the session
drops its state, keeps the input at the head of its mailbox with every message that arrives
after it, and reports to the supervisor, which restarts it under a restart budget. A restart
rebuilds the state from the session's own stream, records `SessionRestarted`, and goes on with
the kept messages in order. The actor, its address and its bridge stay what they were.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from typing import Any, Final, NamedTuple, cast

import pykka

from actors.acknowledgement import Acknowledgement
from actors.bridge import AudioWatch
from actors.connector import (
    Deadlines,
    IdentityHolder,
    JoinRequest,
    LookupAnswer,
    LookupFailed,
    Nobody,
    RoomConnector,
)
from actors.executor import Executor, tell
from actors.grace_timer import Arm, Disarm, DisarmAll
from actors.health_feed import HealthFeed
from actors.join_limiter import JoinLimiter
from actors.messages import (
    BridgeAttached,
    ForUser,
    GateAudio,
    Persisted,
    RestartSession,
    SessionEnded,
    SessionFailed,
    StartBridge,
    StatusRequest,
    StopBridge,
    StreamTaken,
    ViewQuery,
)
from actors.policy import Policy
from events.catalog import (
    OPERATOR_REASONS,
    AnyEvent,
    AudioResumed,
    AudioStalled,
    BridgeDisconnected,
    BridgeJoined,
    BridgeJoinFailed,
    BridgeKept,
    BridgeReconnected,
    BridgeReconnecting,
    BridgeStarted,
    BridgeStatusObserved,
    BridgeStatusRequested,
    BridgeStopped,
    BridgeTokenRefreshed,
    ConnectionRecorded,
    Decision,
    DisconnectReason,
    Event,
    FirstAudio,
    GlassesConnected,
    GlassesDisconnected,
    GraceStarted,
    HealthChanged,
    IdentityHolderObserved,
    IdentityHolderRequested,
    Input,
    JoinPaced,
    LookupRetryDecided,
    PhoneAbsent,
    PhoneAwaited,
    PhonePresenceObserved,
    ProcessRestarted,
    RejoinDecided,
    RejoinDeclined,
    RestartBudgetExhausted,
    RetriesStopped,
    SessionDisposed,
    SessionOpened,
    SessionRestarted,
    SessionResumed,
    StaleInputIgnored,
    TimerFired,
    TimerKind,
)
from events.envelope import Envelope, Pending
from events.fleet import (
    APPEND_ATTEMPTS,
    fleet_stream,
    joined_since,
    newest_connection,
    record_connection,
)
from events.log import Batch, EventStore, LogError, WrongExpectedVersion
from events.projection import SessionView, apply, health_of, replay_stream

logger = logging.getLogger(__name__)

STALL_RESTARTS = 2
"""Restarts for stalls in a row that bring no audio back, before the session stops restarting
for silence: a phone that stopped sending (its user left without the server noticing yet) is
not fixed by a third bridge, and churn is a failure of its own (a recovery storm)."""


_IDLE: Final[list[Any]] = []
"""A session's events and effects between turns: one empty list shared by every session, never
appended to (each turn gets lists of its own), so that an idle session keeps no container of
its own for the cyclic collector to walk."""


class _Turn(NamedTuple):
    """A turn whose batch is on its way to the log: what to do once it is durable, or failed."""

    message: object
    """What the turn handled: kept at the head of the mailbox if the append fails."""
    view: SessionView | None
    batch: list[Pending]
    effects: list[Callable[[], object]]
    ack: Acknowledgement | None
    fleet: Pending | None = None
    """A glasses connection's record for the fleet stream, appended before `batch`: the fleet
    knows of a connection before this server acts on it."""
    races: int = 0
    """Appends of `fleet` that another server's append to the stream beat."""


class Session(pykka.Actor):
    def __init__(
        self,
        *,
        server: str,
        user: str,
        stream: str,
        store: EventStore,
        executor: Executor,
        policy: Policy,
        grace_ms: int,
        supervisor: pykka.ActorRef[Any],
        timer: pykka.ActorRef[Any],
        connector: RoomConnector,
        deadlines: Deadlines,
        watch: AudioWatch,
        health: HealthFeed,
        recovered: SessionView | None = None,
        joins: JoinLimiter | None = None,
    ) -> None:
        super().__init__()
        self._server = server
        self._user = user
        self._stream = stream
        self._store = store
        self._executor = executor
        self._policy = policy
        self._grace_ms = grace_ms
        self._supervisor = supervisor
        self._timer = timer
        self._connector = connector
        self._deadlines = deadlines
        self._watch = watch
        self._health = health
        self._joins = joins
        """The server's join limiter, shared by its sessions; `None`: joins start at once."""
        self._view = recovered
        self._durable = recovered
        """The view as the log has it: what a query sees, whatever a failed turn left."""
        self._version = recovered.version if recovered is not None else 0
        self._before: SessionView | None = None
        self._bridge: pykka.ActorRef[Any] | None = None
        self._cause = ""
        self._now = 0
        """The wall-clock time of the turn in progress."""
        self._pending: list[Pending] = _IDLE
        self._effects: list[Callable[[], object]] = _IDLE
        self._writing: _Turn | None = None
        """The turn the journal is writing; until it answers, messages wait in `_kept`."""
        self._kept: collections.deque[object] | None = None
        """Messages kept, in order, while the session waits for its append or its restart (the
        failed one first); `None` when there are none."""
        self._failed = False

    _given_up = False
    """Set once this session gave its stream up (`_give_up_stream`): it stays failed, and the
    inputs it would keep go back to the supervisor. A class default: no session but such a one
    holds it."""

    def on_receive(self, message: object) -> object:
        match message:
            case ViewQuery():
                return self._durable
            case Persisted():
                self._persisted(message)
            case RestartSession() if self._failed:
                self._restart(message)
            case _ if self._failed or self._writing is not None:
                self._hold(message)
            case _:
                self._receive(message)
        return None

    def _receive(self, message: object) -> None:
        """Handle one message; a failure keeps it for the restart and tells the supervisor."""
        try:
            match message:
                case BridgeAttached():
                    self._attach(message)
                case ForUser(event=event):
                    self._handle(event, routed=message)
                case Input():
                    self._handle(message)
        except Exception as error:
            self._fail(message, error)

    def _hold(self, message: object, *, first: bool = False) -> None:
        if self._given_up:
            # No turn of this stream can be appended: the user's inputs go on to the next.
            if isinstance(message, ForUser):
                tell(self._supervisor, message)
            return
        if self._kept is None:
            self._kept = collections.deque()
        if first:
            self._kept.appendleft(message)
        else:
            self._kept.append(message)

    def _go_on(self) -> None:
        """Handle the kept messages in order, until one's append is in flight or fails."""
        while (kept := self._kept) and not self._failed and self._writing is None:
            self._receive(kept.popleft())
        if not self._kept:
            self._kept = None

    def _fail(self, message: object, error: Exception) -> None:
        # A log that refuses an append explains itself; anything else is a bug to trace.
        trace = None if isinstance(error, LogError) else error
        logger.warning("session %s failed: %s", self._stream, error, exc_info=trace)
        self._failed, self._writing = True, None
        if not isinstance(message, SessionRestarted):
            self._hold(message, first=True)
        self._view, self._pending, self._effects = self._durable, _IDLE, _IDLE
        failed = SessionFailed(user=self._user, stream=self._stream, error=_describe(error))
        tell(self._supervisor, failed)

    def _restart(self, restart: RestartSession) -> None:
        try:
            envelopes = self._store.read_stream(self._stream)
        except Exception as error:
            self._fail(restart, error)
            return
        self._view = self._durable = replay_stream(envelopes)
        if self._view is None and envelopes:
            self._give_up_stream()
            return
        self._version = self._view.version if self._view is not None else 0
        live = restart.bridge
        current = self._view is not None and live is not None and live[0] == self._view.generation
        self._bridge = live[1] if current and live is not None else None
        self._failed = False
        if self._view is not None and self._view.state == "DISPOSED":
            self._ended_before_restart(live)
        self._receive(SessionRestarted(error=restart.error, restarts=restart.restarts))
        self._go_on()

    def _give_up_stream(self) -> None:
        """This new session's stream holds records but no session's opening, so no turn of it
        can ever be appended: give the stream up and hand the inputs kept for it back to the
        supervisor, which opens the next incarnation for them."""
        logger.warning(
            "session %s: its stream holds records but no session (a damaged or forged log); "
            "giving it up for the user's next incarnation",
            self._stream,
        )
        tell(self._supervisor, StreamTaken(user=self._user, stream=self._stream))
        self._given_up = True
        kept, self._kept = self._kept, None
        for message in kept or ():
            self._hold(message)

    def _ended_before_restart(self, live: tuple[int, pykka.ActorRef[Any]] | None) -> None:
        """The stream this session rebuilt from is disposed: its disposal was durable but its
        turn failed before acting, or another incarnation 1 was there first (a log that did not
        tell the supervisor of it). Act as the disposal would have, so the supervisor forgets
        this session and the inputs it hands back open a new one, instead of coming back here
        for ever."""
        assert self._view is not None, "called with a disposed view"
        if live is not None:
            tell(self._supervisor, StopBridge(stream=self._stream, generation=live[0]))
        self._bridge = None
        self._end(self._view)

    def _attach(self, attached: BridgeAttached) -> None:
        if self._view is not None and attached.generation == self._view.generation:
            self._bridge = attached.bridge
            gate = GateAudio(open=self._audio_open(), watch=self._view.state == "ACTIVE")
            tell(attached.bridge, gate)

    # One turn per input

    @property
    def view(self) -> SessionView:
        assert self._view is not None, "a session has a view once opened"
        return self._view

    def _handle(self, event: Input, *, routed: ForUser | None = None) -> None:
        """Record `event` and the decisions it leads to, then act once they are durable; an
        input that reached a disposed session goes back to the supervisor, for a new one."""
        if self._view is not None and self._view.state == "DISPOSED":
            if routed is not None:
                tell(self._supervisor, routed)
            return
        self._before = self._view
        self._pending, self._effects = [], []
        # A turn happens at one instant: every event and every deadline of it uses this time,
        # so that a deadline in the log and the timer armed for it are the same number.
        self._now = self._executor.wall_ms()
        self._cause = self._executor.new_id()
        self._record(event, self._cause)
        self._decide(event)
        self._tell_health()
        self._commit(routed or event, routed.ack if routed is not None else None)

    def _record(self, event: Event, event_id: str) -> None:
        pending = Pending(
            event_id=event_id,
            time_ms=self._now,
            server=self._server,
            user=self._user,
            event=cast("AnyEvent", event),
        )
        version = self._version + len(self._pending) + 1
        self._pending.append(pending)
        # Position 0: the log assigns the real one, and a view does not depend on it.
        self._view = apply(self._view, pending.at(position=0, stream=self._stream, version=version))

    def _decide_that(self, decision: Decision) -> None:
        self._record(decision, self._executor.new_id())

    def _then(self, effect: Callable[[], object]) -> None:
        self._effects.append(effect)

    def _commit(self, message: object, ack: Acknowledgement | None) -> None:
        """Append the turn's events as one batch; once it is durable, act and acknowledge."""
        pending = self._pending
        turn = _Turn(message, self._view, pending, self._effects, ack, self._fleet_record(pending))
        self._pending, self._effects = _IDLE, _IDLE
        # Read from the executor each time: one attribute more and CPython would give every
        # session a dict of its own, one more object per user for the cyclic collector.
        if self._executor.journal is None:
            if turn.fleet is not None:
                record_connection(self._store, turn.fleet)
            self._settle(turn, self._store.append(self._stream, self._version, pending))
            return
        self._writing = turn
        self._journal(turn)

    def _journal(self, turn: _Turn) -> None:
        """Hand the journal the turn's next append: its fleet record, then its own batch."""
        journal = self._executor.journal
        assert journal is not None, "only an executor with a journal writes through one"
        if turn.fleet is not None:
            stream = fleet_stream(self._user)
            batch = Batch(stream, self._store.stream_version(stream), [turn.fleet])
        else:
            batch = Batch(self._stream, self._version, turn.batch)
        me = self.actor_ref
        ack = turn.ack if turn.fleet is None else None

        def reply(outcome: list[Envelope] | Exception) -> None:
            # On the journal's thread: the answer reaches the session as mail, so that only
            # its own turns touch its state. The input is acknowledged the moment its batch is
            # durable, not a mailbox hop and the turn's effects later; after the mail, so that
            # a query the host sends once it hears lands behind it and sees the batch.
            tell(me, Persisted(outcome=outcome))
            if ack is not None and not isinstance(outcome, Exception):
                ack.durable(outcome[0].position)

        journal.append(self._store, batch, reply)

    def _fleet_record(self, pending: list[Pending]) -> Pending | None:
        """The fleet's record of a glasses connection this turn handles, when the log is
        shared."""
        connected = pending[0].event
        if not self._policy.shared_log or not isinstance(connected, GlassesConnected):
            return None
        epoch = connected.epoch
        return Pending(
            event_id=self._executor.new_id(),
            time_ms=self._now,
            server=self._server,
            user=self._user,
            event=ConnectionRecorded(
                cause=pending[0].event_id,
                why=f"the glasses connected to {self._server} with epoch {epoch}: "
                "every server of the fleet fences by it",
                epoch=epoch,
            ),
        )

    def _persisted(self, persisted: Persisted) -> None:
        """The journal's answer for the turn in flight: settle or fail it, then go on."""
        turn, self._writing = self._writing, None
        if turn is None:
            logger.warning("session %s: an append's answer with no append in flight", self._stream)
            return
        outcome = persisted.outcome
        if turn.fleet is not None:
            self._fleet_persisted(turn, outcome)
            return
        if isinstance(outcome, Exception):
            self._fail(turn.message, outcome)
            return
        try:
            self._settle(turn, outcome)
        except Exception as error:
            self._fail(turn.message, error)
            return
        self._go_on()

    def _fleet_persisted(self, turn: _Turn, outcome: list[Envelope] | Exception) -> None:
        """The fleet record's answer: on to the turn's own batch, or the record again at the
        stream's new version if another server appended first."""
        if isinstance(outcome, WrongExpectedVersion) and turn.races + 1 < APPEND_ATTEMPTS:
            turn = turn._replace(races=turn.races + 1)
        elif isinstance(outcome, Exception):
            self._fail(turn.message, outcome)
            return
        else:
            turn = turn._replace(fleet=None)
        self._writing = turn
        try:
            self._journal(turn)
        except Exception as error:
            self._fail(turn.message, error)

    def _settle(self, turn: _Turn, stored: list[Envelope]) -> None:
        """The turn's batch is durable: the view is the log's, its effects run, its input is
        acknowledged with its position."""
        self._version += len(turn.batch)
        self._durable = turn.view
        for effect in turn.effects:
            effect()
        if turn.ack is not None:
            # Where a journal writes the batch, its reply has acknowledged it (once is all).
            turn.ack.durable(stored[0].position)

    def _decide(self, event: Input) -> None:
        match event:
            case GlassesConnected(epoch=epoch):
                self._on_connected(epoch)
            case GlassesDisconnected():
                self._on_disconnected()
            case TimerFired(timer=timer, deadline_ms=deadline):
                self._on_timer(timer, deadline)
            case ProcessRestarted():
                self._on_restarted()
            case IdentityHolderObserved():
                self._on_identity_holder(event)
            case (
                BridgeJoined(generation=generation)
                | BridgeJoinFailed(generation=generation)
                | BridgeDisconnected(generation=generation)
                | FirstAudio(generation=generation)
                | BridgeStatusObserved(generation=generation)
                | AudioStalled(generation=generation)
                | AudioResumed(generation=generation)
                | PhonePresenceObserved(generation=generation)
                | BridgeReconnecting(generation=generation)
                | BridgeReconnected(generation=generation)
                | BridgeTokenRefreshed(generation=generation)
            ) if self._view is not None and generation != self._view.generation:
                self._decide_that(
                    StaleInputIgnored(
                        cause=self._cause,
                        why=f"from bridge generation {generation}; "
                        f"generation {self._view.generation} is current",
                    )
                )
            case BridgeJoined():
                self._disarm_join()
                self._await_phone()
            case BridgeJoinFailed(error=error, permanent=permanent):
                self._disarm_join()
                self._on_bridge_lost("JOIN_FAILURE", f"join failed: {error}", permanent=permanent)
            case BridgeDisconnected(reason=reason):
                self._disarm_join()
                self._on_bridge_lost(reason, f"left the room: {reason}")
            case BridgeStatusObserved(connected=connected, phone_present=phone):
                self._on_status(connected=connected, phone_present=phone)
            case AudioStalled(silent_ms=silent):
                self._on_stall(silent)
            case PhonePresenceObserved(present=True):
                self._disarm("phone")
            case PhonePresenceObserved(present=False):
                self._await_phone()

    # Glasses

    def _on_connected(self, epoch: int) -> None:
        if self._view is None:
            self._decide_that(
                SessionOpened(
                    cause=self._cause,
                    why=f"first connection of the glasses to {self._server}",
                    # The stream's last part: one attribute less per session (see `_commit`).
                    incarnation=int(self._stream.rsplit("/", 1)[1]),
                    epoch=epoch,
                )
            )
            self._start_bridge("a new session needs its bridge")
            return
        was = self.view.state
        self._decide_that(
            SessionResumed(
                cause=self._cause,
                why="reconnect within grace"
                if was == "GRACE"
                else "a new connection while the previous one was not yet seen closed",
                epoch=epoch,
            )
        )
        self._disarm("grace")
        self._gate_audio(open_=True)
        self._on_reconnect()
        self._await_phone()

    def _on_reconnect(self) -> None:
        view, policy = self.view, self._policy
        if policy.on_reconnect == "reuse":
            self._keep(f"{policy.name}: a reconnect reuses the bridge without checking it")
        elif policy.on_reconnect == "restart":
            self._stop_bridge(f"{policy.name}: a reconnect always starts a fresh bridge")
            self._rejoin(f"{policy.name}: a reconnect always starts a fresh bridge")
        elif view.backoff_due_ms is not None:
            due_in = view.backoff_due_ms - self._now
            self._decline(f"the bridge is already due to start in {due_in} ms")
        elif view.bridge == "joining":
            self._keep("a join is already in flight")
        elif view.bridge == "up":
            generation = view.generation
            self._decide_that(
                BridgeStatusRequested(
                    cause=self._cause,
                    why="reconnect: ask the bridge whether it is still in the room",
                    generation=generation,
                )
            )
            self._then(lambda: self._ask_status(generation))
        else:
            reason = view.last_disconnect_reason or "stopped"
            self._rejoin(f"reconnect: the bridge is not in the room (last loss: {reason})")

    def _ask_status(self, generation: int) -> None:
        if not tell(self._bridge, StatusRequest(generation=generation)):
            # An unreachable bridge is an answer too; observed here, recorded in the next turn.
            unreachable = BridgeStatusObserved(
                generation=generation, connected=False, phone_present=False
            )
            tell(self.actor_ref, unreachable)

    def _on_disconnected(self) -> None:
        if self.view.state != "ACTIVE":
            return
        deadline = self._now + self._grace_ms
        self._decide_that(
            GraceStarted(
                cause=self._cause,
                why=f"glasses disconnected; the session waits {self._grace_ms / 1000:g} s",
                deadline_ms=deadline,
                audio_held=self._policy.audio_only_when_active,
            )
        )
        self._arm("grace", deadline)
        self._gate_audio(open_=False)
        if self._before is not None and self._before.phone_due_ms is not None:
            self._disarm("phone")
        if self._policy.stop_bridge_on_grace:
            self._stop_bridge(f"{self._policy.name}: the bridge is disposed when grace starts")
        elif self._policy.supervise_losses and self.view.bridge == "joining":
            self._stop_bridge(
                "the glasses left before the join completed: "
                "a late join would kick the server they went to"
            )

    def _on_restarted(self) -> None:
        view = self.view
        if view.state == "ACTIVE":
            deadline = self._now + self._grace_ms
            self._decide_that(
                GraceStarted(
                    cause=self._cause,
                    why="the server restarted: the glasses connection did not survive it",
                    deadline_ms=deadline,
                )
            )
            self._arm("grace", deadline)
        elif view.grace_deadline_ms is not None:
            self._arm("grace", view.grace_deadline_ms)
        if view.escalated_until_ms is not None:
            self._arm("cooldown", view.escalated_until_ms)

    # Timers

    def _on_timer(self, timer: TimerKind, deadline: int) -> None:
        # Judge the timer against the deadlines as they were before its firing cleared them.
        view = self._before or self.view
        if timer == "grace" and view.state == "GRACE" and view.grace_deadline_ms == deadline:
            self._dispose(f"grace of {self._grace_ms / 1000:g} s expired without a reconnect")
        elif timer in ("backoff", "pace") and view.backoff_due_ms == deadline:
            waited = "its turn at the join limiter came" if timer == "pace" else "backoff elapsed"
            if view.state == "ACTIVE":
                self._start_bridge(waited, turn_taken=timer == "pace")
            else:
                self._decline(f"{waited} but the glasses are gone; waiting for a reconnect")
        elif timer == "cooldown" and view.escalated_until_ms == deadline:
            if view.state == "ACTIVE" and view.bridge == "down":
                self._rejoin("cool-down over: the restart budget is back, trying again")
            else:
                self._decline("cool-down over; nothing to restart while the glasses are away")
        elif timer == "join" and view.join_deadline_ms == deadline:
            seconds = self._deadlines.join_ms / 1000
            self._stop_bridge(f"no join within {seconds:g} s")
            self._on_bridge_lost("JOIN_FAILURE", f"did not join within {seconds:g} s")
        elif timer == "join_check" and _join_in_flight(view, deadline):
            self._look_for_overtaking(view, deadline)
        elif timer == "lookup" and view.lookup_deadline_ms == deadline:
            seconds = self._deadlines.lookup_ms / 1000
            self._on_lookup_failed(f"no answer within {seconds:g} s", permanent=False)
        elif timer == "lookup_retry" and view.lookup_retry_due_ms == deadline:
            stalled = view.bridge == "up" and view.stalled_ms is not None
            if view.state == "ACTIVE" and (view.bridge == "down" or stalled):
                self._request_holder("the room service could not say before: ask it again")
            else:
                self._decline("the session moved on before asking the room service again")
        elif timer == "phone" and view.phone_due_ms == deadline:
            seconds = self._watch.phone_absent_after_ms / 1000
            self._decide_that(
                PhoneAbsent(
                    cause=self._cause,
                    why=f"the phone has not been in the room for {seconds:g} s while the glasses "
                    "are connected: its own connection is at fault; the bridge waits for it",
                )
            )
        else:
            self._decide_that(
                StaleInputIgnored(cause=self._cause, why=f"{timer} deadline no longer applies")
            )

    def _look_for_overtaking(self, view: SessionView, looked_ms: int) -> None:
        """A join still in flight may have been overtaken: a newer join of the identity reached
        the server after its join response and before its media was up. The SDK tells it
        nothing of that; at its own 15 s timeout it retries, and the retry kicks whoever holds
        the identity then. A fleet that shares its log looks there for another server's bridge
        that joined since this join began; a server on its own asks the room service (see
        `_on_join_checked`). An overtaken join is given up on, never cancelled (the connector
        waits it out), and the kick rules decide whether to join again; otherwise look again
        later."""
        assert view.last_start_ms is not None, "a join in flight has a start"
        waited = self._now - view.last_start_ms
        if not self._policy.shared_log:
            self._request_holder(
                f"a join in flight for {waited} ms: ask the room service whether the room holds "
                "it, as it does once the server has answered the join"
            )
            return
        joins = joined_since(self._store, self._user, view.last_start_ms, besides=self._server)
        if not joins:
            self._check_join_later(looked_ms)
            return
        who = joins[-1].server
        self._disarm_join()
        self._stop_bridge(
            f"overtaken in flight: the fleet log says {who}'s bridge joined since this join "
            f"began {waited} ms ago, and the SDK tells nothing of such a kick until it retries "
            "at its 15 s timeout"
        )
        self._on_bridge_lost("DUPLICATE_IDENTITY", f"was overtaken in flight by {who}'s join")

    def _check_join_later(self, looked_ms: int) -> None:
        due = looked_ms + self._deadlines.join_check_ms
        deadline = self.view.join_deadline_ms
        if deadline is not None and due < deadline:
            self._arm("join_check", due)

    def _on_join_checked(
        self, server: str | None, epoch: int | None, *, unknown: str | None = None
    ) -> None:
        """What the room service says of a join still in flight. A real server has the
        participant in the room from its join response on, so a join in flight for seconds
        that the room does not hold (nobody does, or another join) was overtaken, or has not
        reached the server in all that time: either way it is given up on and the holder is
        fenced by epoch. A join the room holds, or one the service cannot say about, goes
        on; so does one the room does not hold after a failed join, since the restart waits
        for the join it replaced to end, and the server may only be slow to answer: a second
        join given up on would only wait for this one in turn."""
        view = self.view
        if view.state != "ACTIVE" or view.bridge != "joining":
            self._decline("the join the room service was asked about is over")
            return
        if view.generation != view.lookup_checks_join:
            self._decline("the room service was asked about an earlier join")
            return
        if unknown is not None:
            found = f"the room service could not say who holds the identity ({unknown})"
        elif server == self._server and epoch == view.epoch:
            found = "the room holds this join; its media is still connecting"
        elif server is None and view.failure_streak > 0:
            found = "nobody holds the identity yet, and this join follows a failed one"
        else:
            found = None
        if found is not None:
            self._keep(f"{found}: the join goes on")
            self._check_join_later(self._now)
            return
        assert view.last_start_ms is not None, "a join in flight has a start"
        who = "nobody" if server is None else f"{server} (epoch {epoch})"
        self._disarm_join()
        self._stop_bridge(
            f"{self._now - view.last_start_ms} ms into this join the room service says {who} "
            "holds the identity: the join was overtaken in flight, or has yet to reach the "
            "server, and the SDK tells nothing of either until its own 15 s timeout"
        )
        self._fence_by_holder(server, epoch)

    def _dispose(self, why: str) -> None:
        self._stop_bridge(why)
        self._decide_that(SessionDisposed(cause=self._cause, why=why))
        final = self.view
        self._then(lambda: self._end(final))
        self._bridge = None

    def _end(self, final: SessionView) -> None:
        """Act on a durable disposal: no timer of the stream fires again, and the supervisor
        forgets the session, so the user's next input opens a new one."""
        tell(self._timer, DisarmAll(owner_key=self._stream))
        tell(self._supervisor, SessionEnded(user=self._user, final=final))

    # The bridge

    def _on_status(self, *, connected: bool, phone_present: bool) -> None:
        if self._before is None or not self._before.awaiting_status:
            return
        if connected and self._policy.supervise_losses:
            # The SDK can still say connected before it hears of a kick: ask the server.
            self._request_holder("the bridge says it is in the room: confirm with the room service")
        elif connected:
            phone = "" if phone_present else " (the phone is not in the room yet)"
            self._keep(f"the bridge is still in the room: a blip keeps a healthy bridge{phone}")
        elif self._policy.on_reconnect == "health_check":
            self._stop_bridge("health check failed: dispose the bridge")
            self._rejoin("health check failed: re-initialise the bridge")
        else:
            self._rejoin("status: the bridge is not in the room")

    def _on_bridge_lost(
        self, reason: DisconnectReason, what: str, *, permanent: bool = False
    ) -> None:
        view, policy = self.view, self._policy
        self._bridge = None
        if permanent and policy.supervise_losses:
            self._stop_retrying(f"the bridge {what}")
        elif self._before is not None and self._before.awaiting_status:
            self._rejoin(f"status: the bridge {what} before answering")
        elif not policy.supervise_losses:
            self._decline(f"{policy.name} does not rejoin on its own; the bridge {what}")
        elif view.state != "ACTIVE":
            self._decline(
                f"{reason} while in grace: the user may be on another server, "
                "and a rejoin would kick it"
            )
        elif reason == "DUPLICATE_IDENTITY" and policy.shared_log:
            self._fence_by_log()
        elif reason == "DUPLICATE_IDENTITY":
            self._request_holder(
                "kicked while active: ask the room who holds the identity, to fence by epoch"
            )
        elif reason in OPERATOR_REASONS:
            self._decline(f"removed by an operator ({reason}); down until the next reconnect")
        else:
            self._restart_after_failure(f"transient loss while active: the bridge {what}")

    def _fence_by_log(self) -> None:
        """Kicked while active, in a fleet that shares its log: the newest connection the log
        records decides, whether the room service answers or not; it is asked only when the
        log cannot say."""
        mine = self.view.epoch
        newest = newest_connection(self._store, self._user)
        if newest is None:
            self._request_holder(
                "kicked while active, and the fleet log records no connection of the user's: "
                "ask the room who holds the identity, to fence by epoch"
            )
        elif newest.epoch > mine:
            where = " and ".join(sorted(newest.servers))
            self._decline(
                f"kicked while active: the fleet log says the glasses connected to {where} "
                f"since (epoch {newest.epoch}, ours {mine}); down until they come back here"
            )
        elif newest.epoch < mine or newest.servers == {self._server}:
            self._restart_after_failure(
                f"fenced by the fleet log: our connection (epoch {mine}) is the user's newest, "
                "so the server that kicked us joined late"
            )
        else:
            others = " and ".join(sorted(newest.servers - {self._server}))
            self._request_holder(
                f"kicked while active, and the fleet log records epoch {mine} on {others} too: "
                "ask the room who holds the identity"
            )

    def _request_holder(self, why: str) -> None:
        deadline = self._now + self._deadlines.lookup_ms
        self._decide_that(IdentityHolderRequested(cause=self._cause, why=why, deadline_ms=deadline))
        self._arm("lookup", deadline)
        self._then(self._lookup_holder)

    def _lookup_holder(self) -> None:
        me = self.actor_ref
        identity = self.view.identity or self._policy.identity(self._user, self._server)

        def reply(answer: LookupAnswer) -> None:
            tell(me, _observed(answer))

        self._connector.lookup_holder(self._user, identity, reply)

    def _on_identity_holder(self, observed: IdentityHolderObserved) -> None:
        if self._before is None or self._before.lookup_deadline_ms is None:
            self._decide_that(
                StaleInputIgnored(
                    cause=self._cause, why="the room service answered after its deadline"
                )
            )
            return
        self._disarm("lookup")
        if observed.error is not None:
            self._on_lookup_failed(observed.error, permanent=observed.permanent)
            return
        server, epoch = observed.holder_server, observed.holder_epoch
        view = self.view
        if view.lookup_checks_join is not None:
            self._on_join_checked(server, epoch)
        elif view.state == "ACTIVE" and view.bridge == "up" and view.stalled_ms is not None:
            self._restart_stalled(server)
        elif view.state == "ACTIVE" and view.bridge == "up":
            self._confirm_status(server)
        elif view.state != "ACTIVE" or view.bridge != "down" or view.backoff_due_ms is not None:
            self._decline("the session moved on while the room service answered")
        else:
            self._fence_by_holder(server, epoch)

    def _fence_by_holder(self, server: str | None, epoch: int | None) -> None:
        """The bridge is down while the glasses are here: join again unless the identity is
        held for a newer connection than ours."""
        mine = self.view.epoch
        if epoch is None:
            self._restart_after_failure("nobody holds the identity now and the glasses are here")
        elif epoch < mine:
            self._restart_after_failure(
                f"fenced: {server} joined late with epoch {epoch}, older than ours ({mine})"
            )
        elif server == self._server and epoch == mine:
            self._restart_after_failure(
                "the holder is an earlier join of ours for this same connection, given up on "
                "and waited out, that landed late: it leaves the room at once"
            )
        else:
            self._decline(f"{server} holds the identity for a newer connection (epoch {epoch})")

    def _on_lookup_failed(self, error: str, *, permanent: bool) -> None:
        """The room service could not say who holds the identity: never read as "nobody"."""
        view = self.view
        if view.lookup_checks_join is not None:
            self._on_join_checked(None, None, unknown=error)
            return
        unknown = f"the room service could not say who holds the identity ({error})"
        stalled = view.bridge == "up" and view.stalled_ms is not None
        if permanent:
            self._stop_retrying(unknown)
        elif view.state == "ACTIVE" and view.bridge == "up" and not stalled:
            self._keep(f"{unknown}: a bridge that says it is in the room is kept")
        elif view.state == "ACTIVE" and view.backoff_due_ms is None and view.bridge != "joining":
            # A stalled bridge is kept too, and the service asked again: a blind restart
            # could kick the server the glasses moved to.
            delay = self._policy.budget.backoff_ms(view.lookup_failures, self._executor.random)
            self._decide_that(
                LookupRetryDecided(
                    cause=self._cause,
                    why=f"{unknown}: ask again in {delay} ms rather than rejoin blind",
                    delay_ms=delay,
                )
            )
            self._arm("lookup_retry", self._now + delay)
        else:
            self._decline(f"{unknown}; the session moved on meanwhile")

    # Audio

    def _on_stall(self, silent_ms: int) -> None:
        view, policy = self.view, self._policy
        silence = f"no audio for {silent_ms / 1000:g} s while the phone is in the room"
        if not policy.supervise_losses:
            self._decline(f"{policy.name} does not act on silence: {silence}")
        elif view.state != "ACTIVE" or view.bridge != "up":
            self._decline(f"{silence}, but the session moved on")
        elif view.stalls_without_audio > STALL_RESTARTS:
            self._decline(
                f"{silence}, and {STALL_RESTARTS} restarts in a row brought no audio back: "
                "the phone is not sending; waiting for its audio or a reconnect"
            )
        elif view.lookup_deadline_ms is not None:
            self._decline(f"{silence}; the room service is being asked already")
        else:
            self._request_holder(f"{silence}: confirm with the room service before a restart")

    def _restart_stalled(self, holder: str | None) -> None:
        if holder != self._server:
            self._confirm_status(holder)
            return
        why = "the bridge is in the room but no audio reaches it: restart it"
        self._stop_bridge(why)
        self._restart_after_failure(why)

    def _await_phone(self) -> None:
        """While the glasses are connected and the bridge is in the room, a phone missing from
        the room is reported absent after a while, unless it comes back."""
        view = self.view
        if view.state != "ACTIVE" or view.bridge != "up" or view.phone_present is not False:
            return
        if view.phone_due_ms is not None or view.phone_absent:
            return
        deadline = self._now + self._watch.phone_absent_after_ms
        self._decide_that(
            PhoneAwaited(
                cause=self._cause,
                why="the phone is not in the room while the glasses are connected",
                deadline_ms=deadline,
            )
        )
        self._arm("phone", deadline)

    def _tell_health(self) -> None:
        """Record, and tell the host, what the user is experiencing now, when it changed."""
        view = self._view
        health = health_of(view) if view is not None else None
        if view is None or health is None or health == view.health:
            return
        self._decide_that(
            HealthChanged(
                cause=self._cause,
                why=f"{health.state}: {health.reason}",
                state=health.state,
                reason=health.reason,
                retry_at_ms=health.retry_at_ms,
            )
        )
        user = self._user
        self._then(lambda: self._health.publish(user, health))

    def _stop_retrying(self, why: str) -> None:
        retry_at = self._now + self._policy.budget.permanent_cooldown_ms
        minutes = self._policy.budget.permanent_cooldown_ms / 60_000
        self._decide_that(
            RetriesStopped(
                cause=self._cause,
                why=f"{why}: a permanent error; no retries until the glasses reconnect "
                f"or {minutes:g} min pass",
                retry_at_ms=retry_at,
            )
        )
        self._arm("cooldown", retry_at)

    def _confirm_status(self, holder: str | None) -> None:
        if holder == self._server:
            self._keep("the bridge and the room service agree it is in the room: a blip keeps it")
        else:
            holds = f"{holder or 'nobody'} holds the identity"
            self._stop_bridge(f"the room service says {holds}")
            self._rejoin(f"the bridge thought it was in the room, but {holds}")

    def _restart_after_failure(self, why: str) -> None:
        view, budget = self.view, self._policy.budget
        now = self._now
        if budget.exhausted(view.failure_restarts_ms, now):
            retry_at = now + budget.cooldown_ms
            self._decide_that(
                RestartBudgetExhausted(
                    cause=self._cause,
                    why=f"{budget.intensity} restarts within {budget.period_ms / 1000:g} s: "
                    f"waiting for a reconnect or the cool-down ({why})",
                    retry_at_ms=retry_at,
                )
            )
            self._arm("cooldown", retry_at)
            return
        delay = budget.backoff_ms(view.failure_streak + 1, self._executor.random)
        self._decide_that(RejoinDecided(cause=self._cause, why=why, delay_ms=delay, failure=True))
        self._arm("backoff", now + delay)

    def _rejoin(self, why: str) -> None:
        """A restart a reconnect asked for: now, unless the last restarts failed."""
        view, policy = self.view, self._policy
        now = self._now
        guard = policy.rejoin_guard_ms
        if guard and view.last_start_ms is not None and now - view.last_start_ms < guard:
            self._decline(f"skipped: within the {guard / 1000:g} s guard after the last rejoin")
            return
        delay = 0
        if policy.supervise_losses:
            last_failure = view.failure_restarts_ms[-1] if view.failure_restarts_ms else None
            delay = policy.budget.reconnect_backoff_ms(
                view.failure_streak, last_failure, now, self._executor.random
            )
        self._decide_that(RejoinDecided(cause=self._cause, why=why, delay_ms=delay, failure=False))
        if delay:
            self._arm("backoff", now + delay)
        else:
            self._start_bridge(why)

    def _start_bridge(self, why: str, *, turn_taken: bool = False) -> None:
        """Start the bridge now, or at its turn if the join limiter has one for it later."""
        if self._joins is not None and not turn_taken:
            now = self._executor.now_ms()
            wait = self._joins.turn(now) - now
            if wait > 0:
                rate = self._joins.rate_per_s
                self._decide_that(
                    JoinPaced(
                        cause=self._cause,
                        why=f"{why}; this server starts {rate} joins a second at most: "
                        f"this one's turn is in {wait} ms",
                        delay_ms=wait,
                    )
                )
                self._arm("pace", self._now + wait)
                return
        view = self.view
        generation = view.generation + 1
        identity = self._policy.identity(self._user, self._server)
        deadline = self._now + self._deadlines.join_ms
        self._decide_that(
            BridgeStarted(
                cause=self._cause,
                why=why,
                generation=generation,
                identity=identity,
                epoch=view.epoch,
                join_deadline_ms=deadline,
            )
        )
        self._arm("join", deadline)
        if self._checks_joins and self._deadlines.join_check_ms < self._deadlines.join_ms:
            self._arm("join_check", self._now + self._deadlines.join_check_ms)
        request = JoinRequest(
            room=self._user,
            identity=identity,
            server=self._server,
            epoch=view.epoch,
            generation=generation,
            phone_identity=self._user,
        )
        start = StartBridge(
            stream=self._stream,
            request=request,
            session=self.actor_ref,
            audio_open=self._audio_open(),
            watching=view.state == "ACTIVE",
        )
        self._bridge = None
        self._then(lambda: tell(self._supervisor, start))

    def _stop_bridge(self, why: str) -> None:
        view = self.view
        if view.generation == 0 or view.bridge == "down":
            return
        generation = view.generation
        self._decide_that(BridgeStopped(cause=self._cause, why=why, generation=generation))
        stop = StopBridge(stream=self._stream, generation=generation)
        self._then(lambda: tell(self._supervisor, stop))
        self._bridge = None

    @property
    def _checks_joins(self) -> bool:
        """Whether a join still in flight is looked at for being overtaken."""
        return self._policy.shared_log or self._policy.supervise_losses

    def _keep(self, why: str) -> None:
        self._decide_that(BridgeKept(cause=self._cause, why=why, generation=self.view.generation))

    def _decline(self, why: str) -> None:
        self._decide_that(RejoinDeclined(cause=self._cause, why=why))

    def _audio_open(self) -> bool:
        return not self._policy.audio_only_when_active or self.view.state == "ACTIVE"

    def _gate_audio(self, *, open_: bool) -> None:
        # Sent under every policy: a reconnect makes the bridge report its first audio (what
        # time-to-audio is measured from), and the watchdog watches only while glasses are here.
        gate = GateAudio(open=open_ or not self._policy.audio_only_when_active, watch=open_)
        self._then(lambda: tell(self._bridge, gate))

    def _disarm_join(self) -> None:
        if self._before is not None and self._before.join_deadline_ms is not None:
            self._disarm("join")
            if self._checks_joins:
                self._disarm("join_check")

    def _disarm(self, timer: TimerKind) -> None:
        disarm = Disarm(owner_key=self._stream, timer=timer)
        self._then(lambda: tell(self._timer, disarm))

    def _arm(self, timer: TimerKind, deadline: int) -> None:
        arm = Arm(owner_key=self._stream, timer=timer, deadline_ms=deadline, owner=self.actor_ref)
        self._then(lambda: tell(self._timer, arm))


def _observed(answer: LookupAnswer) -> IdentityHolderObserved:
    match answer:
        case IdentityHolder(server=server, epoch=epoch):
            return IdentityHolderObserved(holder_server=server, holder_epoch=epoch)
        case Nobody():
            return IdentityHolderObserved(holder_server=None, holder_epoch=None)
        case LookupFailed(error=error, permanent=permanent):
            return IdentityHolderObserved(
                holder_server=None, holder_epoch=None, error=error, permanent=permanent
            )


def _join_in_flight(view: SessionView, check_ms: int) -> bool:
    """Whether a `join_check` due at `check_ms` belongs to the join now in flight: one armed
    for an earlier join is due before this one began."""
    return (
        view.bridge == "joining"
        and view.last_start_ms is not None
        and view.join_deadline_ms is not None
        and view.last_start_ms < check_ms < view.join_deadline_ms
    )


def _describe(error: Exception) -> str:
    return f"{type(error).__name__}: {error}"

"""Session views: what a log says about each session, folded event by event.

The Session actor keeps its state as a `SessionView` and changes it only through `apply`, so the
view rebuilt from the log by `replay` equals the live state at every point.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Literal, TypeVar

import msgspec

from events.catalog import (
    OPERATOR_REASONS,
    AudioResumed,
    AudioStalled,
    BridgeDisconnected,
    BridgeJoined,
    BridgeJoinFailed,
    BridgeReconnected,
    BridgeReconnecting,
    BridgeStarted,
    BridgeStatusObserved,
    BridgeStatusRequested,
    BridgeStopped,
    DisconnectReason,
    Event,
    FirstAudio,
    GraceStarted,
    HealthChanged,
    HealthState,
    IdentityHolderObserved,
    IdentityHolderRequested,
    JoinPaced,
    LookupRetryDecided,
    PhoneAbsent,
    PhoneAwaited,
    PhonePresenceObserved,
    ProcessRestarted,
    RejoinDecided,
    RestartBudgetExhausted,
    RetriesStopped,
    SessionDisposed,
    SessionOpened,
    SessionResumed,
    TimerFired,
)
from events.envelope import Envelope

RESTART_HISTORY = 16
"""How many failure-driven restarts a view remembers; a restart budget's intensity fits in it."""

SessionState = Literal["ACTIVE", "GRACE", "DISPOSED"]
BridgePhase = Literal["down", "joining", "up"]


class Health(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """What the user is experiencing on a server while the glasses are connected to it.

    - `connecting`: the bridge is joining, or waiting to, or the first audio is on its way;
    - `ok`: the bridge is in the room and the phone's audio reaches it (or the phone is muted);
    - `audio_stalled`: the bridge is in the room, the phone too, and no audio arrives;
    - `phone_absent`: the phone has not been in the room for a while: its own connection is
      at fault, and the runtime waits for it rather than restart the bridge;
    - `unavailable`: the runtime stopped trying for now; `reason` says why, `retry_at_ms` when
      it tries again by itself (`None`: at the glasses' next reconnect).
    """

    state: HealthState
    reason: str | None = None
    retry_at_ms: int | None = None


class SessionView(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One session incarnation on one server, as its stream tells it."""

    stream: str
    server: str
    user: str
    incarnation: int
    version: int
    state: SessionState
    epoch: int
    time_ms: int
    generation: int = 0
    bridge: BridgePhase = "down"
    identity: str | None = None
    last_disconnect_reason: DisconnectReason | None = None
    grace_deadline_ms: int | None = None
    backoff_due_ms: int | None = None
    failure_restarts_ms: tuple[int, ...] = ()
    failure_streak: int = 0
    escalated_until_ms: int | None = None
    audio_since_join: bool = False
    awaiting_status: bool = False
    audio_held: bool = False
    last_start_ms: int | None = None
    join_deadline_ms: int | None = None
    lookup_deadline_ms: int | None = None
    lookup_retry_due_ms: int | None = None
    lookup_failures: int = 0
    """Room-service lookups in a row that could not say who holds the identity."""
    lookup_checks_join: int | None = None
    """The generation whose join, in flight, the latest lookup was asked about (`None`: it was
    asked about a bridge that was not joining)."""
    unavailable: str | None = None
    """Why retries stopped after a permanent error, until a join or a lookup succeeds."""
    stalled_ms: int | None = None
    """When the current bridge reported a stall that has not ended."""
    stalls_without_audio: int = 0
    """Stalls reported since audio was last heard (or the glasses last connected): restarts
    that did not bring audio back."""
    phone_present: bool | None = None
    phone_muted: bool = False
    phone_due_ms: int | None = None
    """When a phone missing from the room is reported absent."""
    phone_absent: bool = False
    reconnecting: bool = False
    """The current bridge's SDK is resuming its connection."""
    health: Health | None = None
    """What the host was last told; `None` while the glasses are away."""


STATE_AFTER: dict[type[Event], SessionState] = {
    SessionOpened: "ACTIVE",
    SessionResumed: "ACTIVE",
    GraceStarted: "GRACE",
    SessionDisposed: "DISPOSED",
}
"""The events that set a session's state, and the state each sets; no other event changes it.
Whoever follows sessions' states from the log (the service's metrics) reads them here."""


def apply(view: SessionView | None, envelope: Envelope) -> SessionView | None:
    """The view after `envelope`; `None` until the stream's `SessionOpened`."""
    if view is None:
        return _opened(envelope)
    change = _CHANGES.get(type(envelope.event))
    if change is not None:
        view = change(view, envelope.event, envelope.time_ms)
    return _replace(view, version=envelope.version, time_ms=envelope.time_ms)


def _opened(envelope: Envelope) -> SessionView | None:
    """The view `envelope` opens, if it is a `SessionOpened`."""
    event = envelope.event
    if not isinstance(event, SessionOpened):
        return None
    return SessionView(
        stream=envelope.stream,
        server=envelope.server,
        user=envelope.user,
        incarnation=event.incarnation,
        version=envelope.version,
        state=STATE_AFTER[SessionOpened],
        epoch=event.epoch,
        time_ms=envelope.time_ms,
    )


_replace = msgspec.structs.replace

Change = Callable[[SessionView, Any, int], SessionView]
"""What one type of event does to an open view: `change(view, event, time_ms)`, with the time
of the event's envelope; the view itself when the event changes nothing.

A change never reads the view's `version` or `time_ms`: every event sets those two, after its
change, so `replay` can set them once per stream rather than copy the view for each event."""

_CHANGES: dict[type[Event], Change] = {}
"""The change of each type of event; a type that is absent changes nothing. A lookup by type
picks it at once where a `match` would try the cases one by one."""

E = TypeVar("E", bound=Event)


def _changes(kind: type[E]) -> Callable[[Callable[[SessionView, E, int], SessionView]], Change]:
    """Register the decorated function as the change of events of type `kind`."""

    def register(change: Callable[[SessionView, E, int], SessionView]) -> Change:
        _CHANGES[kind] = change
        return change

    return register


@_changes(SessionResumed)
def _resumed(view: SessionView, event: SessionResumed, time_ms: int) -> SessionView:
    return _replace(
        view,
        state=STATE_AFTER[SessionResumed],
        epoch=event.epoch,
        grace_deadline_ms=None,
        audio_held=False,
        stalls_without_audio=0,
    )


@_changes(GraceStarted)
def _grace(view: SessionView, event: GraceStarted, time_ms: int) -> SessionView:
    return _replace(
        view,
        state=STATE_AFTER[GraceStarted],
        grace_deadline_ms=event.deadline_ms,
        audio_held=event.audio_held,
        phone_due_ms=None,
        phone_absent=False,
        health=None,
        # The bridge watches only while the glasses are here; it starts afresh on their return.
        stalled_ms=None,
    )


@_changes(SessionDisposed)
def _disposed(view: SessionView, event: SessionDisposed, time_ms: int) -> SessionView:
    return _replace(
        view,
        state=STATE_AFTER[SessionDisposed],
        health=None,
        phone_due_ms=None,
        bridge="down",
        reconnecting=False,
        grace_deadline_ms=None,
        backoff_due_ms=None,
        escalated_until_ms=None,
        join_deadline_ms=None,
        lookup_deadline_ms=None,
        lookup_retry_due_ms=None,
    )


@_changes(BridgeStarted)
def _started(view: SessionView, event: BridgeStarted, time_ms: int) -> SessionView:
    return _replace(
        view,
        generation=event.generation,
        identity=event.identity,
        bridge="joining",
        last_start_ms=time_ms,
        awaiting_status=False,
        backoff_due_ms=None,
        escalated_until_ms=None,
        audio_since_join=False,
        join_deadline_ms=event.join_deadline_ms,
        lookup_retry_due_ms=None,
        stalled_ms=None,
        reconnecting=False,
    )


# The changes below that compare generations apply to the current bridge only: an event of a
# bridge the session has replaced since changes nothing.


@_changes(BridgeJoined)
def _joined(view: SessionView, event: BridgeJoined, time_ms: int) -> SessionView:
    if event.generation != view.generation:
        return view
    phone = _phone(present=event.phone_present, muted=event.phone_muted and event.phone_present)
    return _replace(view, bridge="up", join_deadline_ms=None, unavailable=None, **phone)


@_changes(BridgeJoinFailed)
def _join_failed(view: SessionView, event: BridgeJoinFailed, time_ms: int) -> SessionView:
    if event.generation != view.generation:
        return view
    return _replace(
        view,
        bridge="down",
        last_disconnect_reason="JOIN_FAILURE",
        awaiting_status=False,
        join_deadline_ms=None,
        stalled_ms=None,
        reconnecting=False,
    )


@_changes(BridgeDisconnected)
def _disconnected(view: SessionView, event: BridgeDisconnected, time_ms: int) -> SessionView:
    if event.generation != view.generation:
        return view
    return _replace(
        view,
        bridge="down",
        last_disconnect_reason=event.reason,
        awaiting_status=False,
        join_deadline_ms=None,
        stalled_ms=None,
        reconnecting=False,
    )


@_changes(AudioStalled)
def _stalled(view: SessionView, event: AudioStalled, time_ms: int) -> SessionView:
    if event.generation != view.generation:
        return view
    return _replace(view, stalled_ms=time_ms, stalls_without_audio=view.stalls_without_audio + 1)


@_changes(AudioResumed)
def _resumed_audio(view: SessionView, event: AudioResumed, time_ms: int) -> SessionView:
    if event.generation != view.generation:
        return view
    return _replace(view, stalled_ms=None, stalls_without_audio=0)


@_changes(PhonePresenceObserved)
def _presence(view: SessionView, event: PhonePresenceObserved, time_ms: int) -> SessionView:
    if event.generation != view.generation:
        return view
    return _replace(view, **_phone(present=event.present, muted=event.muted))


@_changes(BridgeReconnecting)
@_changes(BridgeReconnected)
def _resuming(
    view: SessionView, event: BridgeReconnecting | BridgeReconnected, time_ms: int
) -> SessionView:
    if event.generation != view.generation:
        return view
    return _replace(view, reconnecting=isinstance(event, BridgeReconnecting))


@_changes(BridgeStatusObserved)
def _status(view: SessionView, event: BridgeStatusObserved, time_ms: int) -> SessionView:
    if event.generation != view.generation:
        return view
    return _replace(view, awaiting_status=False)


@_changes(BridgeStopped)
def _stopped(view: SessionView, event: BridgeStopped, time_ms: int) -> SessionView:
    if event.generation != view.generation:
        return view
    return _replace(view, bridge="down", join_deadline_ms=None, stalled_ms=None, reconnecting=False)


@_changes(FirstAudio)
def _first_audio(view: SessionView, event: FirstAudio, time_ms: int) -> SessionView:
    if event.generation != view.generation:
        return view
    return _replace(
        view, audio_since_join=True, failure_streak=0, stalled_ms=None, stalls_without_audio=0
    )


@_changes(PhoneAwaited)
def _phone_awaited(view: SessionView, event: PhoneAwaited, time_ms: int) -> SessionView:
    return _replace(view, phone_due_ms=event.deadline_ms)


@_changes(PhoneAbsent)
def _phone_absent(view: SessionView, event: PhoneAbsent, time_ms: int) -> SessionView:
    return _replace(view, phone_absent=True)


@_changes(HealthChanged)
def _health(view: SessionView, event: HealthChanged, time_ms: int) -> SessionView:
    health = Health(state=event.state, reason=event.reason, retry_at_ms=event.retry_at_ms)
    return _replace(view, health=health)


@_changes(BridgeStatusRequested)
def _status_requested(view: SessionView, event: BridgeStatusRequested, time_ms: int) -> SessionView:
    return _replace(view, awaiting_status=True)


@_changes(IdentityHolderRequested)
def _lookup(view: SessionView, event: IdentityHolderRequested, time_ms: int) -> SessionView:
    # Only a join check asks while the bridge is joining.
    checks = view.generation if view.bridge == "joining" else None
    return _replace(
        view,
        lookup_deadline_ms=event.deadline_ms,
        lookup_retry_due_ms=None,
        lookup_checks_join=checks,
    )


@_changes(IdentityHolderObserved)
def _holder(view: SessionView, event: IdentityHolderObserved, time_ms: int) -> SessionView:
    if event.error is None:
        return _replace(view, lookup_deadline_ms=None, lookup_failures=0, unavailable=None)
    return _replace(view, lookup_deadline_ms=None, lookup_failures=view.lookup_failures + 1)


@_changes(LookupRetryDecided)
def _lookup_retry(view: SessionView, event: LookupRetryDecided, time_ms: int) -> SessionView:
    return _replace(view, lookup_retry_due_ms=time_ms + event.delay_ms)


@_changes(RetriesStopped)
def _retries_stopped(view: SessionView, event: RetriesStopped, time_ms: int) -> SessionView:
    return _replace(view, escalated_until_ms=event.retry_at_ms, unavailable=event.why)


@_changes(ProcessRestarted)
def _process_restarted(view: SessionView, event: ProcessRestarted, time_ms: int) -> SessionView:
    # The process that armed these deadlines is gone, and the glasses connection with it: the
    # next connection decides afresh.
    return _replace(
        view,
        bridge="down",
        backoff_due_ms=None,
        join_deadline_ms=None,
        lookup_deadline_ms=None,
        lookup_retry_due_ms=None,
        awaiting_status=False,
        stalled_ms=None,
        phone_due_ms=None,
        reconnecting=False,
    )


@_changes(RejoinDecided)
def _rejoin(view: SessionView, event: RejoinDecided, time_ms: int) -> SessionView:
    due = time_ms + event.delay_ms if event.delay_ms else None
    if not event.failure:
        return _replace(view, backoff_due_ms=due)
    return _replace(
        view,
        backoff_due_ms=due,
        failure_restarts_ms=(*view.failure_restarts_ms, time_ms)[-RESTART_HISTORY:],
        failure_streak=view.failure_streak + 1,
    )


@_changes(JoinPaced)
def _paced(view: SessionView, event: JoinPaced, time_ms: int) -> SessionView:
    # A start waiting for its turn is due like one waiting out a backoff.
    return _replace(view, backoff_due_ms=time_ms + event.delay_ms)


@_changes(RestartBudgetExhausted)
def _budget_spent(view: SessionView, event: RestartBudgetExhausted, time_ms: int) -> SessionView:
    return _replace(view, escalated_until_ms=event.retry_at_ms)


@_changes(TimerFired)
def _timer(view: SessionView, event: TimerFired, time_ms: int) -> SessionView:
    # A deadline changes the view only if it is the one the view holds: one that fired while it
    # was being re-armed is stale.
    timer, due = event.timer, event.deadline_ms
    if timer in ("backoff", "pace"):
        return _replace(view, backoff_due_ms=None) if due == view.backoff_due_ms else view
    if timer == "join":
        return _replace(view, join_deadline_ms=None) if due == view.join_deadline_ms else view
    if timer == "lookup":
        if due != view.lookup_deadline_ms:
            return view
        return _replace(view, lookup_deadline_ms=None, lookup_failures=view.lookup_failures + 1)
    if timer == "lookup_retry":
        if due != view.lookup_retry_due_ms:
            return view
        return _replace(view, lookup_retry_due_ms=None)
    if timer == "phone":
        return _replace(view, phone_due_ms=None) if due == view.phone_due_ms else view
    if timer == "cooldown":
        # The cool-down gives the budget back even if a reconnect retried meanwhile.
        return _replace(view, escalated_until_ms=None, failure_restarts_ms=(), failure_streak=0)
    return view


def _phone(*, present: bool, muted: bool) -> dict[str, bool | None]:
    """The fields of a view that say the phone is `present` (and `muted`) or absent."""
    if present:
        return {
            "phone_present": True,
            "phone_muted": muted,
            "phone_due_ms": None,
            "phone_absent": False,
        }
    return {"phone_present": False, "phone_muted": False}


def health_of(view: SessionView) -> Health | None:
    """The health the host should show for `view`; `None` while the glasses are away."""
    if view.state != "ACTIVE":
        return None
    if view.unavailable is not None:
        return Health(
            state="unavailable", reason=view.unavailable, retry_at_ms=view.escalated_until_ms
        )
    if view.escalated_until_ms is not None:
        return Health(
            state="unavailable",
            reason="the bridge failed too often: the restart budget is spent",
            retry_at_ms=view.escalated_until_ms,
        )
    pending = (
        view.backoff_due_ms is not None
        or view.lookup_deadline_ms is not None
        or view.lookup_retry_due_ms is not None
        or view.awaiting_status
    )
    if view.bridge == "down" and not pending:
        reason = view.last_disconnect_reason or "stopped"
        who = "an operator removed it" if reason in OPERATOR_REASONS else reason
        return Health(
            state="unavailable",
            reason=f"the bridge is not in the room ({who}); it returns when the glasses reconnect",
        )
    if view.reconnecting and view.bridge == "up":
        return Health(
            state="connecting", reason="the bridge lost its connection; the SDK is resuming it"
        )
    if view.phone_absent:
        return Health(state="phone_absent", reason="the phone has left the room")
    if view.stalled_ms is not None and view.bridge == "up":
        return Health(state="audio_stalled", reason="no audio reaches the bridge from the phone")
    if view.bridge == "up" and view.phone_muted:
        return Health(state="ok", reason="the phone is muted")
    if view.bridge == "up" and view.audio_since_join:
        return Health(state="ok", reason="the phone's audio reaches the bridge")
    if view.bridge == "up":
        return Health(state="connecting", reason="the bridge is in the room; audio is on its way")
    if view.bridge == "joining":
        return Health(state="connecting", reason="the bridge is joining the room")
    return Health(state="connecting", reason="the bridge is about to rejoin the room")


def replay_stream(envelopes: Iterable[Envelope]) -> SessionView | None:
    """The view one stream's events fold into; `None` before its `SessionOpened`."""
    view: SessionView | None = None
    for envelope in envelopes:
        view = apply(view, envelope)
    return view


def replay(envelopes: Iterable[Envelope]) -> dict[str, SessionView]:
    """Fold a log into the latest view of each stream that opened a session: the views `apply`
    gives, event by event."""
    views: dict[str, SessionView] = {}
    # The latest envelope of each open stream: its version and time are set once, at the end.
    last: dict[str, Envelope] = {}
    changes = _CHANGES  # a local name is looked up faster than a global, once per event
    for envelope in envelopes:
        stream = envelope.stream
        view = views.get(stream)
        if view is None:
            opened = _opened(envelope)
            if opened is not None:
                views[stream] = opened
            continue
        change = changes.get(type(envelope.event))
        if change is not None:
            views[stream] = change(view, envelope.event, envelope.time_ms)
        last[stream] = envelope
    for stream, envelope in last.items():
        views[stream] = _replace(views[stream], version=envelope.version, time_ms=envelope.time_ms)
    return views

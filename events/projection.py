"""Session views: what a log says about each session, folded event by event.

The Session actor keeps its state as a `SessionView` and changes it only through `apply`, so the
view rebuilt from the log by `replay` equals the live state at every point.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import msgspec

from events.catalog import (
    OPERATOR_REASONS,
    AudioResumed,
    AudioStalled,
    BridgeDisconnected,
    BridgeJoined,
    BridgeJoinFailed,
    BridgeStarted,
    BridgeStatusObserved,
    BridgeStatusRequested,
    BridgeStopped,
    DisconnectReason,
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
    health: Health | None = None
    """What the host was last told; `None` while the glasses are away."""


def apply(view: SessionView | None, envelope: Envelope) -> SessionView | None:
    """The view after `envelope`; `None` until the stream's `SessionOpened`."""
    event = envelope.event
    if view is None:
        if not isinstance(event, SessionOpened):
            return None
        return SessionView(
            stream=envelope.stream,
            server=envelope.server,
            user=envelope.user,
            incarnation=event.incarnation,
            version=envelope.version,
            state="ACTIVE",
            epoch=event.epoch,
            time_ms=envelope.time_ms,
        )
    view = msgspec.structs.replace(view, version=envelope.version, time_ms=envelope.time_ms)
    current = getattr(event, "generation", None) == view.generation
    replace = msgspec.structs.replace
    match event:
        case SessionResumed(epoch=epoch):
            return replace(
                view,
                state="ACTIVE",
                epoch=epoch,
                grace_deadline_ms=None,
                audio_held=False,
                stalls_without_audio=0,
            )
        case GraceStarted(deadline_ms=deadline, audio_held=held):
            return replace(
                view,
                state="GRACE",
                grace_deadline_ms=deadline,
                audio_held=held,
                phone_due_ms=None,
                phone_absent=False,
                health=None,
                # The bridge watches only while the glasses are here; it starts afresh on
                # their return.
                stalled_ms=None,
            )
        case SessionDisposed():
            return replace(
                view,
                state="DISPOSED",
                health=None,
                phone_due_ms=None,
                bridge="down",
                grace_deadline_ms=None,
                backoff_due_ms=None,
                escalated_until_ms=None,
                join_deadline_ms=None,
                lookup_deadline_ms=None,
                lookup_retry_due_ms=None,
            )
        case BridgeStarted(generation=generation, identity=identity, join_deadline_ms=deadline):
            return replace(
                view,
                generation=generation,
                identity=identity,
                bridge="joining",
                last_start_ms=envelope.time_ms,
                awaiting_status=False,
                backoff_due_ms=None,
                escalated_until_ms=None,
                audio_since_join=False,
                join_deadline_ms=deadline,
                lookup_retry_due_ms=None,
                stalled_ms=None,
            )
        case BridgeJoined(phone_present=phone, phone_muted=muted) if current:
            return _phone(
                replace(view, bridge="up", join_deadline_ms=None, unavailable=None),
                present=phone,
                muted=muted and phone,
            )
        case BridgeJoinFailed() if current:
            return replace(
                view,
                bridge="down",
                last_disconnect_reason="JOIN_FAILURE",
                awaiting_status=False,
                join_deadline_ms=None,
                stalled_ms=None,
            )
        case BridgeDisconnected(reason=reason) if current:
            return replace(
                view,
                bridge="down",
                last_disconnect_reason=reason,
                awaiting_status=False,
                join_deadline_ms=None,
                stalled_ms=None,
            )
        case AudioStalled() if current:
            return replace(
                view,
                stalled_ms=envelope.time_ms,
                stalls_without_audio=view.stalls_without_audio + 1,
            )
        case AudioResumed() if current:
            return replace(view, stalled_ms=None, stalls_without_audio=0)
        case PhonePresenceObserved(present=present, muted=muted) if current:
            return _phone(view, present=present, muted=muted)
        case PhoneAwaited(deadline_ms=deadline):
            return replace(view, phone_due_ms=deadline)
        case PhoneAbsent():
            return replace(view, phone_absent=True)
        case HealthChanged(state=state, reason=reason, retry_at_ms=retry_at):
            return replace(view, health=Health(state=state, reason=reason, retry_at_ms=retry_at))
        case BridgeStatusRequested():
            return replace(view, awaiting_status=True)
        case BridgeStatusObserved() if current:
            return replace(view, awaiting_status=False)
        case BridgeStopped() if current:
            return replace(view, bridge="down", join_deadline_ms=None, stalled_ms=None)
        case IdentityHolderRequested(deadline_ms=deadline):
            return replace(view, lookup_deadline_ms=deadline, lookup_retry_due_ms=None)
        case IdentityHolderObserved(error=None):
            return replace(view, lookup_deadline_ms=None, lookup_failures=0, unavailable=None)
        case IdentityHolderObserved():
            return replace(view, lookup_deadline_ms=None, lookup_failures=view.lookup_failures + 1)
        case LookupRetryDecided(delay_ms=delay):
            return replace(view, lookup_retry_due_ms=envelope.time_ms + delay)
        case RetriesStopped(retry_at_ms=retry_at, why=why):
            return replace(view, escalated_until_ms=retry_at, unavailable=why)
        case FirstAudio() if current:
            return replace(
                view,
                audio_since_join=True,
                failure_streak=0,
                stalled_ms=None,
                stalls_without_audio=0,
            )
        case ProcessRestarted():
            # The process that armed these deadlines is gone, and the glasses connection with
            # it: the next connection decides afresh.
            return replace(
                view,
                bridge="down",
                backoff_due_ms=None,
                join_deadline_ms=None,
                lookup_deadline_ms=None,
                lookup_retry_due_ms=None,
                awaiting_status=False,
                stalled_ms=None,
                phone_due_ms=None,
            )
        case RejoinDecided(delay_ms=delay, failure=True):
            return replace(
                view,
                backoff_due_ms=envelope.time_ms + delay if delay else None,
                failure_restarts_ms=(*view.failure_restarts_ms, envelope.time_ms)[
                    -RESTART_HISTORY:
                ],
                failure_streak=view.failure_streak + 1,
            )
        case RejoinDecided(delay_ms=delay):
            return replace(view, backoff_due_ms=envelope.time_ms + delay if delay else None)
        case JoinPaced(delay_ms=delay):
            # A start waiting for its turn is due like one waiting out a backoff.
            return replace(view, backoff_due_ms=envelope.time_ms + delay)
        case RestartBudgetExhausted(retry_at_ms=retry_at):
            return replace(view, escalated_until_ms=retry_at)
        # A deadline changes the view only if it is the one the view holds: one that fired
        # while it was being re-armed is stale.
        case TimerFired(timer="backoff" | "pace", deadline_ms=due) if due == view.backoff_due_ms:
            return replace(view, backoff_due_ms=None)
        case TimerFired(timer="join", deadline_ms=due) if due == view.join_deadline_ms:
            return replace(view, join_deadline_ms=None)
        case TimerFired(timer="lookup", deadline_ms=due) if due == view.lookup_deadline_ms:
            return replace(view, lookup_deadline_ms=None, lookup_failures=view.lookup_failures + 1)
        case TimerFired(timer="lookup_retry", deadline_ms=due) if due == view.lookup_retry_due_ms:
            return replace(view, lookup_retry_due_ms=None)
        case TimerFired(timer="phone", deadline_ms=due) if due == view.phone_due_ms:
            return replace(view, phone_due_ms=None)
        case TimerFired(timer="cooldown"):
            # The cool-down gives the budget back even if a reconnect retried meanwhile.
            return replace(view, escalated_until_ms=None, failure_restarts_ms=(), failure_streak=0)
    return view


def _phone(view: SessionView, *, present: bool, muted: bool) -> SessionView:
    if present:
        return msgspec.structs.replace(
            view, phone_present=True, phone_muted=muted, phone_due_ms=None, phone_absent=False
        )
    return msgspec.structs.replace(view, phone_present=False, phone_muted=False)


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
    """Fold a log into the latest view of each stream that opened a session."""
    views: dict[str, SessionView] = {}
    for envelope in envelopes:
        view = apply(views.get(envelope.stream), envelope)
        if view is not None:
            views[envelope.stream] = view
    return views

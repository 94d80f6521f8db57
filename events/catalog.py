"""The event catalog: every fact a session's log can hold.

Events are frozen msgspec structs in one tagged union (the tag is the class name, in the field
`type`). Inputs record what happened to a session; decisions record what the session did about it,
with a `why` a person can read and the `cause`: the id of the input event that led to it.

Schema evolution: a new field needs a default; renaming or retyping a field needs an upcaster in
`events.codec` and a bump of `SCHEMA_VERSION`. Old logs must keep decoding.
"""

from __future__ import annotations

from typing import Literal

import msgspec

SCHEMA_VERSION = 1

DisconnectReason = Literal[
    "UNKNOWN_REASON",
    "CLIENT_INITIATED",
    "DUPLICATE_IDENTITY",
    "SERVER_SHUTDOWN",
    "PARTICIPANT_REMOVED",
    "ROOM_DELETED",
    "STATE_MISMATCH",
    "JOIN_FAILURE",
    "MIGRATION",
    "SIGNAL_CLOSE",
    "ROOM_CLOSED",
    "USER_UNAVAILABLE",
    "USER_REJECTED",
    "SIP_TRUNK_FAILURE",
    "CONNECTION_TIMEOUT",
    "MEDIA_FAILURE",
    "AGENT_ERROR",
]
"""LiveKit's `DisconnectReason` names, kept as strings so a log outlives the SDK's numbering."""

OPERATOR_REASONS: frozenset[DisconnectReason] = frozenset(
    {"PARTICIPANT_REMOVED", "ROOM_DELETED", "ROOM_CLOSED"}
)
"""Losses an operator caused: the bridge stays down until the user reconnects."""

TimerKind = Literal[
    "grace",
    "backoff",
    "cooldown",
    "join",
    "join_check",
    "lookup",
    "lookup_retry",
    "phone",
    "pace",
]
"""`join` and `lookup` are deadlines for a connector's answer; `join_check` is when a join
still in flight is looked at for being overtaken (in the log a fleet shares, or in the room
service); `lookup_retry` asks again; `phone` is when a phone missing from the room is
reported absent; `pace` is a join's turn at the server's join limiter."""

HealthState = Literal["connecting", "ok", "audio_stalled", "phone_absent", "unavailable"]
"""What the user is experiencing on a server, as the host is told it (see `events.health`)."""


class Event(msgspec.Struct, frozen=True, kw_only=True, gc=False, tag_field="type", tag=True):
    """Base of every event.

    Events, envelopes and views hold only immutable values, so they can never be part of a
    reference cycle: `gc=False` keeps them out of the cyclic collector, whose full passes over
    millions of them were most of the cost of a run with 10,000 users.
    """


class Input(Event, frozen=True, kw_only=True):
    """A fact from outside the session: the glasses, the bridge's room, or a timer."""


class Decision(Event, frozen=True, kw_only=True):
    """What the session decided, why, and which input event caused it."""

    cause: str
    why: str


# Inputs


class GlassesConnected(Input, frozen=True, kw_only=True):
    epoch: int


class GlassesDisconnected(Input, frozen=True, kw_only=True):
    pass


class BridgeJoined(Input, frozen=True, kw_only=True):
    generation: int
    participant_sid: str
    participant_count: int
    phone_present: bool
    phone_muted: bool = False
    """The phone was in the room with its microphone muted: nothing to hear, nothing amiss."""


class BridgeJoinFailed(Input, frozen=True, kw_only=True):
    generation: int
    error: str
    permanent: bool = False
    """Trying again cannot help (credentials refused, a malformed URL)."""


class BridgeDisconnected(Input, frozen=True, kw_only=True):
    generation: int
    reason: DisconnectReason


class FirstAudio(Input, frozen=True, kw_only=True):
    """The first audio chunk a bridge handed to the server after its join or a reconnect."""

    generation: int


class BridgeStatusObserved(Input, frozen=True, kw_only=True):
    """The bridge's answer to a status request."""

    generation: int
    connected: bool
    phone_present: bool
    last_disconnect_reason: DisconnectReason | None = None
    lost_chunks: int = 0
    """Audio chunks missing from the phone's sequence since the join (lossy channel)."""


class AudioStalled(Input, frozen=True, kw_only=True):
    """The bridge's watchdog: while the glasses are connected, the bridge in the room and the
    phone present and not muted, no chunk of the phone's reached the bridge for `silent_ms`."""

    generation: int
    last_chunk_ms: int | None
    """When the last chunk arrived (wall-clock); `None`: none since the watch began."""
    silent_ms: int


class AudioResumed(Input, frozen=True, kw_only=True):
    """A chunk reached a bridge that had reported a stall, `silent_ms` after the one before."""

    generation: int
    silent_ms: int


class PhonePresenceObserved(Input, frozen=True, kw_only=True):
    """The phone joined (`present`) or left the room, or muted or unmuted its microphone, as
    the bridge saw it."""

    generation: int
    present: bool
    muted: bool = False


class BridgeReconnecting(Input, frozen=True, kw_only=True):
    """The bridge's SDK lost its connection to the room and is resuming it on its own. Recorded
    so that a replay shows the resume, and the host is told `connecting`: a second join now
    would race the resume, so the session leaves it to the SDK and to the audio watch, which
    goes on counting the silence (a resume can leave the data path dead: livekit/agents#4028)."""

    generation: int


class BridgeReconnected(Input, frozen=True, kw_only=True):
    """The bridge's SDK resumed its connection; whether audio came back with it is the audio
    watch's to judge."""

    generation: int


class BridgeTokenRefreshed(Input, frozen=True, kw_only=True):
    """The server handed the bridge's SDK a fresh token, which its next resume uses: without
    one, a resume after the join token's expiry fails. The token itself is never recorded."""

    generation: int
    expires_ms: int | None = None
    """When the new token expires (wall-clock), if it says."""


class IdentityHolderObserved(Input, frozen=True, kw_only=True):
    """Who holds the bridge identity in the room now, as the room service reports it: a holder,
    nobody (no holder, no error), or, with `error`, that the service could not say."""

    holder_server: str | None
    holder_epoch: int | None
    error: str | None = None
    permanent: bool = False


class TimerFired(Input, frozen=True, kw_only=True):
    timer: TimerKind
    deadline_ms: int


class RunStarted(Input, frozen=True, kw_only=True):
    """A simulated run began: what it ran, so a replay can name it and re-run it."""

    scenario: str
    """The scenario as a JSON document."""
    policy: str
    seed: int


class RunEnded(Input, frozen=True, kw_only=True):
    """A simulated run reached its end, at this envelope's time; a log without one was cut short."""


class SessionRestarted(Input, frozen=True, kw_only=True):
    """The session failed (its log refused an append, say) and was rebuilt from its stream;
    the input it failed on, and every one after it, follow."""

    error: str
    restarts: int
    """Restarts within the supervisor's period, this one included."""


class ProcessRestarted(Input, frozen=True, kw_only=True):
    """The server restarted; the bridge and the glasses connection did not survive it."""


# Decisions


class SessionOpened(Decision, frozen=True, kw_only=True):
    incarnation: int
    epoch: int


class SessionResumed(Decision, frozen=True, kw_only=True):
    epoch: int


class GraceStarted(Decision, frozen=True, kw_only=True):
    deadline_ms: int
    audio_held: bool = False
    """Whether the bridge stops handing audio to this server while the glasses are away."""


class BridgeStatusRequested(Decision, frozen=True, kw_only=True):
    generation: int


class IdentityHolderRequested(Decision, frozen=True, kw_only=True):
    deadline_ms: int | None = None
    """When no answer by then counts as the room service failing."""


class LookupRetryDecided(Decision, frozen=True, kw_only=True):
    """The room service could not say who holds the identity: ask it again after `delay_ms`."""

    delay_ms: int


class RetriesStopped(Decision, frozen=True, kw_only=True):
    """A permanent error: no retries until the glasses reconnect or `retry_at_ms`."""

    retry_at_ms: int


class PhoneAwaited(Decision, frozen=True, kw_only=True):
    """The phone is not in the room while the glasses are connected: it is reported absent at
    `deadline_ms` unless it comes back first."""

    deadline_ms: int


class PhoneAbsent(Decision, frozen=True, kw_only=True):
    """The phone stayed out of the room past its deadline: reported, never fixed by restarting
    the bridge (the phone's own connection is at fault)."""


class HealthChanged(Decision, frozen=True, kw_only=True):
    """What the host was told about the user's audio on this server, and when."""

    state: HealthState
    reason: str | None = None
    retry_at_ms: int | None = None
    """When the runtime tries again by itself (`unavailable` only; `None`: at a reconnect)."""


class BridgeKept(Decision, frozen=True, kw_only=True):
    generation: int


class RejoinDecided(Decision, frozen=True, kw_only=True):
    """The bridge will be (re)started after `delay_ms`."""

    delay_ms: int
    failure: bool


class RejoinDeclined(Decision, frozen=True, kw_only=True):
    """The bridge stays down; `why` says until when."""


class JoinPaced(Decision, frozen=True, kw_only=True):
    """The server's join limiter gave the bridge's start a turn `delay_ms` from now: the server
    spaces its joins so that a crowd of reconnects does not become a storm of refused joins."""

    delay_ms: int


class RestartBudgetExhausted(Decision, frozen=True, kw_only=True):
    retry_at_ms: int


class BridgeStarted(Decision, frozen=True, kw_only=True):
    generation: int
    identity: str
    epoch: int
    join_deadline_ms: int | None = None
    """When a join still in flight counts as failed."""


class BridgeStopped(Decision, frozen=True, kw_only=True):
    generation: int


class StaleInputIgnored(Decision, frozen=True, kw_only=True):
    pass


class SessionDisposed(Decision, frozen=True, kw_only=True):
    pass


class ConnectionRecorded(Decision, frozen=True, kw_only=True):
    """In a log the fleet shares, in the user's fleet stream (`events.fleet`): the glasses
    connected to this envelope's server with `epoch`. Every server reads these before it
    rejoins after a kick, to fence by epoch without asking the room service."""

    epoch: int


AnyEvent = (
    GlassesConnected
    | GlassesDisconnected
    | BridgeJoined
    | BridgeJoinFailed
    | BridgeDisconnected
    | FirstAudio
    | BridgeStatusObserved
    | AudioStalled
    | AudioResumed
    | PhonePresenceObserved
    | BridgeReconnecting
    | BridgeReconnected
    | BridgeTokenRefreshed
    | IdentityHolderObserved
    | TimerFired
    | RunStarted
    | RunEnded
    | SessionRestarted
    | ProcessRestarted
    | SessionOpened
    | SessionResumed
    | GraceStarted
    | BridgeStatusRequested
    | IdentityHolderRequested
    | LookupRetryDecided
    | RetriesStopped
    | PhoneAwaited
    | PhoneAbsent
    | HealthChanged
    | BridgeKept
    | RejoinDecided
    | RejoinDeclined
    | JoinPaced
    | RestartBudgetExhausted
    | BridgeStarted
    | BridgeStopped
    | StaleInputIgnored
    | SessionDisposed
    | ConnectionRecorded
)
"""The tagged union the codec decodes."""

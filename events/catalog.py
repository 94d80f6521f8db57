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

TimerKind = Literal["grace", "backoff", "cooldown", "join", "lookup", "lookup_retry"]
"""`join` and `lookup` are deadlines for a connector's answer; `lookup_retry` asks again."""


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag=True):
    """Base of every event."""


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


class BridgeKept(Decision, frozen=True, kw_only=True):
    generation: int


class RejoinDecided(Decision, frozen=True, kw_only=True):
    """The bridge will be (re)started after `delay_ms`."""

    delay_ms: int
    failure: bool


class RejoinDeclined(Decision, frozen=True, kw_only=True):
    """The bridge stays down; `why` says until when."""


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


AnyEvent = (
    GlassesConnected
    | GlassesDisconnected
    | BridgeJoined
    | BridgeJoinFailed
    | BridgeDisconnected
    | FirstAudio
    | BridgeStatusObserved
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
    | BridgeKept
    | RejoinDecided
    | RejoinDeclined
    | RestartBudgetExhausted
    | BridgeStarted
    | BridgeStopped
    | StaleInputIgnored
    | SessionDisposed
)
"""The tagged union the codec decodes."""

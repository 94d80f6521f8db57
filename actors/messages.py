"""Messages between actors that are not events. Inputs (`events.catalog.Input`) travel as
messages too: an actor that receives one records it as it came."""

from __future__ import annotations

from typing import Any

import msgspec
import pykka

from actors.acknowledgement import Acknowledgement
from actors.connector import JoinRequest
from events.catalog import GlassesConnected, GlassesDisconnected
from events.log import Outcome
from events.projection import SessionView

GlassesInput = GlassesConnected | GlassesDisconnected


class ForUser(msgspec.Struct, frozen=True, kw_only=True):
    """A glasses input for the session of `user`, routed by the supervisor; a session that was
    disposed meanwhile hands it back, for a new incarnation."""

    user: str
    event: GlassesInput
    ack: Acknowledgement | None = None


class SessionEnded(msgspec.Struct, frozen=True, kw_only=True):
    user: str
    final: SessionView


class StreamTaken(msgspec.Struct, frozen=True, kw_only=True):
    """The stream a new session of `user` was to open holds records but no session (a log
    whose index lost it, or forged): the session gives it up and hands its inputs back, for
    the next incarnation."""

    user: str
    stream: str


class SessionFailed(msgspec.Struct, frozen=True, kw_only=True):
    """A session's turn failed: it keeps its messages and waits for `RestartSession`."""

    user: str
    stream: str
    error: str


class Persisted(msgspec.Struct, frozen=True, kw_only=True):
    """The journal wrote a session's batch (`outcome`: its envelopes as stored) or refused it
    (`outcome`: the error `append` would have raised)."""

    outcome: Outcome


class RestartSession(msgspec.Struct, frozen=True, kw_only=True):
    """Rebuild from the log and go on; `bridge` is the session's live bridge, if any."""

    error: str
    restarts: int
    bridge: tuple[int, pykka.ActorRef[Any]] | None


class StartBridge(msgspec.Struct, frozen=True, kw_only=True):
    stream: str
    request: JoinRequest
    session: pykka.ActorRef[Any]
    audio_open: bool
    watching: bool


class StopBridge(msgspec.Struct, frozen=True, kw_only=True):
    stream: str
    generation: int


class BridgeAttached(msgspec.Struct, frozen=True, kw_only=True):
    generation: int
    bridge: pykka.ActorRef[Any]


class BridgeExited(msgspec.Struct, frozen=True, kw_only=True):
    stream: str
    generation: int


class StatusRequest(msgspec.Struct, frozen=True, kw_only=True):
    generation: int


class GateAudio(msgspec.Struct, frozen=True, kw_only=True):
    """`open`: hand the phone's audio to this server; `watch`: the glasses are connected here,
    so a silence is a stall."""

    open: bool
    watch: bool


class ReportQuery(msgspec.Struct, frozen=True, kw_only=True):
    """Ask a bridge for its `BridgeReport`."""


class BridgeQuery(msgspec.Struct, frozen=True, kw_only=True):
    """Ask the supervisor for the live bridge of `stream`: `(generation, actor)` or `None`."""

    stream: str


class ViewQuery(msgspec.Struct, frozen=True, kw_only=True):
    """Ask a session for its view."""


class SessionQuery(msgspec.Struct, frozen=True, kw_only=True):
    """Ask the supervisor for the session actor of `user` (or `None`)."""

    user: str


class TreeQuery(msgspec.Struct, frozen=True, kw_only=True):
    """Ask the supervisor for its children: see `Tree`."""


class Tree(msgspec.Struct, frozen=True, kw_only=True):
    sessions: dict[str, pykka.ActorRef[Any]]
    ended: dict[str, SessionView]
    bridges: dict[str, tuple[int, pykka.ActorRef[Any]]]
    """Live bridge actors: stream to generation and actor."""


class Shutdown(msgspec.Struct, frozen=True, kw_only=True):
    """Hand over every child to stop; the supervisor routes nothing afterwards."""

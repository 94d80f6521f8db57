"""The seed's success metrics (DESIGN section 6), computed from event logs alone.

A live run and a replay of its log call the same function on the same events, so they report the
same numbers. Where the glasses were comes from the `GlassesConnected` and `GlassesDisconnected`
inputs of every server; audio comes from `FirstAudio`, which a bridge reports for the first chunk
it hands to its server after a join or a reconnect.

Stalls come from the bridges' watchdogs: `AudioStalled` says when the silence began and when it
was noticed; the stall ends at the next `AudioResumed` or `FirstAudio` of the session (after a
restart, the new bridge's first audio), or when the glasses leave that server.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Sequence

import msgspec

from events.catalog import (
    AudioResumed,
    AudioStalled,
    BridgeDisconnected,
    BridgeJoined,
    BridgeStarted,
    FirstAudio,
    GlassesConnected,
    GlassesDisconnected,
)
from events.envelope import Envelope
from events.log import EventStore
from events.projection import SessionView, apply

RUN_STREAM = "run"
"""The stream that records a run itself (scenario, policy, seed); no server's."""

AUDIO_WITHIN_MS = 5_000
"""A reconnect or a switch succeeds when audio reaches the server within this time."""


class Distribution(msgspec.Struct, frozen=True, kw_only=True):
    count: int
    p50: float | None
    p99: float | None
    max: float | None


class Metrics(msgspec.Struct, frozen=True, kw_only=True):
    reconnect_in_grace_audio_ratio: float | None
    switch_success_ratio: float | None
    time_to_audio_ms: Distribution
    zombie_bridges: int
    misrouted_audio_ms: int
    kicks: int
    bridge_joins: int
    rejoins: int
    stalls: int
    """Silences a bridge's watchdog reported while the glasses were connected."""
    stall_detection_ms: Distribution
    """From the last chunk (or the start of the watch) to the stall's report."""
    stall_recovery_ms: Distribution
    """From the stall's report to audio again, for the stalls that ended while connected."""
    audio_gap_ms: int
    """Time without audio while connected, over every stall: from its silence's start to audio
    again, the glasses leaving, or the end of the run."""


class _Counts(msgspec.Struct, kw_only=True):
    kicks: int = 0
    joins: int = 0
    rejoins: int = 0
    misrouted_ms: int = 0
    detections: list[int] = msgspec.field(default_factory=list)
    recoveries: list[int] = msgspec.field(default_factory=list)
    gap_ms: int = 0


class _Stall(msgspec.Struct, kw_only=True):
    silent_since_ms: int
    noticed_ms: int


class _Connection(msgspec.Struct, kw_only=True):
    user: str
    server: str
    start_ms: int
    end_ms: int | None = None
    in_grace: bool = False
    switch: bool = False
    first_audio_ms: int | None = None


def server_events(stores: Iterable[EventStore]) -> list[Envelope]:
    """Every server's events in these stores, a store shared by several servers read once,
    without the run's own record."""
    distinct = {id(store): store for store in stores}
    return [e for store in distinct.values() for e in store.read_all() if e.stream != RUN_STREAM]


def canonical_order(envelopes: Iterable[Envelope]) -> list[Envelope]:
    """Several servers' logs merged in time order, each server's own order kept; at one instant
    a turn caused by a disconnect comes before one caused by a connect, as glasses leave one
    server before they reach the next. The result does not depend on how the logs were stored."""
    by_server: dict[str, list[Envelope]] = {}
    inputs: dict[str, type] = {}
    for envelope in envelopes:
        by_server.setdefault(envelope.server, []).append(envelope)
        inputs[envelope.event_id] = type(envelope.event)

    def key(envelope: Envelope) -> tuple[int, int, str]:
        cause = getattr(envelope.event, "cause", envelope.event_id)
        turn = inputs.get(cause)
        rank = 0 if turn is GlassesDisconnected else 2 if turn is GlassesConnected else 1
        return (envelope.time_ms, rank, envelope.server)

    logs = [sorted(log, key=lambda e: e.position) for _, log in sorted(by_server.items())]
    return list(heapq.merge(*logs, key=key))


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """The value at `fraction` (0-1] of `sorted_values`, ascending and not empty: the nearest
    rank, so p99 of 100 values is the 99th."""
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return float(sorted_values[rank - 1])


def compute(envelopes: Iterable[Envelope], *, end_ms: int | None = None) -> Metrics:
    ordered = canonical_order(envelopes)
    views: dict[str, SessionView] = {}
    connections: list[_Connection] = []
    current: dict[str, _Connection] = {}
    newest_epoch: dict[str, int] = {}
    last_server: dict[str, str] = {}
    misrouting = _Misrouting()
    stalls: dict[str, _Stall] = {}
    counts = _Counts()
    for envelope in ordered:
        event = envelope.event
        before = views.get(envelope.stream)
        view = apply(before, envelope)
        if view is not None:
            views[envelope.stream] = view
        user, server, now = envelope.user, envelope.server, envelope.time_ms
        connection_before = current.get(user)
        match event:
            case GlassesConnected(epoch=epoch) if epoch < newest_epoch.get(user, epoch):
                # A live server stamps a connection when it takes it, so one the glasses had
                # left for a newer connection (a higher epoch) can be stamped after it: it
                # ended before it began here, and is no evidence either way.
                connections.append(_Connection(user=user, server=server, start_ms=now, end_ms=now))
            case GlassesConnected(epoch=epoch):
                connection = _Connection(
                    user=user,
                    server=server,
                    start_ms=now,
                    in_grace=before is not None and before.state == "GRACE",
                    switch=last_server.get(user, server) != server,
                )
                connections.append(connection)
                current[user] = connection
                newest_epoch[user] = epoch
                last_server[user] = server
            case GlassesDisconnected():
                connection_now = current.get(user)
                if connection_now is not None and connection_now.server == server:
                    connection_now.end_ms = now
                    del current[user]
                _end_stall(stalls, envelope.stream, now, counts, recovered=False)
            case AudioStalled(silent_ms=silent) if _connected_here(current, user, server):
                stalls[envelope.stream] = _Stall(silent_since_ms=now - silent, noticed_ms=now)
                counts.detections.append(silent)
            case AudioResumed() if before is not None and event.generation == before.generation:
                _end_stall(stalls, envelope.stream, now, counts, recovered=True)
            case FirstAudio() if before is not None and event.generation == before.generation:
                _end_stall(stalls, envelope.stream, now, counts, recovered=True)
                connection_now = current.get(user)
                if (
                    connection_now is not None
                    and connection_now.server == server
                    and connection_now.first_audio_ms is None
                ):
                    connection_now.first_audio_ms = now
            case BridgeDisconnected(reason="DUPLICATE_IDENTITY"):
                counts.kicks += 1
            case BridgeJoined():
                counts.joins += 1
            case BridgeStarted(generation=generation) if generation > 1:
                counts.rejoins += 1
        counts.misrouted_ms += misrouting.after(
            envelope, views, current, reconnected=current.get(user) is not connection_before
        )
    if end_ms is not None:
        _end_run(end_ms, stalls, misrouting, counts)
    return _summarise(connections, views, counts, end_ms)


def _connected_here(current: dict[str, _Connection], user: str, server: str) -> bool:
    connection = current.get(user)
    return connection is not None and connection.server == server


def _end_run(
    end_ms: int, stalls: dict[str, _Stall], misrouting: _Misrouting, counts: _Counts
) -> None:
    """Count what is still going on when the run ends as lasting until its end."""
    for stream in list(stalls):
        _end_stall(stalls, stream, end_ms, counts, recovered=False)
    counts.misrouted_ms += misrouting.close(end_ms)


def _end_stall(
    stalls: dict[str, _Stall], stream: str, now: int, counts: _Counts, *, recovered: bool
) -> None:
    stall = stalls.pop(stream, None)
    if stall is None:
        return
    counts.gap_ms += now - stall.silent_since_ms
    if recovered:
        counts.recoveries.append(now - stall.noticed_ms)


class _Misrouting:
    """The intervals in which a bridge in its grace period hands audio to a server the glasses
    left for another one. Whether a stream misroutes changes only with its own view or with
    its user's connection, so only the streams an event can change are looked at: every stream
    of the log at every event made the replay of a long log quadratic."""

    def __init__(self) -> None:
        self._since: dict[str, int] = {}
        """When each stream's open interval began."""
        self._in_grace: dict[str, set[str]] = {}
        """Each user's streams whose session is in its grace period: the only ones that can
        misroute, and the only ones a change of the user's connection can change."""

    def after(
        self,
        envelope: Envelope,
        views: dict[str, SessionView],
        current: dict[str, _Connection],
        *,
        reconnected: bool,
    ) -> int:
        """Open or close the intervals `envelope` changes (`reconnected`: it changed its
        user's current connection); the milliseconds of the intervals it closed."""
        stream, now = envelope.stream, envelope.time_ms
        in_grace = self._in_grace.setdefault(envelope.user, set())
        view = views.get(stream)
        if view is not None and view.state == "GRACE":
            in_grace.add(stream)
        else:
            in_grace.discard(stream)
        closed = 0
        for changed in (in_grace | {stream}) if reconnected else (stream,):
            view = views.get(changed)
            if view is None:
                continue
            connection = current.get(view.user)
            misrouting = misroutes(view, None if connection is None else connection.server)
            if misrouting and changed not in self._since:
                self._since[changed] = now
            elif not misrouting and changed in self._since:
                closed += now - self._since.pop(changed)
        return closed

    def close(self, end_ms: int) -> int:
        """Close every interval still open when the run ends at `end_ms`; their milliseconds:
        a bridge that misroutes until the end misrouted all that time."""
        closed = sum(max(0, end_ms - since) for since in self._since.values())
        self._since.clear()
        return closed


def misroutes(view: SessionView, connected_to: str | None) -> bool:
    """Whether `view`'s bridge, its session in grace, hands the phone's audio to its server
    while the glasses are connected to another one (`connected_to`; `None`: to none)."""
    return (
        view.state == "GRACE"
        and not view.audio_held
        and view.bridge == "up"
        and connected_to is not None
        and connected_to != view.server
    )


def _summarise(
    connections: list[_Connection],
    views: dict[str, SessionView],
    counts: _Counts,
    end_ms: int | None,
) -> Metrics:
    def heard_in_time(connection: _Connection) -> bool:
        return (
            connection.first_audio_ms is not None
            and connection.first_audio_ms - connection.start_ms <= AUDIO_WITHIN_MS
        )

    def judged(connection: _Connection) -> bool:
        # A connection the glasses left before it had its chance is no evidence either way.
        end = connection.end_ms if connection.end_ms is not None else end_ms
        return (
            connection.first_audio_ms is not None
            or end is None
            or end - connection.start_ms >= AUDIO_WITHIN_MS
        )

    def ratio(selected: list[_Connection]) -> float | None:
        selected = [c for c in selected if judged(c)]
        if not selected:
            return None
        return sum(heard_in_time(c) for c in selected) / len(selected)

    delays = [c.first_audio_ms - c.start_ms for c in connections if c.first_audio_ms is not None]
    zombies = sum(
        1 for view in views.values() if view.state == "DISPOSED" and view.bridge != "down"
    )
    return Metrics(
        reconnect_in_grace_audio_ratio=ratio([c for c in connections if c.in_grace]),
        switch_success_ratio=ratio([c for c in connections if c.switch]),
        time_to_audio_ms=distribution(delays),
        zombie_bridges=zombies,
        misrouted_audio_ms=counts.misrouted_ms,
        kicks=counts.kicks,
        bridge_joins=counts.joins,
        rejoins=counts.rejoins,
        stalls=len(counts.detections),
        stall_detection_ms=distribution(counts.detections),
        stall_recovery_ms=distribution(counts.recoveries),
        audio_gap_ms=counts.gap_ms,
    )


def distribution(values: list[int]) -> Distribution:
    """Count, p50, p99 and max of `values` (all `None` but the count when there are none)."""
    ordered = sorted(values)
    return Distribution(
        count=len(ordered),
        p50=percentile(ordered, 0.5) if ordered else None,
        p99=percentile(ordered, 0.99) if ordered else None,
        max=float(ordered[-1]) if ordered else None,
    )


def max_in_any_second(times_ms: list[int]) -> int:
    """The most of `times_ms` (ascending) within any second: any `(t - 1000, t]`."""
    most = oldest = 0
    for newest, time_ms in enumerate(times_ms):
        while times_ms[oldest] <= time_ms - 1_000:
            oldest += 1
        most = max(most, newest - oldest + 1)
    return most

"""The invariants of DESIGN section 6, judged on a world after (or during) a run.

Each check returns a list of violations, one readable line each; an empty list means it holds.
"""

from __future__ import annotations

import bisect
import itertools
import weakref
from collections import defaultdict
from collections.abc import Iterator

import msgspec

from actors.bridge import AudioWatch
from actors.runtime import DEFAULT_AUDIO_WATCH
from actors.supervisor import SESSION_RESTARTS
from events.catalog import (
    AudioStalled,
    BridgeDisconnected,
    BridgeJoinFailed,
    BridgeKept,
    BridgeStarted,
    GlassesDisconnected,
    IdentityHolderObserved,
    JoinPaced,
    ProcessRestarted,
    RestartBudgetExhausted,
    SessionDisposed,
    SessionResumed,
)
from events.codec import encode_envelope
from events.envelope import Envelope
from events.log import EventStore
from events.projection import SessionView, apply, replay
from simulations.metrics import server_events
from simulations.sim_livekit import RESUME_GIVE_UP_MS
from simulations.world import World

LIVENESS_WINDOW_MS = 2_000


def fault_windows(world: World) -> list[tuple[int, int, str | None]]:
    """When each fault (and its aftermath) may keep audio away: `(start, end, user or None)`.

    The aftermath is what the policy allows itself after a fault: the longest backoff it may
    still be waiting out, plus a join. An operator's removal lasts until the user's next connect.
    A phone away is a fault no policy can fix; a dead data path or a stuck SDK is not one (the
    watchdog must see to them), so neither is here.
    """
    budget = world.policy.budget
    aftermath = int(budget.max_backoff_ms * (1 + budget.jitter)) + max(
        world.sfu.config.join_latency_ms
    )
    windows: list[tuple[int, int, str | None]] = []
    for fault in world.faults:
        if fault.kind == "outage":
            windows.append((fault.start_ms, fault.end_ms + RESUME_GIVE_UP_MS + aftermath, None))
        elif fault.kind == "signal_loss":
            windows.append(
                (fault.start_ms, fault.start_ms + RESUME_GIVE_UP_MS + aftermath, fault.user)
            )
        elif fault.kind == "unnoticed_close":
            windows.append((fault.start_ms, fault.end_ms + aftermath, fault.user))
        elif fault.kind in ("crash", "failover"):
            windows.append((fault.start_ms, fault.end_ms, None))
        elif fault.kind == "room_service_fault":
            # A kicked bridge waits for the room service to say who holds the identity.
            windows.append((fault.start_ms, fault.end_ms + aftermath, None))
        elif fault.kind in ("log_fault", "log_read_fault"):
            restart = int(SESSION_RESTARTS.max_backoff_ms * (1 + SESSION_RESTARTS.jitter))
            windows.append((fault.start_ms, fault.end_ms + restart + aftermath, None))
        elif fault.kind == "phone_leave":
            windows.append((fault.start_ms, fault.end_ms + aftermath, fault.user))
        elif fault.kind == "remove":
            later = [
                p.time_ms
                for p in world.presence
                if p.user == fault.user and p.time_ms > fault.start_ms and p.server is not None
            ]
            windows.append((fault.start_ms, min(later, default=world.now_ms) + 1, fault.user))
    return windows


def connections(world: World) -> Iterator[tuple[str, str, int, int]]:
    """Each time glasses stayed connected to one server: `(user, server, start, end)`, the
    last one ending now."""
    by_user = defaultdict(list)
    for presence in world.presence:
        by_user[presence.user].append(presence)
    for user, moves in by_user.items():
        for index, move in enumerate(moves):
            if move.server is not None:
                end = moves[index + 1].time_ms if index + 1 < len(moves) else world.now_ms
                yield user, move.server, move.time_ms, end


def _excused(windows: list[tuple[int, int, str | None]], user: str, start: int, end: int) -> bool:
    return any(
        f_start <= end and start <= f_end and f_user in (None, user)
        for f_start, f_end, f_user in windows
    )


def liveness(world: World, window_ms: int = LIVENESS_WINDOW_MS) -> list[str]:
    """Glasses connected to S for `window_ms` with no fault active means audio reached S;
    a join S paced (`JoinPaced`) has `window_ms` from its turn, also one paced before the
    glasses left and came back, whose turn they wait for."""
    faults = fault_windows(world)
    turns = _paced_turns(world)
    violations = []
    for user, server, start, end in connections(world):
        due = start + window_ms
        for decided, turn in turns.get((server, user), ()):
            if decided <= due and turn >= start:
                due = max(due, turn + window_ms)
        if end < due or _excused(faults, user, start, due):
            continue
        if not world.deliveries.heard(user, server, after_ms=start, until_ms=due):
            violations.append(
                f"liveness: {user} connected to {server} at {start} ms, no audio there by {due} ms"
            )
    return violations


def restart_allowance_ms(world: World, watch: AudioWatch = DEFAULT_AUDIO_WATCH) -> int:
    """The longest silence `supervised` allows itself before audio is back: the watchdog's
    threshold (noticed at the next chunk period), a room-service answer, the first backoff, a
    join, and the first chunk after it."""
    config, budget = world.sfu.config, world.policy.budget
    return (
        watch.stall_after_ms
        + config.audio_chunk_ms
        + max(config.lookup_latency_ms)
        + int(min(budget.max_backoff_ms, budget.min_backoff_ms) * (1 + budget.jitter))
        + max(config.join_latency_ms)
        + config.audio_chunk_ms
    )


def audio_gaps(world: World, watch: AudioWatch = DEFAULT_AUDIO_WATCH) -> list[str]:
    """While glasses stay connected to S and audio has reached S, it never stops for longer
    than the watchdog's threshold plus one restart, outside the faults no policy can fix
    (outages, a phone away, a log or room service that fails, an operator's removal) and a
    restart budget that ran out. A data path that dies, or an SDK stuck reconnecting, is no
    excuse: that is what the watchdog is for; one that dies again while the watchdog restarts
    the bridge is allowed one more restart."""
    allowed = restart_allowance_ms(world, watch)
    faults = fault_windows(world)
    gave_up = _budget_exhaustions(world)
    violations = []
    for user, server, start, end in connections(world):
        times = world.deliveries.times(user, server)
        heard = times[bisect.bisect_left(times, start) : bisect.bisect_right(times, end)]
        edges = list(itertools.pairwise(heard))
        if heard:
            edges.append((heard[-1], end))
        deaths = _data_path_deaths(world, user, server)
        for before, after in edges:
            # A data path that dies again during the silence (the restarted bridge's too)
            # gives the watchdog its allowance again, from that death.
            latest = max((t for t in deaths if before < t < after), default=before)
            if (
                after - latest <= allowed
                or _excused(faults, user, before, after)
                or any(before <= t <= after for t in gave_up.get((server, user), ()))
            ):
                continue
            violations.append(
                f"audio gap: {user} connected to {server} heard nothing from {before} ms "
                f"to {after} ms ({after - before} ms; allowed {allowed} ms)"
            )
    return violations


def _data_path_deaths(world: World, user: str, server: str) -> list[int]:
    """When the data path of `user`'s bridge on `server` died: a stall of the user's room, or
    the server's SDK stuck reconnecting."""
    return [
        fault.start_ms
        for fault in world.faults
        if (fault.kind == "audio_stall" and fault.user == user)
        or (fault.kind == "sdk_reconnecting" and fault.server == server)
    ]


def _budget_exhaustions(world: World) -> dict[tuple[str, str], list[int]]:
    """When each server gave up on each user's bridge for a while, in world time."""
    offset = world.wall_ms - world.now_ms
    found: dict[tuple[str, str], list[int]] = defaultdict(list)
    for envelope in server_events(world.stores.values()):
        if isinstance(envelope.event, RestartBudgetExhausted):
            found[(envelope.server, envelope.user)].append(envelope.time_ms - offset)
    return found


def _paced_turns(world: World) -> dict[tuple[str, str], list[tuple[int, int]]]:
    """When each server paced each user's join, and when its turn came: `(decided, turn)` in
    world time, in log order."""
    offset = world.wall_ms - world.now_ms
    found: dict[tuple[str, str], list[tuple[int, int]]] = defaultdict(list)
    for envelope in server_events(world.stores.values()):
        if isinstance(envelope.event, JoinPaced):
            decided = envelope.time_ms - offset
            found[(envelope.server, envelope.user)].append(
                (decided, decided + envelope.event.delay_ms)
            )
    return found


def kick_war(world: World) -> list[str]:
    """Kicks never exceed glasses connections plus injected faults."""
    allowed = world.connections + len(world.faults)
    if world.sfu.kicks > allowed:
        return [f"kick war: {world.sfu.kicks} kicks for {allowed} connections and faults"]
    return []


def zombies(world: World, logged: Logged | None = None) -> list[str]:
    """Nothing of a disposed session remains: no actor, participant, or timer; and no session
    stays ACTIVE on a server the glasses left (`_ghosts`).

    A participant orphaned by its process's death is not counted: LiveKit removes it once it
    notices (`DEPARTURE_DETECTION_MS`), a new join of the identity replaces it, and nothing
    else can remove it safely: RemoveParticipant names an identity, which every server's bridge
    of the user shares, so it could take a newer bridge that joined meanwhile."""
    logged = logged or all_logged_views(world)
    violations = []
    held = 0
    for server, runtime in world.runtimes.items():
        # The log knows every disposed session; the runtime forgets them after a while.
        views = logged[server]
        bridges = runtime.live_bridges()
        armed = {stream for stream, _ in runtime.armed_timers()}
        open_users = {v.user for v in views.values() if v.state != "DISPOSED"}
        held += len(runtime.actors())
        for user in {v.user for v in views.values()}:
            view = runtime.session(user)
            if view is not None and view.state == "DISPOSED":
                violations.append(f"zombie: the session actor of disposed {view.stream}")
        for view in views.values():
            if view.state != "DISPOSED":
                continue
            if view.stream in bridges:
                violations.append(f"zombie: bridge actor of disposed {view.stream}")
            if view.stream in armed:
                violations.append(f"zombie: timer armed for disposed {view.stream}")
            if view.user not in open_users:
                for participant in world.sfu.participants(view.user):
                    alive = participant.state not in ("gone", "orphaned")
                    if participant.server == server and alive:
                        violations.append(
                            f"zombie: {participant.identity} of {server} still in the room "
                            f"after {view.stream} was disposed"
                        )
    actors = world.executor.live_actors()
    if len(actors) != held:
        violations.append(f"zombie: {len(actors)} live actors, of which the runtimes hold {held}")
    return [*violations, *_ghosts(world)]


def _ghosts(world: World) -> list[str]:
    """Sessions still ACTIVE on a server the glasses left, whose bridges keep a place in the
    room for nobody: allowed only while the disconnect may be on its way, `LIVENESS_WINDOW_MS`
    after it, or after the end of a fault (and its aftermath) that it fell in."""
    faults = fault_windows(world)
    left: dict[tuple[str, str], int] = {}
    for user, server, _, end in connections(world):
        if world.where(user) != server:
            left[(user, server)] = end  # in time order: the last time they left wins
    violations = []
    for (user, server), left_ms in left.items():
        due = left_ms + LIVENESS_WINDOW_MS
        for f_start, f_end, f_user in faults:
            if f_start <= due and left_ms <= f_end and f_user in (None, user):
                due = max(due, f_end + LIVENESS_WINDOW_MS)
        if world.now_ms <= due:
            continue
        view = world.runtimes[server].session(user)
        if view is not None and view.state == "ACTIVE":
            violations.append(
                f"zombie: {view.stream} still ACTIVE at {world.now_ms} ms, the glasses having "
                f"left {server} at {left_ms} ms"
            )
    return violations


def grace_preserved(world: World) -> list[str]:
    """A blip shorter than grace on the same server never restarts a healthy bridge."""
    streams: dict[tuple[str, str], list[Envelope]] = defaultdict(list)
    for envelope in server_events(world.stores.values()):
        streams[(envelope.server, envelope.stream)].append(envelope)
    offset = world.wall_ms - world.now_ms
    violations = []
    for (server, stream), envelopes in streams.items():
        violations.extend(_blips_restarting_healthy_bridges(server, stream, envelopes, offset))
    return violations


def _blips_restarting_healthy_bridges(
    server: str, stream: str, envelopes: list[Envelope], offset: int
) -> list[str]:
    """The restarts of `stream`'s healthy bridge after a blip, named in world time (the log's
    wall-clock times less `offset`)."""
    view: SessionView | None = None
    blip_since: int | None = None
    resumed = False
    violations = []
    for envelope in envelopes:
        event = envelope.event
        before = view
        view = apply(view, envelope)
        if isinstance(event, GlassesDisconnected) and before is not None:
            healthy = (
                before.state == "ACTIVE" and before.bridge == "up" and before.stalled_ms is None
            )
            blip_since, resumed = (envelope.time_ms if healthy else None), False
        elif blip_since is None:
            continue
        elif isinstance(
            event,
            BridgeDisconnected
            | BridgeJoinFailed
            | ProcessRestarted
            | BridgeKept
            | SessionDisposed
            | AudioStalled,
        ) or (isinstance(event, IdentityHolderObserved) and event.holder_server != server):
            # A loss the bridge reported, or one the room service revealed: not a healthy bridge.
            blip_since = None
        elif isinstance(event, SessionResumed):
            resumed = True
        elif isinstance(event, BridgeStarted) and resumed:
            violations.append(
                f"grace: {server} restarted the healthy bridge of {stream} after a blip "
                f"that began at {blip_since - offset} ms ({event.why})"
            )
            blip_since = None
    return violations


class _Folded:
    """A store's log folded into views up to a position, so that checking the invariants after
    every step of a run folds each event once, not once per step."""

    def __init__(self) -> None:
        self.position = 0
        self.views: dict[str, SessionView] = {}

    def catch_up(self, store: EventStore) -> dict[str, SessionView]:
        for envelope in store.read_all(self.position + 1):
            view = apply(self.views.get(envelope.stream), envelope)
            if view is not None:
                self.views[envelope.stream] = view
            self.position = envelope.position
        return self.views


_folded: weakref.WeakKeyDictionary[EventStore, _Folded] = weakref.WeakKeyDictionary()


def logged_views(world: World, server: str) -> dict[str, SessionView]:
    """`server`'s sessions as its log tells them, every one it ever held."""
    store = world.stores[server]
    folded = _folded.setdefault(store, _Folded())
    return {
        stream: view for stream, view in folded.catch_up(store).items() if view.server == server
    }


Logged = dict[str, dict[str, SessionView]]
"""Each server's sessions as its log tells them."""


def all_logged_views(world: World) -> Logged:
    return {server: logged_views(world, server) for server in world.servers}


def replay_matches_live(world: World, logged: Logged | None = None) -> list[str]:
    """The views rebuilt from each server's log equal its live sessions; a session the runtime
    no longer holds is one the log says ended. `replay`, which folds a whole log its own way,
    gives the views `apply` gave event by event."""
    logged = logged or all_logged_views(world)
    violations = []
    for server in world.servers:
        replayed = replay(world.stores[server].read_all())
        if {s: v for s, v in replayed.items() if v.server == server} != logged[server]:
            violations.append(f"replay: {server}'s log replayed whole differs from apply's fold")
    for server, runtime in world.runtimes.items():
        rebuilt = logged[server]
        live = runtime.views()
        differing = sorted(
            stream
            for stream in set(rebuilt) | set(live)
            if rebuilt.get(stream) != live.get(stream)
            and (stream in live or rebuilt[stream].state != "DISPOSED")
        )
        if differing:
            violations.append(f"replay: {server} differs from live in {', '.join(differing)}")
    return violations


def log_bytes(world: World) -> dict[str, bytes]:
    """Each server's log, byte for byte, positions counted within it, so that one log shared by
    the servers and one log per server compare alike."""
    lines: dict[str, list[bytes]] = {server: [] for server in world.servers}
    for envelope in server_events(world.stores.values()):
        own = lines[envelope.server]
        own.append(encode_envelope(msgspec.structs.replace(envelope, position=len(own) + 1)))
    return {server: b"\n".join(own) for server, own in lines.items()}


def all_violations(world: World) -> list[str]:
    """Invariants 1 to 5; determinism (6) needs two runs and is checked by comparing
    `log_bytes` of twin worlds."""
    logged = all_logged_views(world)
    return [
        *liveness(world),
        *audio_gaps(world),
        *kick_war(world),
        *zombies(world, logged),
        *grace_preserved(world),
        *replay_matches_live(world, logged),
    ]

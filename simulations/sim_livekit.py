"""A simulated LiveKit: rooms, identities, kicks, faults, and the phone's data packets.

It follows what the real server and SDK do (research/livekit-wire-protocol.md):
- one participant per identity per room; a newer join wins and the older one is disconnected
  with `DUPLICATE_IDENTITY`;
- a join completes after a seeded latency, or fails while the server is in an outage;
- a dropped signal makes the SDK try to resume for about 16.8 s: it resumes if the server is
  reachable and the token still valid, fails with `JOIN_FAILURE` on an expired token, learns of a
  kick that happened meanwhile, and gives up with `UNKNOWN_REASON`;
- with `token_refresh_ms`, the server refreshes the token of each participant whose signal is
  up, which keeps its resumes valid past the join token's TTL;
- admin removal and room deletion disconnect with `PARTICIPANT_REMOVED` and `ROOM_DELETED`;
- the room service can fail for one server's lookups, each failing at once or hanging unanswered;
- a server's credentials can be refused (every join and lookup fails for good: HTTP 401), and
  a server's joins can hang, never completing;
- with `join_rate_per_s`, joins beyond that many within any second are refused at once with a
  503, as a LiveKit node refuses joins past its configured limits (`rtc.ErrLimitExceeded`, a
  transient error: it neither queues them nor fails for good);
- the room service is as unreachable as the rest of the server during an outage;
- data packets reach every other participant whose signal is up, except a participant whose
  data path died (`audio_stall`: the SDK's data callback stops while it stays connected) or
  whose SDK is stuck reconnecting (`sdk_reconnecting`); a fresh join gets data again;
- the phone can leave the room and come back, and can say that its microphone is muted.

All timing runs on the executor's clock, so the same seed gives the same room history.
"""

from __future__ import annotations

import collections
import itertools
import random
import threading
from collections.abc import Callable

import msgspec

from actors.connector import (
    IdentityHolder,
    JoinRequest,
    LookupAnswer,
    LookupFailed,
    Nobody,
    PhoneMuted,
    PhonePresence,
    RoomData,
    RoomDisconnected,
    RoomEvent,
    RoomJoined,
    RoomJoinFailed,
    RoomReconnecting,
    RoomTokenRefreshed,
)
from actors.executor import Executor
from events.catalog import DisconnectReason

RESUME_GIVE_UP_MS = 16_800
"""How long the SDK keeps trying to resume a dropped signal before it gives up."""

DEPARTURE_DETECTION_MS = 15_000
"""How long LiveKit takes to notice a participant whose process died (livekit/livekit#3292)."""

REFUSED = "401 Unauthorized: invalid API key"
"""What the server says to a server whose credentials it refuses."""

LIMIT_EXCEEDED = "503 Service Unavailable: node has exceeded its configured limit"
"""What the server says to a join beyond its join rate (livekit-server's `rtc.ErrLimitExceeded`)."""


class SfuConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    join_latency_ms: tuple[int, int] = (50, 200)
    lookup_latency_ms: tuple[int, int] = (5, 30)
    resume_attempt_ms: tuple[int, int] = (300, 1_500)
    token_ttl_ms: int = 600_000
    token_refresh_ms: int | None = None
    """How often the server hands each participant whose signal is up a fresh token, as
    LiveKit does (`None`: never, so a resume past `token_ttl_ms` fails)."""
    audio_chunk_ms: int = 100
    join_rate_per_s: int | None = None
    """The most joins admitted within any second, for all servers together (`None`: no limit).
    A refusal takes one `lookup_latency_ms` round trip: the server answers before any media."""


class _Connection:
    """One join of one participant: pending, up, reconnecting, or gone."""

    __slots__ = (
        "deaf_until_ms",
        "identity",
        "on_event",
        "pending_reason",
        "request",
        "sid",
        "state",
        "token_expires_ms",
    )

    def __init__(
        self,
        request: JoinRequest,
        on_event: Callable[[RoomEvent], object],
        sid: str,
        token_expires_ms: int,
    ) -> None:
        self.request = request
        self.identity = request.identity
        self.on_event = on_event
        self.sid = sid
        self.token_expires_ms = token_expires_ms
        self.state = "pending"
        self.pending_reason: DisconnectReason | None = None
        self.deaf_until_ms = -1
        """Until when no data reaches this participant although it is in the room."""


class Participant(msgspec.Struct, frozen=True, kw_only=True):
    """A participant as the room service lists it."""

    room: str
    identity: str
    sid: str
    server: str
    epoch: int
    state: str


class SimLiveKit:
    """The room server and its room service, for simulations and threaded tests alike."""

    def __init__(self, executor: Executor, rng: random.Random, config: SfuConfig) -> None:
        self._executor = executor
        self._rng = rng
        self.config = config
        self._lock = threading.RLock()
        self._rooms: dict[str, dict[str, _Connection]] = {}
        self._phones: set[str] = set()
        self._muted: set[str] = set()
        self._sids = itertools.count(1)
        self._outage_until_ms = -1
        self._room_service_down_until_ms: dict[str, int] = {}
        self._room_service_hangs: dict[str, bool | None] = {}
        self._joins_hang_until_ms: dict[str, int] = {}
        self._refused: set[str] = set()
        self._joining: set[_Connection] = set()
        self._slower_next_join_ms: dict[str, int] = {}
        """Joins on their way: a process that dies takes its own with it."""
        self.kicks = 0
        self.joins = 0
        self.admitted_join_ms: list[int] = []
        """When each join request the rate limit let through arrived, in order."""
        self.refused_joins = 0
        self._last_second: collections.deque[int] = collections.deque()
        """The admitted joins of the last second: what the limit counts."""

    def connector(self, server: str) -> SimConnector:
        return SimConnector(self, server)

    # What the connector calls

    def join(self, request: JoinRequest, on_event: Callable[[RoomEvent], object]) -> _Connection:
        with self._lock:
            now = self._executor.now_ms()
            connection = _Connection(
                request, on_event, f"PA_{next(self._sids)}", now + self.config.token_ttl_ms
            )
            latency = self._rng.randint(*self.config.join_latency_ms)
            latency += self._slower_next_join_ms.pop(request.server, 0)
            self._joining.add(connection)
            if now < self._joins_hang_until_ms.get(request.server, -1):
                return connection  # never completes: the joiner's own deadline must end it
            admitted = self._admit(now)
            if not admitted:
                latency = self._rng.randint(*self.config.lookup_latency_ms)
        if admitted:
            self._executor.call_at(now + latency, lambda: self._complete_join(connection))
        else:
            self._executor.call_at(now + latency, lambda: self._refuse_join(connection))
        return connection

    def _admit(self, now: int) -> bool:
        """Whether the join rate lets a join arriving now through; counts it if so."""
        limit = self.config.join_rate_per_s
        last_second = self._last_second
        while last_second and last_second[0] <= now - 1_000:
            last_second.popleft()
        if limit is not None and len(last_second) >= limit:
            self.refused_joins += 1
            return False
        last_second.append(now)
        self.admitted_join_ms.append(now)
        return True

    def _refuse_join(self, connection: _Connection) -> None:
        with self._lock:
            self._joining.discard(connection)
            if connection.state != "pending":
                return
            connection.state = "gone"
            connection.on_event(RoomJoinFailed(error=LIMIT_EXCEEDED))

    def _complete_join(self, connection: _Connection) -> None:
        with self._lock:
            self._joining.discard(connection)
            if connection.state != "pending":
                return
            if connection.request.server in self._refused:
                connection.state = "gone"
                refused = RoomJoinFailed(error=REFUSED, permanent=True)
                connection.on_event(refused)
                return
            if self._in_outage():
                connection.state = "gone"
                connection.on_event(RoomJoinFailed(error="could not reach the LiveKit server"))
                return
            room = self._rooms.setdefault(connection.request.room, {})
            holder = room.get(connection.identity)
            if holder is not None:
                self._disconnect(holder, "DUPLICATE_IDENTITY")
                self.kicks += 1
            room[connection.identity] = connection
            connection.state = "up"
            self.joins += 1
            self._schedule_refresh(connection)
            connection.on_event(
                RoomJoined(
                    participant_sid=connection.sid,
                    participant_count=len(room) + (connection.request.room in self._phones),
                    phone_present=connection.request.room in self._phones,
                    phone_muted=connection.request.room in self._muted,
                )
            )

    def _schedule_refresh(self, connection: _Connection) -> None:
        every = self.config.token_refresh_ms
        if every is not None:
            due = self._executor.now_ms() + every
            self._executor.call_at(due, lambda: self._refresh_token(connection))

    def _refresh_token(self, connection: _Connection) -> None:
        with self._lock:
            if connection.state in ("gone", "orphaned"):
                return
            if connection.state == "up":
                ttl = self.config.token_ttl_ms
                connection.token_expires_ms = self._executor.now_ms() + ttl
                connection.on_event(RoomTokenRefreshed(expires_ms=self._executor.wall_ms() + ttl))
            self._schedule_refresh(connection)

    def leave(self, connection: _Connection) -> None:
        with self._lock:
            self._joining.discard(connection)
            self._remove(connection)
            connection.state = "gone"

    def lookup_holder(
        self, room: str, identity: str, reply: Callable[[LookupAnswer], object], *, asker: str
    ) -> None:
        with self._lock:
            latency = self._rng.randint(*self.config.lookup_latency_ms)
            down = self._executor.now_ms() < self._room_service_down_until_ms.get(asker, -1)
            hangs = self._room_service_hangs.get(asker)
            if down and (self._rng.random() < 0.5 if hangs is None else hangs):
                return  # the call hangs: the asker's own deadline must end the wait

        def answer() -> None:
            found: LookupAnswer
            with self._lock:
                holder = self._rooms.get(room, {}).get(identity)
                if asker in self._refused:
                    found = LookupFailed(error=REFUSED, permanent=True)
                elif self._in_outage():
                    found = LookupFailed(error="could not reach the LiveKit server")
                elif down:
                    found = LookupFailed(error="room service unavailable (503)")
                elif holder is None:
                    found = Nobody()
                else:
                    found = IdentityHolder(server=holder.request.server, epoch=holder.request.epoch)
            reply(found)

        self._executor.call_at(self._executor.now_ms() + latency, answer)

    def refuse_credentials(self, server: str, *, refused: bool = True) -> None:
        """From now on `server`'s joins and lookups fail for good (or pass again)."""
        with self._lock:
            if refused:
                self._refused.add(server)
            else:
                self._refused.discard(server)

    def slow_next_join(self, server: str, extra_ms: int) -> None:
        """`server`'s next join takes `extra_ms` longer: the slow join of a race."""
        with self._lock:
            self._slower_next_join_ms[server] = extra_ms

    def hang_joins(self, server: str, duration_ms: int) -> None:
        """`server`'s joins started within `duration_ms` never complete."""
        with self._lock:
            until = self._executor.now_ms() + duration_ms
            self._joins_hang_until_ms[server] = max(
                self._joins_hang_until_ms.get(server, -1), until
            )

    def room_service_fault(
        self, server: str, duration_ms: int, *, hangs: bool | None = None
    ) -> None:
        """`server`'s room-service lookups fail for `duration_ms`: each hangs unanswered, or
        fails at once, as `hangs` says (`None`: either, half the time each)."""
        with self._lock:
            self._room_service_hangs[server] = hangs
            until = self._executor.now_ms() + duration_ms
            previous = self._room_service_down_until_ms.get(server, -1)
            self._room_service_down_until_ms[server] = max(previous, until)

    # The phone

    def phone_joined(self, room: str) -> None:
        with self._lock:
            if room in self._phones:
                return
            self._phones.add(room)
            self._tell_room(room, PhonePresence(present=True))

    def phone_left(self, room: str) -> None:
        with self._lock:
            if room not in self._phones:
                return
            self._phones.discard(room)
            self._muted.discard(room)
            self._tell_room(room, PhonePresence(present=False))

    def phone_muted(self, room: str, *, muted: bool) -> None:
        """The phone sets its `rejoin.muted` attribute."""
        with self._lock:
            if room not in self._phones or (room in self._muted) == muted:
                return
            if muted:
                self._muted.add(room)
            else:
                self._muted.discard(room)
            self._tell_room(room, PhoneMuted(muted=muted))

    def publish(self, room: str, payload: bytes) -> int:
        """Deliver a data packet from the phone; returns how many participants got it."""
        with self._lock:
            if self._in_outage() or room not in self._phones:
                return 0
            now = self._executor.now_ms()
            delivered = 0
            for connection in self._rooms.get(room, {}).values():
                if connection.state == "up" and now >= connection.deaf_until_ms:
                    connection.on_event(RoomData(payload=payload))
                    delivered += 1
            return delivered

    def _tell_room(self, room: str, event: RoomEvent) -> None:
        for connection in self._rooms.get(room, {}).values():
            if connection.state == "up":
                connection.on_event(event)

    # Faults and operator actions

    def remove_participant(self, room: str, identity: str) -> bool:
        with self._lock:
            connection = self._rooms.get(room, {}).get(identity)
            if connection is None:
                return False
            self._disconnect(connection, "PARTICIPANT_REMOVED")
            return True

    def delete_room(self, room: str) -> None:
        with self._lock:
            for connection in list(self._rooms.get(room, {}).values()):
                self._disconnect(connection, "ROOM_DELETED")
            self._rooms.pop(room, None)

    def outage(self, duration_ms: int) -> None:
        """The server is unreachable: joins fail and every signal drops."""
        with self._lock:
            now = self._executor.now_ms()
            self._outage_until_ms = max(self._outage_until_ms, now + duration_ms)
            connections = [c for room in self._rooms.values() for c in room.values()]
            for connection in connections:
                self._drop_signal(connection)

    def audio_stall(self, room: str, duration_ms: int) -> int:
        """For `duration_ms`, no data reaches the participants now in `room`, which stay
        connected; returns how many it hit."""
        with self._lock:
            until = self._executor.now_ms() + duration_ms
            hit = [c for c in self._rooms.get(room, {}).values() if c.state == "up"]
            for connection in hit:
                connection.deaf_until_ms = max(connection.deaf_until_ms, until)
            return len(hit)

    def sdk_reconnecting(self, server: str, duration_ms: int) -> None:
        """`server`'s participants report reconnecting for `duration_ms`, and get no data."""
        with self._lock:
            until = self._executor.now_ms() + duration_ms
            stuck = [
                c
                for room in self._rooms.values()
                for c in room.values()
                if c.request.server == server and c.state == "up"
            ]
            for connection in stuck:
                connection.deaf_until_ms = max(connection.deaf_until_ms, until)
                connection.on_event(RoomReconnecting(reconnecting=True))
        for connection in stuck:
            self._executor.call_at(until, lambda c=connection: self._reconnected(c))  # type: ignore[misc]

    def _reconnected(self, connection: _Connection) -> None:
        with self._lock:
            if connection.state == "up":
                connection.on_event(RoomReconnecting(reconnecting=False))

    def drop_signal(self, room: str, server: str) -> bool:
        """The signal of `server`'s participant in `room` drops without a leave."""
        with self._lock:
            for connection in self._rooms.get(room, {}).values():
                if connection.request.server == server and connection.state == "up":
                    self._drop_signal(connection)
                    return True
            return False

    def process_died(self, server: str) -> None:
        """`server`'s process died: its participants stay until LiveKit notices they are gone."""
        with self._lock:
            orphans = [
                c
                for room in self._rooms.values()
                for c in room.values()
                if c.request.server == server
            ]
            for connection in orphans:
                connection.state = "orphaned"
                connection.on_event = _nobody
            # A join in flight dies with the process that made it: its signal connection closes.
            for connection in [c for c in self._joining if c.request.server == server]:
                self._joining.discard(connection)
                connection.state = "gone"
        for connection in orphans:
            self._executor.call_at(
                self._executor.now_ms() + DEPARTURE_DETECTION_MS,
                lambda c=connection: self._depart(c),  # type: ignore[misc]
            )

    def _depart(self, connection: _Connection) -> None:
        with self._lock:
            self._remove(connection)
            connection.state = "gone"

    def participants(self, room: str | None = None) -> list[Participant]:
        with self._lock:
            rooms = [room] if room is not None else sorted(self._rooms)
            return [
                Participant(
                    room=name,
                    identity=c.identity,
                    sid=c.sid,
                    server=c.request.server,
                    epoch=c.request.epoch,
                    state=c.state,
                )
                for name in rooms
                for c in self._rooms.get(name, {}).values()
            ]

    # Internals (called with the lock held)

    def _in_outage(self) -> bool:
        return self._executor.now_ms() < self._outage_until_ms

    def _disconnect(self, connection: _Connection, reason: DisconnectReason) -> None:
        if connection.state == "reconnecting":
            # The leave cannot reach a dropped signal; the next resume attempt learns of it.
            self._remove(connection)
            connection.pending_reason = reason
            return
        self._disconnect_now(connection, reason)

    def _remove(self, connection: _Connection) -> None:
        room = self._rooms.get(connection.request.room, {})
        if room.get(connection.identity) is connection:
            del room[connection.identity]

    def _drop_signal(self, connection: _Connection) -> None:
        if connection.state != "up":
            return
        connection.state = "reconnecting"
        connection.on_event(RoomReconnecting(reconnecting=True))
        self._schedule_resume(connection, self._executor.now_ms() + RESUME_GIVE_UP_MS)

    def _schedule_resume(self, connection: _Connection, give_up_ms: int) -> None:
        delay = self._rng.randint(*self.config.resume_attempt_ms)
        self._executor.call_at(
            self._executor.now_ms() + delay, lambda: self._try_resume(connection, give_up_ms)
        )

    def _try_resume(self, connection: _Connection, give_up_ms: int) -> None:
        with self._lock:
            now = self._executor.now_ms()
            if connection.state != "reconnecting":
                return
            if connection.pending_reason is not None:
                self._disconnect_now(connection, connection.pending_reason)
                return
            if not self._in_outage() and now >= connection.token_expires_ms:
                self._disconnect_now(connection, "JOIN_FAILURE")
            elif not self._in_outage():
                connection.state = "up"
                connection.on_event(RoomReconnecting(reconnecting=False))
            elif now >= give_up_ms:
                self._disconnect_now(connection, "UNKNOWN_REASON")
            else:
                self._schedule_resume(connection, give_up_ms)

    def _disconnect_now(self, connection: _Connection, reason: DisconnectReason) -> None:
        self._remove(connection)
        connection.state = "gone"
        connection.on_event(RoomDisconnected(reason=reason))


def _nobody(_event: RoomEvent) -> None:
    """Where a dead process's room events go."""


class SimConnector:
    """The connector one server's bridges use to reach the simulated LiveKit."""

    def __init__(self, sfu: SimLiveKit, server: str) -> None:
        self._sfu = sfu
        self.server = server

    def join(self, request: JoinRequest, on_event: Callable[[RoomEvent], object]) -> _SimHandle:
        return _SimHandle(self._sfu, self._sfu.join(request, on_event))

    def lookup_holder(
        self, room: str, identity: str, reply: Callable[[LookupAnswer], object]
    ) -> None:
        self._sfu.lookup_holder(room, identity, reply, asker=self.server)


class _SimHandle:
    def __init__(self, sfu: SimLiveKit, connection: _Connection) -> None:
        self._sfu = sfu
        self._connection = connection

    def leave(self) -> None:
        self._sfu.leave(self._connection)

"""The fleet stream, on every store a fleet can share: a connection's record lands whatever
other servers append meanwhile, the newest connection is the highest epoch recorded, and the
log tells which other servers' bridges joined since a given time."""

import itertools
from collections.abc import Callable

import pytest

from events.catalog import AnyEvent, BridgeJoined, ConnectionRecorded, SessionOpened
from events.envelope import Pending, stream_name
from events.fleet import (
    APPEND_ATTEMPTS,
    Join,
    Newest,
    fleet_stream,
    joined_since,
    newest_connection,
    record_connection,
)
from events.log import EventStore, LogError
from simulations.faulty_store import RacedStore

USER = "ada@example.com"


def recorded(server: str, epoch: int, *, user: str = USER) -> Pending:
    return Pending(
        event_id=f"{server}-{user}-{epoch}",
        time_ms=epoch,
        server=server,
        user=user,
        event=ConnectionRecorded(cause="c", why="the glasses connected", epoch=epoch),
    )


def contended(log: EventStore, races: int) -> RacedStore:
    """`log`, where another server (debug) appends to a stream `races` times before we can."""
    rivals = itertools.count(100)
    raced = RacedStore(log, lambda _stream: recorded("debug", next(rivals)))
    raced.races = races
    return raced


def test_a_record_lands_after_the_appends_it_raced_with(
    fleet_log: Callable[[], EventStore],
) -> None:
    log = fleet_log()
    record_connection(contended(log, 3), recorded("prod", 1))
    stored = log.read_stream(fleet_stream(USER))
    assert [(e.server, e.version) for e in stored] == [
        ("debug", 1),
        ("debug", 2),
        ("debug", 3),
        ("prod", 4),
    ]


def test_a_record_that_keeps_losing_the_race_fails_in_one_line(
    fleet_log: Callable[[], EventStore],
) -> None:
    log = fleet_log()
    with pytest.raises(LogError, match=f"{APPEND_ATTEMPTS} appends in a row lost the race"):
        record_connection(contended(log, APPEND_ATTEMPTS), recorded("prod", 1))
    assert all(e.server == "debug" for e in log.read_stream(fleet_stream(USER)))


def test_the_newest_connection_is_the_highest_epoch_whatever_the_order_of_records(
    fleet_log: Callable[[], EventStore],
) -> None:
    log = fleet_log()
    assert newest_connection(log, USER) is None
    for server, epoch in [("prod", 1), ("dev", 3), ("debug", 2)]:
        record_connection(log, recorded(server, epoch))
    assert newest_connection(log, USER) == Newest(3, frozenset({"dev"}))
    record_connection(log, recorded("prod", 3))
    assert newest_connection(log, USER) == Newest(3, frozenset({"dev", "prod"}))


def test_each_user_has_a_fleet_stream_of_their_own_that_no_session_stream_can_be(
    fleet_log: Callable[[], EventStore],
) -> None:
    log = fleet_log()
    record_connection(log, recorded("prod", 5, user="a/b"))
    record_connection(log, recorded("prod", 7, user="a"))
    assert fleet_stream("a/b") == "fleet/a%2Fb"
    assert newest_connection(log, "a/b") == Newest(5, frozenset({"prod"}))
    assert newest_connection(log, "a") == Newest(7, frozenset({"prod"}))
    assert log.open_streams("prod") == []


def session(log: EventStore, server: str, incarnation: int, joins_ms: list[int]) -> None:
    """`server`'s session of the user, whose bridge joined at each of `joins_ms`."""
    events: list[tuple[int, AnyEvent]] = [
        (0, SessionOpened(cause="c", why="connected", incarnation=incarnation, epoch=1))
    ]
    events += [
        (
            at,
            BridgeJoined(
                generation=g, participant_sid="PA_x", participant_count=2, phone_present=True
            ),
        )
        for g, at in enumerate(joins_ms, start=1)
    ]
    pending = [
        Pending(
            event_id=f"{server}-{incarnation}-{i}", time_ms=at, server=server, user=USER, event=e
        )
        for i, (at, e) in enumerate(events)
    ]
    log.append(stream_name(server, USER, incarnation), 0, pending)


def test_the_joins_since_a_time_are_other_servers_latest_sessions_bridges(
    fleet_log: Callable[[], EventStore],
) -> None:
    log = fleet_log()
    for server in ("prod", "debug", "dev"):
        record_connection(log, recorded(server, 1))
    session(log, "prod", 1, [900])
    session(log, "debug", 1, [1_500])
    session(log, "debug", 2, [1_100, 1_200])
    session(log, "dev", 1, [1_300])
    assert joined_since(log, USER, 1_000, besides="dev") == [
        Join("debug", 1_100),
        Join("debug", 1_200),
    ]
    assert joined_since(log, USER, 1_000, besides="debug") == [Join("dev", 1_300)]
    assert joined_since(log, USER, 2_000, besides="dev") == []

"""Old logs keep decoding: event documents of an older schema are upcast on read."""

from typing import Any, get_args

import msgspec
import pytest

from events import codec
from events.catalog import SCHEMA_VERSION, AnyEvent, Event, GlassesConnected
from events.codec import (
    RECORD_SEPARATOR,
    UndecodableEvent,
    decode_current_records,
    decode_event,
    encode_event,
    encode_record,
)
from events.envelope import Envelope


def test_every_event_class_is_in_the_decodable_union() -> None:
    def leaves(cls: type[Event]) -> set[type[Event]]:
        found: set[type[Event]] = set()
        for child in cls.__subclasses__():
            found |= leaves(child) if child.__subclasses__() else {child}
        return found

    assert leaves(Event) == set(get_args(AnyEvent))


def test_an_event_round_trips_at_the_current_schema() -> None:
    event = GlassesConnected(epoch=7)
    assert decode_event(SCHEMA_VERSION, encode_event(event)) == event


def test_an_older_schema_is_upcast_on_read(monkeypatch: pytest.MonkeyPatch) -> None:
    def rename_counter(document: dict[str, Any]) -> dict[str, Any]:
        if document.get("type") == "GlassesConnected":
            document["epoch"] = document.pop("counter")
        return document

    monkeypatch.setattr(codec, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    monkeypatch.setitem(codec.UPCASTERS, SCHEMA_VERSION, rename_counter)
    old = b'{"type": "GlassesConnected", "counter": 3}'
    assert decode_event(SCHEMA_VERSION, old) == GlassesConnected(epoch=3)


def test_a_schema_from_the_future_is_refused() -> None:
    with pytest.raises(UndecodableEvent, match="schema 99 is not one this version reads"):
        decode_event(99, b'{"type": "GlassesConnected", "epoch": 1}')


def test_a_document_of_an_unknown_type_is_refused() -> None:
    with pytest.raises(UndecodableEvent):
        decode_event(SCHEMA_VERSION, b'{"type": "BridgeTeleported"}')


def test_a_stored_envelope_of_an_older_schema_is_upcast_on_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def rename_counter(document: dict[str, Any]) -> dict[str, Any]:
        document["epoch"] = document.pop("counter")
        return document

    old = {
        "position": 7,
        "stream": "prod/a/1",
        "version": 2,
        "event_id": "e",
        "time_ms": 5,
        "server": "prod",
        "user": "a",
        "schema": 1,
        "event": {"type": "GlassesConnected", "counter": 3},
    }
    monkeypatch.setattr(codec, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    monkeypatch.setitem(codec.UPCASTERS, SCHEMA_VERSION, rename_counter)
    for envelope in (
        codec.decode_envelope(SCHEMA_VERSION, msgspec.json.encode(old)),
        codec.decode_record(SCHEMA_VERSION, msgspec.msgpack.encode(old)),
    ):
        assert envelope.event == GlassesConnected(epoch=3)
        assert (envelope.position, envelope.stream, envelope.version) == (7, "prod/a/1", 2)


def envelope_at(position: int) -> Envelope:
    return Envelope(
        position=position,
        stream="prod/a/1",
        version=position,
        event_id=f"e{position}",
        time_ms=position,
        server="prod",
        user="a",
        event=GlassesConnected(epoch=position),
    )


def test_a_run_of_records_decodes_in_one_call_and_only_as_framed() -> None:
    envelopes = [envelope_at(position) for position in range(1, 4)]
    records = [encode_record(envelope) for envelope in envelopes]
    assert decode_current_records(RECORD_SEPARATOR.join(records), 3) == envelopes
    for misframed in (
        b"".join(records),
        RECORD_SEPARATOR.join([records[0], RECORD_SEPARATOR, records[2]]),
        RECORD_SEPARATOR.join(records) + RECORD_SEPARATOR,
    ):
        with pytest.raises(UndecodableEvent):
            decode_current_records(misframed, 3)

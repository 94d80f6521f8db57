"""Bytes in and out of the log: one msgpack record per envelope (JSON in logs written before
format 5), its event upcast when its schema is older."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from events.catalog import SCHEMA_VERSION, AnyEvent
from events.envelope import Envelope

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]

UPCASTERS: dict[int, Upcaster] = {}
"""`UPCASTERS[n]` turns an event document of schema `n` into one of schema `n + 1`."""

_encoder = msgspec.json.Encoder()
_event_decoder: msgspec.json.Decoder[AnyEvent] = msgspec.json.Decoder(AnyEvent)
_envelope_decoder = msgspec.json.Decoder(Envelope)
_packer = msgspec.msgpack.Encoder()
_record_decoder = msgspec.msgpack.Decoder(Envelope)
_run_decoder = msgspec.msgpack.Decoder(list[Envelope | None])

RECORD_SEPARATOR = b"\xc0"
"""What joins the records of a run: msgpack's nil. With an array header before it, a run is one
msgpack array, decoded in one call, the records at its even places. A record begins with a map
header and ends with its schema, an integer, never with the separator: so a boundary between
two records that moved changes the run's bytes, and a CRC over the run sees it."""


class UndecodableEvent(ValueError):
    """An event document that no upcaster chain and no schema of ours can read."""


def encode_event(event: AnyEvent) -> bytes:
    return _encoder.encode(event)


def decode_event(schema: int, data: bytes) -> AnyEvent:
    """Decode an event document written with `schema`, upcasting it to the current schema."""
    if schema == SCHEMA_VERSION:
        try:
            event: AnyEvent = _event_decoder.decode(data)
        except msgspec.DecodeError as error:
            raise UndecodableEvent(str(error)) from error
        return event
    if schema > SCHEMA_VERSION or schema < 1:
        msg = f"schema {schema} is not one this version reads (it reads 1 to {SCHEMA_VERSION})"
        raise UndecodableEvent(msg)
    try:
        document = msgspec.json.decode(data)
        for version in range(schema, SCHEMA_VERSION):
            document = UPCASTERS[version](document)
        upcast: AnyEvent = msgspec.convert(document, AnyEvent)
    except (msgspec.DecodeError, msgspec.ValidationError, KeyError, TypeError) as error:
        msg = f"cannot upcast from schema {schema}: {error}"
        raise UndecodableEvent(msg) from error
    return upcast


def encode_envelope(envelope: Envelope) -> bytes:
    """One envelope as a JSON line; logs compare byte for byte through this."""
    return _encoder.encode(envelope)


def decode_current_lines(records: bytes) -> list[Envelope]:
    """Decode envelope records of the current schema, one a line, in one call: a record that is
    of another schema decodes as if it were current, so the caller checks each `schema`."""
    try:
        return _envelope_decoder.decode_lines(records)
    except msgspec.DecodeError as error:
        raise UndecodableEvent(str(error)) from error


def decode_envelope(schema: int, record: bytes) -> Envelope:
    """Decode a JSON envelope record whose event was written with `schema`, upcasting the
    event."""
    if schema == SCHEMA_VERSION:
        try:
            return _envelope_decoder.decode(record)
        except msgspec.DecodeError as error:
            raise UndecodableEvent(str(error)) from error
    try:
        return _upcast_envelope(schema, msgspec.json.decode(record))
    except msgspec.DecodeError as error:
        msg = f"cannot read the envelope: {error}"
        raise UndecodableEvent(msg) from error


def encode_record(envelope: Envelope) -> bytes:
    """One envelope as the log stores it from format 5 on: msgpack."""
    return _packer.encode(envelope)


def decode_record(schema: int, record: bytes) -> Envelope:
    """Decode a record of `encode_record` whose event was written with `schema`, upcasting the
    event."""
    try:
        if schema == SCHEMA_VERSION:
            return _record_decoder.decode(record)
        return _upcast_envelope(schema, msgspec.msgpack.decode(record))
    except msgspec.DecodeError as error:
        msg = f"cannot read the envelope: {error}"
        raise UndecodableEvent(msg) from error


def decode_current_records(records: bytes, count: int) -> list[Envelope]:
    """Decode `count` records of `encode_record`, each followed by `RECORD_SEPARATOR` but the
    last, in one call. As `decode_current_lines`, a record of another schema decodes as if it
    were current, so the caller checks each `schema`."""
    try:
        run = _run_decoder.decode(b"".join((_array_header(2 * count - 1), records)))
    except msgspec.DecodeError as error:
        raise UndecodableEvent(str(error)) from error
    envelopes = list(filter(None, run[::2]))  # a record is never false: this drops only None
    if len(envelopes) != count or run[1::2].count(None) != count - 1:
        msg = f"the {count} records of a run are not framed as a run"
        raise UndecodableEvent(msg)
    return envelopes


def _array_header(length: int) -> bytes:
    """The msgpack header of an array of `length` items (array 32: any length a run has)."""
    return b"\xdd" + length.to_bytes(4, "big")


def _upcast_envelope(schema: int, document: object) -> Envelope:
    """The envelope of a decoded record whose event has `schema`, its event upcast."""
    if not isinstance(document, dict):
        msg = f"cannot read the envelope: a {type(document).__name__}, not a map"
        raise UndecodableEvent(msg)
    try:
        event = decode_event(schema, msgspec.json.encode(document.pop("event")))
        document["schema"] = SCHEMA_VERSION
        return msgspec.convert(document | {"event": msgspec.to_builtins(event)}, Envelope)
    except (msgspec.ValidationError, KeyError, TypeError) as error:
        msg = f"cannot read the envelope: {error}"
        raise UndecodableEvent(msg) from error

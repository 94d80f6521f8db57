"""Bytes in and out of the log: one JSON document per event, upcast when its schema is older."""

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
    """Decode an envelope record whose event was written with `schema`, upcasting the event."""
    if schema == SCHEMA_VERSION:
        try:
            return _envelope_decoder.decode(record)
        except msgspec.DecodeError as error:
            raise UndecodableEvent(str(error)) from error
    try:
        document = msgspec.json.decode(record)
        event = decode_event(schema, msgspec.json.encode(document.pop("event")))
        document["schema"] = SCHEMA_VERSION
        return msgspec.convert(document | {"event": msgspec.to_builtins(event)}, Envelope)
    except (msgspec.DecodeError, AttributeError, KeyError, TypeError) as error:
        msg = f"cannot read the envelope: {error}"
        raise UndecodableEvent(msg) from error

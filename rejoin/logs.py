"""Every decision is also a log record: JSON lines for a service, readable lines in a terminal.

`DecisionLog` observes the event log (`events.observed_store`) and emits one record per durable
decision on the `rejoin.decisions` logger, carrying the server, the user, the stream, the
generation where the event has one, the decision and its `why`. With pseudonyms on, user ids
(e-mail addresses) become keyed hashes wherever they appear in a record. `configure` sends
records to a stream in the settings' format, through the redacting filter, so that no token or
secret reaches a log.
"""

from __future__ import annotations

import datetime
import logging
import sys
from typing import Any, TextIO

import msgspec

from actors.redaction import RedactingFilter, redact
from events.catalog import Decision
from events.envelope import Envelope
from rejoin.settings import Settings

__all__ = ["DecisionLog", "JsonFormatter", "TextFormatter", "configure"]

DECISIONS = logging.getLogger("rejoin.decisions")
FIELDS = "rejoin"
"""The attribute of a record that holds its structured fields."""


class DecisionLog:
    """An observer of the log: one record per decision in each durable batch."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def __call__(self, batch: list[Envelope], _seconds: float) -> None:
        if not DECISIONS.isEnabledFor(logging.INFO):
            return
        for envelope in batch:
            event = envelope.event
            if not isinstance(event, Decision):
                continue
            user = envelope.user
            shown = self._settings.pseudonym(user)
            fields: dict[str, Any] = {
                "server": envelope.server,
                "user": shown,
                "stream": envelope.stream.replace(user, shown),
                "position": envelope.position,
                "decision": type(event).__name__,
                "why": event.why.replace(user, shown),
                "event_time": _iso(envelope.time_ms),
            }
            generation = getattr(event, "generation", None)
            if generation is not None:
                fields["generation"] = generation
            DECISIONS.info(
                "%s %s: %s: %s",
                fields["server"],
                shown,
                fields["decision"],
                fields["why"],
                extra={FIELDS: fields},
            )


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the record's fields."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": _iso(round(record.created * 1000)),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        # The filter redacted the message; the fields are redacted here, before encoding.
        for name, value in getattr(record, FIELDS, {}).items():
            document[name] = redact(value) if isinstance(value, str) else value
        if record.exc_text:
            document["exception"] = record.exc_text
        return msgspec.json.encode(document).decode()


class TextFormatter(logging.Formatter):
    """`time level logger: message`, readable in a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")


def configure(settings: Settings, stream: TextIO | None = None) -> logging.Handler:
    """Send every record at the settings' level to `stream` (default: stdout) in the settings'
    format, redacted; returns the handler, which replaces any handler set before."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stdout)
    handler.addFilter(RedactingFilter())
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    return handler


def _iso(time_ms: int) -> str:
    try:
        moment = datetime.datetime.fromtimestamp(time_ms / 1000, datetime.UTC)
    except (OverflowError, ValueError, OSError):
        return str(time_ms)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")

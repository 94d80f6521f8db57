"""Every durable decision is a log record carrying its server, user, stream, generation and
why: JSON for a service, text for a terminal, redacted, with user ids pseudonymised on request."""

import io
import json
import logging
from collections.abc import Iterator

import pytest

from events.catalog import AnyEvent, BridgeStarted, GlassesConnected, GraceStarted
from events.envelope import Envelope, Pending
from rejoin import Settings
from rejoin.logs import DecisionLog, configure

USER = "ada@example.com"
TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhZGEifQ.c2lnbmF0dXJl"
ENVIRONMENT = {
    "LIVEKIT_URL": "ws://127.0.0.1:7880",
    "LIVEKIT_API_KEY": "devkey",
    "LIVEKIT_API_SECRET": "the-api-secret",
    "REJOIN_SERVER": "prod",
}


def batch() -> list[Envelope]:
    stream = f"prod/{USER}/1"
    events: list[AnyEvent] = [
        GlassesConnected(epoch=7),
        BridgeStarted(
            cause="e0", why=f"the glasses of {USER} connected", generation=1, identity="i", epoch=7
        ),
        GraceStarted(cause="e0", why=f"a token {TOKEN} leaked into a why", deadline_ms=5),
    ]
    return [
        Pending(event_id=f"e{n}", time_ms=1_000, server="prod", user=USER, event=event).at(
            position=n + 1, stream=stream, version=n + 1
        )
        for n, event in enumerate(events)
    ]


@pytest.fixture
def output() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    yield io.StringIO()
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


def logged(output: io.StringIO, **settings: str) -> list[str]:
    chosen = Settings.from_environment({**ENVIRONMENT, **settings})
    configure(chosen, output)
    DecisionLog(chosen)(batch(), 0.001)
    return output.getvalue().splitlines()


def test_each_decision_is_one_json_line_with_its_fields(output: io.StringIO) -> None:
    lines = logged(output, REJOIN_LOG_FORMAT="json")
    records = [json.loads(line) for line in lines]
    assert [r["decision"] for r in records] == ["BridgeStarted", "GraceStarted"], "inputs aside"
    started = records[0]
    assert started["server"] == "prod"
    assert started["user"] == USER
    assert started["stream"] == f"prod/{USER}/1"
    assert started["generation"] == 1
    assert started["why"] == f"the glasses of {USER} connected"
    assert started["level"] == "info"
    assert started["logger"] == "rejoin.decisions"
    assert started["event_time"] == "1970-01-01T00:00:01.000Z"


def test_tokens_never_reach_a_record(output: io.StringIO) -> None:
    lines = logged(output, REJOIN_LOG_FORMAT="json")
    assert TOKEN not in "\n".join(lines)
    assert "[redacted]" in json.loads(lines[1])["why"]


def test_pseudonyms_replace_the_user_id_everywhere_in_a_record(output: io.StringIO) -> None:
    lines = logged(
        output,
        REJOIN_LOG_FORMAT="json",
        REJOIN_PSEUDONYMISE="true",
        REJOIN_PSEUDONYM_KEY="fleet-key-of-the-logs",
    )
    assert USER not in "\n".join(lines)
    record = json.loads(lines[0])
    assert record["user"].startswith("user-")
    assert record["stream"] == f"prod/{record['user']}/1"
    assert record["user"] in record["why"]


def test_a_terminal_gets_readable_lines(output: io.StringIO) -> None:
    lines = logged(output, REJOIN_LOG_FORMAT="text")
    assert lines[0].endswith(
        f"INFO rejoin.decisions: prod {USER}: BridgeStarted: the glasses of {USER} connected"
    )

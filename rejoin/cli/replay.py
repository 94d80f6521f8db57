"""`rejoin replay`: a log's story, its figures, its picture, or its run again."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import msgspec

from actors.policy import POLICIES
from events.catalog import RunEnded, RunStarted
from events.envelope import Envelope
from events.locations import is_postgres_url, open_log, shown_location
from events.log import CorruptLog, EventStore, read_valid_prefix
from rejoin.cli.usage import UsageError, print_json
from simulations.metrics import RUN_STREAM, Metrics, compute
from simulations.report import printable, result_lines, timeline_lines
from simulations.scenario import LIMITS, Scenario, ScenarioError, from_json
from simulations.scenario_runner import run


class ReplayResult(msgspec.Struct, frozen=True, kw_only=True):
    scenario: str | None
    policy: str | None
    seed: int | None
    complete: bool | None
    """Whether the recorded run reached its end; `None` for a log that records no run."""
    metrics: Metrics


class RecordedRun(msgspec.Struct, frozen=True, kw_only=True):
    """What a log says about the run that wrote it."""

    scenario: Scenario
    policy: str
    started_ms: int
    ended_ms: int | None
    """When it ended; `None` if it was cut short."""


def replay(args: argparse.Namespace) -> int:
    log = shown_location(args.log)
    store = open_log(args.log, read_only=True)
    try:
        envelopes, corrupt = _read(store, args.user)
        seen = any(e.stream != RUN_STREAM for e in envelopes)
        if args.user is not None and not seen and corrupt is None:
            users = sorted(store.session_users())
            listed = ", ".join(repr(u) for u in users[:5]) + (", ..." if len(users) > 5 else "")
            msg = f"{log}: no user {args.user!r} in this log (it has {listed or 'none'})"
            raise UsageError(msg)
    finally:
        store.close()
    if corrupt is not None:
        print(
            f"rejoin: {printable(str(corrupt))}; replaying the {len(envelopes)} records before it",
            file=sys.stderr,
        )
    recorded = _recorded_run(log, envelopes)
    if args.policy is not None:
        return _rerun(args, recorded)
    events = [e for e in envelopes if e.stream != RUN_STREAM]
    last_ms = max((e.time_ms for e in events), default=None)
    if recorded is not None and recorded.ended_ms is None and corrupt is None:
        until = "" if last_ms is None else f" up to {(last_ms - recorded.started_ms) / 1000:g} s"
        print(
            f"rejoin: {log}: the run did not finish (its end is not in the log); "
            f"the figures cover it{until}",
            file=sys.stderr,
        )
    ended = recorded.ended_ms if recorded is not None else None
    result = ReplayResult(
        scenario=recorded.scenario.name if recorded else None,
        policy=recorded.policy if recorded else None,
        seed=recorded.scenario.seed if recorded else None,
        complete=None if recorded is None else ended is not None,
        metrics=compute(events, end_ms=ended if ended is not None else last_ms),
    )
    if args.html is not None:
        _write_picture(args.log, args.html, events)
    elif args.json:
        print_json([result])
    else:
        started = recorded.started_ms if recorded is not None else None
        print("\n".join(timeline_lines(events, result.metrics, started)))
    return 0


def _read(store: EventStore, user: str | None) -> tuple[list[Envelope], CorruptLog | None]:
    """The whole log, or the run's records and `user`'s events alone (through the index of
    sessions: a user's story in a long log without reading the log), up to the first corrupt
    record among them, and that record's error."""
    if user is None:
        return read_valid_prefix(store)
    mine, corrupt = read_valid_prefix(store, user)
    try:
        run = store.read_stream(RUN_STREAM)
    except CorruptLog as error:
        run = []
        if corrupt is None or error.position < corrupt.position:
            corrupt = error
            mine = [e for e in mine if e.position < error.position]
    return sorted([*run, *mine], key=lambda e: e.position), corrupt


def _write_picture(location: str, picture: Path, events: list[Envelope]) -> None:
    from rejoin.timeline import html_page  # noqa: PLC0415

    if is_postgres_url(location):
        title = shown_location(location)
    elif picture.exists() and picture.resolve() == Path(location).resolve():
        msg = f"{picture}: is the log being replayed; a replay never writes to its log"
        raise UsageError(msg)
    else:
        title = Path(location).name
    try:
        picture.write_text(html_page(events, f"rejoin replay {title}"), encoding="utf-8")
    except OSError as error:
        msg = f"{picture}: cannot write the picture: {error.strerror}"
        raise UsageError(msg) from None
    print(f"wrote {picture}")


def _rerun(args: argparse.Namespace, recorded: RecordedRun | None) -> int:
    if recorded is None:
        msg = (
            f"{shown_location(args.log)}: holds no recorded run to re-run "
            "(it was not written by simulate)"
        )
        raise UsageError(msg)
    result = run(recorded.scenario, POLICIES[args.policy])
    if args.json:
        print_json([result])
    else:
        print("\n".join(result_lines(result)))
    return 0 if result.passed else 1


def _recorded_run(log: str, envelopes: list[Envelope]) -> RecordedRun | None:
    """The scenario (with the seed it ran on), the policy and the end a log's run recorded."""
    started = next((e for e in envelopes if isinstance(e.event, RunStarted)), None)
    if started is None or not isinstance(started.event, RunStarted):
        return None
    origin = f"{log}: the run recorded at position {started.position}"
    scenario = from_json(started.event.scenario, origin)
    if not LIMITS["seed"].low <= started.event.seed <= LIMITS["seed"].high:
        msg = f"{origin} ran on seed {started.event.seed}, outside the range of seeds"
        raise ScenarioError(msg)
    ended = next((e.time_ms for e in envelopes if isinstance(e.event, RunEnded)), None)
    return RecordedRun(
        scenario=msgspec.structs.replace(scenario, seed=started.event.seed),
        policy=started.event.policy,
        started_ms=started.time_ms,
        ended_ms=ended,
    )

"""Tables a person reads at a glance: the comparison, one run's result, a replayed timeline."""

from __future__ import annotations

import datetime

from actors.policy import Policy
from events.catalog import GlassesConnected, Input
from events.envelope import Envelope
from simulations.metrics import Metrics
from simulations.scenario import Scenario
from simulations.scenario_runner import ExpectationResult, RunResult


def printable(text: str) -> str:
    """`text` on one line, every control character escaped: names and reasons in a log are
    anyone's text, and must neither break a line nor drive the terminal."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True)]
        return "  ".join([first, *rest]).rstrip()

    return [line(header), "  ".join("-" * w for w in widths), *(line(row) for row in rows)]


def _percent(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.0%}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f} ms"


def comparison_table(
    scenarios: list[Scenario], policies: list[Policy], results: list[RunResult]
) -> list[str]:
    """The seed's success metrics per policy over all scenarios, then a pass/fail grid."""
    by_key = {(r.scenario, r.policy): r for r in results}
    rows = []
    for policy in policies:
        mine = [by_key[(s.name, policy.name)] for s in scenarios]
        rows.append(
            [
                policy.name,
                _worst_ratio(mine, "reconnect"),
                _worst_p99(mine),
                _worst_ratio(mine, "switch"),
                str(sum(r.metrics.zombie_bridges for r in mine)),
                _ms(sum(r.metrics.misrouted_audio_ms for r in mine)),
                _ms(sum(r.metrics.audio_gap_ms for r in mine)),
                str(sum(r.metrics.kicks for r in mine)),
                f"{sum(r.passed for r in mine)}/{len(mine)}",
            ]
        )
    names = ", ".join(s.name for s in scenarios)
    lines = [
        f"The seed's success metrics, worst case over {len(scenarios)} scenarios ({names}).",
        "Targets: audio after every reconnect within grace, time to audio under 2 s,",
        "every server switch with audio, no zombie bridges, audio back soon after a stall.",
        "",
        *_table(
            [
                "policy",
                "reconnect in grace",
                "time to audio p99",
                "switch success",
                "zombies",
                "misrouted audio",
                "audio gaps",
                "kicks",
                "passed",
            ],
            rows,
        ),
        "",
        *_table(
            ["scenario", *(p.name for p in policies)],
            [
                [s.name, *("pass" if by_key[(s.name, p.name)].passed else "FAIL" for p in policies)]
                for s in scenarios
            ],
        ),
    ]
    failures = [r for r in results if not r.passed]
    if failures:
        lines += ["", "Why the failures failed (first reason each):"]
        lines += [f"  {r.policy} on {r.scenario}: {_first_reason(r)}" for r in failures]
    return lines


def _worst_ratio(results: list[RunResult], kind: str) -> str:
    """The worst scenario's ratio."""
    ratios = [
        r.metrics.reconnect_in_grace_audio_ratio
        if kind == "reconnect"
        else r.metrics.switch_success_ratio
        for r in results
    ]
    present = [ratio for ratio in ratios if ratio is not None]
    return _percent(min(present)) if present else "-"


def _worst_p99(results: list[RunResult]) -> str:
    p99s = [r.metrics.time_to_audio_ms.p99 for r in results]
    never = [r for r in results if _never_heard(r.metrics)]
    if never:
        return f"never in {len(never)} of {len(results)}"
    return _ms(max((p for p in p99s if p is not None), default=None))


def _never_heard(metrics: Metrics) -> bool:
    ratios = [metrics.reconnect_in_grace_audio_ratio, metrics.switch_success_ratio]
    return any(ratio is not None and ratio < 1 for ratio in ratios)


_MISSED = {
    "audio_on": "no audio on {server} at {at:g} s",
    "no_audio_on": "audio on {server} at {at:g} s, where none was expected",
    "session_on": "no session on {server} at {at:g} s",
    "no_session_on": "a session on {server} at {at:g} s, where none was expected",
    "health_on": "health on {server} at {at:g} s was {found}, not {health}",
}
_EXPECTED = {
    "audio_on": "hears audio on {server}",
    "no_audio_on": "no audio on {server}",
    "session_on": "has a session on {server}",
    "no_session_on": "has no session on {server}",
    "health_on": "is told {health} on {server}",
}


def _expectation(expect: ExpectationResult) -> tuple[str, str]:
    """Which expectation this is, and on which server."""
    for kind in _EXPECTED:
        server = getattr(expect, kind)
        if server is not None:
            return kind, server
    msg = "an expectation names no server"
    raise ValueError(msg)


def _first_reason(result: RunResult) -> str:
    for expect in result.expectations:
        if not expect.passed:
            kind, server = _expectation(expect)
            return _MISSED[kind].format(
                server=server, at=expect.at, found=expect.found, health=expect.health
            )
    return result.invariant_violations[0]


def result_lines(result: RunResult) -> list[str]:
    m = result.metrics
    verdict = "PASS" if result.passed else "FAIL"
    return [
        f"{result.scenario} under {result.policy}, seed {result.seed}: {verdict}",
        *(
            f"  {'ok  ' if e.passed else 'FAIL'} at {e.at:g} s: {e.user} "
            + _EXPECTED[kind].format(server=server, health=e.health)
            + ("" if e.passed or e.found is None else f" (told {e.found})")
            for e in result.expectations
            for kind, server in [_expectation(e)]
        ),
        *(f"  invariant violated: {violation}" for violation in result.invariant_violations),
        *_metric_lines(m),
    ]


def _metric_lines(m: Metrics) -> list[str]:
    tta = m.time_to_audio_ms
    return [
        f"  audio after reconnect in grace {_percent(m.reconnect_in_grace_audio_ratio)}, "
        f"switch success {_percent(m.switch_success_ratio)}, "
        f"time to audio p50 {_ms(tta.p50)} p99 {_ms(tta.p99)} over {tta.count} connections",
        f"  zombie bridges {m.zombie_bridges}, misrouted audio {_ms(m.misrouted_audio_ms)}, "
        f"kicks {m.kicks}, bridge joins {m.bridge_joins}, rejoins {m.rejoins}",
        f"  audio stalls {m.stalls}: noticed p99 {_ms(m.stall_detection_ms.p99)}, "
        f"audio back p99 {_ms(m.stall_recovery_ms.p99)} "
        f"({m.stall_recovery_ms.count} of {m.stalls}), "
        f"time without audio while connected {_ms(m.audio_gap_ms)}",
    ]


def timeline_lines(
    envelopes: list[Envelope], metrics: Metrics, started_ms: int | None = None
) -> list[str]:
    """Each user's story across servers, in wall-clock order: times from the run's start when
    there is one (`started_ms`), else UTC clock times."""
    lines: list[str] = []
    # Each user's envelopes gathered in one pass: a pass over the log for each user made the
    # timeline of a fleet's log quadratic.
    of_user: dict[str, list[Envelope]] = {}
    for envelope in envelopes:
        of_user.setdefault(envelope.user, []).append(envelope)
    for user in sorted(of_user):
        lines.append(printable(user))
        for envelope in sorted(of_user[user], key=lambda e: (e.time_ms, e.position)):
            event = envelope.event
            name = type(event).__name__
            detail = getattr(event, "why", "")
            if isinstance(event, GlassesConnected):
                detail = f"epoch {event.epoch}"
            elif isinstance(event, Input):
                detail = " ".join(
                    f"{field}={getattr(event, field)}" for field in event.__struct_fields__
                )
            when = _when(envelope.time_ms, started_ms)
            lines.append(printable(f"  {when}  {envelope.server:<8} {name:<24} {detail}"))
        lines.append("")
    return [*lines, *_metric_lines(metrics)]


def _when(time_ms: int, started_ms: int | None) -> str:
    if started_ms is not None:
        return f"{(time_ms - started_ms) / 1000:>9.3f} s"
    try:
        clock = datetime.datetime.fromtimestamp(time_ms / 1000, datetime.UTC)
    except (OverflowError, ValueError, OSError):
        return f"{time_ms} ms"
    return clock.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]

"""A picture of each user's timeline across servers, for people who would rather look than read.

One block per user, four lanes per server: the glasses (connected, in grace), the bridge (each
generation joining, then in the room, and how it ended: kicks are marked), the audio (first
audio, and each stall until audio resumed) and the health the host was told. Every shape has a
tooltip with the event's `why`. The page is one self-contained HTML file with inline SVG and
no script; every text from the log is escaped, since a log may hold anything.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from events.catalog import (
    AudioResumed,
    AudioStalled,
    BridgeDisconnected,
    BridgeJoined,
    BridgeJoinFailed,
    BridgeStarted,
    BridgeStopped,
    Decision,
    FirstAudio,
    GlassesConnected,
    GlassesDisconnected,
    GraceStarted,
    HealthChanged,
    ProcessRestarted,
    SessionDisposed,
    SessionResumed,
)
from events.envelope import Envelope

__all__ = ["html_page"]

WIDTH = 1000
"""Pixels from the first event to the last."""
LEFT = 150
LANE = 16
LANES = ("glasses", "bridge", "audio", "health")
COLOURS = {
    "connected": "#2e7d32",
    "grace": "#f9a825",
    "joining": "#90caf9",
    "joined": "#1565c0",
    "stall": "#c62828",
    "ok": "#2e7d32",
    "connecting": "#9e9e9e",
    "audio_stalled": "#c62828",
    "phone_absent": "#ef6c00",
    "unavailable": "#6a1b9a",
}


@dataclass
class _Shape:
    lane: str
    start_ms: int
    end_ms: int | None
    """`None` for a mark at `start_ms`."""
    colour: str
    tip: str


@dataclass
class _Lanes:
    """What one user's session on one server looked like."""

    shapes: list[_Shape] = field(default_factory=list)
    _open: dict[str, _Shape] = field(default_factory=dict)

    def begin(self, key: str, lane: str, at_ms: int, colour: str, tip: str) -> None:
        self.end(key, at_ms)
        self._open[key] = _Shape(lane, at_ms, None, colour, tip)

    def end(self, key: str, at_ms: int, note: str = "") -> None:
        shape = self._open.pop(key, None)
        if shape is not None:
            shape.end_ms = at_ms
            shape.tip += note
            self.shapes.append(shape)

    def mark(self, lane: str, at_ms: int, colour: str, tip: str) -> None:
        self.shapes.append(_Shape(lane, at_ms, None, colour, tip))

    def close(self, at_ms: int) -> list[_Shape]:
        for key in list(self._open):
            self.end(key, at_ms)
        return self.shapes


def html_page(envelopes: Iterable[Envelope], title: str) -> str:
    """The page of every user in `envelopes`, times in seconds from the first event."""
    ordered = sorted(envelopes, key=lambda e: (e.time_ms, e.position))
    if not ordered:
        return _page(title, "<p>The log holds no events.</p>")
    first, last = ordered[0].time_ms, ordered[-1].time_ms
    span = max(last - first, 1)
    users: dict[str, dict[str, _Lanes]] = {}
    for envelope in ordered:
        lanes = users.setdefault(envelope.user, {}).setdefault(envelope.server, _Lanes())
        _draw(lanes, envelope)
    blocks = [
        _user_block(user, {s: lanes.close(last) for s, lanes in servers.items()}, first, span)
        for user, servers in sorted(users.items())
    ]
    return _page(title, "\n".join(blocks))


def _draw(lanes: _Lanes, envelope: Envelope) -> None:
    at, event = envelope.time_ms, envelope.event
    why = f": {event.why}" if isinstance(event, Decision) else ""
    tip = f"{type(event).__name__}{why}"
    match event:
        case GlassesConnected(epoch=epoch):
            lanes.end("grace", at)
            lanes.begin(
                "glasses", "glasses", at, COLOURS["connected"], f"connected (epoch {epoch})"
            )
        case GlassesDisconnected() | ProcessRestarted():
            lanes.end("glasses", at, f", until {type(event).__name__}")
            lanes.end("health", at)
        case GraceStarted():
            lanes.end("glasses", at)
            lanes.begin("grace", "glasses", at, COLOURS["grace"], tip)
        case SessionResumed() | SessionDisposed():
            lanes.end("grace", at, f", until {tip}")
            if isinstance(event, SessionDisposed):
                lanes.close(at)
        case BridgeStarted(generation=generation):
            lanes.end("bridge", at)
            lanes.begin("bridge", "bridge", at, COLOURS["joining"], f"generation {generation}{why}")
        case BridgeJoined(generation=generation):
            lanes.begin("bridge", "bridge", at, COLOURS["joined"], f"generation {generation} in")
        case BridgeDisconnected(reason=reason):
            lanes.end("bridge", at, f", until {reason}")
            kicked = reason == "DUPLICATE_IDENTITY"
            lanes.mark(
                "bridge",
                at,
                "#000000" if kicked else "#757575",
                f"kicked by a newer bridge of the same identity ({reason})"
                if kicked
                else f"disconnected ({reason})",
            )
        case BridgeJoinFailed(error=error) | BridgeStopped(why=error):
            lanes.end("bridge", at, f", until {type(event).__name__}: {error}")
        case FirstAudio():
            lanes.mark("audio", at, COLOURS["ok"], "first audio")
        case AudioStalled(silent_ms=silent):
            lanes.begin("stall", "audio", at, COLOURS["stall"], f"stalled ({silent} ms silent)")
        case AudioResumed(silent_ms=silent):
            lanes.end("stall", at, f", resumed after {silent} ms")
        case HealthChanged(state=state, reason=reason):
            told = state if reason is None else f"{state}: {reason}"
            lanes.begin("health", "health", at, COLOURS[state], told)


def _user_block(user: str, servers: dict[str, list[_Shape]], first: int, span: int) -> str:
    height = len(servers) * (len(LANES) * LANE + 10) + 30
    parts = [f'<svg width="{LEFT + WIDTH + 20}" height="{height}" role="img">']
    parts.extend(_axis(first, span, height))
    for row, (server, shapes) in enumerate(sorted(servers.items())):
        top = 10 + row * (len(LANES) * LANE + 10)
        parts.append(
            f'<text x="0" y="{top + 12}" font-weight="bold">{html.escape(server[:20])}</text>'
        )
        for index, lane in enumerate(LANES):
            y = top + index * LANE
            parts.append(f'<text x="60" y="{y + 12}" fill="#616161">{lane}</text>')
            parts.append(
                f'<line x1="{LEFT}" x2="{LEFT + WIDTH}" y1="{y + LANE / 2}" '
                f'y2="{y + LANE / 2}" stroke="#eeeeee"/>'
            )
        for shape in shapes:
            parts.append(_shape(shape, top + LANES.index(shape.lane) * LANE, first, span))
    parts.append("</svg>")
    return f"<h2>{html.escape(user)}</h2>\n" + "\n".join(parts)


def _x(at_ms: int, first: int, span: int) -> float:
    return round(LEFT + (at_ms - first) / span * WIDTH, 1)


def _shape(shape: _Shape, y: int, first: int, span: int) -> str:
    x = _x(shape.start_ms, first, span)
    tip = f"<title>{html.escape(_seconds(shape.start_ms - first))} {html.escape(shape.tip)}</title>"
    if shape.end_ms is None:
        return (
            f'<rect x="{x - 2}" y="{y + 1}" width="4" height="{LANE - 2}" '
            f'fill="{shape.colour}">{tip}</rect>'
        )
    width = max(_x(shape.end_ms, first, span) - x, 1.0)
    return (
        f'<rect x="{x}" y="{y + 3}" width="{width}" height="{LANE - 6}" '
        f'fill="{shape.colour}">{tip}</rect>'
    )


def _axis(first: int, span: int, height: int) -> list[str]:
    step = 10 ** math.floor(math.log10(span / 5)) if span >= 5 else 1
    ticks = []
    for at in range(0, span + 1, step * max(1, span // step // 10)):
        x = _x(first + at, first, span)
        ticks.append(f'<line x1="{x}" x2="{x}" y1="0" y2="{height - 16}" stroke="#f5f5f5"/>')
        ticks.append(f'<text x="{x}" y="{height - 4}" font-size="10">{_seconds(at)}</text>')
    return ticks


def _seconds(ms: int) -> str:
    return f"{ms / 1000:g} s"


def _page(title: str, body: str) -> str:
    return (
        "<!doctype html>\n<html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title>"
        "<style>body{font:12px sans-serif;margin:16px}h2{font-size:14px;margin:16px 0 4px}"
        "svg text{font:11px sans-serif}</style></head><body>\n"
        f"<h1>{html.escape(title)}</h1>\n"
        "<p>Lanes per server: glasses (green: connected, yellow: grace), bridge (light: "
        "joining, dark: in the room; a black mark is a kick), audio (green mark: first audio, "
        "red: a stall), health. Hover over a shape for the event and its why.</p>\n"
        f"{body}\n</body></html>\n"
    )

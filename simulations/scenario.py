"""Scenario files: a public TOML format (DESIGN section 6), decoded and validated with msgspec.

Every mistake in a file is a `ScenarioError` whose message is one line naming the file, the line
when there is one, and what is wrong.
"""

from __future__ import annotations

import re
import tomllib
from importlib import resources
from pathlib import Path

import msgspec

BUILT_IN = ("rapid-switch", "grace-boundary", "post-grace", "multiple-switches", "network-blip")
"""The seed's testing plan, in its order."""


class ScenarioError(ValueError):
    """A scenario that cannot be run; the message names the file (and line) and the fault."""


class SfuKnobs(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    join_latency_ms: tuple[int, int] = (50, 200)
    audio_chunk_ms: int = 100
    token_ttl_s: float = 600.0


class Step(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    at: float
    user: str | None = None
    connect: str | None = None
    disconnect: bool | None = None
    sfu_outage_s: float | None = None
    remove_bridge: str | None = None
    crash: str | None = None
    signal_loss: str | None = None

    @property
    def action(self) -> str:
        return next(name for name in ACTIONS if getattr(self, name) is not None)


ACTIONS = ("connect", "disconnect", "sfu_outage_s", "remove_bridge", "crash", "signal_loss")
SERVER_ACTIONS = ("connect", "remove_bridge", "crash", "signal_loss")
USERLESS_ACTIONS = ("sfu_outage_s", "crash")


class Expect(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    at: float
    user: str
    audio_on: str | None = None
    no_audio_on: str | None = None


class Scenario(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    servers: list[str]
    name: str = ""
    description: str = ""
    grace_s: float = 60.0
    duration_s: float | None = None
    seed: int = 0
    sfu: SfuKnobs = SfuKnobs()
    step: list[Step] = []
    expect: list[Expect] = []

    @property
    def end_s(self) -> float:
        if self.duration_s is not None:
            return self.duration_s
        last = max([s.at for s in self.step] + [e.at for e in self.expect], default=0.0)
        return last + 10


def load(reference: str) -> Scenario:
    """A built-in scenario by name, or a scenario file by path."""
    path = Path(reference)
    if reference in BUILT_IN and not path.exists():
        source = resources.files("simulations.scenarios").joinpath(f"{reference}.toml")
        return parse(source.read_bytes(), f"{reference} (built-in)", default_name=reference)
    if not path.is_file():
        known = ", ".join(BUILT_IN)
        msg = f"{reference}: no such scenario file, and not a built-in scenario ({known})"
        raise ScenarioError(msg)
    try:
        data = path.read_bytes()
    except OSError as error:
        msg = f"{reference}: cannot read: {error.strerror}"
        raise ScenarioError(msg) from error
    return parse(data, reference, default_name=path.stem)


def parse(data: bytes, origin: str, *, default_name: str) -> Scenario:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        msg = f"{origin}: not valid UTF-8 (byte 0x{data[error.start]:02x} at offset {error.start})"
        raise ScenarioError(msg) from None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        msg = f"{origin}: not valid TOML: {error}"
        raise ScenarioError(msg) from None
    try:
        scenario = msgspec.convert(document, Scenario)
    except msgspec.ValidationError as error:
        message = str(error).replace("Object contains unknown field", "unknown key")
        raise ScenarioError(_located(origin, text, message)) from None
    if not scenario.name:
        scenario = msgspec.structs.replace(scenario, name=default_name)
    _validate(scenario, origin, text)
    return scenario


def _validate(scenario: Scenario, origin: str, text: str) -> None:
    def fail(path: str, problem: str) -> None:
        raise ScenarioError(_located(origin, text, f"{problem} - at `{path}`"))

    servers = scenario.servers
    if not servers:
        fail("$.servers", "a scenario needs at least one server")
    if len(set(servers)) != len(servers):
        fail("$.servers", "a server is listed twice")
    if scenario.grace_s <= 0:
        fail("$.grace_s", "grace_s must be positive")
    low, high = scenario.sfu.join_latency_ms
    if not 0 <= low <= high:
        fail("$.sfu.join_latency_ms", "join_latency_ms must be [low, high] with 0 <= low <= high")
    if scenario.sfu.audio_chunk_ms <= 0:
        fail("$.sfu.audio_chunk_ms", "audio_chunk_ms must be positive")
    previous = 0.0
    for index, step in enumerate(scenario.step):
        where = f"$.step[{index}]"
        if step.at < 0:
            fail(f"{where}.at", f"time {step.at:g} is negative")
        if step.at < previous:
            fail(f"{where}.at", f"time {step.at:g} comes before the step above it ({previous:g})")
        previous = step.at
        actions = [name for name in ACTIONS if getattr(step, name) is not None]
        if len(actions) != 1:
            found = ", ".join(actions) or "none"
            fail(where, f"a step takes exactly one action ({', '.join(ACTIONS)}); found {found}")
        action = actions[0]
        if action in SERVER_ACTIONS and getattr(step, action) not in servers:
            fail(f"{where}.{action}", f"unknown server {getattr(step, action)!r}")
        if action not in USERLESS_ACTIONS and step.user is None:
            fail(where, f"a {action} step names its user")
        if step.disconnect is False:
            fail(f"{where}.disconnect", "disconnect takes the value true")
        if step.sfu_outage_s is not None and step.sfu_outage_s <= 0:
            fail(f"{where}.sfu_outage_s", "an outage lasts a positive number of seconds")
    for index, expect in enumerate(scenario.expect):
        where = f"$.expect[{index}]"
        if expect.at < 0:
            fail(f"{where}.at", f"time {expect.at:g} is negative")
        targets = [t for t in (expect.audio_on, expect.no_audio_on) if t is not None]
        if len(targets) != 1:
            fail(where, "an expectation takes exactly one of audio_on, no_audio_on")
        if targets[0] not in servers:
            fail(where, f"unknown server {targets[0]!r}")
    if scenario.duration_s is not None and scenario.duration_s < previous:
        fail("$.duration_s", "duration_s ends before the last step")


_PATH = re.compile(r"`\$((?:\.\w+|\[\d+\])*)`")


def _located(origin: str, text: str, message: str) -> str:
    """`origin:line: message`, the line found from the `$.step[2].connect` path msgspec gives."""
    match = _PATH.search(message)
    path = match.group(1) if match else None
    unknown = re.search(r"unknown key `(\w+)`", message)
    if unknown:
        path = f"{path or ''}.{unknown.group(1)}"
    line = _line_of(text, path) if path is not None else None
    where = f"{origin}:{line}" if line else origin
    return f"{where}: {message}"


def _line_of(text: str, path: str) -> int | None:
    parts = re.findall(r"\.(\w+)|\[(\d+)\]", path)
    lines = text.splitlines()
    start, table = 0, ""
    for key, index in parts:
        if index:
            header = re.compile(rf"^\s*\[\[\s*{re.escape(table)}\s*\]\]")
            seen = -1
            for number in range(len(lines)):
                if header.match(lines[number]):
                    seen += 1
                    if seen == int(index):
                        start = number
                        break
            continue
        table = key
        pattern = re.compile(rf"^\s*(\[+\s*)?{re.escape(key)}\b")
        for number in range(start, len(lines)):
            if pattern.match(lines[number]):
                start = number
                break
        else:
            return start + 1 if start else None
    return start + 1

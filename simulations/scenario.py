"""Scenario files: a public TOML format (DESIGN section 6), decoded and validated with msgspec.

Every mistake in a file is a `ScenarioError` whose message is one line naming the file, the line
when there is one, and what is wrong. Validation happens here and only here: every number is
finite and within the range `LIMITS` gives it, every name is printable text, and the whole run is
bounded in size, so a file that passes cannot crash or stall the simulation that follows.
"""

from __future__ import annotations

import math
import re
import tomllib
import unicodedata
from importlib import resources
from pathlib import Path
from typing import NamedTuple

import msgspec

from simulations.toml_lines import line_of

SEED_PLAN = ("rapid-switch", "grace-boundary", "post-grace", "multiple-switches", "network-blip")
"""The seed's testing plan, in its order."""
BUILT_IN = (*SEED_PLAN, "audio-stall", "phone-leave")
"""The seed's plan, then the audio faults its first goal is about: audio, not connectivity."""


class Limit(NamedTuple):
    low: float
    high: float
    unit: str


MAX_TIME_S = 3_600.0
"""The latest time a step or an expectation may name: one simulated hour."""

LIMITS: dict[str, Limit] = {
    "grace_s": Limit(0.001, MAX_TIME_S, "s"),
    "duration_s": Limit(0.0, MAX_TIME_S, "s"),
    "seed": Limit(0, 2**63 - 1, ""),
    "at": Limit(0.0, MAX_TIME_S, "s"),
    "sfu_outage_s": Limit(0.001, MAX_TIME_S, "s"),
    "for_s": Limit(0.001, MAX_TIME_S, "s"),
    "noticed_after_s": Limit(0.001, MAX_TIME_S, "s"),
    "join_latency_ms": Limit(0, 60_000, "ms"),
    "audio_chunk_ms": Limit(10, 1_000, "ms"),
    "token_ttl_s": Limit(1.0, 86_400.0, "s"),
}
"""The range of every number a scenario holds, ends included."""

MAX_FILE_BYTES = 1 << 20
MAX_SERVERS = 16
MAX_USERS = 1_000
MAX_ENTRIES = 10_000
"""Steps, and expectations, in one scenario."""
MAX_NAME = 256
MAX_DESCRIPTION = 4_096
MAX_AUDIO_CHUNKS = 1_000_000
"""Chunks the phones may send in one run (users x run length / chunk period): about 20 s of
simulation at most, twin run included."""


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
    log_fault: str | None = None
    room_service_fault: str | None = None
    audio_stall: str | None = None
    phone_leave: str | None = None
    sdk_reconnecting: str | None = None
    for_s: float | None = None
    """How long a fault with a duration lasts (default `DEFAULT_FOR_S`)."""
    noticed_after_s: float | None = None
    """With `connect`: the server the glasses leave notices only this long after (a dead
    connection is found by a ping timeout); until then it believes they are still there."""

    @property
    def action(self) -> str:
        return next(name for name in ACTIONS if getattr(self, name) is not None)


ACTIONS = (
    "connect",
    "disconnect",
    "sfu_outage_s",
    "remove_bridge",
    "crash",
    "signal_loss",
    "log_fault",
    "room_service_fault",
    "audio_stall",
    "phone_leave",
    "sdk_reconnecting",
)
SERVER_ACTIONS = (
    "connect",
    "remove_bridge",
    "crash",
    "signal_loss",
    "log_fault",
    "room_service_fault",
    "sdk_reconnecting",
)
USER_ACTIONS = ("audio_stall", "phone_leave")
"""Steps whose value is the user they happen to."""
USERLESS_ACTIONS = (
    "sfu_outage_s",
    "crash",
    "log_fault",
    "room_service_fault",
    "sdk_reconnecting",
    *USER_ACTIONS,
)
TIMED_ACTIONS = ("log_fault", "room_service_fault", "sdk_reconnecting", *USER_ACTIONS)
"""Faults that last `for_s`."""
DEFAULT_FOR_S = 5.0


class Expect(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    at: float
    user: str
    audio_on: str | None = None
    no_audio_on: str | None = None
    session_on: str | None = None
    no_session_on: str | None = None
    health_on: str | None = None
    health: str | None = None
    """With `health_on`: the state the host was last told there (see `HEALTH_STATES`)."""

    @property
    def kind(self) -> str:
        """Which of `EXPECTATIONS` this one is."""
        return next(name for name in EXPECTATIONS if getattr(self, name) is not None)

    @property
    def server(self) -> str:
        server: str = getattr(self, self.kind)
        return server


EXPECTATIONS = ("audio_on", "no_audio_on", "session_on", "no_session_on", "health_on")
HEALTH_STATES = ("connecting", "ok", "audio_stalled", "phone_absent", "unavailable")


class Scenario(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    servers: list[str]
    name: str = ""
    description: str = ""
    grace_s: float = 60.0
    duration_s: float | None = None
    seed: int = 0
    shared_log: bool = False
    """The servers share one log and fence by it (a fleet's PostgreSQL log, say)."""
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
    if not path.exists():
        known = ", ".join(BUILT_IN)
        msg = f"{reference}: no such scenario file, and not a built-in scenario ({known})"
        raise ScenarioError(msg)
    if not path.is_file():
        msg = f"{reference}: not a scenario file (a scenario is a regular TOML file)"
        raise ScenarioError(msg)
    try:
        with path.open("rb") as file:
            data = file.read(MAX_FILE_BYTES + 1)
    except OSError as error:
        msg = f"{reference}: cannot read: {error.strerror}"
        raise ScenarioError(msg) from error
    if len(data) > MAX_FILE_BYTES:
        msg = f"{reference}: larger than {MAX_FILE_BYTES // 1024} KiB, the most a scenario may be"
        raise ScenarioError(msg)
    return parse(data, reference, default_name=path.stem)


def parse(data: bytes, origin: str, *, default_name: str) -> Scenario:
    """A scenario from the bytes of a TOML file; `origin` names it in errors."""
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
    except RecursionError:
        msg = f"{origin}: not a scenario: its tables or arrays are nested too deeply"
        raise ScenarioError(msg) from None
    return _scenario(document, origin, text, default_name)


def from_json(data: str, origin: str) -> Scenario:
    """A scenario as `msgspec.json.encode` wrote it into a run record, validated again."""
    try:
        document = msgspec.json.decode(data)
    except (msgspec.DecodeError, RecursionError) as error:
        msg = f"{origin}: not a scenario document: {error}"
        raise ScenarioError(msg) from None
    return _scenario(document, origin, None, "")


def _scenario(document: object, origin: str, text: str | None, default_name: str) -> Scenario:
    try:
        scenario = msgspec.convert(document, Scenario)
    except msgspec.ValidationError as error:
        message = str(error).replace("Object contains unknown field", "unknown key")
        raise ScenarioError(_located(origin, text, message)) from None
    except RecursionError:
        msg = f"{origin}: not a scenario: its tables or arrays are nested too deeply"
        raise ScenarioError(msg) from None
    if not scenario.name:
        if _name_fault(default_name) is not None:
            msg = f"{origin}: the file's name is not a usable scenario name; set `name`"
            raise ScenarioError(msg)
        scenario = msgspec.structs.replace(scenario, name=default_name)
    _validate(scenario, _Reporter(origin, text))
    return scenario


class _Reporter:
    def __init__(self, origin: str, text: str | None) -> None:
        self.origin = origin
        self.text = text

    def fail(self, path: str, problem: str) -> None:
        """Refuse the scenario; `path` names the value at fault (`$` is the whole document)."""
        message = problem if path == "$" else f"{problem} - at `{path}`"
        raise ScenarioError(_located(self.origin, self.text, message))

    def number(self, path: str, field: str, value: float) -> None:
        low, high, unit = LIMITS[field]
        if not (math.isfinite(value) and low <= value <= high):
            self.fail(
                path,
                f"{field} must be from {_figure(low)} to {_figure(high)}"
                f"{' ' + unit if unit else ''}; found {_figure(value)}",
            )

    def name(self, path: str, value: str) -> None:
        fault = _name_fault(value)
        if fault is not None:
            self.fail(path, f"{fault}: {value!r}")


def _name_fault(name: str) -> str | None:
    """Why `name` cannot name a server, a user or a scenario; `None` if it can."""
    if not name:
        return "a name cannot be empty"
    if len(name) > MAX_NAME:
        return f"a name has at most {MAX_NAME} characters"
    if any(unicodedata.category(char) in ("Cc", "Cs") for char in name):
        return "a name has no control characters"
    if name != name.strip():
        return "a name does not begin or end with a space"
    return None


def _figure(value: float) -> str:
    if isinstance(value, int) or (math.isfinite(value) and value == int(value)):
        return f"{int(value):,}".replace(",", "_") if abs(value) >= 100_000 else f"{value:g}"
    return f"{value:g}"


def _validate(scenario: Scenario, report: _Reporter) -> None:
    fail = report.fail
    servers = scenario.servers
    report.name("$.name", scenario.name)
    if len(scenario.description) > MAX_DESCRIPTION:
        fail("$.description", f"a description has at most {MAX_DESCRIPTION} characters")
    if not servers:
        fail("$.servers", "a scenario needs at least one server")
    if len(servers) > MAX_SERVERS:
        fail("$.servers", f"a scenario has at most {MAX_SERVERS} servers")
    for index, server in enumerate(servers):
        report.name(f"$.servers[{index}]", server)
    if len(set(servers)) != len(servers):
        fail("$.servers", "a server is listed twice")
    report.number("$.grace_s", "grace_s", scenario.grace_s)
    if scenario.duration_s is not None:
        report.number("$.duration_s", "duration_s", scenario.duration_s)
    report.number("$.seed", "seed", scenario.seed)
    low, high = scenario.sfu.join_latency_ms
    report.number("$.sfu.join_latency_ms[0]", "join_latency_ms", low)
    report.number("$.sfu.join_latency_ms[1]", "join_latency_ms", high)
    if low > high:
        fail("$.sfu.join_latency_ms", "join_latency_ms is [low, high] with low <= high")
    report.number("$.sfu.audio_chunk_ms", "audio_chunk_ms", scenario.sfu.audio_chunk_ms)
    report.number("$.sfu.token_ttl_s", "token_ttl_s", scenario.sfu.token_ttl_s)
    _validate_steps(scenario, report)
    _validate_expectations(scenario, report)
    _validate_size(scenario, report)


def _validate_steps(scenario: Scenario, report: _Reporter) -> None:
    fail = report.fail
    if len(scenario.step) > MAX_ENTRIES:
        fail("$.step", f"a scenario has at most {MAX_ENTRIES:,} steps")
    previous = 0.0
    for index, step in enumerate(scenario.step):
        where = f"$.step[{index}]"
        report.number(f"{where}.at", "at", step.at)
        if step.at < previous:
            fail(f"{where}.at", f"time {step.at:g} comes before the step above it ({previous:g})")
        previous = step.at
        actions = [name for name in ACTIONS if getattr(step, name) is not None]
        if len(actions) != 1:
            found = ", ".join(actions) or "none"
            fail(where, f"a step takes exactly one action ({', '.join(ACTIONS)}); found {found}")
        action = actions[0]
        if step.user is not None:
            report.name(f"{where}.user", step.user)
        if action in USER_ACTIONS:
            report.name(f"{where}.{action}", getattr(step, action))
            if step.user is not None:
                fail(
                    f"{where}.user", f"{action} names its user as its value, and takes no user key"
                )
        if action in SERVER_ACTIONS and getattr(step, action) not in scenario.servers:
            fail(f"{where}.{action}", f"unknown server {getattr(step, action)!r}")
        if action not in USERLESS_ACTIONS and step.user is None:
            fail(where, f"a {action} step names its user")
        if step.disconnect is False:
            fail(f"{where}.disconnect", "disconnect takes the value true")
        if step.sfu_outage_s is not None:
            report.number(f"{where}.sfu_outage_s", "sfu_outage_s", step.sfu_outage_s)
        if step.for_s is not None:
            if action not in TIMED_ACTIONS:
                fail(f"{where}.for_s", f"for_s goes with {', '.join(TIMED_ACTIONS)}, not {action}")
            report.number(f"{where}.for_s", "for_s", step.for_s)
        if step.noticed_after_s is not None:
            if action != "connect":
                fail(f"{where}.noticed_after_s", f"noticed_after_s goes with connect, not {action}")
            report.number(f"{where}.noticed_after_s", "noticed_after_s", step.noticed_after_s)
    if scenario.duration_s is not None and scenario.duration_s < previous:
        fail("$.duration_s", "duration_s ends before the last step")


def _validate_expectations(scenario: Scenario, report: _Reporter) -> None:
    fail = report.fail
    if len(scenario.expect) > MAX_ENTRIES:
        fail("$.expect", f"a scenario has at most {MAX_ENTRIES:,} expectations")
    for index, expect in enumerate(scenario.expect):
        where = f"$.expect[{index}]"
        report.number(f"{where}.at", "at", expect.at)
        if scenario.duration_s is not None and expect.at > scenario.duration_s:
            fail(
                f"{where}.at",
                f"time {expect.at:g} is after the run ends (duration_s = {scenario.duration_s:g})",
            )
        report.name(f"{where}.user", expect.user)
        targets = [getattr(expect, name) for name in EXPECTATIONS]
        targets = [target for target in targets if target is not None]
        if len(targets) != 1:
            fail(where, f"an expectation takes exactly one of {', '.join(EXPECTATIONS)}")
        if targets[0] not in scenario.servers:
            fail(where, f"unknown server {targets[0]!r}")
        if (expect.health is None) != (expect.health_on is None):
            fail(where, "health_on and health go together")
        if expect.health is not None and expect.health not in HEALTH_STATES:
            states = ", ".join(HEALTH_STATES)
            fail(f"{where}.health", f"health is one of {states}; found {expect.health!r}")


def _validate_size(scenario: Scenario, report: _Reporter) -> None:
    users = {step.user for step in scenario.step if step.user is not None}
    users |= {getattr(step, step.action) for step in scenario.step if step.action in USER_ACTIONS}
    users |= {expect.user for expect in scenario.expect}
    if len(users) > MAX_USERS:
        report.fail("$", f"a scenario has at most {MAX_USERS:,} users; this one has {len(users):,}")
    chunks = len(users) * scenario.end_s * 1000 / scenario.sfu.audio_chunk_ms
    if chunks > MAX_AUDIO_CHUNKS:
        report.fail(
            "$",
            f"the phones could send {chunks:,.0f} audio chunks ({len(users)} users for "
            f"{scenario.end_s:g} s, one per {scenario.sfu.audio_chunk_ms} ms); "
            f"a run holds at most {MAX_AUDIO_CHUNKS:,}",
        )


_PATH = re.compile(r"`\$((?:\.\w+|\[\d+\])*)`")


def _located(origin: str, text: str | None, message: str) -> str:
    """`origin:line: message`, the line found from the `$.step[2].connect` path in `message`."""
    match = _PATH.search(message)
    path = match.group(1) if match else None
    unknown = re.search(r"unknown key `(\w+)`", message)
    if unknown:
        path = f"{path or ''}.{unknown.group(1)}"
    line = line_of(text, path) if text is not None and path else None
    where = f"{origin}:{line}" if line else origin
    return f"{where}: {message}"

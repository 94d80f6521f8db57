"""A server's settings, read from the environment with the names the LiveKit ecosystem uses.

`LIVEKIT_URL`, `LIVEKIT_API_KEY` and `LIVEKIT_API_SECRET` name the LiveKit server, as they do
for livekit-agents and the server SDKs; everything of rejoin's own is `REJOIN_...`. Reading
checks every variable and reports each fault on a line of its own, naming the variable; a
secret's value is never part of a message, and secrets are registered for redaction as soon as
they are read.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import socket
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Literal, TypeVar

import msgspec

from actors.bridge import AudioWatch
from actors.connector import Deadlines
from actors.livekit_connector import LiveKitSettings
from actors.policy import POLICIES, Policy
from actors.redaction import register_secret
from events.locations import is_postgres_url, shown_location

__all__ = ["VARIABLES", "Settings", "SettingsError", "livekit_from_environment"]

T = TypeVar("T")

LogFormat = Literal["json", "text"]


class SettingsError(ValueError):
    """Settings that cannot be used; one line per fault, each naming its variable."""

    def __init__(self, faults: list[str]) -> None:
        super().__init__("\n".join(faults))
        self.faults = faults


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Everything a server of rejoin needs to run; `from_environment` reads it."""

    server: str
    """This server's name in the log and in LiveKit identities (`prod`, `debug`, ...)."""
    livekit: LiveKitSettings
    log: str
    """Where the event log lives: a SQLite file, or a PostgreSQL database's URL."""
    shared_log: bool = False
    """Every server of the fleet writes to this log, and fences by it."""
    policy: Policy
    grace_ms: int
    join_rate_per_s: int | None
    """The most bridge joins this server starts in a second; `None`: no limit."""
    audio_watch: AudioWatch
    deadlines: Deadlines
    host: str
    port: int
    drain_timeout_s: float
    """How long a draining server keeps its bridges for glasses that have not left yet."""
    log_format: LogFormat
    log_level: str
    pseudonym_key: bytes | None
    """Set when user ids are pseudonymised in log records (they are e-mail addresses)."""

    def __repr__(self) -> str:
        key = "***" if self.pseudonym_key is not None else "None"
        return (
            f"Settings(server={self.server!r}, livekit={self.livekit!r}, "
            f"log={shown_location(self.log)!r}, shared_log={self.shared_log}, "
            f"policy={self.policy.name!r}, grace_ms={self.grace_ms}, "
            f"join_rate_per_s={self.join_rate_per_s}, host={self.host!r}, port={self.port}, "
            f"drain_timeout_s={self.drain_timeout_s}, log_format={self.log_format!r}, "
            f"log_level={self.log_level!r}, pseudonym_key={key})"
        )

    def pseudonym(self, user: str) -> str:
        """How `user` appears in log records: itself, or a keyed hash of it when
        pseudonymising (the same user gives the same pseudonym under the same key)."""
        if self.pseudonym_key is None:
            return user
        digest = hmac.new(self.pseudonym_key, user.encode(), hashlib.sha256).hexdigest()
        return f"user-{digest[:16]}"

    @classmethod
    def from_environment(
        cls, environment: Mapping[str, str] | None = None, *, interactive: bool = False
    ) -> Settings:
        """Read and check every variable of `VARIABLES` (default: `os.environ`); raise
        `SettingsError` with every fault found. `interactive`: logs go to a terminal, so their
        default format is text rather than JSON."""
        return _Reader(os.environ if environment is None else environment).settings(interactive)


def livekit_from_environment(environment: Mapping[str, str] | None = None) -> LiveKitSettings:
    """The LiveKit server of `LIVEKIT_URL`, `LIVEKIT_API_KEY` and `LIVEKIT_API_SECRET` alone
    (default: `os.environ`); `SettingsError` with every fault found."""
    return _Reader(os.environ if environment is None else environment).livekit()


VARIABLES: dict[str, str] = {
    "LIVEKIT_URL": "the LiveKit server: ws://, wss://, http:// or https:// (required)",
    "LIVEKIT_API_KEY": "its API key (required)",
    "LIVEKIT_API_SECRET": "its API secret (required; never printed)",
    "REJOIN_SERVER": "this server's name, as in the log (default: the host name)",
    "REJOIN_LOG": "the event log: a SQLite file, or a postgresql:// URL (default: rejoin.db; "
    "its password is never printed)",
    "REJOIN_SHARED_LOG": "true: every server of the fleet writes to that one log, and a bridge "
    "kicked by a late join is fenced by it, room service or not (default: false)",
    "REJOIN_POLICY": f"the reconnect policy: {', '.join(POLICIES)} (default: supervised)",
    "REJOIN_GRACE_S": "seconds a session waits for its glasses to come back (default: 60)",
    "REJOIN_JOIN_RATE": "the most bridge joins a second, this server's share (default: none)",
    "REJOIN_STALL_AFTER_MS": "silence from a phone that counts as a stall (default: 1000)",
    "REJOIN_PHONE_ABSENT_AFTER_MS": "when a missing phone is reported (default: 5000)",
    "REJOIN_JOIN_TIMEOUT_MS": "how long a join may take before it counts as failed "
    "(default: 15000)",
    "REJOIN_HOST": "the address `rejoin serve` listens on (default: 127.0.0.1)",
    "REJOIN_PORT": "its port (default: 8787)",
    "REJOIN_DRAIN_TIMEOUT_S": "how long a draining server keeps bridges (default: 30)",
    "REJOIN_LOG_FORMAT": "json or text (default: text on a terminal, json otherwise)",
    "REJOIN_LOG_LEVEL": "debug, info, warning or error (default: info)",
    "REJOIN_PSEUDONYMISE": "true: user ids in log records are keyed hashes (default: false)",
    "REJOIN_PSEUDONYM_KEY": "the key of those hashes, shared by a fleet (default: random per "
    "process; never printed)",
}
"""Every variable read, with its meaning: `rejoin serve --help` prints this table."""

_LEVELS = ("debug", "info", "warning", "error")


class _Reader:
    """Reads one environment, collecting faults instead of stopping at the first."""

    def __init__(self, environment: Mapping[str, str]) -> None:
        self._environment = environment
        self._faults: list[str] = []

    def settings(self, interactive: bool) -> Settings:
        livekit = self._livekit()
        pseudonymise = self._get("REJOIN_PSEUDONYMISE", "false", _boolean)
        key_text = self._raw("REJOIN_PSEUDONYM_KEY")
        register_secret(key_text)
        key = key_text.encode() if key_text else secrets.token_bytes(32)
        audio_watch = AudioWatch(
            stall_after_ms=self._get("REJOIN_STALL_AFTER_MS", "1000", _count(100, 600_000)),
            phone_absent_after_ms=self._get(
                "REJOIN_PHONE_ABSENT_AFTER_MS", "5000", _count(100, 600_000)
            ),
        )
        join_rate = self._get("REJOIN_JOIN_RATE", "0", _count(0, 100_000))
        settings = Settings(
            server=self._get("REJOIN_SERVER", socket.gethostname(), _name),
            livekit=livekit,
            log=self._get("REJOIN_LOG", "rejoin.db", _log),
            shared_log=self._get("REJOIN_SHARED_LOG", "false", _boolean),
            policy=self._get("REJOIN_POLICY", "supervised", _policy),
            grace_ms=round(1000 * self._get("REJOIN_GRACE_S", "60", _seconds(0.1, 86_400))),
            join_rate_per_s=join_rate or None,
            audio_watch=audio_watch,
            deadlines=Deadlines(
                join_ms=self._get("REJOIN_JOIN_TIMEOUT_MS", "15000", _count(100, 600_000))
            ),
            host=self._get("REJOIN_HOST", "127.0.0.1", _text),
            port=self._get("REJOIN_PORT", "8787", _count(0, 65_535)),
            drain_timeout_s=self._get("REJOIN_DRAIN_TIMEOUT_S", "30", _seconds(0, 86_400)),
            log_format=self._get(
                "REJOIN_LOG_FORMAT", "text" if interactive else "json", _log_format
            ),
            log_level=self._get("REJOIN_LOG_LEVEL", "info", _level),
            pseudonym_key=key if pseudonymise else None,
        )
        self._check()
        return settings

    def livekit(self) -> LiveKitSettings:
        livekit = self._livekit()
        self._check()
        return livekit

    def _check(self) -> None:
        if self._faults:
            order = list(VARIABLES)
            raise SettingsError(sorted(self._faults, key=lambda f: order.index(f.split(":")[0])))

    def _livekit(self) -> LiveKitSettings:
        url = self._raw("LIVEKIT_URL")
        key = self._raw("LIVEKIT_API_KEY")
        secret = self._raw("LIVEKIT_API_SECRET")
        register_secret(secret)
        for name, value in (("LIVEKIT_URL", url), ("LIVEKIT_API_KEY", key)):
            if not value:
                self._faults.append(f"{name}: missing; {VARIABLES[name]}")
        if not secret:
            self._faults.append(f"LIVEKIT_API_SECRET: missing; {VARIABLES['LIVEKIT_API_SECRET']}")
        if url and not _usable_url(url):
            self._faults.append(
                f"LIVEKIT_URL: {_shown(url)!r} is not a ws://, wss://, http:// or https:// URL"
            )
        return LiveKitSettings(url=url, api_key=key, api_secret=secret)

    def _raw(self, name: str) -> str:
        return self._environment.get(name, "").strip()

    def _get(self, name: str, default: str, parse: Callable[[str], T]) -> T:
        text = self._raw(name) or default
        try:
            return parse(text)
        except ValueError as error:
            self._faults.append(f"{name}: {text!r} {error}")
            return parse(default)


def _usable_url(url: str) -> bool:
    try:
        parts = urllib.parse.urlsplit(url)
        register_secret(parts.password or "")
    except ValueError:
        return False
    return parts.scheme in ("ws", "wss", "http", "https") and bool(parts.hostname)


def _shown(url: str) -> str:
    """`url` as an error may show it: without a password it may carry."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return url
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[-1]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def _text(text: str) -> str:
    return text


def _log(text: str) -> str:
    """A log's location, its password (a URL's) registered as a secret as soon as it is read."""
    if is_postgres_url(text):
        register_secret(urllib.parse.urlsplit(text).password or "")
    return text


def _name(text: str) -> str:
    if not all(char.isalnum() or char in "-_." for char in text):
        msg = "is not a server name (letters, digits, '-', '_' and '.')"
        raise ValueError(msg)
    return text


N = TypeVar("N", int, float)


def _within(kind: type[N], low: N, high: N, what: str) -> Callable[[str], N]:
    """A parser of numbers of `kind` from `low` to `high`, `what` naming them in a fault."""

    def parse(text: str) -> N:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            msg = f"is not {what} from {low:g} to {high:g}"
            raise ValueError(msg)
        return value

    return parse


def _count(low: int, high: int) -> Callable[[str], int]:
    return _within(int, low, high, "a whole number")


def _seconds(low: float, high: float) -> Callable[[str], float]:
    return _within(float, low, high, "a number of seconds")


def _boolean(text: str) -> bool:
    answers = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
    try:
        return answers[text.lower()]
    except KeyError:
        msg = "is neither true nor false"
        raise ValueError(msg) from None


def _policy(text: str) -> Policy:
    try:
        return POLICIES[text]
    except KeyError:
        msg = f"is not a policy ({', '.join(POLICIES)})"
        raise ValueError(msg) from None


def _log_format(text: str) -> LogFormat:
    if text == "json":
        return "json"
    if text == "text":
        return "text"
    msg = "is neither json nor text"
    raise ValueError(msg)


def _level(text: str) -> str:
    if text.lower() not in _LEVELS:
        msg = f"is not a level ({', '.join(_LEVELS)})"
        raise ValueError(msg)
    return text.lower()

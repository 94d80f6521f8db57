"""The restart budget: how often and how soon a bridge may be restarted after failures.

As in OTP, more than `intensity` failure-driven restarts within `period_ms` spends the budget and
escalates; unlike OTP, giving up is never permanent: after `cooldown_ms` (or at the user's next
reconnect) the session tries again. Delays grow exponentially with jitter, as in Akka's
`restartWithBackoff`.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import msgspec

from events.projection import RESTART_HISTORY


class RestartBudget(msgspec.Struct, frozen=True, kw_only=True):
    """The defaults keep retrying for about 37 s of backoff before escalating: longer than the
    SDK's own 17 s of resume attempts and a LiveKit node's restart, because a budget shorter
    than the dependency's recovery turns every outage into a cool-down."""

    intensity: int = 10
    period_ms: int = 120_000
    min_backoff_ms: int = 100
    max_backoff_ms: int = 8_000
    jitter: float = 0.2
    cooldown_ms: int = 30_000
    permanent_cooldown_ms: int = 300_000
    """How long a permanent error (credentials refused) waits before one more try."""

    def __post_init__(self) -> None:
        if not 1 <= self.intensity < RESTART_HISTORY:
            msg = f"intensity must be within 1..{RESTART_HISTORY - 1}"
            raise ValueError(msg)

    def recent(self, restarts_ms: Sequence[int], now_ms: int) -> list[int]:
        """The restarts that still count against the budget at `now_ms`."""
        return [t for t in restarts_ms if now_ms - t < self.period_ms]

    def exhausted(self, restarts_ms: Sequence[int], now_ms: int) -> bool:
        """Whether one more failure-driven restart now would exceed the budget."""
        return len(self.recent(restarts_ms, now_ms)) >= self.intensity

    def reconnect_backoff_ms(
        self, failures: int, last_failure_ms: int | None, now_ms: int, rng: random.Random
    ) -> int:
        """The delay before a restart a reconnect asks for: the backoff of the failures in a
        row, unless they went quiet for longer than the longest backoff (as Akka's
        `withResetBackoffAfter`): a reconnect long after an outage joins at once."""
        if last_failure_ms is None or now_ms - last_failure_ms > self.max_backoff_ms:
            return 0
        return self.backoff_ms(failures, rng)

    def backoff_ms(self, failures: int, rng: random.Random) -> int:
        """The delay before restart number `failures` (1-based) in a row; 0 for none."""
        if failures <= 0:
            return 0
        base = min(self.max_backoff_ms, self.min_backoff_ms * 2 ** (failures - 1))
        return int(base * (1 + self.jitter * rng.random()))

"""The restart budget: exponential backoff with jitter, a cap, and an OTP-style intensity."""

import random

import pytest

from actors.restart_budget import RestartBudget

BUDGET = RestartBudget(
    intensity=3, period_ms=10_000, min_backoff_ms=100, max_backoff_ms=1_000, jitter=0.2
)


def test_backoff_doubles_from_the_minimum_up_to_the_cap_with_bounded_jitter() -> None:
    rng = random.Random(0)
    for failures, base in [(1, 100), (2, 200), (3, 400), (4, 800), (5, 1_000), (9, 1_000)]:
        delays = [BUDGET.backoff_ms(failures, rng) for _ in range(200)]
        assert base <= min(delays)
        assert max(delays) <= base * 1.2
        assert len(set(delays)) > 1, "jittered"


def test_no_failures_means_no_backoff() -> None:
    assert BUDGET.backoff_ms(0, random.Random(0)) == 0


def test_the_budget_is_spent_by_intensity_restarts_within_the_period() -> None:
    assert not BUDGET.exhausted((1_000, 2_000), now_ms=3_000)
    assert BUDGET.exhausted((1_000, 2_000, 2_500), now_ms=3_000)
    assert not BUDGET.exhausted((1_000, 2_000, 2_500), now_ms=11_001), "window slid"
    assert BUDGET.recent((1_000, 2_000, 2_500), now_ms=11_500) == [2_000, 2_500]


def test_an_intensity_the_view_cannot_remember_is_refused() -> None:
    with pytest.raises(ValueError, match="intensity"):
        RestartBudget(intensity=40)


def test_a_reconnect_waits_only_for_failures_that_have_not_gone_quiet() -> None:
    rng = random.Random(0)
    assert BUDGET.reconnect_backoff_ms(3, last_failure_ms=None, now_ms=5_000, rng=rng) == 0
    assert BUDGET.reconnect_backoff_ms(3, last_failure_ms=4_500, now_ms=5_000, rng=rng) >= 400
    assert BUDGET.reconnect_backoff_ms(3, last_failure_ms=3_000, now_ms=5_000, rng=rng) == 0, (
        "quiet for longer than the longest backoff (1 s): the streak is over"
    )

"""Two `rejoin serve` processes driven over HTTP with the real SDK against the loopback
server, each check in a network namespace of its own: the seed's story, a drain on SIGTERM,
and a SIGKILL followed by a restart from the log; and the example glasses server, which
embeds the runtime, through the seed's story."""

import functools
from typing import Any

import pytest

from tests.netns import run_in_netns

pytestmark = pytest.mark.integration


@functools.cache
def in_netns(check: str) -> dict[str, Any]:
    return run_in_netns("tests.integration.serve_checks", check, timeout_s=120)


def test_the_seed_story_over_http_brings_audio_back_on_every_server() -> None:
    result = in_netns("seed-story")
    times = result["time_to_audio_ms"]
    assert list(times) == ["0:prod", "1:debug", "2:prod"]
    assert all(ms is not None and ms < 3_000 for ms in times.values()), times
    assert result["prod_generation"] == 2, "prod rejoined after debug's bridge kicked its own"
    assert result["prod_health"] == ["ok"]


def test_sigterm_drains_readiness_first_and_keeps_the_bridge_until_the_glasses_leave() -> None:
    result = in_netns("drain")
    assert result["first_audio_ms"] is not None
    assert result["readiness_after_sigterm"] == 503
    assert result["newcomer_status"] == 503, "new sessions go to another server"
    assert result["alive_while_draining"]
    assert result["chunks_while_draining"] >= 10, "2 s of 100 ms chunks kept flowing"
    assert result["exit_code"] == 0


def test_sigkill_and_restart_recover_the_session_and_lose_no_acknowledged_input() -> None:
    result = in_netns("crash")
    assert result["acknowledged_missing"] == []
    assert result["recovered"] == ["GRACE", 1], "the same incarnation, waiting for its glasses"
    assert result["audio_after_report_ms"] is not None
    assert result["state_after_report"] == "ACTIVE"


def test_the_example_glasses_server_runs_the_seed_story() -> None:
    times = in_netns("example")["time_to_heard_ms"]
    assert list(times) == ["0:prod", "1:debug", "2:prod"]
    assert all(ms is not None and ms < 3_000 for ms in times.values()), times

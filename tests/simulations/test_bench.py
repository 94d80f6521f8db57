"""`rejoin bench` runs: every figure it reports is computed, at sizes small enough for a test.
No timing is asserted; a bench that no longer runs against the runtime is what this catches."""

from pathlib import Path

from simulations import bench


def test_the_reconnect_decision_is_measured_on_a_real_session() -> None:
    p50, p99 = bench.reconnect_decision_cpu_us(samples=20)
    assert 0 < p50 <= p99


def test_an_audio_chunk_is_measured_through_a_real_bridge() -> None:
    assert bench.chunk_cpu_us(chunks=200, repeats=1) > 0


def test_start_up_is_measured_on_a_log_of_real_session_lives(tmp_path: Path) -> None:
    figures = bench.startup_with_ended_sessions(tmp_path, sessions=20, repeats=1)
    assert figures["events"] == 20 * sum(len(turn) for turn in bench.one_sessions_life()) + sum(
        len(turn) for turn in bench.one_sessions_life()[:3]
    )
    assert figures["startup_s"] > 0

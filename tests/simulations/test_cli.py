"""The `rejoin` command as a user types it: tables, JSON, exit codes, logs and replays."""

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from simulations.cli import main
from simulations.scenario import BUILT_IN

EXAMPLES = sorted((Path(__file__).parents[2] / "examples").glob("*.toml"))


def rejoin(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_compare_prints_the_seed_table_for_every_policy(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = rejoin(capsys, "compare")
    assert code == 0
    for name in [
        "legacy",
        "status-check",
        "health-check",
        "dispose-on-grace",
        "per-server-identity",
        "supervised",
        *BUILT_IN,
    ]:
        assert name in out
    supervised = next(line for line in out.splitlines() if line.startswith("supervised "))
    assert supervised.split()[1:4] == ["100%", "200", "ms"]


def test_compare_json_shows_the_bug_and_the_fix(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = rejoin(capsys, "compare", "--json")
    assert code == 0
    results: list[dict[str, Any]] = json.loads(out)
    assert len(results) == 6 * len(BUILT_IN)
    legacy = [r for r in results if r["policy"] == "legacy"]
    supervised = [r for r in results if r["policy"] == "supervised"]
    in_grace = [r["metrics"]["reconnect_in_grace_audio_ratio"] for r in legacy]
    assert 0.0 in in_grace
    for result in supervised:
        metrics = result["metrics"]
        assert result["passed"], result
        assert metrics["reconnect_in_grace_audio_ratio"] in (1.0, None)
        assert metrics["time_to_audio_ms"]["p99"] < 2_000
        assert metrics["zombie_bridges"] == 0
        assert result["invariant_violations"] == []
    assert set(supervised[0]) == {
        "scenario",
        "policy",
        "seed",
        "passed",
        "expectations",
        "invariant_violations",
        "metrics",
    }


def test_simulate_exits_0_when_everything_holds_and_1_when_not(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert rejoin(capsys, "simulate", "rapid-switch")[0] == 0
    code, out, _ = rejoin(capsys, "simulate", "rapid-switch", "--policy", "legacy")
    assert code == 1
    assert "FAIL at 9 s" in out


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda path: path.stem)
def test_the_example_scenarios_pass_under_supervised(
    example: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = rejoin(capsys, "simulate", str(example))
    assert code == 0, out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["simulate", "no-such"], "rejoin: no-such: no such scenario file"),
        (["simulate", "rapid-switch", "--policy", "nope"], "rejoin: unknown policy 'nope'"),
        (["replay", "missing.db"], "rejoin: missing.db: no such log file"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = rejoin(capsys, *argv)
    assert code == 2
    assert out == ""
    assert err.startswith(message)
    assert err.count("\n") == 1
    assert "Traceback" not in err


def test_a_bad_scenario_file_is_exit_2_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.toml"
    path.write_bytes(b'servers = ["prod"]\n[[step]]\nat = 1\nuser = "a"\nbogus = 1\n')
    code, _, err = rejoin(capsys, "simulate", str(path))
    assert (code, err) == (2, f"rejoin: {path}:5: unknown key `bogus` - at `$.step[0]`\n")


def test_a_recorded_run_replays_to_the_same_metrics(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "log.db"
    code, out, _ = rejoin(capsys, "simulate", "multiple-switches", "--events", str(log), "--json")
    assert code == 0
    simulated = json.loads(out)[0]
    code, out, _ = rejoin(capsys, "replay", str(log), "--json")
    assert code == 0
    replayed = json.loads(out)[0]
    assert replayed["metrics"] == simulated["metrics"]
    assert (replayed["scenario"], replayed["policy"], replayed["seed"]) == (
        "multiple-switches",
        "supervised",
        0,
    )
    code, out, _ = rejoin(capsys, "replay", str(log), "--user", "isaiah@mentra.glass")
    assert "DUPLICATE_IDENTITY while in grace" in out


def test_replay_with_another_policy_re_runs_the_recorded_inputs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "log.db"
    rejoin(capsys, "simulate", "rapid-switch", "--events", str(log))
    code, out, _ = rejoin(capsys, "replay", str(log), "--policy", "legacy")
    assert code == 1
    assert "rapid-switch under legacy" in out


def test_a_corrupt_tail_replays_the_valid_prefix_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "log.db"
    rejoin(capsys, "simulate", "rapid-switch", "--events", str(log))
    db = sqlite3.connect(log)
    (last,) = db.execute("SELECT MAX(position) FROM events").fetchone()
    db.execute("UPDATE events SET record = X'00' WHERE position = ?", (last - 2,))
    db.commit()
    db.close()
    code, out, err = rejoin(capsys, "replay", str(log), "--json")
    assert code == 0
    assert err == (
        f"rejoin: {log}: record at position {last - 2} is corrupt: checksum mismatch; "
        f"replaying the {last - 3} records before it\n"
    )
    assert json.loads(out)[0]["scenario"] == "rapid-switch"


def test_events_refuses_to_overwrite_a_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "log.db"
    log.write_text("")
    code, _, err = rejoin(capsys, "simulate", "rapid-switch", "--events", str(log))
    assert code == 2
    assert "already exists" in err

"""The `rejoin` command as a user types it: tables, JSON, exit codes, logs and replays."""

import asyncio
import contextlib
import json
import shlex
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import msgspec
import psycopg
import pytest
from aiohttp import web

from events.catalog import RunEnded
from events.sqlite_store import SQLiteStore
from rejoin.cli.main import _parser, main
from simulations.metrics import Metrics, compute
from simulations.scenario import BUILT_IN

ROOT = Path(__file__).parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.toml"))


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


def test_the_readme_shows_what_compare_prints(capsys: pytest.CaptureFixture[str]) -> None:
    """The README's quick start quotes `rejoin compare` whole: a change of any figure or
    message must change the README with it."""
    code, out, _ = rejoin(capsys, "compare")
    assert code == 0
    assert f"```\n{out}```" in (ROOT / "README.md").read_text()


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
        "complete",
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
        (
            ["simulate", "rapid-switch", "--policy", "nope"],
            "rejoin: argument --policy: invalid choice: 'nope' (choose from 'legacy'",
        ),
        (
            ["replay", "missing.db", "--policy", "bogus"],
            "rejoin: argument --policy: invalid choice: 'bogus'",
        ),
        (["replay", "missing.db"], "rejoin: missing.db: no such log file"),
        (["replay", "."], "rejoin: .: no such log file"),
        (["frobnicate"], "rejoin: argument COMMAND: invalid choice: 'frobnicate'"),
        (["simulate"], "rejoin: the following arguments are required: SCENARIO"),
        (["simulate", "rapid-switch", "--seed", "-1"], "rejoin: argument --seed: must be from 0"),
        (["simulate", "rapid-switch", "--seed", "x"], "rejoin: argument --seed: not a whole"),
        (["loopback-server", "--port", "99999"], "rejoin: argument --port: must be a port"),
        (
            ["loopback-server", "--departure-timeout", "-1"],
            "rejoin: --departure-timeout: -1.0 is not 0 or more seconds",
        ),
        (
            ["loopback-server", "--departure-timeout", "soon"],
            "rejoin: argument --departure-timeout: not a number of seconds: 'soon'",
        ),
        (
            ["compare", "rapid-switch", "rapid-switch"],
            "rejoin: rapid-switch: its scenario is named 'rapid-switch', as is rapid-switch's",
        ),
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


def test_replay_of_one_user_reads_that_users_records_alone_and_gives_that_users_figures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Three users: damage in another user's record is not read, and the figures are those
    of the user's own events, as `compute` gives them from the whole log's."""
    log = tmp_path / "log.db"
    rejoin(capsys, "simulate", str(ROOT / "examples" / "several-users.toml"), "--events", str(log))
    with contextlib.closing(SQLiteStore(log, read_only=True)) as store:
        everything = list(store.read_all())
    ada = [e for e in everything if e.user == "ada@example.com"]
    bo_first = next(e.position for e in everything if e.user == "bo@example.com")
    db = sqlite3.connect(log)
    db.execute("UPDATE events SET record = X'00' WHERE position = ?", (bo_first,))
    db.commit()
    db.close()
    code, out, err = rejoin(capsys, "replay", str(log), "--user", "ada@example.com", "--json")
    assert (code, err) == (0, "")
    replayed = json.loads(out)[0]
    assert replayed["complete"] is True, "the run's own records are read"
    figures = msgspec.json.decode(json.dumps(replayed["metrics"]), type=Metrics)
    assert figures == compute(
        ada, end_ms=next(e.time_ms for e in everything if isinstance(e.event, RunEnded))
    )
    code, out, err = rejoin(capsys, "replay", str(log), "--user", "ada@example.com")
    assert code == 0
    assert "ada@example.com" in out
    assert "bo@example.com" not in out
    assert "isaiah@mentra.glass" not in out
    code, _, err = rejoin(capsys, "replay", str(log), "--json")
    assert f"record at position {bo_first} is corrupt" in err, "the whole log's read sees it"


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
    replayed = json.loads(out)[0]
    assert replayed["scenario"] == "rapid-switch"
    assert replayed["complete"] is False, "its end was past the corrupt record"


def test_events_refuses_to_overwrite_a_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "log.db"
    log.write_text("")
    code, _, err = rejoin(capsys, "simulate", "rapid-switch", "--events", str(log))
    assert code == 2
    assert "already exists" in err


def with_password(url: str) -> str:
    """`url` with a password, which trust authentication accepts and ignores."""
    return url.replace("postgresql://rejoin@", "postgresql://rejoin:hunter2@")


def test_a_run_recorded_in_postgresql_replays_and_its_password_is_never_printed(
    postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    log = with_password(postgres_url)
    code, out, err = rejoin(capsys, "simulate", "rapid-switch", "--events", log, "--json")
    assert code == 0
    simulated = json.loads(out)[0]
    code, out, err = rejoin(capsys, "replay", log, "--json")
    assert (code, err) == (0, "")
    assert json.loads(out)[0]["metrics"] == simulated["metrics"]
    code, out, err = rejoin(capsys, "replay", log, "--user", "nobody")
    assert code == 2
    assert err.startswith(f"rejoin: {postgres_url}: no user 'nobody' in this log")
    with psycopg.connect(postgres_url, autocommit=True) as db:
        found = db.execute("SELECT MAX(position) FROM rejoin_events").fetchone()
        assert found is not None
        last = found[0]
        db.execute("UPDATE rejoin_events SET record = '\\x00' WHERE position = %s", (last - 2,))
    code, out, err = rejoin(capsys, "replay", log, "--json")
    assert code == 0
    assert err == (
        f"rejoin: {postgres_url}: record at position {last - 2} is corrupt: checksum mismatch; "
        f"replaying the {last - 3} records before it\n"
    )
    code, out, err = rejoin(capsys, "simulate", "rapid-switch", "--events", log)
    assert (code, err) == (
        2,
        f"rejoin: {postgres_url}: already holds events; --events writes a new log\n",
    )


def test_a_replay_of_a_database_without_a_log_is_refused_and_creates_nothing(
    postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = rejoin(capsys, "replay", with_password(postgres_url))
    assert (code, out) == (2, "")
    assert err == f"rejoin: {postgres_url}: not a rejoin event log (it has no rejoin_meta table)\n"
    with psycopg.connect(postgres_url) as db:
        assert db.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        ).fetchone() == (0,)


def rejoin_process(*argv: str, setup: str = "") -> tuple[int, str, str]:
    """The command in a process of its own, as a user's shell runs it, after `setup`."""
    command = shlex.join([sys.executable, "-m", "rejoin.cli", *argv])
    completed = subprocess.run(
        ["sh", "-c", f"{setup}{command}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return completed.returncode, completed.stdout, completed.stderr


def test_a_replay_of_another_programs_database_is_refused_and_leaves_it_untouched(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "contacts.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE contacts (name TEXT)")
    db.commit()
    db.close()
    before = path.read_bytes()
    code, out, err = rejoin(capsys, "replay", str(path))
    assert (code, out) == (2, "")
    assert err == (f"rejoin: {path}: not a rejoin event log (it has no rejoin format record)\n")
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["contacts.db"]


def test_a_replay_of_an_empty_file_is_refused_and_leaves_it_empty(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "empty.db"
    path.write_bytes(b"")
    code, _, err = rejoin(capsys, "replay", str(path))
    assert (code, err) == (2, f"rejoin: {path}: an empty file, not a rejoin event log\n")
    assert path.read_bytes() == b""


def test_a_replay_leaves_the_log_byte_for_byte_as_it_was(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "log.db"
    rejoin(capsys, "simulate", "rapid-switch", "--events", str(log))
    before = log.read_bytes()
    assert rejoin(capsys, "replay", str(log))[0] == 0
    assert rejoin(capsys, "replay", str(log), "--policy", "legacy")[0] == 1
    assert log.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["log.db"]


def test_a_log_on_a_read_only_medium_replays(tmp_path: Path) -> None:
    medium = tmp_path / "medium"
    medium.mkdir()
    log = medium / "log.db"
    assert rejoin_process("simulate", "rapid-switch", "--events", str(log))[0] == 0
    if subprocess.run(["unshare", "--mount", "true"], check=False).returncode != 0:
        pytest.skip("needs a mount namespace (root) to make a read-only medium")
    read_only = (
        f"mount --bind {medium} {medium} && mount -o remount,ro,bind {medium} {medium} && "
        f"! touch {medium}/probe 2>/dev/null && "
    )
    replay = shlex.join([sys.executable, "-m", "rejoin.cli", "replay", str(log), "--json"])
    completed = subprocess.run(
        ["unshare", "--mount", "sh", "-c", read_only + replay],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (completed.returncode, completed.stderr) == (0, "")
    assert json.loads(completed.stdout)[0]["complete"] is True


def test_events_into_a_missing_folder_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "nowhere" / "run.db"
    code, out, err = rejoin(capsys, "simulate", "rapid-switch", "--events", str(log))
    assert (code, out) == (2, "")
    assert err == f"rejoin: {log}: cannot create the log: there is no folder {log.parent}\n"


def cut_short(log: Path, keep: int) -> None:
    """The log as a run killed after its first `keep` records would have left it."""
    db = sqlite3.connect(log)
    db.execute("DELETE FROM events WHERE position > ?", (keep,))
    db.commit()
    db.close()


def test_a_run_killed_before_its_end_replays_as_unfinished(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "log.db"
    code, out, _ = rejoin(capsys, "simulate", "multiple-switches", "--events", str(log), "--json")
    assert json.loads(out)[0]["complete"] is True
    code, out, err = rejoin(capsys, "replay", str(log), "--json")
    assert (code, err) == (0, "")
    assert json.loads(out)[0]["complete"] is True
    cut_short(log, keep=40)
    code, out, err = rejoin(capsys, "replay", str(log), "--json")
    assert code == 0
    assert err.count("\n") == 1
    assert err.startswith(f"rejoin: {log}: the run did not finish (its end is not in the log)")
    replayed = json.loads(out)[0]
    assert replayed["complete"] is False
    assert replayed["metrics"]["time_to_audio_ms"]["count"] < 5, "only what happened is counted"


def test_replay_of_a_user_the_log_never_saw_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "log.db"
    rejoin(capsys, "simulate", "rapid-switch", "--events", str(log))
    code, out, err = rejoin(capsys, "replay", str(log), "--user", "nobody")
    assert (code, out) == (2, "")
    assert err == f"rejoin: {log}: no user 'nobody' in this log (it has 'isaiah@mentra.glass')\n"


def test_a_closed_pipe_ends_the_command_quietly() -> None:
    # `true` exits without reading, so the table's first write meets a closed pipe.
    completed = subprocess.run(
        f"{shlex.quote(sys.executable)} -m rejoin.cli compare | true; echo ${{PIPESTATUS[0]}}",
        shell=True,
        executable="/bin/bash",
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.stderr == ""
    assert completed.stdout.splitlines()[-1] == "141"


def test_the_loopback_server_takes_its_secret_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LIVEKIT_API_SECRET", "from-the-environment")
    assert _parser().parse_args(["loopback-server"]).secret == "from-the-environment"
    monkeypatch.delenv("LIVEKIT_API_SECRET")
    assert _parser().parse_args(["loopback-server"]).secret == "secret"


class EchoingServer:
    """An HTTP server that refuses every request with 401 and echoes the request back in the
    body, credentials included, as some proxies and servers do."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.port = 0

    async def _refuse(self, request: web.Request) -> web.Response:
        echoed = f"refused {request.path_qs} with {request.headers.get('Authorization', '')}"
        return web.Response(status=401, text=echoed)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._refuse)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    def __enter__(self) -> "EchoingServer":
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *_: object) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


LIVE_SECRET = "a-livekit-api-secret-of-forty-characters"


def live_run(url: str) -> tuple[int, str, str]:
    environment = f"LIVEKIT_URL={shlex.quote(url)} LIVEKIT_API_KEY=devkey "
    environment += f"LIVEKIT_API_SECRET={LIVE_SECRET} "
    return rejoin_process("simulate", "rapid-switch", "--sfu", "livekit", setup=environment)


def assert_one_clean_line(code: int, out: str, err: str, message: str) -> None:
    assert (code, out) == (2, "")
    assert err.count("\n") == 1, err
    assert err.startswith(message), err
    assert "Traceback" not in err
    assert LIVE_SECRET not in err
    assert "eyJ" not in err, "no token"


def test_a_livekit_that_refuses_the_connection_is_one_line_and_exit_2() -> None:
    assert_one_clean_line(
        *live_run("ws://127.0.0.1:9"),
        "rejoin: ws://127.0.0.1:9: the phone of isaiah@mentra.glass could not join: ",
    )


def test_a_livekit_url_that_does_not_parse_is_one_line_and_exit_2() -> None:
    assert_one_clean_line(*live_run("not a url"), "rejoin: LIVEKIT_URL: 'not a url' is not a ws://")


def test_a_livekit_that_echoes_the_token_in_its_401_never_shows_it() -> None:
    with EchoingServer() as server:
        code, out, err = live_run(f"ws://127.0.0.1:{server.port}")
    assert_one_clean_line(code, out, err, f"rejoin: ws://127.0.0.1:{server.port}: the phone")
    assert "401" in err
    assert "[redacted]" in err


def test_a_failed_expectation_says_passed_false_in_json(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = rejoin(capsys, "simulate", "rapid-switch", "--policy", "legacy", "--json")
    assert code == 1
    failed = [e for e in json.loads(out)[0]["expectations"] if not e["passed"]]
    assert failed == [
        {"at": 9.0, "user": "isaiah@mentra.glass", "passed": False, "audio_on": "prod"},
        {"at": 9.0, "user": "isaiah@mentra.glass", "passed": False, "no_audio_on": "debug"},
    ]

"""A real process, killed with SIGKILL during grace and started again on its log: the session is
disposed at the wall-clock deadline the dead process set, and every input it acknowledged is in
the log."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

from events.catalog import GlassesConnected, GlassesDisconnected, GraceStarted, SessionDisposed
from events.sqlite_store import SQLiteStore

ROOT = Path(__file__).parents[2]
GRACE_MS = 3_000
USER = "isaiah@mentra.glass"


def start(log: Path) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.actors.runtime_process", str(log), str(GRACE_MS)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert read(process.stdout) == {"ready": True}
    return process


def read(stdout: IO[str] | None) -> dict[str, Any]:
    assert stdout is not None
    line = stdout.readline()
    assert line, "the runtime process ended"
    answer: dict[str, Any] = json.loads(line)
    return answer


def send(process: subprocess.Popen[str], command: str, user: str) -> int:
    assert process.stdin is not None
    process.stdin.write(f"{command} {user}\n")
    process.stdin.flush()
    answer = read(process.stdout)
    assert (answer["input"], answer["user"]) == (command, user)
    position: int = answer["position"]
    return position


def logged(log: Path) -> list[Any]:
    store = SQLiteStore(log, read_only=True)
    try:
        return list(store.read_all())
    finally:
        store.close()


def test_a_killed_process_restarts_on_its_log_and_keeps_its_deadlines_and_acks(
    tmp_path: Path,
) -> None:
    log = tmp_path / "log.db"
    first = start(log)
    acked = {send(first, "connect", f"u{n}"): ("connect", f"u{n}") for n in range(20)}
    acked[send(first, "connect", USER)] = ("connect", USER)
    time.sleep(0.5)
    acked[send(first, "disconnect", USER)] = ("disconnect", USER)
    acked |= {send(first, "disconnect", f"u{n}"): ("disconnect", f"u{n}") for n in range(5)}
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)

    by_position = {e.position: e for e in logged(log)}
    kinds = {"connect": GlassesConnected, "disconnect": GlassesDisconnected}
    for position, (command, user) in acked.items():
        envelope = by_position[position]
        assert (envelope.user, type(envelope.event)) == (user, kinds[command])
    (deadline_ms,) = [
        e.event.deadline_ms
        for e in by_position.values()
        if e.user == USER and isinstance(e.event, GraceStarted)
    ]

    second = start(log)
    try:
        disposed: list[int] = []
        while not disposed and time.time() * 1000 < deadline_ms + 5_000:
            time.sleep(0.05)
            disposed = [
                e.time_ms
                for e in logged(log)
                if e.user == USER and isinstance(e.event, SessionDisposed)
            ]
        seen_ms = time.time() * 1000
    finally:
        second.terminate()
        second.wait(timeout=10)
    assert disposed, "the recovered session was disposed"
    assert abs(disposed[0] - deadline_ms) < 1_000, "at the deadline the killed process set"
    assert seen_ms < deadline_ms + 1_000 + 200, "and not later, by the wall clock"

"""Run a check in a private network namespace (`scripts/netns-run`) as a child process, and
read the JSON line it prints last.

The Rust core of the `livekit` SDK sometimes aborts the whole process while it tears down a
data channel that closed under it ("panic in a function that cannot unwind", SIGABRT), an
upstream fault in the FFI layer, not in the code under test. A check that dies of exactly that
is run once more; any other failure, or that one twice, fails the test.
"""

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
NETNS_RUN = ROOT / "scripts" / "netns-run"
SDK_ABORT = "panic in a function that cannot unwind"


def run_in_netns(module: str, *argv: str, timeout_s: float) -> dict[str, Any]:
    """The last line `python -m module argv...` printed, as JSON, from inside a namespace."""
    for attempt in (1, 2):
        try:
            done = subprocess.run(
                [str(NETNS_RUN), sys.executable, "-m", module, *argv],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired as expired:
            pytest.fail(f"{module} {argv} took over {timeout_s} s: {expired.stderr!r:.2000}")
        aborted = done.returncode == -signal.SIGABRT and SDK_ABORT in done.stderr
        if aborted and attempt == 1:
            print(f"{module} {argv}: the SDK aborted ({SDK_ABORT}); running it once more")
            continue
        lines = done.stdout.strip().splitlines()
        if done.returncode != 0 or not lines:
            pytest.fail(f"{module} {argv} failed ({done.returncode}): {done.stderr[-3000:]}")
        outcome: dict[str, Any] = json.loads(lines[-1])
        return outcome
    raise AssertionError("unreachable: the second attempt returns or fails")

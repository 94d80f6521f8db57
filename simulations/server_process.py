"""One server's runtime in a child process of its own, so a live run can crash it for real:
the parent SIGKILLs the process and starts another on the same SQLite log.

    python -m simulations.server_process LOG SERVER GRACE_MS POLICY

The LiveKit settings come as the first line on stdin (JSON: the secret never shows in argv).
Then one JSON command a line: `connect` (user, epoch), `disconnect` (user), `log_fault` (ms),
`check` and `stop`. It writes JSON lines: `{"ready": true}` once the log is recovered,
`{"audio": USER}` for each chunk handed over, `{"violations": [...]}` for `check`, and
`{"leftovers": [...]}` once stopped.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any

import msgspec

from actors.bridge import AudioChunk
from actors.livekit_connector import EventLoopThread, LiveKitConnector, LiveKitSettings
from actors.policy import policy_named
from actors.pool_executor import PoolExecutor
from actors.runtime import Runtime
from events.sqlite_store import SQLiteStore
from simulations.faulty_store import FaultyStore
from simulations.live_runner import connector_leftovers, runtime_violations


class _Output:
    """JSON lines on stdout, whole, from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def write(self, message: dict[str, Any]) -> None:
        line = json.dumps(message)
        with self._lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()


def main(argv: list[str]) -> int:
    log, server, grace_ms, policy = argv
    settings = msgspec.json.decode(sys.stdin.readline(), type=LiveKitSettings)
    out = _Output()
    origin = time.monotonic()
    sqlite = SQLiteStore(log)
    store = FaultyStore(sqlite, lambda: int((time.monotonic() - origin) * 1000))
    loop = EventLoopThread()
    connector = LiveKitConnector(settings, loop)
    executor = PoolExecutor()

    def sink(chunk: AudioChunk) -> None:
        out.write({"audio": chunk.user})

    runtime = Runtime(
        server=server,
        executor=executor,
        store=store,
        connector=connector,
        policy=policy_named(policy),
        grace_ms=int(grace_ms),
        audio_sink=sink,
    )
    out.write({"ready": True})
    for line in sys.stdin:
        command = json.loads(line)
        op = command["op"]
        if op == "connect":
            runtime.glasses_connected(command["user"], epoch=command["epoch"])
        elif op == "disconnect":
            runtime.glasses_disconnected(command["user"])
        elif op == "log_fault":
            store.fail_for(command["ms"])
        elif op == "check":
            out.write({"violations": runtime_violations(server, runtime, sqlite)})
        elif op == "stop":
            break
    runtime.stop()
    leftovers = connector_leftovers(server, connector)
    executor.shutdown()
    loop.stop()
    sqlite.close()
    out.write({"leftovers": leftovers})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""A runtime in a process of its own, as a host embeds it: the pool executor, a SQLite log,
and a room service that joins at once. It reads `connect USER` and `disconnect USER` lines on
stdin and writes one JSON line per input on stdout once the input is durable.

    python -m tests.actors.runtime_process LOG GRACE_MS
"""

import json
import random
import sys

from actors.pool_executor import PoolExecutor
from actors.runtime import Runtime
from events.sqlite_store import SQLiteStore
from simulations.sim_livekit import SfuConfig, SimLiveKit


def main(log: str, grace_ms: int) -> None:
    executor = PoolExecutor()
    sfu = SimLiveKit(executor, random.Random(0), SfuConfig(join_latency_ms=(0, 0)))
    runtime = Runtime(
        server="prod",
        executor=executor,
        store=SQLiteStore(log),
        connector=sfu.connector("prod"),
        grace_ms=grace_ms,
    )
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        command, user = line.split()
        if command == "connect":
            ack = runtime.glasses_connected(user)
        else:
            ack = runtime.glasses_disconnected(user)
        position = ack.wait(timeout_s=10)
        print(json.dumps({"input": command, "user": user, "position": position}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))

"""The same actor classes on pykka threads with the real clock: a short grace, a switch away and
back, disposal after grace, and a stop that leaves no thread behind."""

import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from actors.bridge import AudioChunk
from actors.runtime import Runtime
from actors.threading_executor import ThreadingExecutor
from events.catalog import GraceStarted, SessionDisposed
from events.memory_store import MemoryStore
from events.sqlite_store import SQLiteStore
from simulations.sim_livekit import SfuConfig, SimLiveKit

USER = "isaiah@mentra.glass"
GRACE_MS = 300

pytestmark = pytest.mark.threads


def eventually(condition: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def test_actors_run_on_threads_with_the_real_clock() -> None:
    threads_before = threading.active_count()
    executor = ThreadingExecutor()
    sfu = SimLiveKit(executor, random.Random(0), SfuConfig(join_latency_ms=(5, 20)))
    heard: list[AudioChunk] = []
    lock = threading.Lock()

    def sink(chunk: AudioChunk) -> None:
        with lock:
            heard.append(chunk)

    runtimes = {
        server: Runtime(
            server=server,
            executor=executor,
            store=MemoryStore(),
            connector=sfu.connector(server),
            grace_ms=GRACE_MS,
            audio_sink=sink,
        )
        for server in ("prod", "debug")
    }
    ticks = 0

    def phone() -> None:
        nonlocal ticks
        ticks += 1
        sfu.publish(USER, bytes([ticks % 256]) + b"\x00\x00" * 160)
        if ticks < 300:  # bounded: at most 3 s of 10 ms chunks
            executor.call_at(executor.now_ms() + 10, phone)

    def audio_on(server: str, since: int) -> Callable[[], bool]:
        def check() -> bool:
            with lock:
                return any(c.server == server and c.time_ms > since for c in heard)

        return check

    try:
        sfu.phone_joined(USER)
        executor.call_at(0, phone)

        runtimes["prod"].glasses_connected(USER, epoch=1)
        assert eventually(audio_on("prod", 0))

        runtimes["prod"].glasses_disconnected(USER)
        runtimes["debug"].glasses_connected(USER, epoch=2)
        switched = executor.wall_ms()
        assert eventually(audio_on("debug", switched))

        runtimes["debug"].glasses_disconnected(USER)
        runtimes["prod"].glasses_connected(USER, epoch=3)
        returned = executor.wall_ms()
        assert eventually(audio_on("prod", returned)), "prod's kicked bridge was restarted"
        prod = runtimes["prod"].session(USER)
        assert prod is not None
        assert prod.generation == 2

        assert eventually(lambda: runtimes["debug"].session(USER) is None), "debug disposed"
        debug_views = list(runtimes["debug"].views().values())
        assert [v.state for v in debug_views] == ["DISPOSED"]
        assert runtimes["debug"].live_bridges() == {}

    finally:
        # A failed assertion must not leave actor threads keeping the test process alive.
        for runtime in runtimes.values():
            runtime.stop()
        executor.shutdown()
    assert [p.server for p in sfu.participants(USER)] == [], "stop left every room"
    assert eventually(lambda: threading.active_count() == threads_before)


def test_a_process_restarted_from_its_log_keeps_the_wall_clock_grace_deadline(
    tmp_path: Path,
) -> None:
    log = tmp_path / "log.db"

    def start(executor: ThreadingExecutor) -> Runtime:
        sfu = SimLiveKit(executor, random.Random(0), SfuConfig(join_latency_ms=(0, 0)))
        return Runtime(
            server="prod",
            executor=executor,
            store=SQLiteStore(log),
            connector=sfu.connector("prod"),
            grace_ms=1_000,
        )

    first = ThreadingExecutor()
    runtime = start(first)
    try:
        runtime.glasses_connected(USER)
        assert eventually(lambda: getattr(runtime.session(USER), "bridge", None) == "up")
        time.sleep(1.5)  # uptime: a monotonic deadline would be off by this much
        grace_ends_ms = time.time_ns() // 1_000_000 + 1_000
        runtime.glasses_disconnected(USER)
        assert eventually(lambda: getattr(runtime.session(USER), "state", None) == "GRACE")
    finally:
        first.shutdown()  # the process dies; nothing more reaches the log
    second = ThreadingExecutor()
    restarted = start(second)
    try:
        assert eventually(lambda: restarted.session(USER) is None, timeout_s=5)
        disposed_ms = time.time_ns() // 1_000_000
    finally:
        restarted.stop()
        second.shutdown()
    assert -100 < disposed_ms - grace_ends_ms < 500, "disposed when the first process's grace ended"
    logged = list(SQLiteStore(log, read_only=True).read_all())
    (deadline_ms,) = [e.event.deadline_ms for e in logged if isinstance(e.event, GraceStarted)]
    (disposal_ms,) = [e.time_ms for e in logged if isinstance(e.event, SessionDisposed)]
    assert 0 <= disposal_ms - deadline_ms < 500

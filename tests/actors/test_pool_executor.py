"""The same actor classes on a fixed pool of threads with the real clock: a short grace, a switch
away and back, disposal after grace, and a stop that leaves no thread behind; and what the pool
promises every actor: one message at a time, FIFO mailboxes, fair turns, pykka's semantics,
timers, and a constant number of threads."""

import gc
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import pykka
import pytest

from actors import pool_executor
from actors.bridge import AudioChunk
from actors.grace_timer import Arm, GraceTimer
from actors.pool_executor import TURN, PoolExecutor
from actors.runtime import Runtime
from events.catalog import GraceStarted, SessionDisposed, TimerFired
from events.memory_store import MemoryStore
from events.sqlite_store import SQLiteStore
from simulations.sim_livekit import SfuConfig, SimLiveKit
from tests.actors.harness import eventually

USER = "isaiah@mentra.glass"
GRACE_MS = 300

pytestmark = pytest.mark.threads


def test_actors_run_on_threads_with_the_real_clock() -> None:
    threads_before = threading.active_count()
    executor = PoolExecutor()
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

    def start(executor: PoolExecutor) -> Runtime:
        sfu = SimLiveKit(executor, random.Random(0), SfuConfig(join_latency_ms=(0, 0)))
        return Runtime(
            server="prod",
            executor=executor,
            store=SQLiteStore(log),
            connector=sfu.connector("prod"),
            grace_ms=1_000,
        )

    first = PoolExecutor()
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
    second = PoolExecutor()
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


class Recorder(pykka.Actor):
    """Records each message it handles, and whether another turn of it was running then."""

    def __init__(self, log: list[tuple[int, int]], overlaps: list[str]) -> None:
        super().__init__()
        self._log = log
        self._overlaps = overlaps
        self._running = False

    def on_receive(self, message: Any) -> object:
        if self._running:
            self._overlaps.append(self.actor_urn)
        self._running = True
        time.sleep(0)  # let another worker in, if it could take this actor
        self._log.append(message)
        self._running = False
        return None


def test_an_actor_handles_one_message_at_a_time_and_its_mail_in_order() -> None:
    executor = PoolExecutor()
    overlaps: list[str] = []
    logs: list[list[tuple[int, int]]] = [[] for _ in range(50)]
    refs = [executor.spawn(Recorder, log, overlaps) for log in logs]
    per_sender = 200

    def send(sender: int) -> None:
        for sequence in range(per_sender):
            for ref in refs:
                ref.tell((sender, sequence))

    senders = [threading.Thread(target=send, args=(n,)) for n in range(4)]
    try:
        for thread in senders:
            thread.start()
        for thread in senders:
            thread.join()
        assert eventually(lambda: all(len(log) == 4 * per_sender for log in logs), 30)
    finally:
        executor.shutdown()
    assert overlaps == []
    for log in logs:
        for sender in range(4):
            assert [q for s, q in log if s == sender] == list(range(per_sender))


class Counter(pykka.Actor):
    def __init__(self) -> None:
        super().__init__()
        self.handled = 0

    def on_receive(self, message: Any) -> object:
        self.handled += 1
        if callable(message):
            message()
        return None


def test_a_flooded_actor_does_not_starve_another() -> None:
    executor = PoolExecutor(workers=1)
    flooded = executor.spawn(Counter)
    other = executor.spawn(Counter)
    flood = 20_000
    at_turn: list[int] = []
    # The only worker is held until both actors' mail is in: a test thread the scheduler left
    # waiting must not find the flood already drained.
    mail_in = threading.Event()
    try:
        flooded.tell(lambda: mail_in.wait(10))
        for _ in range(flood):
            flooded.tell("mail")
        before = executor_handled(flooded)
        other.tell(lambda: at_turn.append(executor_handled(flooded)))
        mail_in.set()
        assert eventually(lambda: at_turn != [])
    finally:
        mail_in.set()
        executor.shutdown()
    assert before < flood, "the other actor's message came while the flood was on"
    assert at_turn[0] - before <= 2 * TURN, "it waited for one turn of the flooded actor at most"


def executor_handled(ref: pykka.ActorRef[Any]) -> int:
    """Read an actor's counter without asking: an ask would wait behind the flood, and an
    actor never waits on another."""
    actor = ref._actor_weakref()
    assert isinstance(actor, Counter)
    return actor.handled


def test_the_threads_stay_as_many_with_two_thousand_actors() -> None:
    before = threading.active_count()
    executor = PoolExecutor()
    started = threading.active_count()
    assert started - before == 6, "four workers, the timer thread and the journal's"
    try:
        refs = [executor.spawn(Counter) for _ in range(2_000)]
        for ref in refs:
            ref.tell("mail")
        assert [executor.wait(ref.proxy().handled, 5) for ref in refs] == [1] * 2_000
        assert threading.active_count() == started
        assert len(executor.live_actors()) == 2_000
    finally:
        executor.shutdown()
    assert threading.active_count() == before
    assert executor.live_actors() == []


class Lifecycle(pykka.Actor):
    def __init__(self, seen: list[str]) -> None:
        super().__init__()
        self.seen = seen

    def on_start(self) -> None:
        self.seen.append("start")

    def on_receive(self, message: Any) -> object:
        if message == "boom":
            raise ValueError("boom")
        self.seen.append(message)
        return message.upper()

    def shout(self, word: str) -> str:
        return word.upper()

    def on_stop(self) -> None:
        self.seen.append("stop")

    def on_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.seen.append(f"failure: {exception_value}")


def test_asks_proxies_and_stop_behave_as_on_pykka_threads() -> None:
    executor = PoolExecutor()
    seen: list[str] = []
    ref = executor.spawn(Lifecycle, seen)
    try:
        ref.tell("first")
        assert executor.wait(ref.ask("second", block=False), 5) == "SECOND"
        assert executor.wait(ref.proxy().shout("proxied"), 5) == "PROXIED"
        with pytest.raises(ValueError, match="boom"):
            executor.wait(ref.ask("boom", block=False), 5)
        assert ref.is_alive(), "a failed ask fails its caller, not the actor"
        ref.tell("before the stop")
        assert ref.stop(block=True, timeout=5) is True
        assert seen == ["start", "first", "second", "before the stop", "stop"]
        assert not ref.is_alive()
        assert ref.stop(block=True, timeout=5) is False, "already stopped"
        with pytest.raises(pykka.ActorDeadError):
            executor.wait(ref.ask("after", block=False), 5)
        with pytest.raises(pykka.ActorDeadError):
            ref.tell("after")
        assert executor.live_actors() == []
    finally:
        executor.shutdown()


def test_a_failed_tell_goes_to_on_failure_and_stops_the_actor() -> None:
    executor = PoolExecutor()
    seen: list[str] = []
    ref = executor.spawn(Lifecycle, seen)
    try:
        ref.tell("boom")
        ref.tell("never handled")
        assert eventually(lambda: not ref.is_alive())
        assert eventually(lambda: executor.live_actors() == [])
        assert seen == ["start", "failure: boom"]
    finally:
        executor.shutdown()


class Exits(pykka.Actor):
    def on_receive(self, message: Any) -> object:
        raise SystemExit(message)


def test_an_actor_that_raises_a_base_exception_stops_every_actor_as_in_pykka() -> None:
    executor = PoolExecutor()
    bystanders = [executor.spawn(Lifecycle, []) for _ in range(3)]
    exits = executor.spawn(Exits)
    try:
        exits.tell("bye")
        assert eventually(lambda: executor.live_actors() == [])
        stopped: list[pykka.ActorRef[Any]] = [exits, *bystanders]
        assert not any(ref.is_alive() for ref in stopped)
        survivor = executor.spawn(Lifecycle, [])
        assert executor.wait(survivor.ask("still", block=False), 5) == "STILL", "workers live on"
    finally:
        executor.shutdown()


def test_mail_told_during_a_stop_is_answered_not_lost() -> None:
    executor = PoolExecutor()
    ref = executor.spawn(Lifecycle, [])
    try:
        stopping = ref.stop(block=False)
        late = ref.ask("late", block=False)  # in the mailbox behind the stop
        assert executor.wait(stopping, 5) is True
        with pytest.raises(pykka.ActorDeadError):
            executor.wait(late, 5)
    finally:
        executor.shutdown()


def test_timers_fire_in_deadline_order_unless_cancelled() -> None:
    executor = PoolExecutor()
    fired: list[str] = []
    done = threading.Event()

    def fail() -> None:
        raise RuntimeError("a bad callback")

    def last() -> None:
        fired.append("third")
        done.set()

    try:
        now = executor.now_ms()
        executor.call_at(now + 60, last)
        executor.call_at(now + 20, lambda: fired.append("first"))
        executor.call_at(now + 30, fail)
        executor.call_at(now + 40, lambda: fired.append("second"))
        executor.call_at(now + 50, lambda: fired.append("cancelled")).cancel()
        assert done.wait(5)
        assert executor.now_ms() - now >= 60
    finally:
        executor.shutdown()
    assert fired == ["first", "second", "third"]


def test_shutdown_stops_every_actor_and_joins_its_threads_in_bounded_time() -> None:
    before = set(threading.enumerate())
    executor = PoolExecutor()
    ours = set(threading.enumerate()) - before
    seen: list[str] = []
    refs = [executor.spawn(Lifecycle, seen) for _ in range(100)]
    executor.call_at(executor.now_ms() + 60_000, lambda: seen.append("late timer"))
    started = time.monotonic()
    executor.shutdown()
    assert time.monotonic() - started < 5
    assert not any(thread.is_alive() for thread in ours)
    assert seen.count("stop") == 100, "every actor's on_stop ran"
    assert not any(ref.is_alive() for ref in refs)
    with pytest.raises(RuntimeError, match="shut down"):
        executor.spawn(Lifecycle, seen)
    executor.shutdown()  # twice is harmless


class Stuck(pykka.Actor):
    def __init__(self, release: threading.Event) -> None:
        super().__init__()
        self._release = release

    def on_receive(self, message: Any) -> object:
        self._release.wait(10)
        return None


def test_shutdown_leaves_an_actor_stuck_in_a_turn_behind_in_bounded_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pool_executor, "SHUTDOWN_S", 0.5)
    release = threading.Event()
    executor = PoolExecutor()
    stuck = executor.spawn(Stuck, release)
    other = executor.spawn(Lifecycle, [])
    stuck.tell("block")
    started = time.monotonic()
    executor.shutdown()
    assert time.monotonic() - started < 2
    assert not other.is_alive(), "the others stopped"
    release.set()  # the stuck worker (a daemon) ends its turn, then takes its leave
    assert eventually(lambda: not stuck.is_alive())


def test_waiting_from_outside_times_out() -> None:
    executor = PoolExecutor()
    try:
        with pytest.raises(pykka.Timeout):
            executor.wait(executor.future(), 0.05)
    finally:
        executor.shutdown()


def test_an_idle_actor_is_four_objects_for_the_cyclic_collector() -> None:
    """The actor, its mailbox (its stopped flag too), the mailbox's lock and its reference: a
    full collection walks every idle actor."""
    executor = PoolExecutor(collector=None)
    try:
        executor.wait(executor.spawn(Counter).ask("mail", block=False), 5)  # makes its class
        gc.collect()
        before = len(gc.get_objects())
        refs = [executor.spawn(Counter) for _ in range(100)]
        for ref in refs:
            executor.wait(ref.ask("mail", block=False), 5)
        gc.collect()
        assert len(gc.get_objects()) - before <= 4 * len(refs) + 1  # the list of refs
    finally:
        executor.shutdown()


def test_a_deadline_never_fires_before_its_time_on_either_clock() -> None:
    """Both clocks count whole milliseconds: a deadline `now_ms() + d` is `d` ms of real time
    away, and a wall-clock deadline armed through the GraceTimer fires when the wall clock
    reads it, so a log never says a grace ended before its deadline."""
    executor = PoolExecutor()
    timer = executor.spawn(GraceTimer, executor)
    early: list[str] = []
    done = threading.Semaphore(0)
    count = 200

    class Owner(pykka.Actor):
        def on_receive(self, message: Any) -> None:
            assert isinstance(message, TimerFired)
            if executor.wall_ms() < message.deadline_ms:
                early.append(f"wall {executor.wall_ms()} < {message.deadline_ms}")
            done.release()

    owner = executor.spawn(Owner)

    def at(started_s: float, due_ms: int) -> Callable[[], None]:
        def fired() -> None:
            if (time.monotonic() - started_s) * 1000 < due_ms:
                early.append(f"monotonic {due_ms} ms")
            done.release()

        return fired

    try:
        for n in range(count):
            due_ms = n % 4
            executor.call_at(executor.now_ms() + due_ms, at(time.monotonic(), due_ms))
            deadline = executor.wall_ms() + due_ms
            timer.tell(Arm(owner_key=str(n), timer="grace", deadline_ms=deadline, owner=owner))
            time.sleep(random.random() / 1000)
        assert all(done.acquire(timeout=5) for _ in range(2 * count))
    finally:
        executor.shutdown()
    assert early == []

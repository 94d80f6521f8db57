"""`rejoin bench`: the performance figures of DESIGN section 9, measured on this machine.

Medians over repeats, because these machines are noisy; nothing here is asserted by a test.
"""

from __future__ import annotations

import functools
import itertools
import multiprocessing
import statistics
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import msgspec
import pykka

from actors.bridge import AudioWatch, Bridge
from actors.connector import (
    Deadlines,
    JoinRequest,
    LookupAnswer,
    Nobody,
    RoomData,
    RoomEvent,
    RoomJoined,
)
from actors.deterministic_executor import DeterministicExecutor
from actors.health_feed import HealthFeed
from actors.journal import GROUP
from actors.policy import POLICIES, SUPERVISED
from actors.runtime import Runtime
from actors.session import Session
from events.catalog import GlassesConnected
from events.envelope import Envelope, Pending, stream_name
from events.locations import open_log
from events.log import Batch, EventStore
from events.memory_store import MemoryStore
from events.projection import SessionView, replay
from events.sqlite_store import SQLiteStore
from simulations.scenario import BUILT_IN, SEED_PLAN, load
from simulations.scenario_runner import play, run, world_for
from simulations.sim_livekit import SfuConfig, SimLiveKit
from simulations.world import World


def _median_s(action: Callable[[], object], repeats: int) -> float:
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        timings.append(time.perf_counter() - start)
    return statistics.median(timings)


def compare_wall_s(repeats: int = 5) -> float:
    scenarios = [load(name) for name in BUILT_IN]

    def compare() -> None:
        for scenario in scenarios:
            for policy in POLICIES.values():
                run(scenario, policy)

    return _median_s(compare, repeats)


def reconnect_decision_cpu_us(samples: int = 2_000) -> tuple[float, float]:
    """CPU time of one supervised reconnect turn whose bridge was kicked: from the input to the
    restart request sent, including the append to an in-memory log. Returns (p50, p99)."""
    executor = DeterministicExecutor(0)
    store = MemoryStore()
    connector = SimLiveKit(executor, executor.random, SfuConfig()).connector("prod")
    supervisor = executor.spawn(_Sink)
    timer = executor.spawn(_Sink)
    costs = []
    for sample in range(samples):
        stream = f"prod/u{sample}/1"
        kicked = SessionView(
            stream=stream,
            server="prod",
            user=f"u{sample}",
            incarnation=1,
            version=0,
            state="GRACE",
            epoch=1,
            time_ms=0,
            generation=1,
            bridge="down",
            last_disconnect_reason="DUPLICATE_IDENTITY",
            grace_deadline_ms=60_000,
        )
        session = executor.spawn(
            Session,
            server="prod",
            user=f"u{sample}",
            stream=stream,
            store=store,
            executor=executor,
            policy=SUPERVISED,
            grace_ms=60_000,
            supervisor=supervisor,
            timer=timer,
            connector=connector,
            deadlines=Deadlines(),
            watch=AudioWatch(),
            health=HealthFeed(),
            recovered=kicked,
        )
        executor.run_until_idle()
        session.tell(GlassesConnected(epoch=2))
        start = time.process_time_ns()
        executor.step()
        costs.append((time.process_time_ns() - start) / 1000)
        session.stop(block=False)
        executor.run_until_idle()
    costs.sort()
    return costs[len(costs) // 2], costs[int(len(costs) * 0.99)]


def chunk_cpu_us(chunks: int = 20_000, repeats: int = 3) -> float:
    """CPU time per audio chunk from the phone's packet to the server's sink, through a joined
    Bridge with its watchdog on, delivered by the deterministic executor (one thread): the
    median of `repeats` runs of `chunks` chunks of 100 ms."""
    executor = DeterministicExecutor(0)
    session = executor.spawn(_Sink)
    connector = _HandConnector()
    request = JoinRequest(
        room="u", identity="i", server="prod", epoch=1, generation=1, phone_identity="u"
    )
    executor.spawn(
        Bridge,
        stream="prod/u/1",
        request=request,
        session=session,
        supervisor=session,
        connector=connector,
        executor=executor,
        sink=lambda _chunk: None,
        audio_open=True,
        watching=True,
        watch=AudioWatch(),
    )
    executor.run_until_idle()
    connector.send(RoomJoined(participant_sid="PA_1", participant_count=2, phone_present=True))
    executor.run_until_idle()
    pcm = bytes(3_200)
    per_chunk = []
    for _ in range(repeats):
        start = time.process_time_ns()
        for number in range(chunks):
            connector.send(RoomData(payload=bytes([number % 256]) + pcm))
            executor.run_until_idle()
        per_chunk.append((time.process_time_ns() - start) / chunks / 1000)
    return statistics.median(per_chunk)


class _HandConnector:
    """A connector whose room events the benchmark sends by hand."""

    def __init__(self) -> None:
        self.send: Callable[[RoomEvent], object] = lambda _event: None

    def join(self, request: JoinRequest, on_event: Callable[[RoomEvent], object]) -> _NoHandle:
        self.send = on_event
        return _NoHandle()

    def lookup_holder(
        self, room: str, identity: str, reply: Callable[[LookupAnswer], object]
    ) -> None:
        reply(Nobody())


class _NoHandle:
    def leave(self) -> None:
        """Nothing to leave."""


class _Sink(pykka.Actor):
    """An actor that swallows every message, standing in for the supervisor and the timer."""

    def on_receive(self, message: object) -> None:
        return None


class Turn(NamedTuple):
    """One append as a session makes it: a turn's input and the decisions it led to."""

    stream: str
    expected_version: int
    events: tuple[Pending, ...]


class _Recorder(MemoryStore):
    """A store in memory that keeps every append as it was made, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.turns: list[Turn] = []

    def append(
        self, stream: str, expected_version: int, events: Sequence[Pending]
    ) -> list[Envelope]:
        self.turns.append(Turn(stream, expected_version, tuple(events)))
        return super().append(stream, expected_version, events)


@functools.cache
def seed_turns() -> tuple[tuple[Turn, ...], ...]:
    """Every append the runtime makes in each scenario of the seed's plan, run under the
    supervised policy: the turns of each scenario, in the order they were appended."""
    runs = []
    for name in SEED_PLAN:
        scenario = load(name)
        recorder = _Recorder()
        world = world_for(scenario, SUPERVISED, scenario.seed, recorder)
        play(world, scenario)
        world.stop()
        runs.append(tuple(recorder.turns))
    return tuple(runs)


class AppendFigures(NamedTuple):
    inputs_per_s: float
    """Appends per second, all threads together: a session appends once per input."""
    events_per_input: float
    p50_ms: float
    p99_ms: float
    """Latency of one append, from the call to its return (durable with `synchronous=FULL`)."""


def concurrent_appends(store: EventStore, threads: int, inputs: int) -> AppendFigures:
    """`threads` threads append `inputs` turns in all, each to streams of its own, as sessions
    on a pool of workers do: copies of the seed's turns, replayed in their order."""
    per_thread = max(inputs // threads, 1)
    work = [_copies(seed_turns(), f"t{thread}", per_thread) for thread in range(threads)]
    latencies: list[list[float]] = [[] for _ in range(threads)]
    failures: list[Exception] = []
    start = threading.Barrier(threads + 1)

    def appender(turns: list[Turn], spent: list[float]) -> None:
        start.wait()
        try:
            for turn in turns:
                before = time.perf_counter()
                store.append(turn.stream, turn.expected_version, turn.events)
                spent.append(time.perf_counter() - before)
        except Exception as error:
            failures.append(error)

    workers = [
        threading.Thread(target=appender, args=(turns, spent))
        for turns, spent in zip(work, latencies, strict=True)
    ]
    for worker in workers:
        worker.start()
    start.wait()
    began = time.perf_counter()
    for worker in workers:
        worker.join()
    seconds = time.perf_counter() - began
    if failures:
        raise failures[0]
    every = sorted(latency for spent in latencies for latency in spent)
    appended = [turn for turns in work for turn in turns]
    return AppendFigures(
        inputs_per_s=len(every) / seconds,
        events_per_input=sum(len(turn.events) for turn in appended) / len(appended),
        p50_ms=every[len(every) // 2] * 1000,
        p99_ms=every[int(len(every) * 0.99)] * 1000,
    )


def _copies(
    runs: Sequence[Sequence[Turn]], owner: str, count: int, *, own_users: bool = False
) -> list[Turn]:
    """The first `count` turns of copies of `runs`, each copy on streams and ids of its own
    (and, with `own_users`, users of its own, as a fleet's log has)."""
    every = [(number, turn) for number, turns in enumerate(runs) for turn in turns]
    copied = []
    for index in range(count):
        copy, at = divmod(index, len(every))
        number, turn = every[at]
        tag = f"{owner}.{copy}.{number}"
        events = tuple(
            msgspec.structs.replace(
                pending,
                event_id=f"{tag}.{pending.event_id}",
                user=f"{pending.user}~{tag}" if own_users else pending.user,
            )
            for pending in turn.events
        )
        copied.append(Turn(f"{turn.stream}~{tag}", turn.expected_version, events))
    return copied


def sqlite_appends(
    synchronous: Literal["FULL", "NORMAL"], threads: int = 1, inputs: int = 4_000, repeats: int = 3
) -> AppendFigures:
    """`concurrent_appends` into a new SQLite log, `repeats` times: the median of each figure."""
    runs = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as folder:
            store = SQLiteStore(Path(folder) / "bench.db", synchronous=synchronous)
            runs.append(concurrent_appends(store, threads, inputs))
            store.close()
    return AppendFigures(*(statistics.median(figure) for figure in zip(*runs, strict=True)))


def replay_events_per_s(events: int = 100_000, repeats: int = 3, log: str | None = None) -> float:
    """Read, decode and fold a log of real runtime events: copies of the seed's turns, each
    appended as the runtime appended it, until the log holds at least `events`. The log is a
    new SQLite file, or the new, empty log at `log` (a PostgreSQL URL, say)."""
    with tempfile.TemporaryDirectory() as folder:
        if log is None:
            store: EventStore = SQLiteStore(Path(folder) / "bench.db", synchronous="NORMAL")
        else:
            store = open_log(log)
        seed_copies_log(store, events)
        stored = sum(1 for _ in store.read_all())
        seconds = _median_s(lambda: replay(store.read_all()), repeats)
        store.close()
    return stored / seconds


def seed_copies_log(store: EventStore, events: int, *, own_users: bool = False) -> None:
    """Fill `store` with copies of the seed's turns, each appended as the runtime appended it,
    until it holds at least `events`; with `own_users`, each copy has users of its own, as a
    fleet's long log has."""
    turns_per_copy = sum(len(turns) for turns in seed_turns())
    events_per_copy = sum(len(turn.events) for turns in seed_turns() for turn in turns)
    copies = -(-events // events_per_copy)
    turns = _copies(seed_turns(), "replay", copies * turns_per_copy, own_users=own_users)
    for start in range(0, len(turns), GROUP):
        for outcome in store.append_group([Batch(*turn) for turn in turns[start : start + GROUP]]):
            if isinstance(outcome, Exception):
                raise outcome


def process_appends(log: str, *, writers: int, group: int, inputs: int) -> AppendFigures:
    """`writers` processes, each with the log at `log` open, append `inputs` turns in all, each
    to streams of its own: one turn per `append` (`group` 1), or `group` turns per
    `append_group`, as the journal hands them over. Latency is per call, so a turn of a group
    waits for the whole group, as it does in the runtime."""
    per_writer = max(inputs // writers, 1)
    open_log(log).close()  # the log exists before its writers start, as a fleet's does
    spawn = multiprocessing.get_context("spawn")
    ready = spawn.Barrier(writers + 1)
    results = spawn.Queue()
    processes = [
        spawn.Process(
            target=_append_share,
            args=(_Share(log, f"w{writer}", per_writer, group), ready, results),
        )
        for writer in range(writers)
    ]
    for process in processes:
        process.start()
    ready.wait(timeout=120)
    shares: list[tuple[float, float, list[float]]] = [results.get(timeout=600) for _ in processes]
    for process in processes:
        process.join(timeout=60)
        if process.exitcode != 0:
            msg = f"a writer process failed with exit code {process.exitcode}"
            raise RuntimeError(msg)
    seconds = max(end for _, end, _ in shares) - min(began for began, _, _ in shares)
    every = sorted(latency for _, _, spent in shares for latency in spent)
    turns = _copies(seed_turns(), "w0", per_writer)
    return AppendFigures(
        inputs_per_s=per_writer * writers / seconds,
        events_per_input=sum(len(turn.events) for turn in turns) / len(turns),
        p50_ms=every[len(every) // 2] * 1000,
        p99_ms=every[int(len(every) * 0.99)] * 1000,
    )


class _Share(NamedTuple):
    """What one writer process of `process_appends` appends, and where."""

    log: str
    owner: str
    turns: int
    group: int


def _append_share(share: _Share, ready: Any, results: Any) -> None:
    """One writer process of `process_appends`: its share, then its times on `results`."""
    store = open_log(share.log)
    group = share.group
    turns = _copies(seed_turns(), share.owner, share.turns)
    spent: list[float] = []
    ready.wait(timeout=120)
    began = time.perf_counter()
    for start in range(0, len(turns), group):
        batches = [Batch(*turn) for turn in turns[start : start + group]]
        before = time.perf_counter()
        if group == 1:
            store.append(*batches[0])
        else:
            refused = [o for o in store.append_group(batches) if isinstance(o, Exception)]
            if refused:
                raise refused[0]
        spent.extend([time.perf_counter() - before] * len(batches))
    ended = time.perf_counter()
    store.close()
    results.put((began, ended, spent))


def one_sessions_life() -> list[list[Pending]]:
    """The batches a real session appends over its life (connect, audio, disconnect, grace
    expiry), turn by turn, as the supervised runtime writes them."""
    recorder = _Recorder()
    world = World(servers=["prod"], seed=0, grace_ms=1_000, store_for=lambda _server: recorder)
    world.connect("u", "prod")
    world.run_for(2_000)
    world.disconnect("u")
    world.run_for(2_000)
    world.stop()
    return [list(turn.events) for turn in recorder.turns]


def ended_sessions_log(path: Path, sessions: int) -> SQLiteStore:
    """A new SQLite log at `path` of `sessions` ended sessions on prod, users `u0@example.com`
    on, and one open one after them: each session's real events, as the supervised runtime
    writes them over a life, appended in one batch."""
    store = SQLiteStore(path, synchronous="NORMAL")
    life = one_sessions_life()
    for number in range(sessions + 1):
        user = f"u{number}@example.com"
        turns = life if number < sessions else life[:3]  # the last one stays open
        batch = [
            msgspec.structs.replace(p, event_id=f"{number}-{p.event_id}", user=user)
            for turn in turns
            for p in turn
        ]
        store.append(stream_name("prod", user, 1), 0, batch)
    return store


def startup_with_ended_sessions(
    folder: Path, sessions: int = 100_000, repeats: int = 3
) -> dict[str, float]:
    """Start-up on a log of `sessions` ended sessions (and one open): the seconds until no
    actor has mail, the open session's first turn taken (`startup_s`), and until the slices of
    the supervisor's filter of the log's users, due at once but after any mail, are done too
    (`settled_s`); and the memory of starting from the index of open sessions, beside a full
    replay of the log, which is what start-up did before it had the index. Each session's
    real events are appended in one batch, to build the log in seconds rather than minutes;
    start-up reads it alike."""
    store = ended_sessions_log(folder / "ended.db", sessions)
    events = sum(1 for _ in store.read_all())
    seeds = itertools.count()

    def start(*, settled: bool) -> Runtime:
        # A seed of its own for each start: the same seed would give the same event ids,
        # which the log takes for a retry of the last start's appends.
        executor = DeterministicExecutor(next(seeds))
        sfu = SimLiveKit(executor, executor.random, SfuConfig())
        runtime = Runtime(
            server="prod", executor=executor, store=store, connector=sfu.connector("prod")
        )
        if settled:
            executor.advance(0)  # every timer due now, after the mail
        else:
            executor.run_until_idle()
        return runtime

    def start_s(*, settled: bool) -> float:
        """The median seconds of `repeats` start-ups, each runtime stopped after its timing."""
        timings = []
        for _ in range(repeats):
            began = time.perf_counter()
            runtime = start(settled=settled)
            timings.append(time.perf_counter() - began)
            runtime.stop()
        return statistics.median(timings)

    figures = {
        "events": float(events),
        "startup_s": start_s(settled=False),
        "settled_s": start_s(settled=True),
        "full_replay_s": _median_s(lambda: replay(store.read_all()), 1),
    }
    tracemalloc.start()
    runtime = start(settled=True)
    figures["startup_bytes"] = float(tracemalloc.get_traced_memory()[0])
    tracemalloc.stop()
    runtime.stop()
    tracemalloc.start()
    views = replay(store.read_all())
    figures["full_replay_bytes"] = float(tracemalloc.get_traced_memory()[0])
    tracemalloc.stop()
    del views
    store.close()
    return figures


def _append_line(how: str, figures: AppendFigures) -> str:
    return (
        f"SQLite append of the seed's session turns ({figures.events_per_input:.2f} events "
        f"each), {how}: {figures.inputs_per_s:,.0f} inputs/s, "
        f"p50 {figures.p50_ms:.2f} ms, p99 {figures.p99_ms:.2f} ms, medians of 3 x 4,000 inputs"
    )


def report() -> list[str]:
    p50, p99 = reconnect_decision_cpu_us()
    with tempfile.TemporaryDirectory() as folder:
        startup = startup_with_ended_sessions(Path(folder))
    appends = [
        (threads, "thread" if threads == 1 else "threads", sqlite_appends("FULL", threads))
        for threads in (1, 4, 16)
    ]
    return [
        f"compare, {len(BUILT_IN)} scenarios x {len(POLICIES)} policies (twin runs included): "
        f"{compare_wall_s():.2f} s wall, median of 5",
        f"audio chunk, phone packet to sink through a Bridge and its watchdog: "
        f"{chunk_cpu_us():.1f} us CPU, median of 3 x 20,000",
        f"supervised reconnect decision (input to restart request): "
        f"p50 {p50:.0f} us, p99 {p99:.0f} us CPU",
        *(
            _append_line(f"synchronous=FULL (durable), {threads} appending {named}", figures)
            for threads, named, figures in appends
        ),
        _append_line("synchronous=NORMAL, 1 appending thread", sqlite_appends("NORMAL")),
        f"replay from SQLite (read, decode, fold) of 100k real runtime events: "
        f"{replay_events_per_s():,.0f} events/s",
        f"start-up on a log of 100,000 ended sessions and 1 open "
        f"({startup['events']:,.0f} real events): {startup['startup_s'] * 1000:,.1f} ms until "
        f"idle, {startup['settled_s'] * 1000:,.1f} ms with the filter of its users full, "
        f"{startup['startup_bytes'] / 1e6:.2f} MB held (a full replay, as start-up was: "
        f"{startup['full_replay_s'] * 1000:,.0f} ms and "
        f"{startup['full_replay_bytes'] / 1e6:.1f} MB, once), median of 3",
    ]

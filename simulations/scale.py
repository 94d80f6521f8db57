"""How the runtime's cost grows with its users: the scale section of `rejoin bench`.

Nothing here is asserted by a test: these are measurements, and these machines are noisy.
"""

from __future__ import annotations

import functools
import gc
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import msgspec

from actors.acknowledgement import Acknowledgement
from actors.collector import COLLECTOR, Collector
from actors.connector import JoinRequest, LookupAnswer, Nobody, RoomEvent, RoomJoined
from actors.executor import Executor
from actors.pool_executor import PoolExecutor
from actors.runtime import Runtime
from events.sqlite_store import SQLiteStore
from simulations.world import World

SIMULATED_S = 150
SERVERS = ["prod", "debug", "dev"]


class SimulatedScale(msgspec.Struct, frozen=True, kw_only=True):
    """One run of `simulated`: its wall and CPU time, and what it left in memory."""

    users: int
    phones: str
    collector: str
    """`tended` by the executor (`actors.collector`) or left to `cpython`'s own rule."""
    wall_s: float
    cpu_s: float
    simulated_per_wall: float
    us_per_user_second: float
    """CPU microseconds per simulated user-second."""
    events: int
    actors: int
    rss_per_user_kb: float
    """Resident memory the run added, per user, the in-memory logs included."""


def os_threads() -> int:
    """The process's OS threads, as the kernel counts them (SQLite's and the SDK's included)."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("Threads:"))


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def simulated(
    users: int, *, muted: bool = True, collector: Collector | None = COLLECTOR
) -> SimulatedScale:
    """`users` connect over the first 10 s, round-robin over three servers of one deterministic
    world, and stay while 150 s are simulated, with no audio packets.

    `muted`: each phone is in the room with its microphone muted, as the phone protocol says a
    phone with nothing to say is, so sessions are idle once their bridges have joined (6 events
    a user). Otherwise the phones are in the room, unmuted, and silent: each session notices the
    stall, restarts its bridge twice, then waits (33 events a user).

    `collector`: how the executor tends CPython's cyclic collector, as `rejoin load` has it
    (`actors.collector`); `None` leaves CPython's own rule, which walks every long-lived object
    again each time their number grows by a quarter.
    """
    gc.collect()
    before = rss_bytes()
    start, cpu = time.perf_counter(), time.process_time()
    world = World(servers=SERVERS, seed=users, phones_send=False, collector=collector)
    for number in range(users):
        user = f"u{number}@example.com"
        world.run_until(number * 10_000 // users)
        world.connect(user, SERVERS[number % len(SERVERS)])
        if muted:
            world.mute_phone(user, muted=True)
    world.run_until(SIMULATED_S * 1000)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    added = rss_bytes() - before
    actors = len(world.executor.live_actors())
    events = sum(sum(1 for _ in store.read_all()) for store in world.stores.values())
    world.stop()
    return SimulatedScale(
        users=users,
        phones="muted" if muted else "silent",
        collector="cpython" if collector is None else "tended",
        wall_s=round(wall, 3),
        cpu_s=round(cpu, 3),
        simulated_per_wall=round(SIMULATED_S / wall, 1),
        us_per_user_second=round(cpu * 1e6 / (users * SIMULATED_S), 2),
        events=events,
        actors=actors,
        rss_per_user_kb=round(added / users / 1024, 1),
    )


class InstantRooms:
    """A room server whose joins complete at once: the runtime's cost without the SDK's. The
    user's phone is in each room (`phones`), muted or not; each bridge's event callback is kept
    by room, so that a benchmark can play the phone."""

    def __init__(self, *, phones: bool = True, muted: bool = False) -> None:
        self._phones = phones
        self._muted = muted
        self.callbacks: dict[str, Callable[[RoomEvent], object]] = {}

    def join(self, request: JoinRequest, on_event: Callable[[RoomEvent], object]) -> _Left:
        self.callbacks[request.room] = on_event
        on_event(
            RoomJoined(
                participant_sid=f"PA_{request.room}",
                participant_count=1 + self._phones,
                phone_present=self._phones,
                phone_muted=self._phones and self._muted,
            )
        )
        return _Left()

    def lookup_holder(
        self, room: str, identity: str, reply: Callable[[LookupAnswer], object]
    ) -> None:
        reply(Nobody())


class _Left:
    def leave(self) -> None:
        """Nothing to release."""


class ConnectScale(msgspec.Struct, frozen=True, kw_only=True):
    """One run of `durable_connects`."""

    executor: str
    users: int
    shared_log: bool
    """Each connect was also recorded in its user's fleet stream."""
    offered_per_s: int | None
    """The rate the inputs were offered at; `None`: as fast as one thread could."""
    connects_per_s: float
    """Glasses connections acknowledged per second, from the first to the last."""
    inputs_per_s: float
    """Inputs made durable per second: a session's turn is one input and one append (a
    connection makes two: the glasses' input, and the bridge's join)."""
    p50_ms: float
    p99_ms: float
    """From the input to its acknowledgement: the session's turn, its decisions included, is
    in the log, and the session hands the host its position (`Acknowledgement.on_durable`)."""
    cpu_us_per_input: float
    """The process's CPU time (every thread's, the bench's own included) per input made
    durable: less disturbed than the rates by other work on the machine."""
    commits: int
    """SQLite transactions: `inputs / commits` inputs shared each fsync."""
    os_threads: int
    rss_per_user_kb: float


def durable_connects(
    executor: Executor,
    folder: Path,
    users: int,
    offered_per_s: int | None,
    *,
    shared_log: bool = False,
) -> ConnectScale:
    """`users` glasses connect to one runtime on `executor`, with a durable SQLite log
    (`synchronous=FULL`) and `InstantRooms` with muted phones, at `offered_per_s` inputs a
    second. The pool executor tends the cyclic collector itself unless it was made with
    `collector=None` (see `actors.collector`).

    `shared_log`: the runtime is told a fleet shares its log, so each connect also records
    itself in the user's fleet stream, one append of its own in the session's turn."""
    store = SQLiteStore(folder / "connects.db")
    gc.collect()
    before = rss_bytes()
    runtime = Runtime(
        server="prod",
        executor=executor,
        store=store,
        connector=InstantRooms(muted=True),
        shared_log=shared_log,
    )
    latencies: list[float] = []

    def heard(offered: float, _position: int) -> None:
        latencies.append(time.perf_counter() - offered)

    acks: list[Acknowledgement] = []
    began, cpu = time.perf_counter(), time.process_time()
    for number in range(users):
        if offered_per_s is not None:
            due = began + number / offered_per_s
            while (ahead := due - time.perf_counter()) > 0:
                time.sleep(ahead)
        # As a host hears of it (`rejoin.aio`): a callback, not a thread waiting on each input.
        ack = runtime.glasses_connected(f"u{number}@example.com")
        ack.on_durable(functools.partial(heard, time.perf_counter()))
        acks.append(ack)
    for ack in acks:
        ack.wait(60)
    seconds, cpu = time.perf_counter() - began, time.process_time() - cpu
    del acks
    threads = os_threads()
    gc.collect()
    added = rss_bytes() - before
    latencies.sort()
    figures = ConnectScale(
        executor=type(executor).__name__,
        users=users,
        shared_log=shared_log,
        offered_per_s=offered_per_s,
        connects_per_s=round(users / seconds),
        inputs_per_s=round(store.grouped / seconds),
        p50_ms=round(latencies[len(latencies) // 2] * 1000, 2),
        p99_ms=round(latencies[int(len(latencies) * 0.99)] * 1000, 2),
        cpu_us_per_input=round(cpu * 1e6 / store.grouped, 1),
        commits=store.commits,
        os_threads=threads,
        rss_per_user_kb=round(added / users / 1024, 1),
    )
    runtime.stop()
    store.close()
    return figures


def report(counts: list[int]) -> list[str]:
    """The scale section of `rejoin bench --scale`: the simulation at each count of users, then
    durable connects of the largest count through the pool executor, offered at 1,000 a second
    and flat out."""
    lines = []
    for users in counts:
        run = simulated(users)
        lines.append(
            f"simulation, {users:,} idle users x {SIMULATED_S} s: {run.wall_s:.2f} s wall, "
            f"{run.us_per_user_second:.2f} us CPU per user-second, "
            f"{run.rss_per_user_kb:.1f} KB per user"
        )
    for offered in (1_000, None):
        executor = PoolExecutor()
        with tempfile.TemporaryDirectory() as folder:
            connects = durable_connects(executor, Path(folder), max(counts), offered)
        executor.shutdown()
        rate = "flat out" if offered is None else f"offered {offered:,}/s"
        lines.append(
            f"durable connects on the pool, {connects.users:,} users, {rate}: "
            f"{connects.connects_per_s:,.0f} connects/s, p50 {connects.p50_ms:.1f} ms, "
            f"p99 {connects.p99_ms:.1f} ms, {connects.os_threads} threads"
        )
    return lines

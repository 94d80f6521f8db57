"""How the runtime's cost grows with its users: the scale section of `rejoin bench`.

Nothing here is asserted by a test: these are measurements, and these machines are noisy.
"""

from __future__ import annotations

import gc
import os
import time

import msgspec

from simulations.world import World

SIMULATED_S = 150
SERVERS = ["prod", "debug", "dev"]


class SimulatedScale(msgspec.Struct, frozen=True, kw_only=True):
    """One run of `simulated`: its wall and CPU time, and what it left in memory."""

    users: int
    phones: str
    collector: str
    wall_s: float
    cpu_s: float
    simulated_per_wall: float
    us_per_user_second: float
    """CPU microseconds per simulated user-second."""
    events: int
    actors: int
    rss_per_user_kb: float
    """Resident memory the run added, per user, the in-memory logs included."""


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def simulated(users: int, *, muted: bool = True, frozen: bool = False) -> SimulatedScale:
    """`users` connect over the first 10 s, round-robin over three servers of one deterministic
    world, and stay while 150 s are simulated, with no audio packets.

    `muted`: each phone is in the room with its microphone muted, as the phone protocol says a
    phone with nothing to say is, so sessions are idle once their bridges have joined (6 events
    a user). Otherwise the phones are in the room, unmuted, and silent: each session notices the
    stall, restarts its bridge twice, then waits (33 events a user).

    `frozen`: `gc.freeze()` after every 1,000 connects, so that what has settled leaves
    CPython's cyclic collector, which otherwise walks every long-lived object again each time
    their number grows by a quarter: the one cost that grows with the number of users.
    """
    gc.collect()
    before = rss_bytes()
    start, cpu = time.perf_counter(), time.process_time()
    world = World(servers=SERVERS, seed=users, phones_send=False)
    for number in range(users):
        user = f"u{number}@example.com"
        world.run_until(number * 10_000 // users)
        world.connect(user, SERVERS[number % len(SERVERS)])
        if muted:
            world.mute_phone(user, muted=True)
        if frozen and number % 1_000 == 999:
            gc.freeze()
    world.run_until(SIMULATED_S * 1000)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    added = rss_bytes() - before
    actors = len(world.executor.live_actors())
    events = sum(sum(1 for _ in store.read_all()) for store in world.stores.values())
    world.stop()
    gc.unfreeze()
    return SimulatedScale(
        users=users,
        phones="muted" if muted else "silent",
        collector="frozen" if frozen else "default",
        wall_s=round(wall, 3),
        cpu_s=round(cpu, 3),
        simulated_per_wall=round(SIMULATED_S / wall, 1),
        us_per_user_second=round(cpu * 1e6 / (users * SIMULATED_S), 2),
        events=events,
        actors=actors,
        rss_per_user_kb=round(added / users / 1024, 1),
    )

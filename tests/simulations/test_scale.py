"""What idle users leave for CPython's cyclic collector. Its full passes walk every tracked
object, and they come more often as the heap grows: each object an idle user keeps is walked
again and again in a large run, the one cost per user that grows with the number of users."""

import gc

from simulations.scale import SERVERS
from simulations.world import World


def idle_users(world: World, first: int, count: int) -> None:
    for number in range(first, first + count):
        user = f"u{number}@example.com"
        world.connect(user, SERVERS[number % len(SERVERS)])
        world.mute_phone(user, muted=True)
    world.run_for(30_000)  # joined, and every join deadline past


def test_an_idle_user_is_at_most_13_objects_for_the_cyclic_collector() -> None:
    """A session, a bridge, their mailboxes and references, and what the room and the log keep
    for them (13 in all)."""
    world = World(servers=SERVERS, seed=0, phones_send=False)
    idle_users(world, 0, 3)  # the runtime classes, once
    gc.collect()
    before = len(gc.get_objects())
    idle_users(world, 3, 300)
    gc.collect()
    assert len(gc.get_objects()) - before <= 13 * 300 + 30  # and a few for the world's own

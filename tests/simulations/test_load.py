"""A fleet under load: a server's failure sends all its users elsewhere at once."""

from simulations.invariants import all_violations
from simulations.world import RECONNECT_AFTER_CRASH_MS, World


def test_a_failover_sends_a_dead_servers_users_to_the_others_in_turn() -> None:
    world = World(servers=["prod", "debug", "dev"], seed=5)
    users = [f"u{number}@example.com" for number in range(4)]
    for user in users:
        world.connect(user, "prod")
    world.connect("stays@example.com", "debug")
    world.run_until(3_000)
    assert world.fail_over("prod", ["debug", "dev"]) == users
    assert all(world.where(user) is None for user in users)
    world.run_until(3_000 + RECONNECT_AFTER_CRASH_MS)
    assert [world.where(user) for user in users] == ["debug", "dev", "debug", "dev"]
    world.run_until(8_000)
    for user in users:
        assert world.deliveries.heard(user, world.where(user) or "", after_ms=7_500, until_ms=8_000)
        assert world.session_open("prod", user), "the restarted prod holds them in grace"
        assert world.health("prod", user) is None
    assert all_violations(world) == []

"""Policies: the rules that decide when a bridge is started, kept, restarted or stopped.

`supervised` is the product's default; the other five reproduce the seed's options so they can
be compared on the same scenarios (DESIGN section 4).
"""

from __future__ import annotations

from typing import Literal

import msgspec

from actors.restart_budget import RestartBudget

OnReconnect = Literal["reuse", "status_check", "health_check", "restart"]


class Policy(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    summary: str
    on_reconnect: OnReconnect
    """What a reconnect within grace does with the bridge it finds."""
    stop_bridge_on_grace: bool = False
    identity_per_server: bool = False
    rejoin_guard_ms: int = 0
    """A fixed window after a rejoin in which another rejoin is skipped (0: none)."""
    supervise_losses: bool = False
    """Restart after transient losses, fence duplicate-identity kicks by epoch, use the budget."""
    audio_only_when_active: bool = False
    """Hand audio to the server only while the glasses are connected to it."""
    limit_joins: bool = False
    """Start bridges no faster than the server's join limiter allows, when it has one."""
    shared_log: bool = False
    """The servers of the fleet share one log: each records its glasses connections in the
    user's fleet stream, and a bridge kicked while active fences by that stream before it asks
    the room service (set by the runtime, from its `shared_log`)."""
    budget: RestartBudget = RestartBudget()

    def identity(self, user: str, server: str) -> str:
        if self.identity_per_server:
            return f"cloud-agent-{server}:{user}"
        return f"cloud-agent:{user}"


LEGACY = Policy(
    name="legacy",
    summary="before the fix: a reconnect within grace reuses the bridge as it is",
    on_reconnect="reuse",
)
STATUS_CHECK = Policy(
    name="status-check",
    summary="option 1 as shipped: ask status on reconnect, one rejoin, fixed 2 s guard",
    on_reconnect="status_check",
    rejoin_guard_ms=2_000,
)
HEALTH_CHECK = Policy(
    name="health-check",
    summary="option 2: check health on reconnect; if unhealthy dispose and re-initialise",
    on_reconnect="health_check",
)
DISPOSE_ON_GRACE = Policy(
    name="dispose-on-grace",
    summary="option 3: dispose the bridge when grace starts, start fresh on reconnect",
    on_reconnect="restart",
    stop_bridge_on_grace=True,
)
PER_SERVER_IDENTITY = Policy(
    name="per-server-identity",
    summary="option 4: identity cloud-agent-{server}:{user}, no kicks, several bridges",
    on_reconnect="reuse",
    identity_per_server=True,
)
SUPERVISED = Policy(
    name="supervised",
    summary="status on reconnect, reason-aware restarts, epoch fencing, restart budget",
    on_reconnect="status_check",
    supervise_losses=True,
    audio_only_when_active=True,
    limit_joins=True,
)

POLICIES: dict[str, Policy] = {
    policy.name: policy
    for policy in (
        LEGACY,
        STATUS_CHECK,
        HEALTH_CHECK,
        DISPOSE_ON_GRACE,
        PER_SERVER_IDENTITY,
        SUPERVISED,
    )
}


class UnknownPolicy(ValueError):
    pass


def policy_named(name: str) -> Policy:
    try:
        return POLICIES[name]
    except KeyError:
        known = ", ".join(POLICIES)
        msg = f"unknown policy {name!r} (known: {known})"
        raise UnknownPolicy(msg) from None

"""CPython's cyclic collector, tended by an executor while it runs.

By default CPython walks every tracked object again each time the objects that survived its
young collections outnumber a quarter of those its last full pass kept. While thousands of
users connect, what a connect makes lives long enough to count (join deadlines, replies in
flight) before it dies, so full passes come often, each over every session so far: with
100,000 simulated users, 17 passes took 10 of the run's 30 s of CPU; on the pool, each is a
pause of 0.1-0.5 s holding the GIL, which every input arriving meanwhile waits out.

So an executor that owns the collector calls `gc.freeze()` every `freeze_every_s` of its
clock: what has survived so far (settled sessions and bridges) leaves the collector's
generations, and young collections go on as before. Frozen objects are still freed by their
reference counts; only garbage in a reference cycle waits, for the full collection after
`gc.unfreeze()` every `collect_every_s`, or for the executor's shutdown, which unfreezes. So
cyclic garbage lives at most that long, and a full pass comes at a fixed period instead of with
every quarter of growth.
"""

from __future__ import annotations

import gc

import msgspec


class Collector(msgspec.Struct, frozen=True, kw_only=True):
    """How an executor tends the collector (see the module's docstring).

    Every stopped actor is cyclic garbage (an actor and its reference hold each other), so
    where actors churn the full collection comes sooner: once more than `stopped_share` of the
    live actors, and at least `stopped_at_least`, have stopped since the last one, as CPython's
    own rule counts a quarter of growth, but in actors that ended rather than objects made.
    And an executor starting collects in full before its first freeze, so it never freezes
    garbage made before it (a runtime stopped a moment ago)."""

    freeze_every_s: float = 0.1
    collect_every_s: float = 600.0
    stopped_share: float = 0.25
    stopped_at_least: int = 1_000


COLLECTOR = Collector()


class Tending:
    """One executor's hold on the collector, on that executor's clock. The executor calls
    `tend` every `period_ms` with the actors it has live and those stopped since the last full
    collection, and `end` when it shuts down."""

    def __init__(self, collector: Collector, now_ms: int) -> None:
        self._collector = collector
        self._collect_at = now_ms
        """When the next full collection is due: at once, before the first freeze."""
        self.period_ms = max(1, int(collector.freeze_every_s * 1000))

    def tend(self, now_ms: int, *, live: int, stopped: int) -> bool:
        """Freeze what survived so far, after a full collection when one is due; whether it
        collected (then `stopped`, the actors stopped since the last one, counts from zero)."""
        collector = self._collector
        churned = stopped > max(collector.stopped_at_least, live * collector.stopped_share)
        collected = churned or now_ms >= self._collect_at
        if collected:
            gc.unfreeze()
            gc.collect()
            self._collect_at = now_ms + int(collector.collect_every_s * 1000)
        gc.freeze()
        return collected

    def end(self) -> None:
        """What was frozen goes back to the collector: its cycles are garbage it may free."""
        gc.unfreeze()

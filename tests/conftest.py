"""Hypothesis profiles: `ci` (the default of `make test`) is derandomized and runs 200 examples,
so CI is stable and a failure reproduces exactly; `dev` is quicker and explores new examples.
And the log a fleet of servers shares, of every kind of store."""

import itertools
import os
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, settings

from events.log import EventStore
from events.memory_store import MemoryStore
from events.sqlite_store import SQLiteStore

settings.register_profile(
    "ci",
    max_examples=200,
    derandomize=True,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "dev", max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


@pytest.fixture(scope="module", params=["memory", "sqlite"])
def fleet_log(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[], EventStore]:
    """Makes a fresh, empty log for every server of a fleet to share, of each kind of store
    (a PostgreSQL store joins `params`). Module-scoped, so hypothesis tests may call it once
    per example."""
    if request.param == "memory":
        return MemoryStore
    folder = tmp_path_factory.mktemp("fleet")
    count = itertools.count(1)
    return lambda: SQLiteStore(folder / f"fleet-{next(count)}.db", synchronous="NORMAL")

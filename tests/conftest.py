"""Hypothesis profiles: `ci` (the default of `make test`) is derandomized and runs 200 examples,
so CI is stable and a failure reproduces exactly; `dev` is quicker and explores new examples.
Every module of the product is imported first: Hypothesis draws some values from the constants
of the local modules already imported, so otherwise a derandomized test would try other
examples when run alone than in the whole suite.
And the log a fleet of servers shares, of every kind of store; tests of the PostgreSQL log share
one throwaway server, started when the first asks for it."""

import importlib
import itertools
import os
import pkgutil
from collections.abc import Callable, Iterator

import psycopg
import pytest
from hypothesis import HealthCheck, settings

from events.log import EventStore
from events.memory_store import MemoryStore
from events.postgres_store import PostgresStore
from events.sqlite_store import SQLiteStore
from simulations.throwaway_postgres import ThrowawayPostgres

PRODUCT = ("events", "actors", "simulations", "rejoin")


def import_the_product() -> None:
    """Import every module of the product's packages, but no `__main__`."""
    for package in PRODUCT:
        path = importlib.import_module(package).__path__
        for module in pkgutil.walk_packages(path, prefix=f"{package}."):
            if not module.name.endswith(".__main__"):
                importlib.import_module(module.name)


import_the_product()
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


@pytest.fixture(scope="session")
def postgres() -> Iterator[ThrowawayPostgres]:
    """One throwaway PostgreSQL server for the whole run, on a unix socket, removed after it."""
    with ThrowawayPostgres() as server:
        yield server


@pytest.fixture
def postgres_url(postgres: ThrowawayPostgres) -> str:
    """The URL of a new, empty database of its own."""
    return postgres.new_database()


@pytest.fixture(scope="module", params=["memory", "sqlite", "postgresql"])
def fleet_log(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[[], EventStore]]:
    """Makes a fresh, empty log for every server of a fleet to share, of each kind of store.
    Module-scoped, so hypothesis tests may call it once per example: the PostgreSQL log is one
    database, emptied (its tables dropped) for each new log, the last one closed first."""
    if request.param == "memory":
        yield MemoryStore
    elif request.param == "sqlite":
        folder = tmp_path_factory.mktemp("fleet")
        count = itertools.count(1)
        yield lambda: SQLiteStore(folder / f"fleet-{next(count)}.db", synchronous="NORMAL")
    else:
        url = request.getfixturevalue("postgres").new_database()
        opened: list[PostgresStore] = []

        def fresh() -> EventStore:
            while opened:
                opened.pop().close()
            with psycopg.connect(url, autocommit=True) as db:
                db.execute("DROP TABLE IF EXISTS rejoin_events, rejoin_sessions, rejoin_meta")
            opened.append(PostgresStore(url))
            return opened[-1]

        yield fresh
        while opened:
            opened.pop().close()

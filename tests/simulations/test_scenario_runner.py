"""Running a scenario: where its log goes never changes its results, names are never confused,
and a run records its end."""

from pathlib import Path

import pytest

from actors.policy import POLICIES
from events.catalog import RunEnded, RunStarted
from events.memory_store import MemoryStore
from events.sqlite_store import SQLiteStore
from simulations.metrics import RUN_STREAM
from simulations.scenario import BUILT_IN, load, parse
from simulations.scenario_runner import run

EXAMPLES = sorted((Path(__file__).parents[2] / "examples").glob("*.toml"))
SCENARIOS = [*BUILT_IN, *(str(path) for path in EXAMPLES)]


@pytest.mark.parametrize("reference", SCENARIOS, ids=lambda r: Path(r).stem)
def test_a_shared_log_gives_the_same_results_as_one_log_per_server(reference: str) -> None:
    scenario = load(reference)
    for policy in POLICIES.values():
        alone = run(scenario, policy)
        shared = run(scenario, policy, store=MemoryStore())
        assert shared == alone, f"{policy.name}: --events changed the results"


def test_the_grace_invariant_names_each_violation_once_and_on_its_own_server() -> None:
    result = run(load("multiple-switches"), POLICIES["dispose-on-grace"], store=MemoryStore())
    grace = sorted(v.split(" after")[0] for v in result.invariant_violations if "grace:" in v)
    assert grace == [
        "grace: debug restarted the healthy bridge of debug/isaiah@mentra.glass/1",
        "grace: prod restarted the healthy bridge of prod/isaiah@mentra.glass/1",
        "grace: prod restarted the healthy bridge of prod/isaiah@mentra.glass/1",
    ]


def test_the_grace_invariant_names_when_the_blip_began_in_the_scenarios_time() -> None:
    result = run(load("rapid-switch"), POLICIES["dispose-on-grace"])
    grace = [v for v in result.invariant_violations if "grace:" in v]
    assert grace
    assert all("after a blip that began at 3000 ms " in v for v in grace), grace


def test_a_slash_in_a_user_name_does_not_mix_two_servers_sessions(tmp_path: Path) -> None:
    scenario = parse(
        b"""servers = ["a", "a/b"]
[[step]]
at = 0
user = "b/c"
connect = "a"
[[step]]
at = 0
user = "c"
connect = "a/b"
[[expect]]
at = 5
user = "b/c"
audio_on = "a"
[[expect]]
at = 5
user = "c"
audio_on = "a/b"
""",
        "slashes.toml",
        default_name="slashes",
    )
    store = SQLiteStore(tmp_path / "log.db")
    result = run(scenario, POLICIES["supervised"], store=store)
    assert result.passed, result
    streams = {(e.server, e.user, e.stream) for e in store.read_all() if e.stream != RUN_STREAM}
    assert streams == {("a", "b/c", "a/b%2Fc/1"), ("a/b", "c", "a%2Fb/c/1")}
    store.close()


def test_a_run_records_its_start_and_its_end() -> None:
    store = MemoryStore()
    run(load("rapid-switch"), POLICIES["supervised"], store=store)
    recorded = [e for e in store.read_all() if e.stream == RUN_STREAM]
    assert [type(e.event) for e in recorded] == [RunStarted, RunEnded]
    assert recorded[1].time_ms - recorded[0].time_ms == 15_000, "at the scenario's end"

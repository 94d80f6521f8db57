"""Whatever a user or an attacker feeds the CLI: scenario files mutated every way hypothesis can
think of, logs damaged byte by byte, page by page and at every page boundary, and logs forged
with valid checksums around garbage. The contract: exit 0, 1 or 2; a bad input is one line
naming the file; never a traceback; never a hang; a replay keeps every record a plain
row-by-row reader can read; and the file read is the same, byte for byte, afterwards."""

import contextlib
import copy
import io
import json
import math
import signal
import sqlite3
import subprocess
import sys
import tempfile
import typing
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from events.catalog import (
    AnyEvent,
    BridgeStarted,
    ConnectionRecorded,
    GlassesConnected,
    GlassesDisconnected,
    GraceStarted,
    RunEnded,
    RunStarted,
    SessionDisposed,
    SessionOpened,
)
from events.envelope import Pending, stream_name
from events.fleet import fleet_stream
from events.log import EventStore, LogError, read_valid_prefix
from events.sqlite_store import SQLiteStore
from rejoin.cli import main
from simulations.world import World
from tests.events.reference_reader import readable_records

ROOT = Path(__file__).parents[2]
HOSTILE = sorted((Path(__file__).parent / "hostile").glob("*.toml"))
PAGE = 4096
SECONDS_PER_RUN = 60
"""A run that takes longer than this has hung: every valid run is bounded far below it."""

FUZZ = settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


class Hang(BaseException):
    """A command ran past its bound (a BaseException, so that no handler can swallow it)."""


@contextlib.contextmanager
def bounded(seconds: float) -> Iterator[None]:
    def expire(_signal: int, _frame: FrameType | None) -> None:
        raise Hang(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def rejoin(*argv: str) -> tuple[int, str, str]:
    """The command in this process: any exception escaping `main` fails the test."""
    out, err = io.StringIO(), io.StringIO()
    with bounded(SECONDS_PER_RUN), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def assert_refused_in_one_line(code: int, out: str, err: str, path: Path) -> None:
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1, err
    assert err.startswith(f"rejoin: {path}"), err


# Scenario documents: valid ones, then mutated

SERVER_NAMES = ["prod", "debug", "dev", "a/b", "%2F", "ünï", "cloud-agent:x"]
USER_NAMES = ["isaiah@mentra.glass", "b/c", "c", "%", "émile"]


@st.composite
def scenarios(draw: st.DrawFn) -> dict[str, Any]:
    """A valid scenario document: a few users over a few servers, every kind of step."""
    servers = draw(st.lists(st.sampled_from(SERVER_NAMES), min_size=1, max_size=3, unique=True))
    users = draw(st.lists(st.sampled_from(USER_NAMES), min_size=1, max_size=2, unique=True))
    duration = draw(st.integers(min_value=1, max_value=90))
    times = st.floats(min_value=0, max_value=duration, allow_nan=False).map(lambda t: round(t, 3))
    steps = []
    for at in sorted(draw(st.lists(times, max_size=8))):
        action = draw(
            st.sampled_from(
                [
                    "connect",
                    "connect",
                    "disconnect",
                    "sfu_outage_s",
                    "remove_bridge",
                    "crash",
                    "signal_loss",
                    "log_fault",
                    "room_service_fault",
                ]
            )
        )
        value: object = draw(st.sampled_from(servers))
        if action == "disconnect":
            value = True
        elif action == "sfu_outage_s":
            value = draw(st.sampled_from([0.5, 3.0, 20.0]))
        step = {"at": at, "user": draw(st.sampled_from(users)), action: value}
        if action in ("log_fault", "room_service_fault"):
            step["for_s"] = draw(st.sampled_from([0.5, 5.0, 30.0]))
        steps.append(step)
    expects = [
        {
            "at": at,
            "user": draw(st.sampled_from(users)),
            draw(st.sampled_from(["audio_on", "no_audio_on", "session_on", "no_session_on"])): draw(
                st.sampled_from(servers)
            ),
        }
        for at in draw(st.lists(times, max_size=4))
    ]
    return {
        "name": "fuzzed",
        "servers": servers,
        "grace_s": draw(st.sampled_from([0.5, 5.0, 60.0])),
        "duration_s": duration,
        "seed": draw(st.integers(min_value=0, max_value=2**63 - 1)),
        "sfu": {
            "join_latency_ms": sorted(
                draw(st.lists(st.integers(0, 2_000), min_size=2, max_size=2))
            ),
            "audio_chunk_ms": draw(st.sampled_from([20, 100, 1_000])),
            "token_ttl_s": draw(st.sampled_from([1.0, 30.0, 600.0])),
        },
        "step": steps,
        "expect": expects,
    }


class Deep:
    """A value nested `depth` arrays deep, written without recursion."""

    def __init__(self, depth: int) -> None:
        self.depth = depth


HOSTILE_VALUES: list[object] = [
    math.nan,
    math.inf,
    -math.inf,
    1e308,
    -1,
    0,
    0.0001,
    10**18,
    2**63 - 1,
    "",
    " prod",
    "x\x1b[31m",
    "a" * 300,
    "prod",
    True,
    [],
    {},
    [1, 2, 3],
    {"nested": {"deeper": [1]}},
    Deep(5_000),
]


def hostile(draw: st.DrawFn) -> object:
    """A hostile value of its own: a later mutation may change it in place."""
    return copy.deepcopy(draw(st.sampled_from(HOSTILE_VALUES)))


def paths(document: object, prefix: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    found = [prefix] if prefix else []
    if isinstance(document, dict):
        for key, value in document.items():
            found += paths(value, (*prefix, key))
    elif isinstance(document, list):
        for index, value in enumerate(document):
            found += paths(value, (*prefix, index))
    return found


@st.composite
def mutated_scenarios(draw: st.DrawFn) -> dict[str, Any]:
    """A valid document with one to three values replaced, removed, or added beside."""
    document = draw(scenarios())
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        path = draw(st.sampled_from(paths(document)))
        *parents, last = path
        holder: Any = document
        for part in parents:
            holder = holder[part]
        change = draw(st.sampled_from(["replace", "replace", "remove", "add"]))
        if change == "remove":
            del holder[last]
        elif change == "add" and isinstance(holder, dict):
            holder[draw(st.sampled_from(["bogus", "for_s", "user", "at"]))] = hostile(draw)
        else:
            holder[last] = hostile(draw)
        if not paths(document):
            break
    return document


def toml_value(value: object) -> str:
    if isinstance(value, Deep):
        return "[" * value.depth + "]" * value.depth
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    assert isinstance(value, dict)
    return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"


def to_toml(document: dict[str, Any]) -> str:
    """The document as a person writes it: tables and arrays of tables where they fit, inline
    values elsewhere."""
    lines, tables = [], []
    for key, value in document.items():
        if isinstance(value, dict):
            tables.append(f"\n[{key}]")
            tables += [f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()]
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for item in value:
                tables.append(f"\n[[{key}]]")
                tables += [f"{json.dumps(k)} = {toml_value(v)}" for k, v in item.items()]
        else:
            lines.append(f"{json.dumps(key)} = {toml_value(value)}")
    return "\n".join(lines + tables) + "\n"


@FUZZ
@given(document=mutated_scenarios())
def test_a_mutated_scenario_is_refused_in_one_line_or_runs(
    document: dict[str, Any], tmp_path: Path
) -> None:
    path = tmp_path / "fuzzed.toml"
    path.write_text(to_toml(document), encoding="utf-8")
    code, out, err = rejoin("simulate", str(path))
    assert code in (0, 1, 2)
    if code == 2:
        assert_refused_in_one_line(code, out, err, path)
    else:
        assert err == ""


@settings(FUZZ, max_examples=25)
@given(document=scenarios())
def test_a_valid_scenario_reports_the_same_metrics_live_and_replayed(
    document: dict[str, Any], tmp_path: Path
) -> None:
    log = tmp_path / f"run-{len(list(tmp_path.iterdir()))}.db"
    path = tmp_path / "fuzzed.toml"
    path.write_text(to_toml(document), encoding="utf-8")
    code, out, err = rejoin("simulate", str(path), "--events", str(log), "--json")
    assert code in (0, 1), err
    code, replayed, err = rejoin("replay", str(log), "--json")
    assert (code, err) == (0, "")
    simulated = json.loads(out)[0]
    assert json.loads(replayed)[0]["metrics"] == simulated["metrics"]
    assert json.loads(replayed)[0]["complete"] is True


@pytest.mark.parametrize("path", HOSTILE, ids=lambda path: path.stem)
def test_the_hostile_corpus_is_refused_in_one_line_by_the_command_a_user_types(
    path: Path,
) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "rejoin.cli", "simulate", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=SECONDS_PER_RUN,
        check=False,
    )
    assert_refused_in_one_line(completed.returncode, completed.stdout, completed.stderr, path)


def test_two_scenarios_of_one_name_are_refused_by_compare(tmp_path: Path) -> None:
    first, second = tmp_path / "a.toml", tmp_path / "b.toml"
    for path in (first, second):
        path.write_text('name = "same"\nservers = ["prod"]\n')
    code, out, err = rejoin("compare", str(first), str(second))
    assert_refused_in_one_line(code, out, err, second)


# Logs: damaged, and forged


@pytest.fixture(scope="module")
def recorded_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real run's log: every fault of examples/faults.toml, a few hundred records."""
    log = tmp_path_factory.mktemp("recorded") / "faults.db"
    code, _, err = rejoin("simulate", str(ROOT / "examples" / "faults.toml"), "--events", str(log))
    assert code == 0, err
    assert log.stat().st_size > 8 * PAGE, "enough pages for tables, indexes and interior pages"
    return log


def replay_contract(log: Path) -> None:
    """Replay `log` every way; check the contract."""
    before = log.read_bytes()
    names = sorted(p.name for p in log.parent.iterdir())
    with tempfile.TemporaryDirectory() as elsewhere:
        picture = str(Path(elsewhere) / "picture.html")
        for argv in (
            ["replay", str(log)],
            ["replay", str(log), "--json"],
            ["replay", str(log), "--html", picture],
        ):
            code, out, err = rejoin(*argv)
            assert code in (0, 2)
            assert err.count("\n") <= 2
            if code == 2:
                assert_refused_in_one_line(code, out, err, log)
            elif argv[-1] == picture:
                assert "<script" not in Path(picture).read_text(encoding="utf-8")
    with contextlib.suppress(Exception):
        store = SQLiteStore(log, read_only=True)
        kept, _ = read_valid_prefix(store)
        store.close()
        assert len(kept) >= readable_records(log), "a record a row-by-row reader reads was lost"
    assert log.read_bytes() == before, "the reader wrote to what it read"
    assert sorted(p.name for p in log.parent.iterdir()) == names, "the reader made files"


Damage = tuple[str, int, int]


def damage(data: bytearray, change: Damage) -> None:
    kind, where, value = change
    if kind == "flip":
        data[where % len(data)] ^= 1 << (value % 8)
    elif kind == "zero-page":
        page = where % (len(data) // PAGE)
        data[page * PAGE : (page + 1) * PAGE] = bytes(PAGE)
    else:
        del data[(where % (len(data) // PAGE) + 1) * PAGE :]


damages = st.tuples(
    st.sampled_from(["flip", "flip", "zero-page", "truncate"]),
    st.integers(min_value=0, max_value=2**20),
    st.integers(min_value=0, max_value=7),
)


@FUZZ
@given(changes=st.lists(damages, min_size=1, max_size=3))
def test_a_damaged_log_replays_its_valid_prefix_or_is_refused(
    changes: list[Damage], recorded_log: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    log = tmp_path_factory.mktemp("damaged") / "log.db"
    data = bytearray(recorded_log.read_bytes())
    for change in changes:
        damage(data, change)
    log.write_bytes(bytes(data))
    replay_contract(log)


def test_a_log_cut_at_every_page_boundary_replays_or_is_refused(
    recorded_log: Path, tmp_path: Path
) -> None:
    data = recorded_log.read_bytes()
    for pages in range(len(data) // PAGE):
        log = tmp_path / f"cut-{pages}" / "log.db"
        log.parent.mkdir()
        log.write_bytes(data[: pages * PAGE])
        replay_contract(log)


EVENT_TYPES = typing.get_args(AnyEvent)
NAMES = st.sampled_from(["", "prod", "a/b", "x\x1b[2J", "\u202e", "run", "émile", "a" * 1000])


@st.composite
def forged_records(draw: st.DrawFn) -> list[tuple[str, Pending]]:
    """Records any writer could append with valid checksums: garbage in the right shape."""
    records = []
    for index in range(draw(st.integers(min_value=1, max_value=30))):
        event = draw(st.one_of([st.from_type(t) for t in EVENT_TYPES]))
        if isinstance(event, RunStarted) and draw(st.booleans()):
            scenario = draw(st.one_of(scenarios(), mutated_scenarios()))
            event = RunStarted(
                scenario=json.dumps(scenario, default=lambda _: None),
                policy=event.policy,
                seed=event.seed,
            )
        pending = Pending(
            event_id=f"forged-{index}",
            time_ms=draw(st.integers(min_value=-(2**62), max_value=2**62)),
            server=draw(NAMES),
            user=draw(NAMES),
            event=event,
        )
        try:
            msgspec.json.encode(pending)
        except (OverflowError, msgspec.EncodeError):
            assume(False)
        records.append((draw(NAMES), pending))
    return records


def forge(log: Path, records: list[tuple[str, Pending]]) -> None:
    """Write `records` (stream, record) to a new log at `log`, each at its stream's next
    version, as any writer could."""
    with contextlib.closing(SQLiteStore(log, synchronous="NORMAL")) as store:
        for stream, pending in records:
            try:
                store.append(stream, store.stream_version(stream), [pending])
            except LogError:
                assume(False)  # a record no writer could store


@FUZZ
@given(records=forged_records(), ended=st.booleans())
def test_a_forged_log_replays_or_is_refused_without_a_traceback(
    records: list[tuple[str, Pending]], ended: bool, tmp_path_factory: pytest.TempPathFactory
) -> None:
    log = tmp_path_factory.mktemp("forged") / "log.db"
    end = Pending(event_id="end", time_ms=0, server="", user="", event=RunEnded())
    forge(log, [*records, ("run", end)] if ended else records)
    replay_contract(log)
    code, _, err = rejoin("replay", str(log), "--policy", "legacy")
    assert code in (0, 1, 2), err
    code, _, err = rejoin("replay", str(log), "--user", records[0][1].user)
    assert code in (0, 2), err


FORGED_USERS = ["ada@example.com", "b/c", "émile"]
LIFE: list[AnyEvent] = [
    GlassesConnected(epoch=1),
    SessionOpened(cause="c", why="forged", incarnation=1, epoch=1),
    BridgeStarted(cause="c", why="forged", generation=1, identity="i", epoch=1),
    GlassesDisconnected(),
    GraceStarted(cause="c", why="forged", deadline_ms=0),
    SessionDisposed(cause="c", why="forged"),
]
"""A session's life, event by event, which random events of every type seldom spell."""


@st.composite
def forged_server_logs(draw: st.DrawFn) -> list[tuple[str, Pending]]:
    """prod's own log, forged in its shape: for each user, sessions that each live some way
    through a session's life and then hold any events at all, and records of the fleet's
    connections (which a fleet sharing the log fences by), at any times, with valid checksums;
    the sessions they open are in the index of open sessions, which a server starting on the
    log recovers."""
    records: list[tuple[str, Pending]] = []
    any_event = st.one_of([st.from_type(t) for t in EVENT_TYPES])
    any_time = st.one_of(
        st.integers(min_value=0, max_value=60_000),
        st.integers(min_value=-(2**62), max_value=2**62),
    )

    def forged(stream: str, user: str, event: AnyEvent) -> None:
        pending = Pending(
            event_id=f"forged-{len(records)}",
            time_ms=draw(any_time),
            server=draw(st.sampled_from(["prod", "prod", "debug"])),
            user=user,
            event=event,
        )
        try:
            msgspec.json.encode(pending)
        except (OverflowError, msgspec.EncodeError):
            assume(False)
        records.append((stream, pending))

    for user in FORGED_USERS:
        for incarnation in range(1, draw(st.integers(min_value=0, max_value=3)) + 1):
            life = LIFE[: draw(st.integers(min_value=0, max_value=len(LIFE)))]
            for event in [*life, *draw(st.lists(any_event, max_size=4))]:
                forged(stream_name("prod", user, incarnation), user, event)
        for epoch in draw(st.lists(st.integers(min_value=-(2**63), max_value=2**63 - 1))):
            recorded = ConnectionRecorded(cause="c", why="forged", epoch=epoch)
            forged(fleet_stream(user), user, recorded)
    return records


INDEX_TAMPERING = [
    "",
    "DELETE FROM sessions",
    "UPDATE sessions SET incarnation = 0",
    "UPDATE sessions SET open = 1",
    "UPDATE sessions SET open = 0",
]
"""What an attacker can do to the index of sessions beside the records: nothing, lose it, make
it under-report incarnations, or say every session is open, or none."""


STRANGER = "new@example.com"


def forged_and_tampered(
    tmp_path_factory: pytest.TempPathFactory, records: list[tuple[str, Pending]], tampering: str
) -> Path:
    """A new log of `records`, its index of sessions then changed by `tampering`."""
    log = tmp_path_factory.mktemp("forged") / "log.db"
    forge(log, records)
    with contextlib.closing(sqlite3.connect(log)) as db:
        db.execute(tampering)
        db.commit()
    return log


def connects_taken(store: EventStore) -> list[str]:
    """The user of every glasses connection the runtime took into `store`, forged ones aside."""
    return [
        e.user
        for e in store.read_all()
        if isinstance(e.event, GlassesConnected) and not e.event_id.startswith("forged-")
    ]


def the_stranger_has_audio_on_prod(world: World) -> None:
    view = world.runtimes["prod"].session(STRANGER)
    assert view is not None
    assert view.state == "ACTIVE"
    assert world.deliveries.heard(
        STRANGER, "prod", after_ms=world.now_ms - 5_000, until_ms=world.now_ms
    )


@FUZZ
@given(
    records=forged_server_logs(),
    tampering=st.sampled_from(INDEX_TAMPERING),
    shared=st.booleans(),
)
def test_a_server_started_on_a_forged_log_neither_fails_nor_hangs_and_serves_a_new_user(
    records: list[tuple[str, Pending]],
    tampering: str,
    shared: bool,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """`rejoin serve` on a log an attacker wrote, records and index, its own or a fleet's shared
    one: start-up recovers whatever sessions it says are open, each user of the log connects,
    and the run goes on (a livelock or an error out of the runtime fails the test); every
    connect is taken into the log, and a user the log never saw gets a session and audio."""
    log = forged_and_tampered(tmp_path_factory, records, tampering)
    world = World(
        servers=["prod"],
        store_for=lambda _: SQLiteStore(log, synchronous="NORMAL"),
        shared_log=shared,
    )
    for user in [*FORGED_USERS, STRANGER]:
        world.connect(user, "prod")
    world.run_for(20_000)
    taken = connects_taken(world.stores["prod"])
    assert sorted(taken) == sorted([*FORGED_USERS, STRANGER]), "every connect is in the log"
    the_stranger_has_audio_on_prod(world)
    world.stop()


@FUZZ
@given(records=forged_server_logs(), tampering=st.sampled_from(INDEX_TAMPERING))
def test_a_fleet_on_a_forged_shared_log_fences_without_failing_or_hanging(
    records: list[tuple[str, Pending]], tampering: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Two servers share a forged log and fence by its fleet records: every user, and one the
    log never saw, connects to prod, then debug, then prod again, each switch a kick the
    fleet's records decide. Nothing fails or hangs, every connect reaches the log, and the new
    user ends with a session and audio on prod."""
    shared = SQLiteStore(
        forged_and_tampered(tmp_path_factory, records, tampering), synchronous="NORMAL"
    )
    world = World(servers=["prod", "debug"], store_for=lambda _: shared, shared_log=True)
    users = [*FORGED_USERS, STRANGER]
    for server, settle_ms in (("prod", 5_000), ("debug", 5_000), ("prod", 15_000)):
        for user in users:
            world.connect(user, server)
        world.run_for(settle_ms)
    taken = connects_taken(shared)
    assert all(taken.count(user) == 3 for user in users), "every connect is in the log"
    the_stranger_has_audio_on_prod(world)
    world.stop()

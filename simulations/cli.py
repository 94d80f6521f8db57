"""The `rejoin` command (DESIGN section 8): compare, simulate, replay, load.

Exit codes: 0 done (for `simulate`: every expectation and invariant held; for `load`: every user
has audio at the end, the join rate held and every invariant held), 1 an expectation, an
invariant or a load's outcome failed, 2 bad input (a one-line message on stderr naming the file
and the fault; for live runs also a LiveKit that cannot be reached or refuses the credentials).
A closed pipe on stdout ends the command quietly with 141, as a command killed by SIGPIPE;
Ctrl-C with 130.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import secrets
import socket
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

import msgspec

from actors.connector import RoomServerError
from actors.policy import POLICIES, Policy
from actors.redaction import RedactingFilter, redact, register_secret
from events.catalog import RunEnded, RunStarted
from events.envelope import Envelope
from events.log import LogError, read_valid_prefix
from events.sqlite_store import SQLiteStore
from simulations.bench import report
from simulations.load import LoadConfig, run_load
from simulations.metrics import RUN_STREAM, Metrics, compute
from simulations.report import comparison_table, printable, result_lines, timeline_lines
from simulations.scale import report as scale_report
from simulations.scenario import BUILT_IN, LIMITS, Scenario, ScenarioError, from_json, load
from simulations.scenario_runner import RunResult, run

SIGPIPE_EXIT = 141
INTERRUPTED_EXIT = 130


class UsageError(Exception):
    """Bad input from the command line; its message is the one line printed."""


class ReplayResult(msgspec.Struct, frozen=True, kw_only=True):
    scenario: str | None
    policy: str | None
    seed: int | None
    complete: bool | None
    """Whether the recorded run reached its end; `None` for a log that records no run."""
    metrics: Metrics


class RecordedRun(msgspec.Struct, frozen=True, kw_only=True):
    """What a log says about the run that wrote it."""

    scenario: Scenario
    policy: str
    started_ms: int
    ended_ms: int | None
    """When it ended; `None` if it was cut short."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a mistake is one line and exit 2 like every other bad input."""

    epilog_from: Callable[[], str] | None = None
    """Makes the epilog when help is asked for: some need modules the other commands don't."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")

    def format_help(self) -> str:
        if self.epilog_from is not None:
            self.epilog = self.epilog_from()
        return super().format_help()


def main(argv: Sequence[str] | None = None) -> int:
    try:
        _log_to_stderr()
        args = _parser().parse_args(argv)
        code: int = args.command(args)
        sys.stdout.flush()
    except (UsageError, ScenarioError, LogError, RoomServerError) as error:
        print(f"rejoin: {printable(redact(str(error)))}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # Whoever read stdout has gone (`rejoin compare | head`): stop quietly. Point stdout at
        # /dev/null so that the interpreter's own flush at exit does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return SIGPIPE_EXIT
    except KeyboardInterrupt:
        return INTERRUPTED_EXIT
    return code


def _log_to_stderr() -> None:
    """Log records at `REJOIN_LOG_LEVEL` (default: warning) on stderr, one redacted line each.

    Unless a level is asked for, the runtime's and the SDK's own records stay quiet: what
    they report is in the event log, or reaches the user as the one-line error of the failure
    it leads to (a simulated log fault, say, is no news to whoever injected it).
    """
    root = logging.getLogger()
    level = os.environ.get("REJOIN_LOG_LEVEL", "").upper()
    levels = {name: number for name, number in logging.getLevelNamesMapping().items() if name}
    if level and level not in levels:
        msg = f"REJOIN_LOG_LEVEL: {level.lower()!r} is not a level (debug, info, warning, error)"
        raise UsageError(msg)
    root.setLevel(levels.get(level, logging.WARNING))
    if not any(isinstance(f, RedactingFilter) for h in root.handlers for f in h.filters):
        handler = logging.StreamHandler()
        handler.addFilter(RedactingFilter())
        handler.setFormatter(logging.Formatter("rejoin: %(name)s: %(message)s"))
        root.addHandler(handler)
    if not level:
        for quiet in ("livekit", "actors"):
            logging.getLogger(quiet).setLevel(logging.CRITICAL)
    # LiveKit's own development secret is shorter than PyJWT would like; that is not news
    # worth two lines on every run against a dev server.
    warnings.filterwarnings("ignore", message="The HMAC key is .* below the minimum")


def _seed(text: str) -> int:
    low, high, _ = LIMITS["seed"]
    try:
        seed = int(text)
    except ValueError:
        msg = f"not a whole number: {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if not low <= seed <= high:
        msg = f"must be from {low:g} to {int(high)}; found {seed}"
        raise argparse.ArgumentTypeError(msg)
    return seed


def _whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        msg = f"not a whole number: {text!r}"
        raise argparse.ArgumentTypeError(msg) from None


def _seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds):
        msg = f"not a number of seconds: {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return seconds


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65_535:
        msg = f"must be a port number from 0 to 65535; found {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return port


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="rejoin",
        description="Keep a LiveKit bridge in its user's room across reconnects, and prove it.",
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    compare = commands.add_parser(
        "compare", help="the seed's success metrics for every policy, side by side"
    )
    compare.add_argument("scenarios", nargs="*", metavar="SCENARIO", default=list(BUILT_IN))
    compare.add_argument("--seed", type=_seed, help="override the scenarios' seeds")
    compare.add_argument("--json", action="store_true", help="print the results as JSON")
    compare.set_defaults(command=_compare)

    simulate = commands.add_parser("simulate", help="run scenarios under one policy")
    simulate.add_argument("scenarios", nargs="+", metavar="SCENARIO")
    simulate.add_argument("--policy", default="supervised", choices=list(POLICIES))
    simulate.add_argument("--seed", type=_seed, help="override the scenarios' seeds")
    simulate.add_argument("--json", action="store_true", help="print the results as JSON")
    simulate.add_argument("--events", type=Path, metavar="PATH", help="write the event log here")
    simulate.add_argument(
        "--sfu",
        choices=["sim", "loopback", "livekit"],
        default="sim",
        help="the simulated LiveKit (default); the loopback server with the real SDK, in real "
        "time; or the LiveKit at LIVEKIT_URL with LIVEKIT_API_KEY and LIVEKIT_API_SECRET",
    )
    simulate.set_defaults(command=_simulate)

    loopback = commands.add_parser(
        "loopback-server", help="the LiveKit-compatible loopback server (key devkey)"
    )
    loopback.add_argument("--host", default="127.0.0.1")
    loopback.add_argument("--port", type=_port, default=7880)
    loopback.add_argument(
        "--secret",
        default=os.environ.get("LIVEKIT_API_SECRET") or "secret",
        help="the API secret of key devkey (default: $LIVEKIT_API_SECRET, else secret); "
        "prefer the variable: a flag shows in ps",
    )
    loopback.set_defaults(command=_loopback_server)

    replay = commands.add_parser("replay", help="rebuild sessions from an event log")
    replay.add_argument("log", type=Path, metavar="LOG")
    replay.add_argument("--user", help="only this user's timeline")
    replay.add_argument(
        "--policy", choices=list(POLICIES), help="re-run the recorded run under this policy"
    )
    replay.add_argument("--json", action="store_true", help="print the results as JSON")
    replay.add_argument(
        "--html",
        type=Path,
        metavar="PATH",
        help="write a picture of each user's timeline across servers to this HTML file",
    )
    replay.set_defaults(command=_replay)

    defaults = LoadConfig()
    load = commands.add_parser(
        "load",
        help="a fleet under load: users over servers, churn, a server's failure; JSON figures",
    )
    load.add_argument("--users", type=_whole, default=defaults.users)
    load.add_argument("--servers", type=_whole, default=defaults.servers)
    load.add_argument(
        "--seconds", type=_seconds, default=defaults.seconds, help="simulated seconds in all"
    )
    load.add_argument(
        "--fail-at",
        type=_seconds,
        default=defaults.fail_at_s,
        help="when the first server dies and its users all reconnect to the others",
    )
    load.add_argument(
        "--join-rate",
        type=_whole,
        default=defaults.join_rate_per_s,
        help="the most joins the simulated LiveKit admits within any second",
    )
    load.add_argument(
        "--server-join-rate",
        type=_whole,
        help="each server's own join rate (default: its share, join rate / servers; "
        "0: none, the storm)",
    )
    load.add_argument(
        "--all-on-failing", action="store_true", help="every user starts on the failing server"
    )
    load.add_argument("--switches", type=_whole, help="users who switch server (default: 10%%)")
    load.add_argument("--blips", type=_whole, help="users who blip (default: 10%%)")
    load.add_argument("--seed", type=_seed, default=defaults.seed)
    load.add_argument("--policy", default=defaults.policy, choices=list(POLICIES))
    load.set_defaults(command=_load)

    serve = commands.add_parser(
        "serve",
        help="run one server's runtime as a service: HTTP API, health, metrics, drain",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.epilog_from = _serve_help
    serve.set_defaults(command=_serve)

    bench = commands.add_parser("bench", help="measure the figures in BENCHMARKS.md")
    bench.add_argument(
        "--scale",
        type=_counts,
        metavar="USERS,...",
        help="measure how the cost grows with these counts of users instead",
    )
    bench.set_defaults(command=_bench)
    return parser


def _counts(text: str) -> list[int]:
    counts = [_whole(part) for part in text.split(",")]
    if not all(1 <= count <= 1_000_000 for count in counts):
        msg = f"counts of users are 1 to 1,000,000: {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return counts


def _bench(args: argparse.Namespace) -> int:
    for line in scale_report(args.scale) if args.scale else report():
        print(line, flush=True)
    return 0


def _load(args: argparse.Namespace) -> int:
    churn = args.users // 10
    try:
        config = LoadConfig(
            users=args.users,
            servers=args.servers,
            seconds=args.seconds,
            fail_at_s=args.fail_at,
            join_rate_per_s=args.join_rate,
            server_join_rate_per_s=args.server_join_rate,
            all_on_failing=args.all_on_failing,
            switches=churn if args.switches is None else args.switches,
            blips=churn if args.blips is None else args.blips,
            seed=args.seed,
            policy=args.policy,
        )
    except ValueError as error:
        raise UsageError(f"load: {error}") from None
    result = run_load(config)
    sys.stdout.write(msgspec.json.encode(result).decode() + "\n")
    return 0 if result.passed else 1


def _scenarios(references: list[str]) -> list[Scenario]:
    return [load(reference) for reference in references]


def _compare(args: argparse.Namespace) -> int:
    scenarios = _scenarios(args.scenarios)
    named: dict[str, str] = {}
    for reference, scenario in zip(args.scenarios, scenarios, strict=True):
        if scenario.name in named:
            msg = (
                f"{reference}: its scenario is named {scenario.name!r}, as is "
                f"{named[scenario.name]}'s; the scenarios of a comparison need distinct names"
            )
            raise UsageError(msg)
        named[scenario.name] = reference
    results = [
        run(scenario, policy, seed=args.seed)
        for scenario in scenarios
        for policy in POLICIES.values()
    ]
    if args.json:
        _print_json(results)
    else:
        print("\n".join(comparison_table(scenarios, list(POLICIES.values()), results)))
    return 0


def _simulate(args: argparse.Namespace) -> int:
    policy = POLICIES[args.policy]
    scenarios = _scenarios(args.scenarios)
    if args.sfu != "sim":
        results = _simulate_live(args, scenarios, policy)
    elif args.events is not None:
        results = [_simulate_into(args.events, scenarios, policy, args.seed)]
    else:
        results = [run(scenario, policy, seed=args.seed) for scenario in scenarios]
    if args.json:
        _print_json(results)
    else:
        for result in results:
            print("\n".join(result_lines(result)))
    return 0 if all(result.passed for result in results) else 1


def _serve_help() -> str:
    from rejoin.service.main import HELP  # noqa: PLC0415

    return HELP


def _serve(_args: argparse.Namespace) -> int:
    from rejoin.service.main import serve  # noqa: PLC0415

    return serve()


def _simulate_live(
    args: argparse.Namespace, scenarios: list[Scenario], policy: Policy
) -> list[RunResult]:
    # The SDK, aiortc and aiohttp load only for live runs: they double the CLI's start-up.
    from actors.livekit_connector import LiveKitSettings  # noqa: PLC0415
    from rejoin.settings import SettingsError, livekit_from_environment  # noqa: PLC0415
    from simulations.live_runner import refuse_unsupported, run_live  # noqa: PLC0415

    if args.sfu == "loopback":
        try:
            from simulations.loopback_server import LoopbackThread  # noqa: PLC0415
        except ModuleNotFoundError as error:
            msg = f"--sfu loopback needs {error.name}: pip install 'rejoin[loopback]'"
            raise UsageError(msg) from None

    for scenario in scenarios:
        refuse_unsupported(scenario, loopback=args.sfu == "loopback")
    if args.events is not None and len(scenarios) != 1:
        msg = f"{args.events}: --events records one run; name one scenario"
        raise UsageError(msg)
    if args.events is not None and args.events.exists():
        msg = f"{args.events}: already exists; --events writes a new log"
        raise UsageError(msg)
    store = SQLiteStore(args.events) if args.events is not None else None
    loopback = None
    try:
        if args.sfu == "loopback":
            secret = secrets.token_urlsafe(32)
            loopback = LoopbackThread(api_key="devkey", api_secret=secret, port=_free_port())
            loopback.start()
            settings = LiveKitSettings(
                url=loopback.url, api_key="devkey", api_secret=secret, single_peer_connection=False
            )
        else:
            try:
                settings = livekit_from_environment()
            except SettingsError as error:
                raise UsageError("; ".join(error.faults)) from None
        return [
            run_live(scenario, policy, settings, loopback=loopback, store=store)
            for scenario in scenarios
        ]
    finally:
        if loopback is not None:
            loopback.stop()
        if store is not None:
            store.close()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _loopback_server(args: argparse.Namespace) -> int:
    from simulations.loopback_server import serve  # noqa: PLC0415

    register_secret(args.secret)
    print(f"loopback LiveKit at ws://{args.host}:{args.port} (api key devkey)", flush=True)
    serve(args.host, args.port, args.secret)
    return 0


def _simulate_into(
    path: Path, scenarios: list[Scenario], policy: Policy, seed: int | None
) -> RunResult:
    if len(scenarios) != 1:
        msg = f"{path}: --events records one run; name one scenario"
        raise UsageError(msg)
    if path.exists():
        msg = f"{path}: already exists; --events writes a new log"
        raise UsageError(msg)
    store = SQLiteStore(path)
    try:
        return run(scenarios[0], policy, seed=seed, store=store)
    finally:
        store.close()


def _replay(args: argparse.Namespace) -> int:
    store = SQLiteStore(args.log, read_only=True)
    try:
        envelopes, corrupt = read_valid_prefix(store)
    finally:
        store.close()
    if corrupt is not None:
        print(
            f"rejoin: {printable(str(corrupt))}; replaying the {len(envelopes)} records before it",
            file=sys.stderr,
        )
    recorded = _recorded_run(args.log, envelopes)
    if args.policy is not None:
        return _rerun(args, recorded)
    events = [e for e in envelopes if e.stream != RUN_STREAM]
    if args.user is not None and all(e.user != args.user for e in events):
        users = sorted({e.user for e in events})
        listed = ", ".join(repr(u) for u in users[:5]) + (", ..." if len(users) > 5 else "")
        msg = f"{args.log}: no user {args.user!r} in this log (it has {listed or 'none'})"
        raise UsageError(msg)
    last_ms = max((e.time_ms for e in events), default=None)
    if recorded is not None and recorded.ended_ms is None and corrupt is None:
        until = "" if last_ms is None else f" up to {(last_ms - recorded.started_ms) / 1000:g} s"
        print(
            f"rejoin: {args.log}: the run did not finish (its end is not in the log); "
            f"the figures cover it{until}",
            file=sys.stderr,
        )
    ended = recorded.ended_ms if recorded is not None else None
    result = ReplayResult(
        scenario=recorded.scenario.name if recorded else None,
        policy=recorded.policy if recorded else None,
        seed=recorded.scenario.seed if recorded else None,
        complete=None if recorded is None else ended is not None,
        metrics=compute(events, end_ms=ended if ended is not None else last_ms),
    )
    shown = [e for e in events if args.user is None or e.user == args.user]
    if args.html is not None:
        _write_picture(args.log, args.html, shown)
    elif args.json:
        _print_json([result])
    else:
        started = recorded.started_ms if recorded is not None else None
        print("\n".join(timeline_lines(shown, result.metrics, started)))
    return 0


def _write_picture(log: Path, picture: Path, events: list[Envelope]) -> None:
    from rejoin.timeline import html_page  # noqa: PLC0415

    if picture.exists() and picture.resolve() == log.resolve():
        msg = f"{picture}: is the log being replayed; a replay never writes to its log"
        raise UsageError(msg)
    try:
        picture.write_text(html_page(events, f"rejoin replay {log.name}"), encoding="utf-8")
    except OSError as error:
        msg = f"{picture}: cannot write the picture: {error.strerror}"
        raise UsageError(msg) from None
    print(f"wrote {picture}")


def _rerun(args: argparse.Namespace, recorded: RecordedRun | None) -> int:
    if recorded is None:
        msg = f"{args.log}: holds no recorded run to re-run (it was not written by simulate)"
        raise UsageError(msg)
    result = run(recorded.scenario, POLICIES[args.policy])
    if args.json:
        _print_json([result])
    else:
        print("\n".join(result_lines(result)))
    return 0 if result.passed else 1


def _recorded_run(log: Path, envelopes: list[Envelope]) -> RecordedRun | None:
    """The scenario (with the seed it ran on), the policy and the end a log's run recorded."""
    started = next((e for e in envelopes if isinstance(e.event, RunStarted)), None)
    if started is None or not isinstance(started.event, RunStarted):
        return None
    origin = f"{log}: the run recorded at position {started.position}"
    scenario = from_json(started.event.scenario, origin)
    if not LIMITS["seed"].low <= started.event.seed <= LIMITS["seed"].high:
        msg = f"{origin} ran on seed {started.event.seed}, outside the range of seeds"
        raise ScenarioError(msg)
    ended = next((e.time_ms for e in envelopes if isinstance(e.event, RunEnded)), None)
    return RecordedRun(
        scenario=msgspec.structs.replace(scenario, seed=started.event.seed),
        policy=started.event.policy,
        started_ms=started.time_ms,
        ended_ms=ended,
    )


def _print_json(results: Sequence[RunResult | ReplayResult]) -> None:
    sys.stdout.write(msgspec.json.encode(list(results)).decode() + "\n")


if __name__ == "__main__":
    sys.exit(main())
